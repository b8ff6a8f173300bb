//! The API's accept loop: what a hostile or broken client can hold is bounded.
//!
//! - At most `api.max_connections` connections at once (and never more than three quarters
//!   of the open-file limit, so the store keeps descriptors).
//! - One client (an IPv4 address, an IPv6 /64) holds at most
//!   `api.max_connections_per_address` of them, unless it is one of `api.trusted_proxies`.
//! - When a slot is needed, a connection its client holds (idle, or waiting for body bytes)
//!   gives way, so a new client is served while the slots are full ([`registry`] decides
//!   which); only when every connection has the host working for it does a newcomer wait in
//!   the listen backlog.
//! - A request's headers must arrive within `api.header_timeout` (hyper's header read
//!   timeout), and its body within `api.body_timeout` of them (then 408).
//! - A connection with no request in progress for `api.idle_timeout` is closed, whether it
//!   never sent a byte or sits kept-alive between requests; one that has carried
//!   `api.max_requests_per_connection` requests is closed after the last answer.
//! - A failed accept (EMFILE when the process is out of descriptors) is logged and retried
//!   after a short pause; the loop never ends on it.

mod body;
mod connection;
mod registry;

use std::future::Future;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use body::{BodyTimedOut, BODY_TIMEOUT_MESSAGE};

use crate::config::{parse_network, ApiConfig};
use connection::Connection;
use registry::{Crowded, Limits, Refused, Registry};

/// How long the loop pauses after a failed accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The least time between two log lines about failed accepts, or about refused connections.
const LOG_EVERY: Duration = Duration::from_secs(1);

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

/// The registry's limits from the settings: the connection limit in force, and connections
/// closing to make room bounded to a sixteenth of it on top (they close within moments; the
/// quarter of the open-file limit kept for the store stays nearly whole).
fn limits(api: &ApiConfig) -> Limits {
    let host = connection_limit(api.max_connections);
    Limits {
        host,
        closing: host / 16 + 1,
        per_peer: api.max_connections_per_address,
        trusted: api
            .trusted_proxies
            .iter()
            .filter_map(|text| parse_network(text).ok())
            .collect(),
    }
}

/// Serves `router` on `listener` until `stop` completes; then stops accepting, lets each
/// connection finish its request in progress, and returns when all have closed.
///
/// # Errors
/// Never at present; kept fallible for listeners that can fail for good.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    api: &ApiConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = limits(api);
    if limits.host < api.max_connections {
        tracing::warn!(
            configured = api.max_connections,
            max = limits.host,
            "api.max_connections lowered to three quarters of the open-file limit"
        );
    }
    let registry = Registry::new(limits);
    let (stopping, _) = watch::channel(false);
    tokio::pin!(stop);
    let mut accept_error_logged: Option<Instant> = None;
    let mut refusal_logged: Option<Instant> = None;
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = registry.room() => {}
        }
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, address) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if due(&mut accept_error_logged) {
                    tracing::error!("accepting an API connection: {e} (retrying)");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let admitted = match registry.admit(address.ip()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                if due(&mut refusal_logged) {
                    tracing::warn!(peer = %address.ip(), "refusing an API connection: {refused}");
                }
                refuse(&stream, &refused);
                continue;
            }
        };
        if let Some((peer, crowded)) = admitted.made_room {
            let why = match crowded {
                Crowded::Peer => "its client opened another beyond its cap",
                Crowded::Host => "the slots were full",
            };
            tracing::debug!(%peer, "closing an API connection its client holds: {why}");
        }
        let _ = stream.set_nodelay(true);
        let connection = Connection::new(router.clone(), api);
        let stopping = stopping.subscribe();
        tokio::spawn(async move {
            let slot = admitted.slot;
            connection
                .run(stream, slot.activity().clone(), stopping)
                .await;
            drop(slot);
        });
    }
    stopping.send_replace(true);
    registry.emptied().await;
    Ok(())
}

/// Whether a rate-limited log line is due now (and notes it as written).
fn due(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= LOG_EVERY);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// Answers a refused connection with a short error, if its send buffer takes it at once (it
/// is empty: the connection is new), and closes it. Never waits.
fn refuse(stream: &TcpStream, refused: &Refused) {
    let status = match refused {
        Refused::PeerFull { .. } => "429 Too Many Requests",
        Refused::HostFull { .. } => "503 Service Unavailable",
    };
    let body = serde_json::json!({
        "error": { "code": "too_many_connections", "message": refused.to_string() }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}
