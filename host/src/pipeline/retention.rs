//! The pruner: a background task that removes finished deliveries and events once they are
//! past their retention (`retention.*`, and a webhook's own), every `retention.interval`.
//!
//! Each pass runs on a blocking thread in steps of `retention.batch` records (see
//! [`crate::storage::Pruning`]): deliveries first, then events, since a delivery's removal
//! is what lets its event go. A pass stops between two steps when the host shuts down;
//! nothing is lost by that, and the next start goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Pipeline;
use crate::model::{Millis, WebhookId};
use crate::storage::{Finished, StorageError};

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Deliveries removed, with their attempts and logs.
    pub deliveries: u64,
    /// Events removed.
    pub events: u64,
    /// Whether the pass ran to its end (not stopped by a shutdown).
    pub complete: bool,
}

/// How long the pruner waits after a pass that failed.
const AFTER_FAILURE: Duration = Duration::from_secs(30);

impl Pipeline {
    /// Prunes every `retention.interval` until `shutdown` turns true.
    pub async fn run_pruner(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = match self.clone().prune(shutdown.clone()).await {
                Ok(_) => self.config.retention.interval,
                Err(e) => {
                    tracing::error!("pruning failed: {e}");
                    AFTER_FAILURE
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One pass of the pruner, now (on a blocking thread); `shutdown` turning true stops it
    /// between two steps.
    ///
    /// # Errors
    /// On storage failure (what was removed before it stays removed).
    pub async fn prune(
        self: Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<PruneReport, StorageError> {
        tokio::task::spawn_blocking(move || self.prune_blocking(&shutdown))
            .await
            .expect("a pruning pass does not panic")
    }

    fn prune_blocking(
        &self,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<PruneReport, StorageError> {
        let started = Instant::now();
        let retention = &self.config.retention;
        let stopped = |_: u64| *shutdown.borrow();
        let mut report = PruneReport::default();
        if !self.store.prepare_pruning(&stopped)? {
            return Ok(report);
        }
        let now = self.now();
        let cutoff = |webhook: &WebhookId, finished: Finished| -> Option<Millis> {
            let own = self.webhook_cached(webhook).map(|w| w.retention.clone());
            let keep = match finished {
                Finished::Succeeded => own.and_then(|r| r.delivered).unwrap_or(retention.delivered),
                Finished::Failed => own.and_then(|r| r.failed).unwrap_or(retention.failed),
            };
            keep.cutoff(now)
        };
        // Asked between steps: counts what was removed since the last step, and stops on
        // shutdown.
        let stepper = |kind: &'static str| {
            let counted = AtomicU64::new(0);
            move |removed: u64| {
                let before = counted.swap(removed, Ordering::Relaxed);
                self.metrics.pruned(kind, removed.saturating_sub(before));
                *shutdown.borrow()
            }
        };
        let step = stepper("deliveries");
        report.deliveries = self
            .store
            .prune_deliveries(&cutoff, retention.batch, &step)?;
        if step(report.deliveries) {
            return Ok(report);
        }
        if let Some(before) = retention.events.cutoff(now) {
            let step = stepper("events");
            report.events = self.store.prune_events(before, retention.batch, &step)?;
            step(report.events);
        }
        report.complete = !*shutdown.borrow();
        if report.complete {
            self.metrics.pruning_pass(started.elapsed());
        }
        if report.deliveries + report.events > 0 {
            tracing::debug!(
                deliveries = report.deliveries,
                events = report.events,
                took_ms = started.elapsed().as_millis() as u64,
                "pruned"
            );
        }
        Ok(report)
    }
}
