//! The full webhook definition at work: which statuses count as success, per-webhook retry
//! schedule and timeout, tenant and attribute scope — and `recover` for what failed.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{data_dir, Receiver, Server};

/// The first delivery an emit created.
fn first_delivery(ack: &Value) -> &str {
    ack["deliveries"][0].as_str().unwrap()
}

#[tokio::test]
async fn success_statuses_retry_schedule_and_timeout_are_per_webhook() {
    let (_tmp, dir) = data_dir();
    let strict = Receiver::start().await;
    let slow = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let only_200 = server
        .create_webhook(json!({ "name": "only 200", "event_kinds": ["pay.done"], "module_id": module,
                                "url": strict.url, "success_statuses": [200], "retry_schedule": ["100ms"] }))
        .await;
    assert_eq!(only_200["success_statuses"], json!([200]));
    assert_eq!(only_200["retry_schedule"], json!(["100ms"]));
    server
        .create_webhook(
            json!({ "name": "impatient", "event_kinds": ["pay.slow"], "module_id": module,
                                "url": slow.url, "timeout": "200ms", "retry_schedule": [] }),
        )
        .await;

    // 201 is not success for this webhook: retried 100 ms later, then 200 delivers.
    strict.answer_with(&[201]);
    let ack = server
        .emit(json!({ "kind": "pay.done", "payload": { "n": 1 } }))
        .await;
    let id = first_delivery(&ack);
    let done = server.final_delivery(id).await;
    assert_eq!(done["status"], "delivered", "{done}");
    let statuses: Vec<&Value> = done["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!(201), &json!(200)]);

    // A hung receiver times out at 200 ms; with no retries the delivery is dead.
    slow.hold();
    let ack = server
        .emit(json!({ "kind": "pay.slow", "payload": { "n": 2 } }))
        .await;
    let dead = server.final_delivery(first_delivery(&ack)).await;
    slow.release();
    assert_eq!(dead["status"], "dead", "{dead}");
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.starts_with("gave up after 1 attempt; last: timed out"),
        "{error}"
    );

    // Bad definitions are refused naming the field.
    for (field, value, expected) in [
        (
            "success_statuses",
            json!([200, 700]),
            "success_statuses[1]: 700 is not an HTTP status",
        ),
        ("timeout", json!("0s"), "timeout: must be more than 0"),
        (
            "timeout",
            json!("10 minutes"),
            "timeout: `10 minutes` has an unknown unit",
        ),
        (
            "timeout",
            json!("1h"),
            "timeout: must be more than 0 and at most 300s",
        ),
        ("retry_schedule", json!(["5s", "-1s"]), "retry_schedule[1]"),
        (
            "retry_schedule",
            json!(["30d"]),
            "retry_schedule[0]: must be at most 7d",
        ),
        (
            "scope",
            json!({ "store_id": [] }),
            "scope.store_id: list at least one accepted value",
        ),
        ("tenant", json!(""), "tenant: must be 1 to 128"),
        (
            "description",
            json!("x".repeat(1001)),
            "description: is 1001 characters",
        ),
        ("method", json!("TRACE"), "method: `TRACE` is not supported"),
    ] {
        let mut body =
            json!({ "name": "bad", "event_kinds": ["a"], "module_id": module, "url": strict.url });
        body[field] = value;
        let (status, answer) = server.post_json("/v1/webhooks", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{field}: expected {expected:?} in {message:?}"
        );
    }
    let (_, list) = server.get("/v1/webhooks").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        2,
        "no refused webhook was stored"
    );

    // PATCH with null clears an optional field.
    let id = only_200["id"].as_str().unwrap();
    let (status, cleared) = server
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({ "retry_schedule": null, "description": "now described" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert!(cleared.get("retry_schedule").is_none(), "{cleared}");
    assert_eq!(cleared["description"], "now described");
    assert_eq!(
        cleared["success_statuses"],
        json!([200]),
        "untouched fields stay"
    );
}

#[tokio::test]
async fn tenant_and_attribute_scope_choose_the_webhooks() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let acme = server
        .create_webhook(
            json!({ "name": "acme only", "tenant": "acme", "event_kinds": ["order.*"],
                                "module_id": module, "url": receiver.url }),
        )
        .await;
    let stores = server
        .create_webhook(json!({ "name": "stores 7 and 8", "scope": { "store_id": ["7", "8"] },
                                "event_kinds": ["order.*"], "module_id": module, "url": receiver.url }))
        .await;
    let every = server
        .create_webhook(
            json!({ "name": "every order", "event_kinds": ["order.*"], "module_id": module,
                                "url": receiver.url }),
        )
        .await;

    let routed = |event: Value| {
        let server = &server;
        async move {
            let ack = server.emit(event).await;
            let mut hooks = Vec::new();
            for id in ack["deliveries"].as_array().unwrap() {
                let (_, d) = server
                    .get(&format!("/v1/deliveries/{}", id.as_str().unwrap()))
                    .await;
                hooks.push(d["webhook_id"].as_str().unwrap().to_string());
            }
            hooks.sort();
            hooks
        }
    };
    let id = |w: &Value| w["id"].as_str().unwrap().to_string();
    let mut expected = vec![id(&acme), id(&stores), id(&every)];
    expected.sort();
    assert_eq!(
        routed(json!({ "kind": "order.created", "tenant": "acme", "attributes": { "store_id": "7" }, "payload": {} })).await,
        expected
    );
    assert_eq!(
        routed(json!({ "kind": "order.created", "tenant": "globex", "attributes": { "store_id": "9" }, "payload": {} })).await,
        vec![id(&every)]
    );
    let mut expected = vec![id(&stores), id(&every)];
    expected.sort();
    assert_eq!(
        routed(
            json!({ "kind": "order.created", "attributes": { "store_id": "8" }, "payload": {} })
        )
        .await,
        expected
    );
}

#[tokio::test]
async fn recover_replays_failed_and_dead_deliveries_once() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let webhook = server
        .create_webhook(
            json!({ "name": "flaky", "event_kinds": ["order.*"], "module_id": module,
                                "url": receiver.url, "retry_schedule": [] }),
        )
        .await;
    let id = webhook["id"].as_str().unwrap();
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    receiver.answer_with(&[500, 500, 500]);
    for i in 0..3 {
        let ack = server
            .emit(json!({ "id": format!("r-{i}"), "kind": "order.created", "payload": { "i": i } }))
            .await;
        let d = server
            .final_delivery(ack["deliveries"][0].as_str().unwrap())
            .await;
        assert_eq!(d["status"], "dead");
    }

    let path = format!("/v1/webhooks/{id}/recover");
    let (status, recovered) = server
        .post_json(&path, &json!({ "since": since.to_string() }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{recovered}");
    assert_eq!(recovered["replayed"], 3);
    for replay in recovered["data"].as_array().unwrap() {
        let done = server.final_delivery(replay["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "delivered");
        assert!(done["replay_of"].is_string());
    }
    assert_eq!(receiver.received().len(), 6);

    // Already replayed: a second recover sends nothing.
    let (status, again) = server
        .post_json(&path, &json!({ "since": since.to_string() }))
        .await;
    assert_eq!(
        (status, &again["replayed"]),
        (StatusCode::ACCEPTED, &json!(0))
    );

    // Bad ranges and unknown webhooks.
    let (status, body) = server
        .post_json(&path, &json!({ "since": since.to_string(), "until": (since - jiff::SignedDuration::from_secs(1)).to_string() }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("until: must be after `since`"));
    let (status, body) = server.post_json(&path, &json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (status, _) = server
        .post_json(
            "/v1/webhooks/wh_01m83j646jgje8srde3sxseqgm/recover",
            &json!({ "since": since.to_string() }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
