//! Dry runs: evaluate a plugin on an event exactly as a delivery would — same config, same
//! limits, same request building — but send nothing and store nothing. Plugin state is
//! readable; the writes the plugin made are shown and thrown away. Used by
//! `POST /v1/webhooks/{id}/test` and by `wasmhooks plugin run`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::request::{self, Target};
use super::{payer_of, to_wit_event, Error, EventInput, Pipeline};
use crate::model::{DeliveryId, Event, LogLine, OutboundRequest, Webhook};
use crate::runtime::{wit, Answer, Call, Cost, LoadedPlugin, PluginContext, Runtime};

/// What the plugin decided, in a dry run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// It would send the requests shown.
    Send,
    /// It would skip the event, for the reason shown.
    Skip,
    /// It failed (or the host refused to build a request it asked for).
    Error,
}

/// What a dry run found.
#[derive(Debug, Serialize)]
pub struct DryRun {
    /// What the plugin decided.
    pub decision: Decision,
    /// The skip reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The exact requests that would be sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<OutboundRequest>,
    /// The plugin error, or the request the host refused to build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The limit the error is about (`cpu`, `memory`, `stack`, `output`, `requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    /// What the plugin logged and printed.
    pub logs: Vec<LogLine>,
    /// State the plugin would have written: key → new value (UTF-8 text, or base64 prefixed
    /// with `base64:`), `null` for removed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub state_changes: BTreeMap<String, Option<String>>,
    /// What the evaluation cost.
    pub cost: Cost,
}

/// Evaluates `plugin` with `config` on `event` and builds the requests for `target`,
/// sending nothing.
pub fn evaluate(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    ctx: PluginContext,
    target: Result<&Target, &str>,
    event: &Event,
) -> DryRun {
    let evaluation = runtime.evaluate(plugin, ctx, Call::Event(to_wit_event(event)));
    let state_changes = evaluation
        .state_changes
        .into_iter()
        .map(|(key, value)| {
            let value = value.map(|v| match String::from_utf8(v) {
                Ok(text) => text,
                Err(e) => {
                    use base64::Engine as _;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(e.as_bytes());
                    format!("base64:{encoded}")
                }
            });
            (key, value)
        })
        .collect();
    let mut run = DryRun {
        decision: Decision::Error,
        reason: None,
        requests: Vec::new(),
        error: None,
        limit: None,
        logs: evaluation.logs,
        state_changes,
        cost: evaluation.cost,
    };
    match evaluation.result {
        Ok(Answer::Decision(wit::Decision::Skip(reason))) => {
            run.decision = Decision::Skip;
            run.reason = Some(reason);
        }
        Ok(Answer::Decision(wit::Decision::Send(requests))) => {
            run.decision = Decision::Send;
            let id = DeliveryId::generate();
            let target = match target {
                Ok(target) => target,
                Err(e) => {
                    run.decision = Decision::Error;
                    run.error = Some(e.to_string());
                    return run;
                }
            };
            for (i, r) in requests.into_iter().enumerate() {
                match request::build(target, &id, i, r) {
                    // Shown as it would be sent: the connection's and webhook's headers too.
                    Ok(mut built) => {
                        built.headers = request::compose_headers(&target.headers, &built.headers);
                        run.requests.push(built);
                    }
                    Err(e) => {
                        run.decision = Decision::Error;
                        run.error = Some(e.0);
                        break;
                    }
                }
            }
        }
        Ok(Answer::Verdict(_)) => run.error = Some("plugin answered a verdict to an event".into()),
        Err(e) => {
            run.limit = e.limit();
            run.error = Some(e.to_string());
        }
    }
    run
}

impl Pipeline {
    /// Dry-runs a webhook on a sample event: its plugin, its config, its state (read only).
    /// It waits for a fair turn of the webhook's like a delivery and is charged to it, with no
    /// say on the webhook's streak of limit hits: a test is not a delivery.
    ///
    /// `webhook` is as the caller was checked against (read from storage, see
    /// [`crate::catalog::Catalog::webhook_seen_by`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad event, or the module failing to load.
    pub async fn dry_run(&self, webhook: &Webhook, input: EventInput) -> Result<DryRun, Error> {
        let event = self.event_from(input, self.now(), None)?;
        let plugin = self
            .plugin(&webhook.module_id)
            .map_err(|e| Error::invalid("module_id", e.to_string()))?;
        let target = self.catalog.target(webhook);
        let ctx = self.plugin_context(webhook);
        let turn = self.fair.turn(&payer_of(webhook)).await;
        let runtime = self.runtime.clone();
        let run = tokio::task::spawn_blocking(move || {
            let target = target.as_ref().map_err(|e| e.0.as_str());
            evaluate(&runtime, &plugin, ctx, target, &event)
        })
        .await
        .expect("plugin evaluation does not panic");
        drop(turn);
        Ok(run)
    }
}
