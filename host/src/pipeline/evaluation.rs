//! Evaluation: running a webhook's plugin on its delivery's event (or batch) once, and
//! building the requests it decided on.

use std::sync::Arc;

use tracing::Instrument;

use super::outcome::Verdict;
use super::worker::{plus, PAUSED_WAIT};
use super::{payer_of, request, to_wit_event, Pipeline};
use crate::fair_share::Turn;
use crate::model::{Delivery, Event, Invalid, LogLine, Webhook};
use crate::runtime::{
    wit, Answer, Call, Evaluation, LoadedPlugin, PluginContext, PluginError, QuickSlot, StateChange,
};
use crate::storage::StorageError;

/// An evaluation's verdict, with what else it left.
pub(super) struct Evaluated {
    /// What it decided.
    pub verdict: Verdict,
    /// Plugin state changes, written with the delivery's outcome (none when the plugin
    /// failed or did not run).
    pub state: Vec<StateChange>,
    /// The plugin's log lines (`None`: it did not run).
    pub logs: Option<Vec<LogLine>>,
}

impl Evaluated {
    /// A verdict reached without running the plugin.
    fn without_plugin(verdict: Verdict) -> Evaluated {
        Evaluated {
            verdict,
            state: Vec::new(),
            logs: None,
        }
    }
}

impl Pipeline {
    /// Runs the plugin on the delivery's event (or batch) in one of its webhook's fair turns,
    /// and builds the requests it decided on. Waits again when the host stops meanwhile, or
    /// when the webhook was paused, moved or lost its connection while waiting for its turn.
    pub(super) async fn evaluate(
        &self,
        webhook: &Webhook,
        delivery: &Delivery,
        event: Option<Event>,
    ) -> Result<Evaluated, StorageError> {
        let call = match self.call_for(delivery, event)? {
            Ok(call) => call,
            Err(why) => return Ok(Evaluated::without_plugin(Verdict::Fail(why))),
        };
        let module = &webhook.module_id;
        let plugin = match self.plugin(module) {
            Ok(plugin) => plugin,
            Err(e) => {
                let why = format!("loading module {module}: {e}");
                return Ok(Evaluated::without_plugin(Verdict::Fail(why)));
            }
        };
        let turn = self.turn_for(webhook, &plugin).await;
        if turn.0.is_none() {
            // The host is stopping: the next start evaluates it.
            return Ok(Evaluated::without_plugin(Verdict::WaitUntil(self.now())));
        }
        // The webhook as it is after the wait: disabled, deleted, moved to another tenant or
        // its connection withdrawn meanwhile, the delivery waits like a paused webhook's.
        let fresh = match self.webhook_cached(&webhook.id) {
            Some(w) if w.tenant == delivery.tenant && !self.held_back(&w) => w,
            _ => {
                let again = plus(self.now(), PAUSED_WAIT);
                return Ok(Evaluated::without_plugin(Verdict::WaitUntil(again)));
            }
        };
        let webhook: &Webhook = &fresh;
        let ctx = self.plugin_context(webhook);
        let judged = judges_webhook(webhook, delivery);
        let evaluation = self
            .run_in(turn, judged, webhook, plugin, ctx, call)
            .instrument(plugin_span(webhook, delivery, "event"))
            .await;
        let state = if evaluation.result.is_ok() {
            evaluation.state_changes
        } else {
            Vec::new()
        };
        Ok(Evaluated {
            verdict: self.verdict_of(webhook, delivery, evaluation.result),
            state,
            logs: Some(evaluation.logs),
        })
    }

    /// What the plugin is called on: the delivery's event (read with its claim, or now), or
    /// its batch's. `Err` names one that is missing.
    fn call_for(
        &self,
        delivery: &Delivery,
        event: Option<Event>,
    ) -> Result<Result<Call, String>, StorageError> {
        let tenant = delivery.events_tenant();
        if delivery.batch_events.is_empty() {
            let event = match event.filter(|e| e.id == delivery.event_id) {
                Some(event) => Some(event),
                None => self.store.event(tenant, &delivery.event_id)?,
            };
            return Ok(match event {
                Some(event) => Ok(Call::Event(to_wit_event(&event))),
                None => Err("the event is missing".into()),
            });
        }
        let mut events = Vec::with_capacity(delivery.batch_events.len());
        for id in &delivery.batch_events {
            match self.store.event(tenant, id)? {
                Some(event) => events.push(to_wit_event(&event)),
                None => return Ok(Err(format!("event {id} of the batch is missing"))),
            }
        }
        Ok(Ok(Call::Batch(events)))
    }

    /// What the plugin's answer means for the delivery.
    fn verdict_of(
        &self,
        webhook: &Webhook,
        delivery: &Delivery,
        result: Result<Answer, PluginError>,
    ) -> Verdict {
        let requests = match result {
            Err(e) => return Verdict::Fail(e.to_string()),
            Ok(Answer::Verdict(_)) => {
                return Verdict::Fail("plugin answered a verdict to an event".into())
            }
            Ok(Answer::Decision(wit::Decision::Skip(reason))) => return Verdict::Skip(reason),
            Ok(Answer::Decision(wit::Decision::Send(requests))) => requests,
        };
        if requests.is_empty() {
            return Verdict::Skip("the plugin sent no requests".into());
        }
        let built: Result<Vec<_>, Invalid> = self.catalog.target(webhook).and_then(|target| {
            requests
                .into_iter()
                .enumerate()
                .map(|(i, r)| request::build(&target, &delivery.id, i, r))
                .collect()
        });
        match built {
            Ok(built) => Verdict::Send(built),
            Err(e) => Verdict::Fail(e.0),
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
