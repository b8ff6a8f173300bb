//! `wasmhooks plugin run`: the plugin author's local runner. Validates the component like an
//! upload would, evaluates it once on an event with a config, and shows the decision, the
//! exact requests, the logs and the cost — no server, no storage.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use crate::config::PluginLimits;
use crate::model::{Method, Millis};
use crate::pipeline::dry_run::{self, ScratchState};
use crate::pipeline::request::Target;
use crate::pipeline::EventInput;
use crate::runtime::Runtime;

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
    // The target a webhook with this URL would have, so the requests are built exactly as
    // the host would build them.
    let target = Target {
        url: url.to_string(),
        method: Method::Post,
        headers: Vec::new(),
        connection_id: None,
    };
    let state = Arc::new(ScratchState::new(None));
    let run = dry_run::evaluate(&runtime, &plugin, &config_value, Ok(&target), &event, state);
    let code = if run.decision == "error" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    let mut report = serde_json::to_value(&run)?;
    report["features"] = json!(plugin.features);
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
