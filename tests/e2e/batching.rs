//! Batching (ShipStation: orders created together go in one notification): matched events
//! collect into one delivery, the plugin's batch entry point gets them all, and the thin
//! payload points back at this host.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{client_with_key, data_dir, Receiver, Server};

#[tokio::test]
async fn a_batch_of_events_arrives_as_one_thin_notification() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server
        .upload(
            "shipstation-notify",
            wasmhooks::examples::SHIPSTATION_NOTIFY,
        )
        .await;
    let config = json!({ "base_url": server.url });
    let batched = server
        .create_webhook(
            json!({ "name": "orders, batched", "event_kinds": ["order.*"], "module_id": module,
                                "config": config, "url": format!("{}/batched", receiver.url),
                                "batch": { "window": "1h", "max_size": 3 } }),
        )
        .await;
    assert_eq!(batched["batch"], json!({ "window": "1h", "max_size": 3 }));
    server
        .create_webhook(
            json!({ "name": "shipments, one by one", "event_kinds": ["shipment.*"],
                                "module_id": module, "config": config,
                                "url": format!("{}/single", receiver.url) }),
        )
        .await;

    // Three orders, emitted one at a time: one delivery collects them; the third fills it.
    let mut ids = Vec::new();
    let mut deliveries = Vec::new();
    for n in 1..=3 {
        let ack = server
            .emit(
                json!({ "id": format!("ord-{n}"), "kind": "order.created", "payload": { "n": n } }),
            )
            .await;
        ids.push(ack["id"].as_str().unwrap().to_string());
        deliveries.push(ack["deliveries"][0].as_str().unwrap().to_string());
    }
    assert!(
        deliveries.iter().all(|d| d == &deliveries[0]),
        "{deliveries:?}"
    );
    let done = server.final_delivery(&deliveries[0]).await;
    assert_eq!(done["status"], "delivered", "{done}");
    assert_eq!(done["batch_events"], json!(ids));

    let got = receiver.wait_for(1).await;
    assert_eq!(got.len(), 1, "one request for the whole batch");
    assert_eq!(got[0].path, "/batched");
    let notice: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(notice["resource_type"], "ORDER_NOTIFY");
    let url = notice["resource_url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("{}/v1/events?ids=ord-1,ord-2,ord-3", server.url)
    );

    // The receiver follows the resource URL with an emitter key.
    let (_, key) = server
        .post_json(
            "/v1/keys",
            &json!({ "name": "shipstation", "role": "emitter" }),
        )
        .await;
    let receiver_client = client_with_key(key["key"].as_str().unwrap());
    let (status, fetched) = server.send(receiver_client.get(url)).await;
    assert_eq!(status, StatusCode::OK);
    let fetched_ids: Vec<&str> = fetched["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(fetched_ids, ["ord-1", "ord-2", "ord-3"]);

    // A webhook without batching notifies per event, pointing at the event itself.
    server
        .emit(json!({ "id": "shp-1", "kind": "shipment.created", "payload": {} }))
        .await;
    let got = receiver.wait_for(2).await;
    let single: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(single["resource_type"], "SHIP_NOTIFY");
    assert_eq!(
        single["resource_url"],
        format!("{}/v1/events/shp-1", server.url)
    );
    let (status, _) = server
        .send(receiver_client.get(single["resource_url"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Bad batch definitions and lookups.
    for (batch, expected) in [
        (
            json!({ "window": "1s", "max_size": 0 }),
            "batch.max_size: must be 1 to 1000",
        ),
        (
            json!({ "window": "0s", "max_size": 5 }),
            "batch.window: must be more than 0",
        ),
        (json!({ "window": "1s" }), "missing field `max_size`"),
    ] {
        let (status, answer) = server
            .post_json(
                "/v1/webhooks",
                &json!({ "name": "b", "event_kinds": ["a"], "module_id": module,
                                                 "url": receiver.url, "batch": batch }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{answer}"
        );
    }
    let (status, answer) = server
        .post_json("/v1/webhooks", &json!({ "name": "b", "event_kinds": ["a"], "module_id": module, "url": receiver.url,
                                             "entity_key": "/id", "batch": { "window": "1s", "max_size": 5 } }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("batch: cannot be combined"));
    let (status, _) = server.get("/v1/events?ids=ord-1,nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get("/v1/events").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_batch_is_sent_when_its_window_closes() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "w", "event_kinds": ["*"], "module_id": module, "url": receiver.url,
                                "batch": { "window": "300ms", "max_size": 100 } }),
        )
        .await;
    // Both in one call, so both surely fall inside the window, however loaded the machine.
    let (status, acks) = server
        .post_json(
            "/v1/events",
            &json!([{ "kind": "a.b", "payload": { "n": 1 } },
                    { "kind": "a.b", "payload": { "n": 2 } }]),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{acks}");
    let (a, b) = (&acks["data"][0], &acks["data"][1]);
    assert_eq!(a["deliveries"], b["deliveries"]);
    let done = server
        .final_delivery(a["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "delivered");
    assert_eq!(done["batch_events"].as_array().unwrap().len(), 2);
    // `forward` has no batch logic of its own: the SDK's default sends one request per event.
    let got = receiver.wait_for(2).await;
    let bodies: Vec<&[u8]> = got.iter().map(|r| r.body.as_ref()).collect();
    assert_eq!(bodies, [br#"{"n":1}"#.as_slice(), br#"{"n":2}"#.as_slice()]);
    // After the batch was sent, a new event starts a new batch.
    let c = server
        .emit(json!({ "kind": "a.b", "payload": { "n": 3 } }))
        .await;
    assert_ne!(c["deliveries"], a["deliveries"]);
}
