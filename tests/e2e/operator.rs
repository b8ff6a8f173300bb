//! Operator flows: changing, pausing and deleting webhooks, deleting modules, dry runs and
//! replays.

use serde_json::json;

use crate::support::{data_dir, eventually, Receiver, Server};

#[tokio::test]
async fn webhooks_can_be_changed_paused_and_deleted_without_restart() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let threshold = server
        .upload("order-threshold", wasmhooks::examples::ORDER_THRESHOLD)
        .await;
    let forward = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let webhook = server
        .create_webhook(
            json!({ "name": "w", "event_kinds": ["order.created"], "module_id": threshold,
                                "config": { "threshold": 1000 }, "url": receiver.url }),
        )
        .await;
    let id = webhook["id"].as_str().unwrap();
    let order = |n: u32| json!({ "id": format!("o-{n}"), "kind": "order.created", "payload": { "id": format!("A-{n}"), "amount": 500 } });

    let ack = server.emit(order(1)).await;
    let first = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(first["status"], "skipped");

    // A new config takes effect on the next evaluation.
    let (status, patched) = server
        .send(
            server
                .client
                .clone()
                .patch(format!("{}/v1/webhooks/{id}", server.url))
                .json(&json!({ "config": { "threshold": 100 } })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["config"]["threshold"], 100);
    assert_eq!(patched["name"], "w", "fields not in the patch are kept");
    let ack = server.emit(order(2)).await;
    let second = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(second["status"], "delivered");

    // So does a new module.
    let (status, _) = server
        .send(
            server
                .client
                .clone()
                .patch(format!("{}/v1/webhooks/{id}", server.url))
                .json(&json!({ "module_id": forward })),
        )
        .await;
    assert_eq!(status, 200);
    let ack = server.emit(order(3)).await;
    server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    let got = receiver.wait_for(2).await;
    assert_eq!(
        got[1].body.as_ref(),
        br#"{"amount":500,"id":"A-3"}"#,
        "forwarded as-is by the new module"
    );

    // A bad patch changes nothing.
    let (status, body) = server
        .send(
            server
                .client
                .clone()
                .patch(format!("{}/v1/webhooks/{id}", server.url))
                .json(&json!({ "url": "gopher://x", "name": "changed" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, unchanged) = server.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(unchanged["name"], "w");

    // Paused webhooks take no new events; enabled again, they do.
    let (status, paused) = server
        .post_json(&format!("/v1/webhooks/{id}/disable"), &json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), paused["enabled"].clone()),
        (200, json!(false))
    );
    assert_eq!(server.emit(order(4)).await["deliveries"], json!([]));
    let (_, enabled) = server
        .post_json(&format!("/v1/webhooks/{id}/enable"), &json!({}))
        .await;
    assert_eq!(enabled["enabled"], true);
    assert_eq!(
        server.emit(order(5)).await["deliveries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A module in use cannot be deleted; once unused it can.
    let (status, body) = server
        .send(
            server
                .client
                .clone()
                .delete(format!("{}/v1/modules/{forward}", server.url)),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(id));
    let (status, _) = server
        .send(
            server
                .client
                .clone()
                .delete(format!("{}/v1/modules/{threshold}", server.url)),
        )
        .await;
    assert_eq!(status, 200, "the threshold module is no longer used");

    let (status, _) = server
        .send(
            server
                .client
                .clone()
                .delete(format!("{}/v1/webhooks/{id}", server.url)),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(server.emit(order(6)).await["deliveries"], json!([]));
    let (status, _) = server
        .send(
            server
                .client
                .clone()
                .delete(format!("{}/v1/modules/{forward}", server.url)),
        )
        .await;
    assert_eq!(status, 200);
    let (_, modules) = server.get("/v1/modules").await;
    assert_eq!(modules["data"], json!([]));
}

#[tokio::test]
async fn dry_run_shows_the_decision_and_requests_and_sends_nothing() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server
        .upload("order-threshold", wasmhooks::examples::ORDER_THRESHOLD)
        .await;
    let webhook = server
        .create_webhook(json!({ "name": "t", "event_kinds": ["order.created"], "module_id": module,
                                "config": { "threshold": 100 }, "url": format!("{}/in", receiver.url),
                                "headers": { "x-shop": "1" } }))
        .await;
    let path = format!("/v1/webhooks/{}/test", webhook["id"].as_str().unwrap());

    let (status, run) = server
        .post_json(&path, &json!({ "id": "sample", "kind": "order.created", "payload": { "id": "A-1", "amount": 120 } }))
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["decision"], "send");
    let request = &run["requests"][0];
    assert_eq!(request["url"], format!("{}/in", receiver.url));
    assert_eq!(request["headers"][0], json!(["x-shop", "1"]));
    assert!(request["body"]["text"]
        .as_str()
        .unwrap()
        .contains(r#""order_id":"A-1""#));
    assert_eq!(
        run["logs"][0]["message"],
        "order A-1 amount 120 reaches threshold 100"
    );

    let (_, run) = server
        .post_json(
            &path,
            &json!({ "kind": "order.created", "payload": { "id": "A-2", "amount": 5 } }),
        )
        .await;
    assert_eq!(run["decision"], "skip");
    assert_eq!(run["reason"], "amount 5 is below the threshold 100");

    let (_, run) = server
        .post_json(
            &path,
            &json!({ "kind": "order.created", "payload": { "amount": 5 } }),
        )
        .await;
    assert_eq!(run["decision"], "error");
    assert!(run["error"]
        .as_str()
        .unwrap()
        .contains("missing field `id`"));

    // Nothing was stored or sent.
    let (status, _) = server.get("/v1/events/sample").await;
    assert_eq!(status, 404);
    let (_, deliveries) = server.get("/v1/deliveries").await;
    assert_eq!(deliveries["data"], json!([]));
    assert!(receiver.received().is_empty());

    let (status, body) = server
        .post_json(
            "/v1/webhooks/wh_unknown/test",
            &json!({ "kind": "a", "payload": 1 }),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str().unwrap()),
        (404, "not_found")
    );
}

#[tokio::test]
async fn replay_resends_the_same_bytes_as_a_new_delivery() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    receiver.answer_with(&[500]);
    let server = Server::start(&dir, &[("WASMHOOKS_DELIVERY__RETRY_SCHEDULE", "[]")]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "r", "event_kinds": ["*"], "module_id": module, "url": receiver.url }),
        )
        .await;
    let ack = server
        .emit(json!({ "kind": "a.b", "payload": { "v": 1 } }))
        .await;
    let original_id = ack["deliveries"][0].as_str().unwrap();
    let original = server.final_delivery(original_id).await;
    assert_eq!(
        original["status"], "dead",
        "no retries configured: {original}"
    );

    let (status, replay) = server
        .post_json(&format!("/v1/deliveries/{original_id}/replay"), &json!({}))
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["replay_of"], original_id);
    assert_ne!(replay["id"], original_id);
    let replayed = server.final_delivery(replay["id"].as_str().unwrap()).await;
    assert_eq!(replayed["status"], "delivered");
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(
        got[0].header("webhook-id"),
        got[1].header("webhook-id"),
        "receivers can dedupe"
    );
    eventually("both deliveries listed for the event", || async {
        let list = server
            .deliveries_of(original["event_id"].as_str().unwrap())
            .await;
        (list.len() == 2).then_some(())
    })
    .await;

    let (status, body) = server
        .post_json("/v1/deliveries/dlv_nope/replay", &json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str().unwrap()),
        (404, "not_found")
    );
}
