//! What a monitoring system reads at `GET /metrics` (the OpenMetrics text format, which
//! Prometheus scrapes): counters and histograms the flow moves as it works, and gauges read
//! from the host when scraped ([`Gauges`]). Labels stay bounded: webhook ids, endpoints
//! (origins), outcomes, status classes and limit names, never event or delivery ids.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod storage;

pub use storage::{Connections, StorageCalls};

/// A label set: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// The turn of one scrape; [`ScrapeTurn::done`] keeps its text for those who waited.
pub struct ScrapeTurn<'a>(tokio::sync::MutexGuard<'a, Option<(Instant, String)>>);

impl ScrapeTurn<'_> {
    /// Keeps `text` as the last scrape, for callers that waited for this one.
    pub fn done(mut self, text: &str) {
        *self.0 = Some((Instant::now(), text.to_string()));
    }
}

/// The host's metrics and the registry that writes them out.
pub struct Metrics {
    registry: Registry,
    /// Scrapes set the gauges, then write: one at a time, so neither sees the other's half.
    scraping: Mutex<()>,
    /// The last scrape's text and when it ended: callers that waited share it.
    last_scrape: tokio::sync::Mutex<Option<(Instant, String)>>,
    events_accepted: Counter,
    deliveries: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    delivery_latency: Histogram,
    attempt_duration: Histogram,
    evaluation_time: Histogram,
    limit_hits: Family<Labels, Counter>,
    queue_depth: Gauge,
    oldest_due_age: Gauge<f64, AtomicU64>,
    in_flight: Family<Labels, Gauge>,
    evaluations_running: Gauge,
    evaluations_waiting: Gauge,
    throttled_webhooks: Gauge,
    webhook_evaluation: Family<Labels, Gauge<f64, AtomicU64>>,
    store_bytes: Gauge,
    /// No labels; empty (the metric absent) where the engine cannot see its disk.
    free_bytes: Family<Labels, Gauge>,
    pruned: Family<Labels, Counter>,
    prune_passes: Counter,
    prune_pass_duration: Gauge<f64, AtomicU64>,
    storage: storage::StorageMetrics,
}

/// What a scrape reads from the host, for the gauges.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Deliveries in the due queue.
    pub queue_depth: usize,
    /// How long the earliest due delivery has been due (0 when none is due yet).
    pub oldest_due_age: Duration,
    /// Deliveries in flight per endpoint (origin).
    pub in_flight: Vec<(String, usize)>,
    /// Evaluations running now.
    pub evaluations_running: usize,
    /// Evaluations waiting for a turn.
    pub evaluations_waiting: usize,
    /// Webhooks throttled by their budget or a back-off.
    pub throttled_webhooks: usize,
    /// Evaluation time per second of each webhook that has run, in milliseconds.
    pub webhook_evaluation_ms: Vec<(String, f64)>,
    /// Bytes of the data directory on disk.
    pub store_bytes: u64,
    /// Free bytes on its filesystem (`None`: not known, a database's).
    pub free_bytes: Option<u64>,
    /// The database's connections (`None`: an embedded engine).
    pub connections: Option<Connections>,
}

/// How a finished delivery ended, as its `outcome` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every request accepted.
    Delivered,
    /// The plugin decided not to send.
    Skipped,
    /// Failed for good (410, a plugin error, a deleted webhook).
    Failed,
    /// Retries used up.
    Dead,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::Delivered => "delivered",
            Ended::Skipped => "skipped",
            Ended::Failed => "failed",
            Ended::Dead => "dead",
        }
    }
}

fn int(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under `wasmhooks_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasmhooks");
        // 1 ms to about 9 minutes.
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 20));
        // 10 µs to about 5 seconds.
        let evaluation = || Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        let metrics = Metrics {
            registry: Registry::default(),
            scraping: Mutex::new(()),
            last_scrape: tokio::sync::Mutex::new(None),
            events_accepted: Counter::default(),
            deliveries: Family::default(),
            attempts: Family::default(),
            delivery_latency: latency(),
            attempt_duration: latency(),
            evaluation_time: evaluation(),
            limit_hits: Family::default(),
            queue_depth: Gauge::default(),
            oldest_due_age: Gauge::default(),
            in_flight: Family::default(),
            evaluations_running: Gauge::default(),
            evaluations_waiting: Gauge::default(),
            throttled_webhooks: Gauge::default(),
            webhook_evaluation: Family::default(),
            store_bytes: Gauge::default(),
            free_bytes: Family::default(),
            pruned: Family::default(),
            prune_passes: Counter::default(),
            prune_pass_duration: Gauge::default(),
            storage: storage::StorageMetrics::default(),
        };
        metrics.register(&mut registry);
        metrics.storage.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Registers every metric under its name and help text.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "events_accepted",
            "Events acknowledged (duplicates of a stored id not counted)",
            self.events_accepted.clone(),
        );
        registry.register(
            "deliveries",
            "Deliveries that ended, by webhook and outcome (delivered, skipped, failed, dead)",
            self.deliveries.clone(),
        );
        registry.register(
            "attempts",
            "HTTP attempts by status class (2xx, 3xx, 4xx, 5xx, error: no response)",
            self.attempts.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From a delivery's creation (the event's acknowledgement) to its last request accepted",
            self.delivery_latency.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "One HTTP attempt, to its response or error",
            self.attempt_duration.clone(),
        );
        registry.register(
            "plugin_evaluation_seconds",
            "One plugin evaluation (instantiation and call)",
            self.evaluation_time.clone(),
        );
        registry.register(
            "plugin_limit_hits",
            "Evaluations stopped by a sandbox limit, by limit (cpu, memory, stack, output, requests)",
            self.limit_hits.clone(),
        );
        registry.register(
            "queue_depth",
            "Deliveries in the due queue",
            self.queue_depth.clone(),
        );
        registry.register(
            "queue_oldest_due_age_seconds",
            "How long the earliest due delivery has been due",
            self.oldest_due_age.clone(),
        );
        registry.register(
            "endpoint_in_flight",
            "Deliveries in flight per endpoint",
            self.in_flight.clone(),
        );
        registry.register(
            "evaluations_running",
            "Plugin evaluations running now",
            self.evaluations_running.clone(),
        );
        registry.register(
            "evaluations_waiting",
            "Plugin evaluations waiting for a fair turn",
            self.evaluations_waiting.clone(),
        );
        registry.register(
            "throttled_webhooks",
            "Webhooks whose evaluations wait for their budget or a back-off",
            self.throttled_webhooks.clone(),
        );
        registry.register(
            "webhook_evaluation_ms_per_second",
            "Evaluation time per second of each webhook that has run (about ten seconds)",
            self.webhook_evaluation.clone(),
        );
        registry.register(
            "store_size_bytes",
            "Bytes of the data directory on disk",
            self.store_bytes.clone(),
        );
        registry.register(
            "store_free_bytes",
            "Free bytes on the data directory's filesystem (absent on PostgreSQL)",
            self.free_bytes.clone(),
        );
        for kind in ["deliveries", "events"] {
            let _ = self.pruned.get_or_create(&vec![("kind", kind.to_string())]);
        }
        registry.register(
            "pruned",
            "Records removed past their retention, by kind (deliveries, events)",
            self.pruned.clone(),
        );
        registry.register(
            "prune_passes",
            "Pruning passes run to their end (one every retention.interval)",
            self.prune_passes.clone(),
        );
        registry.register(
            "prune_pass_seconds",
            "How long the last complete pruning pass took",
            self.prune_pass_duration.clone(),
        );
    }

    /// The pruner removed `count` more records of `kind` (`deliveries`, `events`).
    pub fn pruned(&self, kind: &'static str, count: u64) {
        let counter = self.pruned.get_or_create(&vec![("kind", kind.to_string())]);
        counter.inc_by(count);
    }

    /// A pruning pass ran to its end in `took`.
    pub fn pruning_pass(&self, took: Duration) {
        self.prune_passes.inc();
        self.prune_pass_duration.set(took.as_secs_f64());
    }

    /// `count` new events were acknowledged.
    pub fn events_accepted(&self, count: usize) {
        self.events_accepted.inc_by(count as u64);
    }

    /// A delivery of `webhook` ended; `latency` is from its creation when it was delivered.
    pub fn delivery_ended(&self, webhook: &str, ended: Ended, latency: Option<Duration>) {
        let labels = vec![
            ("webhook", webhook.to_string()),
            ("outcome", ended.label().to_string()),
        ];
        self.deliveries.get_or_create(&labels).inc();
        if let Some(latency) = latency {
            self.delivery_latency.observe(latency.as_secs_f64());
        }
    }

    /// Forgets a deleted webhook's series, so they do not pile up with webhooks created and
    /// deleted over time.
    pub fn forget_webhook(&self, webhook: &str) {
        for ended in [Ended::Delivered, Ended::Skipped, Ended::Failed, Ended::Dead] {
            self.deliveries.remove(&vec![
                ("webhook", webhook.to_string()),
                ("outcome", ended.label().to_string()),
            ]);
        }
    }

    /// Waits for this scrape's turn: one at a time. Returns the text of a scrape that ended
    /// after `since` when there is one (a caller that waited for it shares it).
    pub async fn scrape_turn(&self, since: Instant) -> Result<ScrapeTurn<'_>, String> {
        let last = self.last_scrape.lock().await;
        match &*last {
            Some((at, text)) if *at >= since => Err(text.clone()),
            _ => Ok(ScrapeTurn(last)),
        }
    }

    /// An HTTP attempt ended with `status` (`None`: no response) after `duration`.
    pub fn attempt(&self, status: Option<u16>, duration: Duration) {
        let class = match status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".to_string(),
        };
        self.attempts.get_or_create(&vec![("class", class)]).inc();
        self.attempt_duration.observe(duration.as_secs_f64());
    }

    /// A plugin evaluation took `took`, and hit `limit` if it names one.
    pub fn evaluated(&self, took: Duration, limit: Option<&'static str>) {
        self.evaluation_time.observe(took.as_secs_f64());
        if let Some(limit) = limit {
            self.limit_hits
                .get_or_create(&vec![("limit", limit.to_string())])
                .inc();
        }
    }

    /// The handle a storage engine times its calls with.
    pub fn storage_calls(&self) -> StorageCalls {
        self.storage.calls.clone()
    }

    /// The metrics as OpenMetrics text, with the gauges set to `gauges`.
    pub fn scrape(&self, gauges: &Gauges) -> String {
        let _one_at_a_time = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        self.queue_depth.set(int(gauges.queue_depth));
        self.oldest_due_age.set(gauges.oldest_due_age.as_secs_f64());
        self.in_flight.clear();
        for (endpoint, count) in &gauges.in_flight {
            self.in_flight
                .get_or_create(&vec![("endpoint", endpoint.clone())])
                .set(int(*count));
        }
        self.evaluations_running
            .set(int(gauges.evaluations_running));
        self.evaluations_waiting
            .set(int(gauges.evaluations_waiting));
        self.throttled_webhooks.set(int(gauges.throttled_webhooks));
        self.webhook_evaluation.clear();
        for (webhook, ms) in &gauges.webhook_evaluation_ms {
            self.webhook_evaluation
                .get_or_create(&vec![("webhook", webhook.clone())])
                .set(*ms);
        }
        self.store_bytes
            .set(i64::try_from(gauges.store_bytes).unwrap_or(i64::MAX));
        match gauges.free_bytes {
            Some(free) => {
                self.free_bytes
                    .get_or_create(&Vec::new())
                    .set(i64::try_from(free).unwrap_or(i64::MAX));
            }
            None => self.free_bytes.clear(),
        }
        self.storage.set(gauges.connections);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_writes_every_series_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.events_accepted(3);
        metrics.delivery_ended("wh_1", Ended::Delivered, Some(Duration::from_millis(20)));
        metrics.delivery_ended("wh_1", Ended::Dead, None);
        metrics.attempt(Some(204), Duration::from_millis(5));
        metrics.attempt(None, Duration::from_millis(5));
        metrics.evaluated(Duration::from_micros(40), Some("cpu"));
        let text = metrics.scrape(&Gauges {
            queue_depth: 7,
            in_flight: vec![("http://127.0.0.1:9".into(), 2)],
            webhook_evaluation_ms: vec![("wh_1".into(), 1.5)],
            store_bytes: 4096,
            free_bytes: Some(1 << 30),
            connections: None,
            ..Gauges::default()
        });
        for line in [
            "wasmhooks_events_accepted_total 3",
            "wasmhooks_deliveries_total{webhook=\"wh_1\",outcome=\"delivered\"} 1",
            "wasmhooks_deliveries_total{webhook=\"wh_1\",outcome=\"dead\"} 1",
            "wasmhooks_attempts_total{class=\"2xx\"} 1",
            "wasmhooks_attempts_total{class=\"error\"} 1",
            "wasmhooks_delivery_latency_seconds_count 1",
            "wasmhooks_plugin_evaluation_seconds_count 1",
            "wasmhooks_plugin_limit_hits_total{limit=\"cpu\"} 1",
            "wasmhooks_queue_depth 7",
            "wasmhooks_endpoint_in_flight{endpoint=\"http://127.0.0.1:9\"} 2",
            "wasmhooks_webhook_evaluation_ms_per_second{webhook=\"wh_1\"} 1.5",
            "wasmhooks_store_size_bytes 4096",
            "wasmhooks_store_free_bytes 1073741824",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // An endpoint with nothing in flight is gone from the next scrape.
        let text = metrics.scrape(&Gauges::default());
        assert!(!text.contains("127.0.0.1:9"), "{text}");
        // An engine that cannot see its disk shows no free space rather than none free.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("wasmhooks_store_free_bytes")),
            "{text}"
        );
    }
}
