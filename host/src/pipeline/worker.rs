//! The life of one delivery, under a claim: look at it (deleted webhook, paused, outside
//! its schedule, behind an earlier in-order delivery), evaluate the plugin once (its
//! requests are stored with the first round, so retries resend the same bytes and the
//! plugin never runs again), send every request not yet accepted, and write the outcome.
//!
//! A delivery keeps its queue entry until its new state is written: the new entry goes in
//! before the record and the old one comes out after it (in one transaction for in-order and
//! collecting deliveries), so a crash at any point leaves it queued (at-least-once).

use std::time::Duration;

use tokio::sync::watch;

use super::outcome;
use super::Pipeline;
use crate::fair_share::Admission;
use crate::metrics::Ended;
use crate::model::{Delivery, DeliveryId, DeliveryMode, DeliveryStatus, Millis};
use crate::storage::{Claim, StorageError};

/// How long a paused webhook's delivery waits before it is looked at again.
pub(super) const PAUSED_WAIT: Duration = Duration::from_secs(60);
/// How long an in-order delivery waits at least before it looks again at the delivery ahead.
const IN_ORDER_WAIT: Duration = Duration::from_millis(200);
/// Added to the longest a step of a delivery can take, for how long a claim lasts.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);

pub(super) fn plus(t: Millis, d: Duration) -> Millis {
    t.saturating_add(d)
}

impl Pipeline {
    /// Moves one delivery a step forward, under a claim: nothing is written for it unless
    /// the claim still holds. When `hand_back` turns true (shutdown), a request waiting for
    /// its answer is dropped and the delivery written as due again. The `admission` (see [`crate::fair_share::FairShare::admit`]) is given back once the
    /// plugin has run, or when it need not.
    pub(super) async fn process(
        &self,
        due: Millis,
        id: &DeliveryId,
        admission: Option<Admission>,
        hand_back: &mut watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let now = self.now();
        let until = plus(now, self.claim_for());
        let Some((claim, mut delivery)) = self.store.claim(id, due, self.holder, until, now)?
        else {
            // Gone, finished, moved on (its stale entry is dropped), or another holder's.
            return Ok(());
        };
        delivery.updated_at = now;
        let Some(webhook) = self.webhook_cached(&delivery.webhook_id) else {
            outcome::end(
                &mut delivery,
                DeliveryStatus::Failed,
                "the webhook was deleted".into(),
            );
            return self.finish_claimed(&claim, &delivery);
        };
        if delivery.tenant != webhook.tenant {
            // Moved to another tenant since: this delivery belongs to the old tenant's
            // history, and its event never goes to the new tenant's destination.
            outcome::end(
                &mut delivery,
                DeliveryStatus::Failed,
                "the webhook was moved to another tenant; this delivery was not sent".into(),
            );
            return self.finish_claimed(&claim, &delivery);
        }
        if self.held_back(&webhook) {
            delivery.next_attempt_at = Some(plus(now, PAUSED_WAIT));
            return self.finish_claimed(&claim, &delivery);
        }
        if let Some(schedule) = webhook.checked_schedule() {
            // Checked and compiled when the webhook was saved (or read at start).
            if let Some(opening) = schedule.next_opening(now) {
                delivery.next_attempt_at = Some(opening);
                return self.finish_claimed(&claim, &delivery);
            }
        }

        if let DeliveryMode::InOrder { .. } = delivery.mode() {
            if let Some(first) = self.store.first_in_line(&delivery)? {
                if first != delivery.id {
                    // An earlier delivery of the entity is unfinished: go after its next
                    // attempt (and look again soon while it is in flight).
                    let earlier = self.store.delivery(&first)?;
                    let after = earlier
                        .and_then(|d| d.next_attempt_at)
                        .map_or(now, |t| plus(t, Duration::from_millis(1)));
                    delivery.next_attempt_at = Some(after.max(plus(now, IN_ORDER_WAIT)));
                    return self.finish_claimed(&claim, &delivery);
                }
            }
        }
        if delivery.requests.is_none() {
            if delivery.mode().collects() && !self.store.close(&claim, &delivery)? {
                // A newer event changed it meanwhile; it is queued again as it is now.
                return Ok(());
            }
            match self.evaluate(&webhook, &mut delivery).await? {
                Some((requests, wrote_state)) => {
                    delivery.requests = Some(requests);
                    // When the evaluation changed plugin state, keep the built bytes before
                    // sending: after a crash the plugin would decide anew on state that
                    // already holds this event's change. Without state changes deciding
                    // again gives the same requests, and the write is saved.
                    if wrote_state && !self.store.finish(&claim, &delivery, true)? {
                        self.claim_lost(&delivery);
                        return Ok(());
                    }
                }
                None => return self.finish_claimed(&claim, &delivery),
            }
        }

        drop(admission);
        let round = self.send_round(&webhook, &mut delivery, hand_back).await;
        if delivery.status == DeliveryStatus::Delivered {
            // Emitted before the delivery is recorded as delivered, under an id made from
            // the delivery's: a crash in between resends, and the event is not doubled.
            self.emit_response_event(&webhook, &mut delivery).await?;
        }
        self.finish_claimed(&claim, &delivery)?;
        self.after_round(&webhook, &delivery, &round).await;
        Ok(())
    }

    /// Whether `webhook`'s deliveries wait: it is paused, or its tenant may no longer use
    /// its connection (the webhook's `waiting_reason` says so).
    pub(super) fn held_back(&self, webhook: &crate::model::Webhook) -> bool {
        !webhook.enabled || self.catalog.usable_connection(webhook).is_err()
    }

    /// How long a claim lasts: longer than a delivery's round can take (the plugin's time,
    /// then each request it may build, one after another, up to its timeout), with room to
    /// spare.
    pub(super) fn claim_for(&self) -> Duration {
        let limits = &self.config.plugin.max_limits;
        let requests = u32::try_from(limits.requests).unwrap_or(u32::MAX);
        CLAIM_MARGIN
            .saturating_add(limits.cpu_time)
            .saturating_add(self.config.delivery.timeout.saturating_mul(requests))
    }

    /// Writes a claimed delivery's new state and ends the claim.
    pub(super) fn finish_claimed(
        &self,
        claim: &Claim,
        delivery: &Delivery,
    ) -> Result<(), StorageError> {
        if !self.store.finish(claim, delivery, false)? {
            self.claim_lost(delivery);
            return Ok(());
        }
        let ended = match delivery.status {
            DeliveryStatus::Pending => return Ok(()),
            DeliveryStatus::Delivered => Ended::Delivered,
            DeliveryStatus::Skipped => Ended::Skipped,
            DeliveryStatus::Failed => Ended::Failed,
            DeliveryStatus::Dead => Ended::Dead,
        };
        let latency = (ended == Ended::Delivered).then(|| {
            let ms = self
                .now()
                .as_i64()
                .saturating_sub(delivery.created_at.as_i64());
            Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        });
        self.metrics
            .delivery_ended(delivery.webhook_id.as_str(), ended, latency);
        Ok(())
    }

    /// Another holder claimed the delivery after this one's claim lapsed: its work stands.
    pub(super) fn claim_lost(&self, delivery: &Delivery) {
        tracing::warn!(
            delivery = %delivery.id,
            "the claim lapsed and another holder took the delivery; this result is dropped"
        );
    }
}
