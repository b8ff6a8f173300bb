//! `wasmhooks plugin run`: the plugin author's local runner. Validates the component like an
//! upload would, evaluates it once on an event with a config, and shows the decision, the
//! exact requests, the logs and the cost — no server, no storage.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde_json::json;

use crate::config::PluginLimits;
use crate::model::{DeliveryId, Method, Millis, ModuleId, Webhook, WebhookId};
use crate::pipeline::{request, to_wit_event, EventInput};
use crate::runtime::{wit, Answer, Call, PluginContext, PluginState, Runtime};

/// In-memory plugin state for one run.
#[derive(Default)]
struct MemoryState(Mutex<HashMap<String, Vec<u8>>>);

impl PluginState for MemoryState {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap().get(key).cloned()
    }
    fn size(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn remove(&self, key: &str) {
        self.0.lock().unwrap().remove(key);
    }
}

pub(super) fn run(
    wasm: &Path,
    event: &Path,
    config: Option<&Path>,
    url: &str,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let event_text =
        std::fs::read_to_string(event).with_context(|| format!("reading {}", event.display()))?;
    let input: EventInput = serde_json::from_str(&event_text)
        .with_context(|| format!("{} is not a valid event", event.display()))?;
    let now = Millis(jiff::Timestamp::now().as_millisecond());
    let event = input
        .into_event(now, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", event.display()))?;
    let config_value: serde_json::Value = match config {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is not valid JSON", path.display()))?,
        None => json!({}),
    };
    anyhow::ensure!(config_value.is_object(), "the config must be a JSON object");

    let runtime = Runtime::new(PluginLimits::default())?;
    let plugin = runtime
        .validate(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    let ctx = PluginContext {
        config: Arc::from(config_value.to_string()),
        state: Arc::new(MemoryState::default()),
    };
    let evaluation = runtime.evaluate(&plugin, ctx, Call::Event(to_wit_event(&event)));

    // Build the requests exactly as the host would, against a stand-in webhook.
    let webhook = Webhook {
        id: WebhookId::generate(),
        name: "plugin run".into(),
        enabled: true,
        event_kinds: vec![event.kind.clone()],
        module_id: ModuleId::for_bytes(&bytes),
        config: config_value,
        url: url.to_string(),
        method: Method::Post,
        headers: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    let delivery = DeliveryId::generate();
    let mut report = json!({
        "features": plugin.features,
        "logs": evaluation.logs,
        "cost": { "wall_us": evaluation.elapsed.as_micros() as u64 },
    });
    let code = match evaluation.result {
        Ok(Answer::Decision(wit::Decision::Skip(reason))) => {
            report["decision"] = json!("skip");
            report["reason"] = json!(reason);
            ExitCode::SUCCESS
        }
        Ok(Answer::Decision(wit::Decision::Send(requests))) => {
            let mut built = Vec::new();
            let mut error = None;
            for (i, r) in requests.into_iter().enumerate() {
                match request::build(&webhook, &delivery, i, r) {
                    Ok(b) => built.push(b),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            report["decision"] = json!("send");
            report["requests"] = serde_json::to_value(&built)?;
            match error {
                Some(e) => {
                    report["error"] = json!(e);
                    ExitCode::FAILURE
                }
                None => ExitCode::SUCCESS,
            }
        }
        Ok(Answer::Verdict(_)) => unreachable!("an event call answers with a decision"),
        Err(e) => {
            report["decision"] = json!("error");
            report["error"] = json!(e.to_string());
            ExitCode::FAILURE
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(code)
}

fn print_text(report: &serde_json::Value) {
    let decision = report["decision"].as_str().unwrap_or("?");
    match decision {
        "skip" => println!(
            "decision: skip — {}",
            report["reason"].as_str().unwrap_or("")
        ),
        "send" => {
            let requests = report["requests"].as_array().cloned().unwrap_or_default();
            println!("decision: send {} request(s)", requests.len());
            for (i, r) in requests.iter().enumerate() {
                println!(
                    "  [{i}] {} {}",
                    r["method"].as_str().unwrap_or(""),
                    r["url"].as_str().unwrap_or("")
                );
                for h in r["headers"].as_array().into_iter().flatten() {
                    println!(
                        "      {}: {}",
                        h[0].as_str().unwrap_or(""),
                        h[1].as_str().unwrap_or("")
                    );
                }
                match &r["body"] {
                    serde_json::Value::Object(b) if b.contains_key("text") => {
                        println!("      body: {}", b["text"].as_str().unwrap_or(""))
                    }
                    serde_json::Value::Object(b) => {
                        println!(
                            "      body (base64): {}",
                            b["base64"].as_str().unwrap_or("")
                        )
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if let Some(error) = report["error"].as_str() {
        println!("error: {error}");
    }
    let logs = report["logs"].as_array().cloned().unwrap_or_default();
    if !logs.is_empty() {
        println!("logs:");
        for line in logs {
            println!(
                "  [{}] {}",
                line["level"].as_str().unwrap_or(""),
                line["message"].as_str().unwrap_or("")
            );
        }
    }
    println!(
        "cost: {} µs wall (instantiate + call)",
        report["cost"]["wall_us"]
    );
}
