//! The life of one delivery, under a claim: look at it (deleted webhook, paused, outside
//! its schedule, behind an earlier in-order delivery), evaluate the plugin once (its
//! requests are stored with the first round, so retries resend the same bytes and the
//! plugin never runs again), send every request not yet accepted, and write the outcome.
//!
//! A delivery keeps its queue entry until its new state is written: the new entry goes in
//! before the record and the old one comes out after it (in one transaction for in-order and
//! collecting deliveries), so a crash at any point leaves it queued (at-least-once).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::outcome::{self, Round, Verdict};
use super::{CachedWebhook, Pipeline};
use crate::fair_share::Admission;
use crate::metrics::Ended;
use crate::model::{Delivery, DeliveryId, DeliveryMode, DeliveryStatus, Event, Millis, Webhook};
use crate::runtime::StateChange;
use crate::storage::{Claim, Claimed, Conflict, Outcome, StateWrite, StorageError};

/// How long a paused webhook's delivery waits before it is looked at again.
pub(super) const PAUSED_WAIT: Duration = Duration::from_secs(60);
/// How long an in-order delivery waits at least before it looks again at the delivery ahead.
const IN_ORDER_WAIT: Duration = Duration::from_millis(200);
/// How long a claim lasts unless renewed: a host that dies lets go of its deliveries after
/// this long.
pub(super) const LEASE: Duration = Duration::from_secs(30);
/// How often a claim in use is renewed: well within [`LEASE`], so a slow renewal or two
/// never lets it lapse.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// A round sent and written: what [`Pipeline::after_round`] needs.
struct Sent {
    webhook: Arc<CachedWebhook>,
    delivery: Delivery,
    round: Round,
}

pub(super) fn plus(t: Millis, d: Duration) -> Millis {
    t.saturating_add(d)
}

impl Pipeline {
    /// Moves one delivery a step forward, under a claim renewed while the step runs: nothing
    /// is written for it unless the claim still holds and the delivery is as it was read.
    /// When `hand_back` turns true (shutdown), a request waiting for its answer is dropped and
    /// the delivery written as due again. The `admission` (see
    /// [`crate::fair_share::FairShare::admit`]) is given back once the plugin has run, or when
    /// it need not. The place at its `endpoint` is let go (taken out) once its requests are
    /// answered: writing the outcome holds no receiver's place.
    pub(super) async fn process(
        &self,
        claimed: Claimed,
        admission: Option<Admission>,
        hand_back: &mut watch::Receiver<bool>,
        endpoint: &mut Option<Arc<str>>,
    ) -> Result<(), StorageError> {
        let Claimed {
            claim,
            delivery,
            event,
        } = claimed;
        let id = &claim.id;
        let work = self.work(&claim, delivery, event, admission, hand_back, endpoint);
        match self.renewing(&claim, work).await {
            Ok(Some(sent)) => {
                // After the claim ended: what the round means for its webhook.
                self.after_round(&sent.webhook, &sent.delivery, &sent.round)
                    .await;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(StorageError::Conflict(conflict)) => {
                self.refused(id, conflict);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `work`, renewing `claim` every [`RENEW_EVERY`]; stops it when the claim is lost.
    async fn renewing<T>(
        &self,
        claim: &Claim,
        work: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let mut work = std::pin::pin!(work);
        let start = tokio::time::Instant::now() + RENEW_EVERY;
        let mut renew = tokio::time::interval_at(start, RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                _ = renew.tick() => self.store.renew(claim, plus(self.now(), LEASE))?,
            }
        }
    }

    /// The step itself: look, evaluate once (its requests are stored with the first round,
    /// so retries resend the same bytes), send what is not yet accepted, write the outcome.
    /// Returns the round sent, for what follows from it once the claim has ended.
    async fn work(
        &self,
        claim: &Claim,
        mut delivery: Delivery,
        event: Option<Event>,
        admission: Option<Admission>,
        hand_back: &mut watch::Receiver<bool>,
        endpoint: &mut Option<Arc<str>>,
    ) -> Result<Option<Sent>, StorageError> {
        delivery.updated_at = self.now();
        let webhook = match self.look(&delivery)? {
            Ok(webhook) => webhook,
            Err(verdict) => {
                return self
                    .conclude(claim, delivery, None, verdict, Vec::new())
                    .map(|()| None)
            }
        };
        if delivery.requests.is_none() {
            if delivery.mode().collects() && !self.store.close(claim, &delivery)? {
                // A newer event changed it meanwhile; it is queued again as it is now.
                return Ok(None);
            }
            let evaluated = self.evaluate(&webhook, &delivery, event).await?;
            if let Some(logs) = evaluated.logs {
                delivery.logs = logs;
            }
            let Verdict::Send(requests) = evaluated.verdict else {
                let webhook = Some(&**webhook);
                let (verdict, state) = (evaluated.verdict, evaluated.state);
                return self
                    .conclude(claim, delivery, webhook, verdict, state)
                    .map(|()| None);
            };
            delivery.requests = Some(requests);
            // When the evaluation changed plugin state, keep the built bytes with it before
            // sending: after a crash the plugin would decide anew on state that already holds
            // this event's change. Without state changes deciding again gives the same
            // requests, and the write is saved.
            if !evaluated.state.is_empty() {
                self.write_outcome(claim, &mut delivery, &webhook, &evaluated.state, true)?;
            }
        }
        drop(admission);
        let mut state = Vec::new();
        let round = self
            .send_round(&webhook, &mut delivery, &mut state, hand_back)
            .await;
        // Nothing more goes to the receiver in this step: its place is free for the next.
        if let Some(endpoint) = endpoint.take() {
            self.endpoints.finish(&endpoint);
            self.wake.notify_one();
        }
        if delivery.status == DeliveryStatus::Delivered {
            // Emitted before the delivery is recorded as delivered, under an id made from
            // the delivery's: a crash in between resends, and the event is not doubled.
            self.emit_response_event(&webhook, &mut delivery).await?;
        }
        self.write_outcome(claim, &mut delivery, &webhook, &state, false)?;
        Ok(Some(Sent {
            webhook,
            delivery,
            round,
        }))
    }

    /// Looks at a claimed delivery before its plugin runs: its webhook, or why it is not
    /// sent now (the webhook was deleted or moved to another tenant, is paused or held back,
    /// outside its schedule, or an earlier in-order delivery of the entity is unfinished).
    fn look(
        &self,
        delivery: &Delivery,
    ) -> Result<Result<Arc<CachedWebhook>, Verdict>, StorageError> {
        let now = delivery.updated_at;
        let Some(webhook) = self.catalog.webhook_read_through(&delivery.webhook_id)? else {
            return Ok(Err(Verdict::Fail("the webhook was deleted".into())));
        };
        if delivery.tenant != webhook.tenant {
            // Moved to another tenant since: this delivery belongs to the old tenant's
            // history, and its event never goes to the new tenant's destination.
            let why = "the webhook was moved to another tenant; this delivery was not sent";
            return Ok(Err(Verdict::Fail(why.into())));
        }
        if self.held_back(&webhook) {
            return Ok(Err(Verdict::WaitUntil(plus(now, PAUSED_WAIT))));
        }
        if let Some(schedule) = webhook.checked_schedule() {
            // Checked and compiled when the webhook was saved (or read at start).
            if let Some(opening) = schedule.next_opening(now) {
                return Ok(Err(Verdict::WaitUntil(opening)));
            }
        }
        if let Some(after) = self.behind_in_line(delivery, now)? {
            return Ok(Err(Verdict::WaitUntil(after)));
        }
        Ok(Ok(webhook))
    }

    /// For an in-order delivery behind an unfinished earlier one of its entity: when to look
    /// again (after the earlier one's next attempt, and soon while it is in flight).
    fn behind_in_line(
        &self,
        delivery: &Delivery,
        now: Millis,
    ) -> Result<Option<Millis>, StorageError> {
        let DeliveryMode::InOrder { .. } = delivery.mode() else {
            return Ok(None);
        };
        match self.store.first_in_line(delivery)? {
            Some(first) if first != delivery.id => {
                let earlier = self.store.delivery(&first)?;
                let after = earlier
                    .and_then(|d| d.next_attempt_at)
                    .map_or(now, |t| plus(t, Duration::from_millis(1)));
                Ok(Some(after.max(plus(now, IN_ORDER_WAIT))))
            }
            _ => Ok(None),
        }
    }

    /// Ends a step before sending, with `verdict` and the plugin state its evaluation
    /// changed (of `webhook`, when the plugin ran).
    fn conclude(
        &self,
        claim: &Claim,
        mut delivery: Delivery,
        webhook: Option<&Webhook>,
        verdict: Verdict,
        state: Vec<StateChange>,
    ) -> Result<(), StorageError> {
        outcome::apply(&mut delivery, verdict);
        match webhook {
            Some(webhook) => self.write_outcome(claim, &mut delivery, webhook, &state, false),
            None => self.finish(claim, &mut delivery, None, false),
        }
    }

    /// Whether `webhook`'s deliveries wait: it is paused, or its tenant may no longer use
    /// its connection (the webhook's `waiting_reason` says so).
    pub(super) fn held_back(&self, webhook: &crate::model::Webhook) -> bool {
        !webhook.enabled || self.catalog.usable_connection(webhook).is_err()
    }

    /// Writes a claimed delivery's new state with `webhook`'s plugin state changes, all or
    /// nothing; ends the claim unless `keep` (a save midway). The state is dropped when the
    /// webhook moved to another tenant since its evaluation began.
    fn write_outcome(
        &self,
        claim: &Claim,
        delivery: &mut Delivery,
        webhook: &Webhook,
        state: &[StateChange],
        keep: bool,
    ) -> Result<(), StorageError> {
        if state.is_empty() {
            return self.finish(claim, delivery, None, keep);
        }
        // Held while written: the webhook cannot move to another tenant meanwhile.
        let Some(_unmoved) = self.catalog.state_keeping(webhook) else {
            tracing::info!(webhook = %webhook.id, "plugin state not kept: the webhook was deleted or moved to another tenant during the evaluation");
            return self.finish(claim, delivery, None, keep);
        };
        let state = StateWrite {
            webhook: &webhook.id,
            tenant: webhook.tenant.as_deref(),
            changes: state,
        };
        self.finish(claim, delivery, Some(state), keep)
    }

    /// Writes a claimed delivery's new state (see [`crate::storage::Deliveries::finish`]) and
    /// counts it when it ended.
    fn finish(
        &self,
        claim: &Claim,
        delivery: &mut Delivery,
        state: Option<StateWrite<'_>>,
        keep: bool,
    ) -> Result<(), StorageError> {
        self.store.finish(
            claim,
            Outcome {
                delivery,
                state,
                keep,
            },
        )?;
        if !keep {
            self.count_ended(delivery);
        }
        Ok(())
    }

    /// Counts a delivery that ended, with its latency when delivered.
    fn count_ended(&self, delivery: &Delivery) {
        let ended = match delivery.status {
            DeliveryStatus::Pending => return,
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
    }

    /// A write for delivery `id` was refused: its work is dropped, and what is stored stands.
    fn refused(&self, id: &DeliveryId, conflict: Conflict) {
        match conflict {
            Conflict::ClaimLost => tracing::warn!(
                delivery = %id,
                "the claim lapsed and another holder took the delivery; this result is dropped"
            ),
            Conflict::Changed => tracing::info!(
                delivery = %id,
                "the delivery changed since it was read (a newer event); it goes on as stored"
            ),
        }
    }
}
