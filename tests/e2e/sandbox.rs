//! Runaway and broken plugins are stopped, their failure is recorded on their own delivery,
//! and a well-behaved webhook evaluated at the same time still delivers.

use serde_json::json;

use crate::support::{data_dir, test_plugin, Receiver, Server};

#[tokio::test]
async fn misbehaving_plugins_are_stopped_and_recorded_while_others_deliver() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[("WASMHOOKS_PLUGIN__TIME_LIMIT", "300ms")]).await;
    let bad = server.upload("misbehave", &test_plugin("misbehave")).await;
    let good = server.upload("forward", wasmhooks::examples::FORWARD).await;

    let cases = [
        ("loop", "failed", "plugin exceeded its 300 ms time limit"),
        (
            "memory",
            "failed",
            "plugin exceeded its 32 MiB memory limit",
        ),
        ("recurse", "failed", "plugin exceeded its stack limit"),
        ("panic", "failed", "plugin trapped"),
        (
            "error",
            "failed",
            "plugin error: misbehave returned an error",
        ),
        ("print", "delivered", ""),
    ];
    for (mode, _, _) in cases {
        server
            .create_webhook(json!({
                "name": format!("misbehave {mode}"), "event_kinds": [format!("test.{mode}")],
                "module_id": bad, "config": { "mode": mode }, "url": format!("{}/{mode}", receiver.url)
            }))
            .await;
    }
    server
        .create_webhook(
            json!({ "name": "good", "event_kinds": ["test.*"], "module_id": good,
                                "url": format!("{}/good", receiver.url) }),
        )
        .await;

    for (mode, status, error) in cases {
        let ack = server
            .emit(json!({ "id": format!("ev-{mode}"), "kind": format!("test.{mode}"), "payload": { "mode": mode } }))
            .await;
        let mut finals = Vec::new();
        for id in ack["deliveries"].as_array().unwrap() {
            finals.push(server.final_delivery(id.as_str().unwrap()).await);
        }
        assert_eq!(
            finals.len(),
            2,
            "{mode}: the misbehaving and the good webhook"
        );
        let misbehaving = finals
            .iter()
            .find(|d| {
                d["requests"].is_null() || d["requests"][0]["url"].as_str().unwrap().ends_with(mode)
            })
            .unwrap_or_else(|| panic!("{mode}: {finals:?}"));
        assert_eq!(misbehaving["status"], status, "{mode}: {misbehaving}");
        if !error.is_empty() {
            let recorded = misbehaving["error"].as_str().unwrap();
            assert!(recorded.starts_with(error), "{mode}: recorded {recorded:?}");
        }
        let good = finals
            .iter()
            .find(|d| !std::ptr::eq(*d, misbehaving))
            .unwrap();
        assert_eq!(
            good["status"], "delivered",
            "{mode}: the good webhook delivered"
        );
    }

    // A panic's message and printed output land in the delivery's log.
    let panic = server.deliveries_of("ev-panic").await;
    let logs: Vec<String> = panic
        .iter()
        .flat_map(|d| d["logs"].as_array().unwrap().clone())
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("misbehave was told to panic on ev-panic")),
        "{logs:?}"
    );
    let print = server.deliveries_of("ev-print").await;
    let printed: Vec<String> = print
        .iter()
        .flat_map(|d| d["logs"].as_array().unwrap().clone())
        .map(|l| {
            format!(
                "{}: {}",
                l["level"].as_str().unwrap(),
                l["message"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        printed.contains(&"stdout: printed to stdout for ev-print".to_string()),
        "{printed:?}"
    );
    assert!(
        printed.contains(&"stdout: printed to stderr".to_string()),
        "{printed:?}"
    );

    // The host is still serving.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}
