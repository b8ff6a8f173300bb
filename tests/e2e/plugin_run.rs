//! `wasmhooks plugin run`: the plugin author's local runner, with no server.

use std::path::Path;

use serde_json::Value;

use crate::support::{run_to_end, wasmhooks_command};

fn plugin_run(dir: &Path, wasm: &[u8], event: &str, config: Option<&str>) -> (bool, Value, String) {
    plugin_run_with(dir, wasm, event, config, &["--json"])
}

/// `extra` with a cpu limit of 1 s added to its `--limits` (or as one): the limit counts
/// wall-clock time, and a loaded machine must not push a well-behaved plugin over the
/// default 50 ms.
fn roomy_cpu_limit(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    match args.iter().position(|a| a == "--limits") {
        Some(at) => {
            let mut limits: serde_json::Map<String, Value> =
                serde_json::from_str(&args[at + 1]).unwrap();
            limits.entry("cpu_time").or_insert("1s".into());
            args[at + 1] = Value::Object(limits).to_string();
        }
        None => args.extend(["--limits".into(), r#"{"cpu_time": "1s"}"#.into()]),
    }
    args
}

/// Runs `plugin run` with `extra` arguments; the report parsed when it is JSON, else `Null`
/// (the text is in the returned string then, with stderr).
fn plugin_run_with(
    dir: &Path,
    wasm: &[u8],
    event: &str,
    config: Option<&str>,
    extra: &[&str],
) -> (bool, Value, String) {
    let wasm_path = dir.join("plugin.wasm");
    std::fs::write(&wasm_path, wasm).unwrap();
    let event_path = dir.join("event.json");
    std::fs::write(&event_path, event).unwrap();
    let mut command = wasmhooks_command();
    command
        .args(["plugin", "run", "--url", "https://rcv.test/in"])
        .args(roomy_cpu_limit(extra))
        .arg(&wasm_path)
        .arg("--event")
        .arg(&event_path);
    if let Some(config) = config {
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config).unwrap();
        command.arg("--config").arg(config_path);
    }
    let output = run_to_end(&mut command);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let text = if report.is_null() {
        format!("{stdout}{stderr}")
    } else {
        stderr
    };
    (output.status.success(), report, text)
}

#[test]
fn runs_forward_and_shows_the_exact_request() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, report, stderr) = plugin_run(
        dir.path(),
        wasmhooks::examples::FORWARD,
        r#"{"kind": "order.created", "payload": {"id": "A-1"}}"#,
        None,
    );
    assert!(ok, "{stderr}");
    assert_eq!(report["decision"], "send");
    let request = &report["requests"][0];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], "https://rcv.test/in");
    assert_eq!(request["body"]["text"], r#"{"id": "A-1"}"#);
    assert!(report["cost"]["wall_us"].as_u64().unwrap() > 0);
    assert_eq!(report["logs"][0]["level"], "debug");
}

#[test]
fn runs_order_threshold_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let event = r#"{"id": "e1", "kind": "order.created", "payload": {"id": "A-9", "amount": 120}}"#;
    let (ok, report, stderr) = plugin_run(
        dir.path(),
        wasmhooks::examples::ORDER_THRESHOLD,
        event,
        Some(r#"{"threshold": 1000}"#),
    );
    assert!(ok, "{stderr}");
    assert_eq!(report["decision"], "skip");
    assert_eq!(report["reason"], "amount 120 is below the threshold 1000");

    let (ok, report, _) = plugin_run(
        dir.path(),
        wasmhooks::examples::ORDER_THRESHOLD,
        event,
        Some(r#"{"threshold": 50}"#),
    );
    assert!(ok);
    assert_eq!(report["decision"], "send");
    let body: Value =
        serde_json::from_str(report["requests"][0]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(body["order_id"], "A-9");
    assert_eq!(body["amount"], 120.0);
}

#[test]
fn refuses_what_is_not_a_plugin_and_reports_plugin_errors() {
    let dir = tempfile::tempdir().unwrap();
    let event = r#"{"kind": "order.created", "payload": {}}"#;
    let (ok, _, stderr) = plugin_run(dir.path(), b"not wasm at all", event, None);
    assert!(!ok);
    assert!(stderr.contains("not a WebAssembly component"), "{stderr}");

    // order-threshold on a payload without an amount: a plugin error, reported, exit 1.
    let (ok, report, _) = plugin_run(
        dir.path(),
        wasmhooks::examples::ORDER_THRESHOLD,
        event,
        None,
    );
    assert!(!ok);
    assert_eq!(report["decision"], "error");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("missing field `id`"),
        "{report}"
    );

    let (ok, _, stderr) = plugin_run(
        dir.path(),
        wasmhooks::examples::FORWARD,
        r#"{"payload": 1}"#,
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("missing field `kind`"), "{stderr}");
}

#[test]
fn reports_the_cost_against_each_limit_and_runs_under_chosen_limits() {
    let dir = tempfile::tempdir().unwrap();
    let event = r#"{"kind": "order.created", "payload": {"id": "A-1"}}"#;
    let (ok, report, stderr) = plugin_run_with(
        dir.path(),
        wasmhooks::examples::FORWARD,
        event,
        None,
        &["--json", "--fuel"],
    );
    assert!(ok, "{stderr}");
    let cost = &report["cost"];
    assert!(cost["fuel"].as_u64().unwrap() > 1000, "{cost}");
    assert!(
        cost["peak_memory_bytes"].as_u64().unwrap() >= 64 << 10,
        "{cost}"
    );
    assert_eq!(report["limits"]["cpu_time"], "1s");
    assert_eq!(
        report["limits"]["memory_bytes"],
        32 << 20,
        "the defaults for the rest"
    );

    // The text report puts each cost beside its limit.
    let (ok, _, text) = plugin_run_with(
        dir.path(),
        wasmhooks::examples::FORWARD,
        event,
        None,
        &["--fuel"],
    );
    assert!(ok, "{text}");
    for expected in [
        "of 1000 ms cpu limit",
        "of 32 MiB memory limit",
        "of 1 MiB output limit",
        "of 16 KiB log limit",
        "fuel ",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    // Tighter limits, by name; the error names the one hit.
    let misbehave = crate::support::test_plugin("misbehave");
    let (ok, report, _) = plugin_run_with(
        dir.path(),
        &misbehave,
        event,
        Some(r#"{"mode": "memory"}"#),
        &["--json", "--limits", r#"{"memory_bytes": 4194304}"#],
    );
    assert!(!ok);
    assert_eq!(report["error"], "plugin exceeded 4 MiB memory limit");
    assert_eq!(report["limit"], "memory");

    let (ok, _, text) = plugin_run_with(
        dir.path(),
        wasmhooks::examples::FORWARD,
        event,
        None,
        &["--limits", r#"{"memory_bytes": 1}"#],
    );
    assert!(!ok);
    assert!(text.contains("--limits: memory_bytes must be"), "{text}");
}
