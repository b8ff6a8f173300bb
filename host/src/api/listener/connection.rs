//! One client connection: hyper serves it with the API's router, under its timeouts and its
//! cap on requests, and closes it when it sits idle, when the registry asks, or when the host
//! stops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::header::{HeaderValue, CONNECTION};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower_service::Service;

use super::body::TimedBody;
use super::registry::Activity;
use crate::config::ApiConfig;

/// How long a connection asked to close may take to finish on its own once no handler is
/// working for it (a response still being written to a client that does not read it); then
/// it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One client connection's settings.
pub struct Connection {
    /// The API.
    pub router: Router,
    /// `api.header_timeout`.
    pub header_timeout: Duration,
    /// `api.body_timeout`.
    pub body_timeout: Duration,
    /// `api.idle_timeout`.
    pub idle_timeout: Duration,
    /// `api.max_requests_per_connection`.
    pub max_requests: usize,
}

impl Connection {
    /// The settings of `api` for connections to `router`.
    pub fn new(router: Router, api: &ApiConfig) -> Connection {
        Connection {
            router,
            header_timeout: api.header_timeout,
            body_timeout: api.body_timeout,
            idle_timeout: api.idle_timeout,
            max_requests: api.max_requests_per_connection,
        }
    }

    /// Serves the connection until it closes: by the client, after its last allowed request,
    /// idle for `idle_timeout`, asked by the registry (through `activity`), or when `stopping`
    /// turns true (then a request in progress finishes first).
    pub async fn run(
        self,
        stream: TcpStream,
        activity: Arc<Activity>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let body_timeout = self.body_timeout;
        let max_requests = self.max_requests;
        let router = self.router;
        let served = AtomicUsize::new(0);
        let service_activity = activity.clone();
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let handling = service_activity.start_request();
                let last = served.fetch_add(1, Ordering::Relaxed) + 1 >= max_requests;
                let body_activity = service_activity.clone();
                let request = request
                    .map(|body| Body::new(TimedBody::new(body, body_timeout, body_activity)));
                let mut router = router.clone();
                async move {
                    let mut response = router.call(request).await;
                    drop(handling);
                    if let Ok(response) = &mut response {
                        if last {
                            // hyper closes the connection after a response that says so.
                            response
                                .headers_mut()
                                .insert(CONNECTION, HeaderValue::from_static("close"));
                        }
                    }
                    response
                }
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let check_every =
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut closing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("API connection ended: {e}");
                    }
                    return;
                }
                _ = stopping.wait_for(|s| *s), if closing_since.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(tokio::time::Instant::now());
                }
                () = activity.close_asked(), if closing_since.is_none() => {
                    if activity.is_awaiting_body() {
                        // Its handler is suspended waiting for bytes that do not come:
                        // dropping it now is the same as the body never arriving.
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(tokio::time::Instant::now());
                }
                () = tokio::time::sleep(check_every) => match closing_since {
                    None => {
                        if activity.idle_for().is_some_and(|idle| idle >= self.idle_timeout) {
                            connection.as_mut().graceful_shutdown();
                            closing_since = Some(tokio::time::Instant::now());
                        }
                    }
                    Some(since) => {
                        if since.elapsed() >= CLOSE_GRACE && activity.held_by_client() {
                            return;
                        }
                    }
                },
            }
        }
    }
}
