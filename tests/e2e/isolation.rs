//! Isolation: a hung receiver uses up only its own endpoint's share, and a rate limit spaces
//! requests to one endpoint.

use serde_json::json;

use crate::support::{data_dir, eventually, Receiver, Server};

#[tokio::test]
async fn a_hung_receiver_does_not_hold_back_another() {
    let (_tmp, dir) = data_dir();
    let hung = Receiver::start().await;
    let healthy = Receiver::start().await;
    // Far fewer slots overall than held deliveries, and a timeout longer than the test's
    // patience: only isolation lets the healthy receiver through.
    let server = Server::start(
        &dir,
        &[
            ("WASMHOOKS_DELIVERY__MAX_IN_FLIGHT", "8"),
            ("WASMHOOKS_DELIVERY__ENDPOINT_CONCURRENCY", "3"),
            ("WASMHOOKS_DELIVERY__TIMEOUT", "10m"),
        ],
    )
    .await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({ "name": "hung", "event_kinds": ["slow.*"], "module_id": module, "url": hung.url }))
        .await;
    server
        .create_webhook(json!({ "name": "healthy", "event_kinds": ["fast.*"], "module_id": module, "url": healthy.url }))
        .await;

    hung.hold();
    let batch: Vec<_> = (0..40)
        .map(|i| json!({ "kind": "slow.created", "payload": { "i": i } }))
        .collect();
    server.emit(json!(batch)).await;
    // The hung endpoint takes its share of slots, and no more.
    eventually("the hung receiver to hold its endpoint's share", || async {
        (hung.waiting() == 3).then_some(())
    })
    .await;
    let ack = server
        .emit(json!({ "kind": "fast.created", "payload": { "ok": true } }))
        .await;
    let done = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "delivered");
    assert_eq!(healthy.received().len(), 1);
    assert_eq!(hung.waiting(), 3, "still holding only its share");
    assert!(
        hung.received().is_empty(),
        "nothing was answered while held"
    );
    let (_, pending) = server.get("/v1/deliveries?status=pending&limit=100").await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 40);

    // Released, the hung receiver gets everything.
    hung.release();
    hung.wait_for(40).await;
}

#[tokio::test]
async fn the_rate_limit_spaces_requests_to_one_endpoint() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(
        &dir,
        &[
            ("WASMHOOKS_DELIVERY__ENDPOINT_RATE", "5.0"),
            ("WASMHOOKS_DELIVERY__ENDPOINT_BURST", "1"),
        ],
    )
    .await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "r", "event_kinds": ["*"], "module_id": module, "url": receiver.url }),
        )
        .await;
    let started = std::time::Instant::now();
    let batch: Vec<_> = (0..6)
        .map(|i| json!({ "kind": "a.b", "payload": { "i": i } }))
        .collect();
    server.emit(json!(batch)).await;
    receiver.wait_for(6).await;
    // Five requests per second with no burst: six requests need at least a second.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn in_order_webhooks_deliver_one_entity_strictly_in_sequence() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(
        &dir,
        &[
            (
                "WASMHOOKS_DELIVERY__RETRY_SCHEDULE",
                r#"["300ms", "300ms"]"#,
            ),
            ("WASMHOOKS_DELIVERY__JITTER", "0"),
            ("WASMHOOKS_DELIVERY__SLOW_DOWN_WAIT", "0s"),
        ],
    )
    .await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let webhook = server
        .create_webhook(json!({ "name": "fifo", "event_kinds": ["order.*"], "module_id": module,
                                "url": receiver.url, "entity_key": "/order", "entity_mode": "in_order" }))
        .await;
    assert_eq!(webhook["entity_mode"], "in_order");

    // The first attempt for order X fails; X's later events must wait for its retry.
    receiver.answer_with(&[500]);
    let batch: Vec<_> = (1..=3)
        .map(|n| json!({ "kind": "order.updated", "payload": { "order": "X", "n": n } }))
        .collect();
    let ack = server.emit(json!(batch)).await;
    let ids: Vec<&str> = ack["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["deliveries"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "no debounce in order mode"
    );
    receiver.wait_for(1).await;
    // Another order is not held back by X.
    server
        .emit(json!({ "kind": "order.updated", "payload": { "order": "Y", "n": 1 } }))
        .await;
    let got = receiver.wait_for(5).await;
    let bodies: Vec<serde_json::Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let x: Vec<i64> = bodies
        .iter()
        .filter(|b| b["order"] == "X")
        .map(|b| b["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        x,
        [1, 1, 2, 3],
        "X's events in order, the failed one retried first"
    );
    assert!(bodies.iter().any(|b| b["order"] == "Y"));
    for id in ids {
        assert_eq!(server.final_delivery(id).await["status"], "delivered");
    }
}

/// A server with `max_in_flight` slots, `per_endpoint` per endpoint and a ten-minute timeout;
/// eight held receivers with a webhook each (kinds `slow0.*` … `slow7.*`) and 20 events queued
/// for each, in `tenant`; and a healthy receiver with a webhook for `fast.*` in `healthy_tenant`.
async fn hung_beside_healthy(
    dir: &std::path::Path,
    max_in_flight: &str,
    per_endpoint: &str,
    tenant: Option<&str>,
    healthy_tenant: Option<&str>,
) -> (Server, Vec<Receiver>, Receiver) {
    let server = Server::start(
        dir,
        &[
            ("WASMHOOKS_DELIVERY__MAX_IN_FLIGHT", max_in_flight),
            ("WASMHOOKS_DELIVERY__ENDPOINT_CONCURRENCY", per_endpoint),
            ("WASMHOOKS_DELIVERY__TIMEOUT", "10m"),
        ],
    )
    .await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let mut hung = Vec::new();
    for i in 0..8 {
        let receiver = Receiver::start().await;
        receiver.hold();
        server
            .create_webhook(json!({ "name": format!("hung {i}"), "tenant": tenant,
                                    "event_kinds": [format!("slow{i}.*")],
                                    "module_id": module, "url": receiver.url }))
            .await;
        hung.push(receiver);
    }
    let healthy = Receiver::start().await;
    server
        .create_webhook(json!({ "name": "healthy", "tenant": healthy_tenant,
                                "event_kinds": ["fast.*"], "module_id": module,
                                "url": healthy.url }))
        .await;
    let batch: Vec<_> = (0..8)
        .flat_map(|i| {
            (0..20).map(move |n| {
                json!({ "kind": format!("slow{i}.created"), "tenant": tenant, "payload": { "n": n } })
            })
        })
        .collect();
    server.emit(json!(batch)).await;
    (server, hung, healthy)
}

/// Waits until the held receivers hold `at_least` requests between them.
async fn held_at_least(hung: &[Receiver], at_least: usize) {
    eventually(
        &format!("the hung receivers to hold {at_least} requests"),
        || async { (hung.iter().map(Receiver::waiting).sum::<usize>() >= at_least).then_some(()) },
    )
    .await;
}

/// Emits ten `fast.created` events of `tenant` and waits until each is delivered.
async fn ten_delivered(server: &Server, tenant: Option<&str>) {
    let batch: Vec<_> = (0..10)
        .map(|n| json!({ "kind": "fast.created", "tenant": tenant, "payload": { "n": n } }))
        .collect();
    let ack = server.emit(json!(batch)).await;
    for result in ack["data"].as_array().unwrap() {
        let done = server
            .final_delivery(result["deliveries"][0].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "delivered", "{done}");
    }
}

#[tokio::test]
async fn eight_hung_endpoints_cannot_take_every_slot_from_a_healthy_one() {
    let (_tmp, dir) = data_dir();
    // Eight endpoints that never answer could hold 8 × 16 requests, twice the host's 64
    // slots, and only time out after ten minutes.
    let (server, hung, healthy) = hung_beside_healthy(&dir, "64", "16", None, None).await;
    // The hung endpoints fill every slot they may: all but the last eighth.
    held_at_least(&hung, 56).await;

    // The healthy receiver's deliveries all arrive while the hung ones still hold theirs.
    ten_delivered(&server, None).await;
    assert_eq!(healthy.received().len(), 10);
    let held: usize = hung.iter().map(Receiver::waiting).sum();
    assert!((56..64).contains(&held), "{held} held");
    assert!(hung.iter().all(|r| r.received().is_empty()));
    for receiver in &hung {
        receiver.release();
    }
}

#[tokio::test]
async fn one_tenants_hung_endpoints_hold_at_most_its_share_of_the_slots() {
    let (_tmp, dir) = data_dir();
    // Eight hung endpoints of one tenant: more than the last eighth of the slots can serve
    // one at a time, so only the tenant's share (half of 32) keeps the other tenant going.
    let (server, hung, healthy) = hung_beside_healthy(&dir, "32", "8", Some("a"), Some("b")).await;
    held_at_least(&hung, 16).await;

    ten_delivered(&server, Some("b")).await;
    assert_eq!(healthy.received().len(), 10);
    let held: usize = hung.iter().map(Receiver::waiting).sum();
    assert_eq!(held, 16, "tenant a holds its share and no more");
    for receiver in &hung {
        receiver.release();
    }
}
