//! A request body with a deadline, which tells its connection's [`Activity`] when the handler
//! waits for the client's bytes (such a connection is held by its client, like an idle one)
//! and when bytes arrive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use super::registry::Activity;

/// The message a request body that came too slowly fails with (the API answers 408).
pub const BODY_TIMEOUT_MESSAGE: &str = "the request body did not arrive within api.body_timeout";

/// A request body that fails once `timeout` has passed since the request's headers came.
pub struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    activity: Arc<Activity>,
    /// Whether the last poll left the handler waiting for the client.
    waiting: bool,
}

impl<B> TimedBody<B> {
    /// `inner` with a deadline `timeout` from now, reporting to `activity`.
    pub fn new(inner: B, timeout: Duration, activity: Arc<Activity>) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            activity,
            waiting: false,
        }
    }

    fn waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            self.activity.awaiting_body(waiting);
        }
    }
}

impl<B> Drop for TimedBody<B> {
    fn drop(&mut self) {
        self.waiting(false);
    }
}

/// A body that came too slowly.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(BODY_TIMEOUT_MESSAGE)
    }
}

impl std::error::Error for BodyTimedOut {}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            self.waiting(false);
            if matches!(frame, Some(Ok(_))) {
                self.activity.heard();
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting(false);
                Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
            }
            Poll::Pending => {
                self.waiting(true);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
