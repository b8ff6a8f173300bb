//! Evaluation: running a webhook's plugin on its delivery's event (or batch) once, and
//! building the requests it decided on.

use std::sync::Arc;

use tracing::Instrument;

use super::outcome::{self};
use super::{request, to_wit_event, Pipeline};
use crate::model::{Delivery, DeliveryStatus, Invalid, OutboundRequest, Webhook};
use crate::runtime::{wit, Answer, Call};
use crate::storage::StorageError;

impl Pipeline {
    /// Runs the plugin on the delivery's event. Returns the built requests, or `None` when the
    /// delivery ended here (skipped or failed; its status says which).
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
        let ctx = self.plugin_context(webhook);
        let evaluation = self
            .run_plugin(plugin, ctx, call)
            .instrument(tracing::info_span!("wasmhooks.plugin", module = %webhook.module_id))
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

    /// Evaluates on this thread when the plugin has proven quick, else on a blocking thread
    /// (see [`crate::runtime::Runtime::quick_slot`]).
    pub(super) async fn run_plugin(
        &self,
        plugin: Arc<crate::runtime::LoadedPlugin>,
        ctx: crate::runtime::PluginContext,
        call: Call,
    ) -> crate::runtime::Evaluation {
        if let Some(slot) = self.runtime.quick_slot(&plugin) {
            return self.runtime.evaluate_quick(slot, &plugin, ctx, call);
        }
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.evaluate(&plugin, ctx, call))
            .await
            .expect("plugin evaluation does not panic")
    }
}
