//! Evaluation: running a webhook's plugin on its delivery's event (or batch) once, and
//! building the requests it decided on.

use std::sync::Arc;

use tracing::Instrument;

use super::outcome::{self};
use super::worker::{plus, PAUSED_WAIT};
use super::{payer_of, request, to_wit_event, Pipeline};
use crate::fair_share::Turn;
use crate::model::{Delivery, DeliveryStatus, Invalid, OutboundRequest, Webhook};
use crate::runtime::{wit, Answer, Call, Evaluation, LoadedPlugin, PluginContext, QuickSlot};
use crate::storage::StorageError;

impl Pipeline {
    /// Runs the plugin on the delivery's event. Returns the built requests, or `None` when the
    /// delivery ended here (skipped or failed; its status says which) or waits again (its
    /// webhook was disabled while it waited for its turn).
    pub(super) async fn evaluate(
        &self,
        webhook: &Webhook,
        delivery: &mut Delivery,
    ) -> Result<Option<(Vec<OutboundRequest>, bool)>, StorageError> {
        let call = if delivery.batch_events.is_empty() {
            let tenant = delivery.events_tenant();
            let Some(event) = self.store.event(tenant, &delivery.event_id)? else {
                outcome::end(
                    delivery,
                    DeliveryStatus::Failed,
                    "the event is missing".into(),
                );
                return Ok(None);
            };
            Call::Event(to_wit_event(&event))
        } else {
            let mut events = Vec::with_capacity(delivery.batch_events.len());
            for id in &delivery.batch_events {
                let Some(event) = self.store.event(delivery.events_tenant(), id)? else {
                    outcome::end(
                        delivery,
                        DeliveryStatus::Failed,
                        format!("event {id} of the batch is missing"),
                    );
                    return Ok(None);
                };
                events.push(to_wit_event(&event));
            }
            Call::Batch(events)
        };
        let module = &webhook.module_id;
        let plugin = match self.plugin(module) {
            Ok(plugin) => plugin,
            Err(e) => {
                outcome::end(
                    delivery,
                    DeliveryStatus::Failed,
                    format!("loading module {module}: {e}"),
                );
                return Ok(None);
            }
        };
        let turn = self.turn_for(webhook, &plugin).await;
        if turn.0.is_none() {
            // The host is stopping: the next start evaluates it.
            delivery.next_attempt_at = Some(self.now());
            return Ok(None);
        }
        // The webhook as it is after the wait: disabled, deleted, moved to another tenant or
        // its connection withdrawn meanwhile, the delivery waits like a paused webhook's.
        let fresh = match self.webhook_cached(&webhook.id) {
            Some(w) if w.tenant == delivery.tenant && !self.held_back(&w) => w,
            _ => {
                delivery.next_attempt_at = Some(plus(self.now(), PAUSED_WAIT));
                return Ok(None);
            }
        };
        let webhook: &Webhook = &fresh;
        let ctx = self.plugin_context(webhook);
        let judged = judges_webhook(webhook, delivery);
        let evaluation = self
            .run_in(turn, judged, webhook, plugin, ctx, call)
            .instrument(plugin_span(webhook, delivery, "event"))
            .await;
        self.keep_state(webhook, &evaluation);
        let wrote_state = evaluation.result.is_ok() && !evaluation.state_changes.is_empty();
        delivery.logs = evaluation.logs;
        match evaluation.result {
            Err(e) => {
                outcome::end(delivery, DeliveryStatus::Failed, e.to_string());
                Ok(None)
            }
            Ok(Answer::Verdict(_)) => {
                outcome::end(
                    delivery,
                    DeliveryStatus::Failed,
                    "plugin answered a verdict to an event".into(),
                );
                Ok(None)
            }
            Ok(Answer::Decision(wit::Decision::Skip(reason))) => {
                delivery.skip_reason = Some(reason);
                delivery.status = DeliveryStatus::Skipped;
                delivery.next_attempt_at = None;
                Ok(None)
            }
            Ok(Answer::Decision(wit::Decision::Send(requests))) => {
                if requests.is_empty() {
                    delivery.skip_reason = Some("the plugin sent no requests".into());
                    delivery.status = DeliveryStatus::Skipped;
                    delivery.next_attempt_at = None;
                    return Ok(None);
                }
                let built: Result<Vec<_>, Invalid> =
                    self.catalog.target(webhook).and_then(|target| {
                        requests
                            .into_iter()
                            .enumerate()
                            .map(|(i, r)| request::build(&target, &delivery.id, i, r))
                            .collect()
                    });
                match built {
                    Ok(built) => Ok(Some((built, wrote_state))),
                    Err(e) => {
                        outcome::end(delivery, DeliveryStatus::Failed, e.0);
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Evaluates in one of `webhook`'s fair turns (see [`Pipeline::turn_for`]). The turn's
    /// time is charged to the webhook and its tenant; a webhook whose evaluations keep hitting
    /// a limit is disabled.
    pub(super) async fn run_plugin(
        &self,
        webhook: &Webhook,
        delivery: &Delivery,
        plugin: Arc<LoadedPlugin>,
        ctx: PluginContext,
        call: Call,
    ) -> Evaluation {
        let turn = self.turn_for(webhook, &plugin).await;
        let judged = judges_webhook(webhook, delivery);
        self.run_in(turn, judged, webhook, plugin, ctx, call)
            .instrument(plugin_span(webhook, delivery, "response"))
            .await
    }

    /// A turn to evaluate `plugin` for `webhook` (see [`crate::fair_share`]): when the plugin
    /// has proven quick, a turn beside the counted ones with a slot on this thread (see
    /// [`crate::runtime::Runtime::quick_slot`]); else a counted turn, after waiting for it.
    /// No turn while the host stops.
    async fn turn_for(
        &self,
        webhook: &Webhook,
        plugin: &LoadedPlugin,
    ) -> (Option<Turn>, Option<QuickSlot<'_>>) {
        let payer = payer_of(webhook);
        if plugin.is_quick() {
            if let Some(turn) = self.fair.quick_turn(&payer) {
                if let Some(slot) = self.runtime.quick_slot(plugin) {
                    return (Some(turn), Some(slot));
                }
            }
        }
        (self.fair.turn(&payer).await, None)
    }

    /// Evaluates in `turn` (without one while the host stops): on this thread with a quick
    /// slot, else on a blocking thread, which ends the turn as soon as the plugin returns.
    /// A `judged` evaluation's limit hit counts towards its webhook's streak.
    async fn run_in(
        &self,
        (turn, slot): (Option<Turn>, Option<QuickSlot<'_>>),
        judged: bool,
        webhook: &Webhook,
        plugin: Arc<LoadedPlugin>,
        ctx: PluginContext,
        call: Call,
    ) -> Evaluation {
        let (evaluation, streak) = match slot {
            Some(slot) => {
                let evaluation = self.runtime.evaluate_quick(slot, &plugin, ctx, call);
                let streak = end_turn(turn, &evaluation, judged);
                (evaluation, streak)
            }
            None => {
                let runtime = self.runtime.clone();
                tokio::task::spawn_blocking(move || {
                    let mut turn = turn;
                    // Charged from here: the hand-over to this thread is the host's, not
                    // the plugin's.
                    if let Some(turn) = &mut turn {
                        turn.begin();
                    }
                    let evaluation = runtime.evaluate(&plugin, ctx, call);
                    let streak = end_turn(turn, &evaluation, judged);
                    (evaluation, streak)
                })
                .await
                .expect("plugin evaluation does not panic")
            }
        };
        self.metrics.evaluated(
            std::time::Duration::from_micros(evaluation.cost.wall_us),
            limit_hit(&evaluation).and_then(|e| e.limit()),
        );
        if let Some(error) = limit_hit(&evaluation).filter(|_| judged) {
            self.after_limit_hit(webhook, streak, error).await;
        }
        evaluation
    }
}

/// The span of one plugin call: its webhook, module and delivery, and what it was called
/// on (`event`, `response`).
fn plugin_span(webhook: &Webhook, delivery: &Delivery, call: &'static str) -> tracing::Span {
    tracing::info_span!(
        "wasmhooks.plugin",
        webhook = %webhook.id,
        module = %webhook.module_id,
        delivery = %delivery.id,
        call,
    )
}

/// The sandbox limit an evaluation hit, if any.
fn limit_hit(evaluation: &Evaluation) -> Option<&crate::runtime::PluginError> {
    evaluation
        .result
        .as_ref()
        .err()
        .filter(|e| e.limit().is_some())
}

/// Ends an evaluation's turn; returns its webhook's limit hits in a row.
fn end_turn(turn: Option<Turn>, evaluation: &Evaluation, judged: bool) -> u32 {
    let hit = limit_hit(evaluation).is_some();
    match turn {
        Some(turn) if judged => turn.finish(hit),
        Some(turn) => {
            turn.finish_unjudged(hit);
            0
        }
        None => 0,
    }
}

/// Whether an evaluation for `delivery` judges its webhook: counts towards the streak of
/// limit hits that backs the webhook off and disables it. Not when a webhook serving every
/// tenant evaluates one tenant's events: that tenant could otherwise slow or switch off the
/// webhook for all the others with events its plugin chokes on.
fn judges_webhook(webhook: &Webhook, delivery: &Delivery) -> bool {
    webhook.tenant.is_some() || delivery.events_tenant().is_none()
}
