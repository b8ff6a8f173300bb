//! What the host shows a monitoring system: the metrics the flow moves, and the gauges read
//! from it when `GET /metrics` is scraped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Pipeline;
use crate::metrics::{Gauges, Metrics};
use crate::model::Millis;
use crate::storage::QueueFrom;

/// How long a count of the queue is shared.
const QUEUE_COUNT_FRESH: Duration = Duration::from_secs(1);

impl Pipeline {
    /// The metrics the flow moves.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics as OpenMetrics text, with the gauges read now. The reading (the queue's
    /// length, the data directory's size) runs on a blocking thread, one scrape at a time;
    /// callers that waited for a scrape share its text.
    pub async fn scrape_metrics(self: &Arc<Self>) -> String {
        let turn = match self.metrics.scrape_turn(Instant::now()).await {
            Ok(turn) => turn,
            Err(shared) => return shared,
        };
        let this = self.clone();
        let text = tokio::task::spawn_blocking(move || this.metrics.scrape(&this.gauges()))
            .await
            .expect("a scrape does not panic");
        turn.done(&text);
        text
    }

    /// How many deliveries are queued. Counting walks the queue, so it runs on a blocking
    /// thread, one count at a time, and a count under a second old is shared.
    pub async fn queue_depth(self: &Arc<Self>) -> usize {
        let mut last = self.queue_count.lock().await;
        if let Some((at, count)) = *last {
            if at.elapsed() < QUEUE_COUNT_FRESH {
                return count;
            }
        }
        let this = self.clone();
        let count = tokio::task::spawn_blocking(move || this.store.queue_len())
            .await
            .expect("counting the queue does not panic");
        *last = Some((Instant::now(), count));
        count
    }

    /// The gauges as they are now. Blocking.
    fn gauges(&self) -> Gauges {
        let now = self.now();
        // The earliest due delivery that is not in flight (one in flight keeps its entry
        // until its step is written): how far behind the host is.
        let in_flight = self.in_flight.lock().unwrap().clone();
        let oldest_due_age = self
            .store
            .due_from(QueueFrom::Due(Millis::EARLIEST))
            .take(in_flight.len() + 1)
            .filter_map(Result::ok)
            .map(|entry| entry.position)
            .find(|position| !in_flight.contains_key(&position.id))
            .filter(|position| position.due < now)
            .map_or(Duration::ZERO, |position| {
                let behind = now.as_i64() - position.due.as_i64();
                Duration::from_millis(u64::try_from(behind).unwrap_or(0))
            });
        let summary = self.fair.summary();
        Gauges {
            queue_depth: self.store.queue_len(),
            oldest_due_age,
            in_flight: self.endpoints.all_in_flight(),
            evaluations_running: summary.running,
            evaluations_waiting: summary.waiting,
            throttled_webhooks: summary.throttled_webhooks,
            webhook_evaluation_ms: self
                .fair
                .usages()
                .into_iter()
                .map(|u| (u.webhook_id.to_string(), u.cpu_ms_per_second))
                .collect(),
            store_bytes: self
                .store
                .stored_bytes()
                .unwrap_or_else(|| size_of(&self.config.data_dir)),
            free_bytes: Some(self.store.space_status().free).filter(|free| *free != u64::MAX),
            connections: self.store.database_connections(),
        }
    }
}

/// Bytes of the files under `dir` (what cannot be read counts nothing).
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => size_of(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
