//! Hostile plugins are stopped or refused with their named error, their failure is recorded on
//! their own delivery, the host keeps serving, and a well-behaved webhook evaluated at the same
//! time still delivers. Limits are per webhook.

use serde_json::{json, Value};

use crate::support::{data_dir, test_plugin, Receiver, Server};

/// What one hostile mode must come to.
struct Case {
    mode: &'static str,
    limits: Value,
    status: &'static str,
    /// The start of the recorded error (failed) or skip reason (skipped); empty: no check.
    says: &'static str,
}

fn cases() -> Vec<Case> {
    let case = |mode, limits, status, says| Case {
        mode,
        limits,
        status,
        says,
    };
    vec![
        case(
            "loop",
            json!({"cpu_time": "300ms"}),
            "failed",
            "plugin exceeded 300 ms cpu limit",
        ),
        case(
            "recurse",
            json!({}),
            "failed",
            "plugin exceeded 512 KiB stack limit",
        ),
        case(
            "memory",
            json!({"memory_bytes": 8 << 20}),
            "failed",
            "plugin exceeded 8 MiB memory limit",
        ),
        case(
            "output",
            json!({}),
            "failed",
            "plugin exceeded 1 MiB output limit (its answer was 2097162 bytes)",
        ),
        case(
            "requests",
            json!({}),
            "failed",
            "plugin exceeded 16 requests limit (it asked for 100)",
        ),
        case("panic", json!({}), "failed", "plugin trapped"),
        case(
            "error",
            json!({}),
            "failed",
            "plugin error: misbehave returned an error",
        ),
        case("log-flood", json!({}), "delivered", ""),
        case("print-flood", json!({"log_bytes": 4096}), "delivered", ""),
        case(
            "state-flood",
            json!({"state_bytes": 8192}),
            "skipped",
            "after 7 writes: plugin exceeded 8 KiB state limit",
        ),
        case("escape", json!({}), "skipped", ""),
        case("print", json!({}), "delivered", ""),
    ]
}

fn log_lines(delivery: &Value) -> Vec<String> {
    delivery["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{}: {}",
                l["level"].as_str().unwrap(),
                l["message"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn hostile_plugins_are_stopped_by_name_while_others_deliver() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let bad = server.upload("misbehave", &test_plugin("misbehave")).await;
    let good = server.upload("forward", wasmhooks::examples::FORWARD).await;

    let cases = cases();
    for case in &cases {
        server
            .create_webhook(json!({
                "name": format!("misbehave {}", case.mode),
                "event_kinds": [format!("test.{}", case.mode)],
                "module_id": bad, "config": { "mode": case.mode },
                "url": format!("{}/{}", receiver.url, case.mode),
                "limits": case.limits,
            }))
            .await;
    }
    let good_id = server
        .create_webhook(json!({
            "name": "good", "event_kinds": ["test.*"], "module_id": good,
            "url": format!("{}/good", receiver.url)
        }))
        .await["id"]
        .clone();

    // Every hostile event at once, each also matched by the good webhook.
    let mut acks = Vec::new();
    for case in &cases {
        let ack = server
            .emit(json!({
                "id": format!("ev-{}", case.mode), "kind": format!("test.{}", case.mode),
                "payload": { "mode": case.mode }
            }))
            .await;
        acks.push(ack);
    }

    for (case, ack) in cases.iter().zip(&acks) {
        let mode = case.mode;
        let mut finals = Vec::new();
        for id in ack["deliveries"].as_array().unwrap() {
            finals.push(server.final_delivery(id.as_str().unwrap()).await);
        }
        assert_eq!(finals.len(), 2, "{mode}: the hostile and the good webhook");
        let (good, hostile): (Vec<&Value>, Vec<&Value>) =
            finals.iter().partition(|d| d["webhook_id"] == good_id);
        let hostile = hostile[0];
        assert_eq!(good[0]["status"], "delivered", "{mode}: the good webhook");
        assert_eq!(hostile["status"], case.status, "{mode}: {hostile}");
        if !case.says.is_empty() {
            let said = match case.status {
                "failed" => hostile["error"].as_str(),
                _ => hostile["skip_reason"].as_str(),
            }
            .unwrap_or_else(|| panic!("{mode}: {hostile}"));
            assert!(said.starts_with(case.says), "{mode}: recorded {said:?}");
        }
        check_details(mode, hostile);
    }

    // Nothing a hostile plugin did reached its receiver, except what flooded logs and then
    // sent normally.
    let received = receiver.received();
    for mode in ["loop", "recurse", "memory", "output", "requests", "panic"] {
        let path = format!("/{mode}");
        assert!(
            !received.iter().any(|r| r.path == path),
            "{mode} sent something"
        );
    }
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200, "the host is still serving");
}

/// What each mode leaves in its delivery beyond the status.
fn check_details(mode: &str, hostile: &Value) {
    let logs = log_lines(hostile);
    match mode {
        "panic" => assert!(
            logs.iter()
                .any(|l| l.contains("misbehave was told to panic on ev-panic")),
            "{logs:?}"
        ),
        "log-flood" | "print-flood" => {
            let limit = if mode == "log-flood" {
                "16 KiB"
            } else {
                "4 KiB"
            };
            let last = logs.last().unwrap();
            assert!(
                last.starts_with(&format!("warn: plugin exceeded {limit} log limit;")),
                "{mode}: {last}"
            );
            let kept: usize = hostile["logs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["message"].as_str().unwrap().len())
                .sum();
            assert!(kept < 20 << 10, "{mode}: {kept} log bytes kept");
        }
        "state-flood" => assert!(
            logs.iter()
                .any(|l| l.starts_with("warn: plugin exceeded 8 KiB state limit")),
            "{logs:?}"
        ),
        "escape" => {
            let report: Value =
                serde_json::from_str(hostile["skip_reason"].as_str().unwrap()).unwrap();
            for attempt in [
                "read_file",
                "read_dir",
                "write_file",
                "tcp_connect",
                "udp_bind",
                "resolve",
            ] {
                let got = report[attempt].as_str().unwrap();
                assert!(got.starts_with("refused"), "{attempt}: {got}");
            }
            assert_eq!(report["env_vars"], 0, "{report}");
            assert_eq!(report["env_home"], false, "{report}");
            assert_eq!(report["args"], 0, "{report}");
        }
        "print" => {
            assert!(
                logs.contains(&"stdout: printed to stdout for ev-print".to_string()),
                "{logs:?}"
            );
            assert!(
                logs.contains(&"stderr: printed to stderr".to_string()),
                "{logs:?}"
            );
        }
        _ => {}
    }
}

#[tokio::test]
async fn limits_above_the_ceiling_or_unknown_are_refused() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let webhook = |limits: Value| {
        json!({
            "name": "limited", "event_kinds": ["a"], "module_id": module,
            "url": "http://127.0.0.1:9/x", "limits": limits
        })
    };
    for (limits, names) in [
        (json!({"memory_bytes": 1u64 << 40}), "limits.memory_bytes"),
        (json!({"cpu_time": "0ms"}), "limits.cpu_time"),
        (json!({"requests": 0}), "limits.requests"),
        (json!({"cpu": "1s"}), "cpu"),
        (json!({"cpu_time": "soon"}), "cpu_time"),
    ] {
        let (status, body) = server
            .post_json("/v1/webhooks", &webhook(limits.clone()))
            .await;
        assert_eq!(status, 400, "{limits}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{limits}: {message}");
    }
    let (status, _) = server.get("/v1/webhooks").await;
    assert_eq!(status, 200);
    let (_, list) = server.get("/v1/webhooks").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "nothing was created"
    );

    // Within the ceiling: kept, shown, and cleared with null.
    let (status, created) = server
        .post_json(
            "/v1/webhooks",
            &webhook(json!({"cpu_time": "200ms", "memory_bytes": 16 << 20})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["limits"],
        json!({"cpu_time": "200ms", "memory_bytes": 16 << 20})
    );
    let id = created["id"].as_str().unwrap();
    let (status, updated) = server
        .patch_json(&format!("/v1/webhooks/{id}"), &json!({"limits": null}))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert!(updated.get("limits").is_none(), "{updated}");
}

#[tokio::test]
async fn plugins_run_on_demand_when_the_address_space_is_too_small_for_the_pool() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    // 3 GiB: room for the host, not for a pool of 4 GiB memory reservations.
    let server = Server::start_with_address_space(&dir, &[], 3 << 20).await;
    let (_, health) = server.get("/healthz").await;
    assert_eq!(health["plugins"]["allocator"], "on-demand", "{health}");
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({
            "name": "f", "event_kinds": ["a"], "module_id": module,
            "url": format!("{}/a", receiver.url)
        }))
        .await;
    let ack = server.emit(json!({"kind": "a", "payload": {"n": 1}})).await;
    let id = ack["deliveries"][0].as_str().unwrap();
    assert_eq!(server.final_delivery(id).await["status"], "delivered");

    // Without the limit the same host pools its instances.
    let (_tmp2, dir2) = data_dir();
    let pooled = Server::start(&dir2, &[]).await;
    let (_, health) = pooled.get("/healthz").await;
    assert_eq!(health["plugins"]["allocator"], "pooling", "{health}");
}

#[tokio::test]
async fn state_written_by_an_evaluation_that_fails_is_not_kept() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("misbehave", &test_plugin("misbehave")).await;
    let webhook = server
        .create_webhook(json!({
            "name": "counter", "event_kinds": ["tick"], "module_id": module,
            "url": "http://127.0.0.1:9/never", "config": {"mode": "counter"}
        }))
        .await;
    let id = webhook["id"].as_str().unwrap();
    let tick = |n: u32| json!({"id": format!("tick-{n}"), "kind": "tick", "payload": {}});
    let outcome = |d: Value| {
        format!(
            "{} {}",
            d["status"].as_str().unwrap(),
            d["skip_reason"].as_str().or(d["error"].as_str()).unwrap()
        )
    };

    let ack = server.emit(tick(1)).await;
    let first = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(outcome(first), "skipped count=1");

    // Writes count=2, then panics: the write is dropped with the failed evaluation.
    let (status, _) = server
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({"config": {"mode": "counter", "panic": true}}),
        )
        .await;
    assert_eq!(status, 200);
    let ack = server.emit(tick(2)).await;
    let failed = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert!(outcome(failed).starts_with("failed plugin trapped"));

    let (status, _) = server
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({"config": {"mode": "counter"}}),
        )
        .await;
    assert_eq!(status, 200);
    let ack = server.emit(tick(3)).await;
    let third = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(outcome(third), "skipped count=2");

    // A dry run shows the write it would make and keeps nothing.
    let (status, run) = server
        .post_json(
            &format!("/v1/webhooks/{id}/test"),
            &json!({"kind": "tick", "payload": {}}),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["reason"], "count=3");
    assert_eq!(run["state_changes"], json!({"count": "3"}));
    let ack = server.emit(tick(4)).await;
    let fourth = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(outcome(fourth), "skipped count=3");
}
