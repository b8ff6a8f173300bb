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
use crate::catalog::CachedWebhook;
use crate::model::{Keep, Millis, Webhook, WebhookId};
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
/// The longest pause between two steps of a pass (see `Pacer`).
const MAX_PAUSE: Duration = Duration::from_millis(100);

impl Pipeline {
    /// Prunes every `retention.interval` (the first pass one interval after the start, so
    /// it does not compete with the work a start finds) until `shutdown` turns true.
    pub async fn run_pruner(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut wait = self.config.retention.interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            wait = match self.clone().prune(shutdown.clone()).await {
                Ok(_) => self.config.retention.interval,
                Err(e) => {
                    tracing::error!("pruning failed: {e}");
                    AFTER_FAILURE
                }
            };
        }
    }

    /// One pass of the pruner, now (on a blocking thread); `shutdown` turning true stops it
    /// between two steps.
    ///
    /// # Errors
    /// On storage failure (what was removed before it stays removed), or when the pass
    /// panicked.
    pub async fn prune(
        self: Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<PruneReport, StorageError> {
        match tokio::task::spawn_blocking(move || self.prune_blocking(&shutdown)).await {
            Ok(report) => report,
            Err(panicked) => Err(StorageError::Record {
                source: format!("the pruning pass panicked: {panicked}").into(),
            }),
        }
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
        let cutoff = |webhook: &WebhookId, finished: Finished| self.cutoff(webhook, finished, now);
        let step = Pacer::new(self, "deliveries", shutdown);
        let step = |removed| step.step(removed);
        report.deliveries =
            self.store
                .prune_deliveries(&cutoff, self.shortest_keep(), retention.batch, &step)?;
        if step(report.deliveries) {
            return Ok(report);
        }
        // Not while a backup copies: a delivery it copied as pending must find its events.
        if let Some(before) = retention.events.cutoff(now) {
            let step = Pacer::new(self, "events", shutdown);
            let step = |removed| step.step(removed) || self.backing_up.load(Ordering::Acquire);
            if !step(0) {
                report.events = self.store.prune_events(before, retention.batch, &step)?;
                step(report.events);
            }
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

    /// Before when `webhook`'s deliveries that ended so must have finished to be pruned at
    /// `now`: its own retention, or the host's; a tenant's webhook never keeps them longer
    /// than the host does (the host's setting may have been lowered since it was saved).
    fn cutoff(&self, webhook: &WebhookId, finished: Finished, now: Millis) -> Option<Millis> {
        let webhook = self.webhook_cached(webhook);
        self.keep(webhook.as_deref().map(CachedWebhook::webhook), finished)
            .cutoff(now)
    }

    /// How long `webhook`'s deliveries that ended so are kept (the host's when it is gone).
    fn keep(&self, webhook: Option<&Webhook>, finished: Finished) -> Keep {
        let retention = &self.config.retention;
        let host = match finished {
            Finished::Succeeded => retention.delivered,
            Finished::Failed => retention.failed,
        };
        let Some(webhook) = webhook else {
            return host;
        };
        let own = match finished {
            Finished::Succeeded => webhook.retention.delivered,
            Finished::Failed => webhook.retention.failed,
        };
        match (own, &webhook.tenant) {
            (Some(own), Some(_)) => own.min(host),
            (Some(own), None) => own,
            (None, _) => host,
        }
    }

    /// The shortest time any finished delivery is kept now (`None`: all for ever).
    fn shortest_keep(&self) -> Option<Duration> {
        let webhooks = self.catalog.webhooks_cached();
        let owners = std::iter::once(None).chain(webhooks.iter().map(|w| Some(w.webhook())));
        owners
            .flat_map(|w| [Finished::Succeeded, Finished::Failed].map(|f| self.keep(w, f)))
            .filter_map(|keep| match keep {
                Keep::For(d) => Some(d),
                Keep::Forever => None,
            })
            .min()
    }
}

/// Asked between two steps of a walk: counts what was removed since the last step, pauses
/// as long as the step took (at most [`MAX_PAUSE`]) so a pass takes at most about half of a
/// core, and says to stop on shutdown.
struct Pacer<'a> {
    pipeline: &'a Pipeline,
    kind: &'static str,
    shutdown: &'a watch::Receiver<bool>,
    counted: AtomicU64,
    last: std::sync::Mutex<Instant>,
}

impl<'a> Pacer<'a> {
    fn new(
        pipeline: &'a Pipeline,
        kind: &'static str,
        shutdown: &'a watch::Receiver<bool>,
    ) -> Self {
        Pacer {
            pipeline,
            kind,
            shutdown,
            counted: AtomicU64::new(0),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn step(&self, removed: u64) -> bool {
        let before = self.counted.swap(removed, Ordering::Relaxed);
        self.pipeline
            .metrics
            .pruned(self.kind, removed.saturating_sub(before));
        if *self.shutdown.borrow() {
            return true;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::sleep(last.elapsed().min(MAX_PAUSE));
        *last = Instant::now();
        *self.shutdown.borrow()
    }
}
