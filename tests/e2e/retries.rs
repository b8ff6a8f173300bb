//! How receivers steer retries: `Retry-After` (bounded), slowing down on 429/5xx, 410 Gone
//! disabling the webhook, and auto-disable after failing for too long — each announced with
//! a `webhook.disabled` event.

use serde_json::{json, Value};

use crate::support::{data_dir, eventually, Receiver, Server};

/// An RFC 3339 time from the API, in epoch ms.
fn ms(value: &Value) -> i64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

/// Emits one event, waits until its only delivery has made a second attempt (the receiver
/// answers it 200), and returns the time between the two attempts' starts, in ms. Read from
/// the attempt history, it never depends on catching a state that lasts a moment.
async fn wait_between_attempts(server: &Server, kind: &str) -> i64 {
    let ack = server.emit(json!({ "kind": kind, "payload": {} })).await;
    let id = ack["deliveries"][0].as_str().unwrap().to_string();
    let attempts = eventually("a second attempt", || async {
        let (_, d) = server.get(&format!("/v1/deliveries/{id}")).await;
        d["attempts"].as_array().filter(|a| a.len() >= 2).cloned()
    })
    .await;
    ms(&attempts[1]["started_at"]) - ms(&attempts[0]["started_at"])
}

#[tokio::test]
async fn retry_after_and_slow_down_stretch_the_wait() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(
        &dir,
        &[
            (
                "WASMHOOKS_DELIVERY__RETRY_SCHEDULE",
                r#"["100ms", "100ms"]"#,
            ),
            ("WASMHOOKS_DELIVERY__JITTER", "0.0"),
            ("WASMHOOKS_DELIVERY__SLOW_DOWN_WAIT", "2s"),
            ("WASMHOOKS_DELIVERY__MAX_RETRY_AFTER", "3s"),
        ],
    )
    .await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "r", "event_kinds": ["*"], "module_id": module, "url": receiver.url }),
        )
        .await;

    // Each wait is at least what the host was told; the upper bounds are generous and only
    // tell the cases apart.
    // A plain 500: the schedule's 100 ms, not the slow-down wait.
    receiver.answer_with(&[500]);
    let wait = wait_between_attempts(&server, "a.plain").await;
    assert!((100..2000).contains(&wait), "{wait} ms");
    // 429 without Retry-After: at least the slow-down wait.
    receiver.answer_with(&[429]);
    let wait = wait_between_attempts(&server, "a.busy").await;
    assert!((2000..60_000).contains(&wait), "{wait} ms");
    // Retry-After in seconds, honoured.
    receiver.answer_with_retry_after(500, "1");
    let wait = wait_between_attempts(&server, "a.after").await;
    assert!((1000..60_000).contains(&wait), "{wait} ms");
    // Retry-After beyond the bound: cut to max_retry_after.
    receiver.answer_with_retry_after(503, "86400");
    let wait = wait_between_attempts(&server, "a.later").await;
    assert!((3000..60_000).contains(&wait), "{wait} ms");
}

#[tokio::test]
async fn gone_and_long_failure_disable_the_webhook_and_say_so() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let watcher = Receiver::start().await;
    let server = Server::start(
        &dir,
        &[
            ("WASMHOOKS_DELIVERY__RETRY_SCHEDULE", "[]"),
            ("WASMHOOKS_DELIVERY__AUTO_DISABLE_AFTER", "0s"),
        ],
    )
    .await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let gone = server
        .create_webhook(
            json!({ "name": "gone", "event_kinds": ["order.*"], "module_id": module,
                                "url": format!("{}/gone", receiver.url) }),
        )
        .await;
    server
        .create_webhook(
            json!({ "name": "watcher", "event_kinds": ["webhook.disabled"], "module_id": module,
                                "url": watcher.url }),
        )
        .await;
    let gone_id = gone["id"].as_str().unwrap();

    receiver.answer_with(&[410]);
    let ack = server
        .emit(json!({ "kind": "order.created", "payload": {} }))
        .await;
    let failed = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        "receiver answered 410 Gone; the webhook was disabled"
    );
    let (_, webhook) = server.get(&format!("/v1/webhooks/{gone_id}")).await;
    assert_eq!(webhook["enabled"], false);
    assert_eq!(webhook["disabled_reason"], "the receiver answered 410 Gone");
    let told = watcher.wait_for(1).await;
    let event: Value = serde_json::from_slice(&told[0].body).unwrap();
    assert_eq!(event["webhook_id"], gone_id);
    assert_eq!(event["reason"], "the receiver answered 410 Gone");

    // Enabled again by the operator: the reason is cleared.
    let (_, enabled) = server
        .post_json(&format!("/v1/webhooks/{gone_id}/enable"), &json!({}))
        .await;
    assert_eq!(enabled["enabled"], true);
    assert!(enabled.get("disabled_reason").is_none(), "{enabled}");

    // Failing without a success for longer than auto_disable_after (0 s here): the first
    // dead delivery starts the streak, the next one disables.
    receiver.answer_with(&[500, 500]);
    for i in 0..2 {
        let ack = server
            .emit(json!({ "kind": "order.created", "payload": { "i": i } }))
            .await;
        let dead = server
            .final_delivery(ack["deliveries"][0].as_str().unwrap())
            .await;
        assert_eq!(dead["status"], "dead");
    }
    let webhook = eventually("the webhook to be disabled", || async {
        let (_, w) = server.get(&format!("/v1/webhooks/{gone_id}")).await;
        (w["enabled"] == false).then_some(w)
    })
    .await;
    let reason = webhook["disabled_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("every delivery has failed since"),
        "{reason}"
    );
    watcher.wait_for(2).await;
}
