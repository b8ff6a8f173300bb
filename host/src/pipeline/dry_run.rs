//! Dry runs: evaluate a plugin on an event exactly as a delivery would — same config, same
//! request building — but send nothing and store nothing. Plugin state is readable; writes go
//! to a scratch overlay that is thrown away. Used by `POST /v1/webhooks/{id}/test` and by
//! `wasmhooks plugin run`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::request::{self, Target};
use super::{to_wit_event, Error, EventInput, Pipeline};
use crate::model::{DeliveryId, Event, LogLine, OutboundRequest};
use crate::runtime::{wit, Answer, Call, LoadedPlugin, PluginContext, PluginState, Runtime};

/// What a dry run found.
#[derive(Debug, Serialize)]
pub struct DryRun {
    /// `send`, `skip` or `error`.
    pub decision: &'static str,
    /// The skip reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The exact requests that would be sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<OutboundRequest>,
    /// The plugin error, or the request the host refused to build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the plugin logged and printed.
    pub logs: Vec<LogLine>,
    /// What the evaluation cost.
    pub cost: Cost,
}

/// What an evaluation cost.
#[derive(Debug, Serialize)]
pub struct Cost {
    /// Wall time of instantiation plus the call, in microseconds.
    pub wall_us: u64,
}

/// State that reads through to `base` and keeps writes in memory only.
pub struct ScratchState {
    base: Option<Arc<dyn PluginState>>,
    writes: Mutex<HashMap<String, Option<Vec<u8>>>>,
}

impl ScratchState {
    /// Scratch state over `base` (or over nothing).
    pub fn new(base: Option<Arc<dyn PluginState>>) -> Self {
        ScratchState {
            base,
            writes: Mutex::new(HashMap::new()),
        }
    }
}

impl PluginState for ScratchState {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.writes.lock().unwrap().get(key) {
            Some(value) => value.clone(),
            None => self.base.as_ref().and_then(|b| b.get(key)),
        }
    }

    fn size(&self) -> usize {
        let writes = self.writes.lock().unwrap();
        let base = self.base.as_ref().map_or(0, |b| b.size());
        let added: usize = writes
            .iter()
            .map(|(k, v)| v.as_ref().map_or(0, |v| k.len() + v.len()))
            .sum();
        base + added
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.writes
            .lock()
            .unwrap()
            .insert(key.to_string(), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&self, key: &str) {
        self.writes.lock().unwrap().insert(key.to_string(), None);
    }
}

/// Evaluates `plugin` with `config` on `event` and builds the requests for `target`,
/// sending nothing.
pub fn evaluate(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    config: &serde_json::Value,
    target: Result<&Target, &str>,
    event: &Event,
    state: Arc<dyn PluginState>,
) -> DryRun {
    let ctx = PluginContext {
        config: Arc::from(config.to_string()),
        state,
    };
    let evaluation = runtime.evaluate(plugin, ctx, Call::Event(to_wit_event(event)));
    let mut run = DryRun {
        decision: "error",
        reason: None,
        requests: Vec::new(),
        error: None,
        logs: evaluation.logs,
        cost: Cost {
            wall_us: evaluation.elapsed.as_micros() as u64,
        },
    };
    match evaluation.result {
        Ok(Answer::Decision(wit::Decision::Skip(reason))) => {
            run.decision = "skip";
            run.reason = Some(reason);
        }
        Ok(Answer::Decision(wit::Decision::Send(requests))) => {
            run.decision = "send";
            let id = DeliveryId::generate();
            let target = match target {
                Ok(target) => target,
                Err(e) => {
                    run.decision = "error";
                    run.error = Some(e.to_string());
                    return run;
                }
            };
            for (i, r) in requests.into_iter().enumerate() {
                match request::build(target, &id, i, r) {
                    Ok(built) => run.requests.push(built),
                    Err(e) => {
                        run.decision = "error";
                        run.error = Some(e);
                        break;
                    }
                }
            }
        }
        Ok(Answer::Verdict(_)) => run.error = Some("plugin answered a verdict to an event".into()),
        Err(e) => run.error = Some(e.to_string()),
    }
    run
}

impl Pipeline {
    /// Dry-runs a webhook on a sample event: its plugin, its config, its state (read only).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown webhook, [`Error::Invalid`] for a bad event, or the
    /// module failing to load.
    pub fn dry_run(&self, webhook_id: &str, input: EventInput) -> Result<DryRun, Error> {
        let webhook = self.webhook(webhook_id)?;
        let event = input.into_event(self.now(), None)?;
        let store = self.store.clone();
        let module = webhook.module_id.clone();
        let plugin = self
            .runtime
            .load(&module, || {
                store
                    .module_bytes(&module)
                    .ok()
                    .flatten()
                    .map(|b| b.to_vec())
            })
            .map_err(|e| Error::invalid("module_id", e))?;
        let state = Arc::new(ScratchState::new(Some(self.stored_state(&webhook))));
        let target = self.target(&webhook);
        Ok(evaluate(
            &self.runtime,
            &plugin,
            &webhook.config,
            target.as_ref().map_err(String::as_str),
            &event,
            state,
        ))
    }
}
