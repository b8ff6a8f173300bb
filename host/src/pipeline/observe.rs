//! What the host shows a monitoring system: the metrics the flow moves, and the gauges read
//! from it when `GET /metrics` is scraped.

use std::ops::Bound;
use std::path::Path;
use std::time::Duration;

use super::Pipeline;
use crate::metrics::{Gauges, Metrics};

impl Pipeline {
    /// The metrics the flow moves.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics as OpenMetrics text, with the gauges read now. The data directory's size
    /// is measured on a blocking thread.
    pub async fn scrape_metrics(&self) -> String {
        let now = self.now();
        let oldest_due_age = match self.store.due_from(Bound::Unbounded).next() {
            Some(Ok(entry)) if entry.due < now => {
                Duration::from_millis(u64::try_from(now.as_i64() - entry.due.as_i64()).unwrap_or(0))
            }
            _ => Duration::ZERO,
        };
        let summary = self.fair.summary();
        let dir = self.config.data_dir.clone();
        let store_bytes = tokio::task::spawn_blocking(move || size_of(&dir))
            .await
            .unwrap_or(0);
        let gauges = Gauges {
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
            store_bytes,
            free_bytes: self.store.space_status().free,
        };
        self.metrics.scrape(&gauges)
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
