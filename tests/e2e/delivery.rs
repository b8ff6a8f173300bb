//! The happy paths: forwarding byte for byte, skipping with a reason, retrying to success,
//! giving up on schedule, idempotent emits.

use serde_json::json;

use crate::support::{data_dir, Receiver, Server};

/// No jitter and short waits, so retries happen within the test's patience.
const FAST_RETRIES: &[(&str, &str)] = &[
    (
        "WASMHOOKS_DELIVERY__RETRY_SCHEDULE",
        r#"["100ms", "100ms"]"#,
    ),
    ("WASMHOOKS_DELIVERY__JITTER", "0"),
    // 503 asks to slow down; these tests are about the schedule itself.
    ("WASMHOOKS_DELIVERY__SLOW_DOWN_WAIT", "0s"),
];

#[tokio::test]
async fn forward_delivers_the_payload_byte_for_byte() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let webhook = server
        .create_webhook(json!({
            "name": "orders out", "event_kinds": ["order.*"], "module_id": module,
            "url": format!("{}/hooks/in?src=wh", receiver.url), "headers": { "x-shop": "7" }
        }))
        .await;
    assert_eq!(webhook["method"], "POST");

    // Odd spacing, key order and non-ASCII must survive untouched.
    let payload = r#"{"z": 1,   "a" : "ü & <b>", "n": [1.50, {"k":null}]}"#;
    let raw = format!(r#"{{"id": "ord-1", "kind": "order.created", "payload": {payload}}}"#);
    let (status, ack) = server
        .post_raw("/v1/events", "application/json", raw.into_bytes())
        .await;
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["id"], "ord-1");
    assert_eq!(ack["duplicate"], false);
    let delivery_id = ack["deliveries"][0].as_str().unwrap().to_string();

    let got = receiver.wait_for(1).await;
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/in?src=wh");
    assert_eq!(request.body.as_ref(), payload.as_bytes());
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-shop"), Some("7"));
    assert_eq!(request.header("webhook-id"), Some(delivery_id.as_str()));
    assert!(request
        .header("webhook-timestamp")
        .unwrap()
        .parse::<u64>()
        .is_ok());

    let delivery = server.final_delivery(&delivery_id).await;
    assert_eq!(delivery["status"], "delivered");
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(delivery["attempts"][0]["status"], 200);
    assert_eq!(delivery["requests"][0]["body"]["text"], payload);

    // The same id again is acknowledged as a duplicate and queues nothing.
    let again = server
        .emit(json!({ "id": "ord-1", "kind": "order.created", "payload": {} }))
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["deliveries"], json!([]));
    assert_eq!(server.deliveries_of("ord-1").await.len(), 1);

    // Kinds outside the webhook's patterns create no delivery.
    let other = server
        .emit(json!({ "kind": "customer.created", "payload": {} }))
        .await;
    assert_eq!(other["deliveries"], json!([]));
    let (_, event) = server.get("/v1/events/ord-1").await;
    assert_eq!(event["kind"], "order.created");
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn order_threshold_skips_small_orders_and_builds_the_body_for_large_ones() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server
        .upload("order-threshold", wasmhooks::examples::ORDER_THRESHOLD)
        .await;
    server
        .create_webhook(json!({
            "name": "big orders", "event_kinds": ["order.created"], "module_id": module,
            "config": { "threshold": 100 }, "url": format!("{}/big", receiver.url), "method": "put"
        }))
        .await;
    let ack = server
        .emit(json!([
            { "id": "small", "kind": "order.created", "payload": { "id": "A-1", "amount": 99.5 } },
            { "id": "large", "kind": "order.created", "payload": { "id": "A-2", "amount": 100, "currency": "PLN", "customer": { "email": "z@x.pl" } } }
        ]))
        .await;
    let small = ack["data"][0]["deliveries"][0].as_str().unwrap();
    let large = ack["data"][1]["deliveries"][0].as_str().unwrap();

    let skipped = server.final_delivery(small).await;
    assert_eq!(skipped["status"], "skipped");
    assert_eq!(
        skipped["skip_reason"],
        "amount 99.5 is below the threshold 100"
    );
    assert!(skipped
        .get("attempts")
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());

    let sent = server.final_delivery(large).await;
    assert_eq!(sent["status"], "delivered");
    assert_eq!(sent["logs"][0]["level"], "info");
    assert_eq!(
        sent["logs"][0]["message"],
        "order A-2 amount 100 reaches threshold 100"
    );
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].method, "PUT");
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        r#"{"event_id":"large","event":"order.created","order_id":"A-2","amount":100.0,"currency":"PLN","customer_email":"z@x.pl","message":"Order A-2 for 100 PLN needs review"}"#
    );
    assert_eq!(receiver.received().len(), 1, "the small order sent nothing");
}

#[tokio::test]
async fn a_failed_attempt_is_retried_until_the_receiver_accepts() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    receiver.answer_with(&[500]);
    let server = Server::start(&dir, FAST_RETRIES).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "r", "event_kinds": ["*"], "module_id": module, "url": receiver.url }),
        )
        .await;
    let ack = server
        .emit(json!({ "kind": "stock.changed", "payload": { "sku": "X", "qty": 0 } }))
        .await;
    let id = ack["deliveries"][0].as_str().unwrap();
    let delivery = server.final_delivery(id).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[0]["outcome"], "retry");
    assert_eq!(attempts[0]["response_body"], "answered 500");
    assert_eq!(attempts[1]["status"], 200);
    assert_eq!(attempts[1]["outcome"], "success");
    // The retry resent the very same bytes with the same webhook-id.
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
}

#[tokio::test]
async fn a_delivery_is_dead_once_the_schedule_is_exhausted() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    receiver.answer_with(&[503, 503, 503, 503]);
    let server = Server::start(&dir, FAST_RETRIES).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "d", "event_kinds": ["*"], "module_id": module, "url": receiver.url }),
        )
        .await;
    let ack = server.emit(json!({ "kind": "a.b", "payload": 1 })).await;
    let delivery = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(delivery["status"], "dead");
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(
        delivery["error"],
        "gave up after 3 attempts; last: receiver answered 503"
    );
    let (_, dead) = server.get("/v1/deliveries?status=dead").await;
    assert_eq!(dead["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_emit_command_delivers_through_a_running_server() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({ "name": "cli", "event_kinds": ["order.created"], "module_id": module, "url": receiver.url }))
        .await;
    let mut command = crate::support::wasmhooks_command();
    command
        .env("WASMHOOKS_KEY", crate::support::ADMIN_KEY)
        .args([
            "emit",
            "--server",
            &server.url,
            "--kind",
            "order.created",
            "--id",
            "cli-1",
        ])
        .args(["--attr", "store_id=7", "--payload", r#"{"id":"A-7"}"#]);
    let output = crate::support::finish(command).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ack: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(ack["id"], "cli-1");
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].body.as_ref(), br#"{"id":"A-7"}"#);
    let (_, event) = server.get("/v1/events/cli-1").await;
    assert_eq!(event["attributes"], json!({ "store_id": "7" }));

    // A refused emit exits non-zero and shows the server's error.
    let mut command = crate::support::wasmhooks_command();
    command
        .env("WASMHOOKS_KEY", crate::support::ADMIN_KEY)
        .args(["emit", "--server", &server.url, "--kind", "bad kind"]);
    let output = crate::support::finish(command).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("kind: event kind `bad kind` is invalid")
            && stderr.contains("validation_error"),
        "{stderr}"
    );
}
