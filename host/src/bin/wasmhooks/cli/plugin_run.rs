//! `wasmhooks plugin run`: the plugin author's local runner. Validates the component like an
//! upload would, evaluates it once on an event with a config, and shows the decision, the
//! exact requests, the logs and the cost — no server, no storage.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use super::PluginRunArgs;
use wasmhooks::catalog::request::Target;
use wasmhooks::config::PluginConfig;
use wasmhooks::model::{LimitOverrides, Method, Millis};
use wasmhooks::pipeline::dry_run;
use wasmhooks::pipeline::EventInput;
use wasmhooks::runtime::{size_text, NoState, PluginContext, Runtime, RuntimeOptions};

pub(super) fn run(args: &PluginRunArgs) -> anyhow::Result<ExitCode> {
    let (wasm, event) = (&args.wasm, &args.event);
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let event_text =
        std::fs::read_to_string(event).with_context(|| format!("reading {}", event.display()))?;
    let input: EventInput = serde_json::from_str(&event_text)
        .with_context(|| format!("{} is not a valid event", event.display()))?;
    let now = Millis(jiff::Timestamp::now().as_millisecond());
    let event = input
        .into_event(now, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", event.display()))?;
    let config_value: serde_json::Value = match &args.config {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is not valid JSON", path.display()))?,
        None => json!({}),
    };
    anyhow::ensure!(config_value.is_object(), "the config must be a JSON object");

    let settings = PluginConfig::default();
    let overrides: LimitOverrides = match &args.limits {
        Some(text) => serde_json::from_str(text).context("--limits")?,
        None => LimitOverrides::default(),
    };
    let limits = settings.limits.with(&overrides);
    limits
        .check(&settings.max_limits)
        .map_err(|(name, message)| anyhow::anyhow!("--limits: {name} {message}"))?;

    let mut options = RuntimeOptions::new(&settings);
    options.fuel = args.fuel;
    options.concurrency = 1;
    let runtime = Runtime::new(options)?;
    let plugin = runtime
        .validate(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    // The target a webhook with this URL would have, so the requests are built exactly as
    // the host would build them.
    let target = Target {
        url: args.url.clone(),
        method: Method::Post,
        headers: Vec::new(),
        connection_id: None,
        base: None,
    };
    let ctx = PluginContext {
        config: Arc::from(config_value.to_string()),
        state: Arc::new(NoState),
        limits: limits.clone(),
    };
    let run = dry_run::evaluate(&runtime, &plugin, ctx, Ok(&target), &event);
    let code = if run.decision == wasmhooks::pipeline::dry_run::Decision::Error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    let mut report = serde_json::to_value(&run)?;
    report["features"] = json!(plugin.features);
    report["limits"] = serde_json::to_value(&limits)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
        print_cost(&run.cost, &limits);
    }
    Ok(code)
}

/// The cost against each limit, so an author sees how close they are.
fn print_cost(cost: &wasmhooks::runtime::Cost, limits: &wasmhooks::config::PluginLimits) {
    let percent = |used: f64, limit: f64| {
        if limit > 0.0 {
            format!("{:.1}%", used * 100.0 / limit)
        } else {
            "-".into()
        }
    };
    let cpu_limit_us = limits.cpu_time.as_micros() as f64;
    println!("cost:");
    println!(
        "  time    {} µs (instantiate {} µs + call {} µs) of {} ms cpu limit ({})",
        cost.wall_us,
        cost.instantiate_us,
        cost.call_us,
        limits.cpu_time.as_millis(),
        percent(cost.wall_us as f64, cpu_limit_us)
    );
    if let Some(fuel) = cost.fuel {
        println!("  fuel    {fuel} units (about one per wasm instruction)");
    }
    println!(
        "  memory  {} peak of {} memory limit ({})",
        size_text(cost.peak_memory_bytes),
        size_text(limits.memory_bytes),
        percent(cost.peak_memory_bytes as f64, limits.memory_bytes as f64)
    );
    println!(
        "  output  {} of {} output limit ({})",
        size_text(cost.output_bytes),
        size_text(limits.output_bytes),
        percent(cost.output_bytes as f64, limits.output_bytes as f64)
    );
    println!(
        "  logs    {} of {} log limit ({}){}",
        size_text(cost.log_bytes),
        size_text(limits.log_bytes),
        percent(cost.log_bytes as f64, limits.log_bytes as f64),
        if cost.log_dropped_bytes > 0 {
            format!(", {} dropped", size_text(cost.log_dropped_bytes))
        } else {
            String::new()
        }
    );
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
}
