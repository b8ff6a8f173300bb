//! The receivers the hosts deliver to, and the tally of what they saw: when each delivery
//! arrived and how long after its event was emitted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;

/// What the receivers saw: per event number, when it was emitted (µs since the bench
/// started); per delivery, the latency.
pub(crate) struct Tally {
    start: Instant,
    pub(crate) emitted_at: Vec<AtomicU64>,
    pub(crate) received: AtomicUsize,
    pub(crate) latencies_us: Mutex<Vec<u64>>,
    pub(crate) last_receipt_us: AtomicU64,
}

impl Tally {
    pub(crate) fn new(events: usize) -> Arc<Tally> {
        Arc::new(Tally {
            start: Instant::now(),
            emitted_at: (0..events).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicUsize::new(0),
            latencies_us: Mutex::new(Vec::with_capacity(events)),
            last_receipt_us: AtomicU64::new(0),
        })
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn receipt(&self, body: &[u8]) {
        let now = self.now_us();
        if let Some(n) = event_number(body) {
            let sent = self.emitted_at[n].load(Ordering::Relaxed);
            self.latencies_us
                .lock()
                .unwrap()
                .push(now.saturating_sub(sent));
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_receipt_us.fetch_max(now, Ordering::Relaxed);
    }
}

/// The number of the event a delivered body is for (`"event_id":"bench-N"`), found by a scan
/// rather than a JSON parse: the receiver shares the cores with the host it measures.
fn event_number(body: &[u8]) -> Option<usize> {
    const MARK: &[u8] = b"\"event_id\":\"bench-";
    let at = body.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// A keep-alive HTTP receiver on 127.0.0.1 that answers 200 after `delay`.
pub(crate) async fn receiver(tally: Option<Arc<Tally>>, delay: Duration) -> String {
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let tally = tally.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(t) = tally {
                t.receipt(&body);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Waits until `expected` deliveries arrived; panics if none arrives for a minute, or after
/// ten minutes.
pub(crate) async fn all_delivered(tally: &Tally, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = (0, Instant::now());
    while tally.received.load(Ordering::Relaxed) < expected {
        let now = tally.received.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(60),
            "deliveries stalled at {now}/{expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
