//! The API's accept loop: what a hostile or broken client can hold is bounded.
//!
//! - At most `api.max_connections` connections at once (and never more than three quarters
//!   of the open-file limit, so the store keeps descriptors): further clients wait in the
//!   listen backlog instead of taking the host's last descriptors.
//! - A request's headers must arrive within `api.header_timeout` (hyper's header read
//!   timeout), and its body within `api.body_timeout` of them (then 408).
//! - A connection with no request in progress for `api.idle_timeout` is closed, whether it
//!   never sent a byte or sits kept-alive between requests.
//! - A failed accept (EMFILE when the process is out of descriptors) is logged and retried
//!   after a short pause; the loop never ends on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower_service::Service;

use crate::config::ApiConfig;

/// How long the loop pauses after a failed accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The message a request body that came too slowly fails with (the API answers 408).
pub const BODY_TIMEOUT_MESSAGE: &str = "the request body did not arrive within api.body_timeout";

/// The connection limit in force: the configured one, within three quarters of the
/// open-file limit.
pub fn connection_limit(configured: usize) -> usize {
    let files = open_file_limit().unwrap_or(u64::MAX);
    let by_files = usize::try_from(files.saturating_mul(3) / 4).unwrap_or(usize::MAX);
    configured.min(by_files).max(1)
}

fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given and reads nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return Some(limit.rlim_cur);
        }
    }
    None
}

/// Serves `router` on `listener` until `stop` completes; then stops accepting, lets each
/// connection finish its request in progress, and returns when all have closed.
///
/// # Errors
/// Never at present; kept fallible for listeners that can fail for good.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ApiConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = connection_limit(limits.max_connections);
    if max < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            max,
            "api.max_connections lowered to three quarters of the open-file limit"
        );
    }
    let permits = Arc::new(Semaphore::new(max));
    let (closing, _) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let all_closed = Arc::new(tokio::sync::Notify::new());
    tokio::pin!(stop);
    let mut last_error_logged: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if last_error_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::error!("accepting an API connection: {e} (retrying)");
                    last_error_logged = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Ordering::SeqCst);
        let connection = Connection {
            router: router.clone(),
            header_timeout: limits.header_timeout,
            body_timeout: limits.body_timeout,
            idle_timeout: limits.idle_timeout,
        };
        let closing = closing.subscribe();
        let open = open.clone();
        let all_closed = all_closed.clone();
        tokio::spawn(async move {
            connection.run(TokioIo::new(stream), closing).await;
            drop(permit);
            if open.fetch_sub(1, Ordering::SeqCst) == 1 {
                all_closed.notify_waiters();
            }
        });
    }
    closing.send_replace(true);
    loop {
        let notified = all_closed.notified();
        if open.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        notified.await;
    }
}

/// One client connection's settings.
struct Connection {
    router: Router,
    header_timeout: Duration,
    body_timeout: Duration,
    idle_timeout: Duration,
}

/// Requests in progress on one connection, and when the last one ended.
struct Activity {
    in_progress: AtomicUsize,
    since: Mutex<Instant>,
}

/// Marks a request in progress until dropped (with its response future).
struct InProgress(Arc<Activity>);

impl InProgress {
    fn start(activity: &Arc<Activity>) -> InProgress {
        activity.in_progress.fetch_add(1, Ordering::SeqCst);
        InProgress(activity.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connection {
    async fn run(self, io: TokioIo<tokio::net::TcpStream>, mut closing: watch::Receiver<bool>) {
        let activity = Arc::new(Activity {
            in_progress: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        });
        let body_timeout = self.body_timeout;
        let router = self.router;
        let service_activity = activity.clone();
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let in_progress = InProgress::start(&service_activity);
                let request = request.map(|body| Body::new(TimedBody::new(body, body_timeout)));
                let mut router = router.clone();
                async move {
                    let response = router.call(request).await;
                    drop(in_progress);
                    response
                }
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let check_every =
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("API connection ended: {e}");
                    }
                    return;
                }
                _ = closing.wait_for(|c| *c), if !shutting_down => {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep(check_every), if !shutting_down => {
                    let idle = activity.in_progress.load(Ordering::SeqCst) == 0
                        && activity
                            .since
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .elapsed()
                            >= self.idle_timeout;
                    if idle {
                        shutting_down = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// A request body that fails once `timeout` has passed since the request's headers came.
struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> TimedBody<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
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
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
