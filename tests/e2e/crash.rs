//! Durability: every event acknowledged with 202 is delivered even if the host is killed with
//! SIGKILL right after acknowledging it.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::{data_dir, eventually, Receiver, Server};

#[tokio::test]
async fn events_acknowledged_before_sigkill_are_delivered_after_restart() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    // Nothing gets through before the kill: every delivery is still open when it happens.
    receiver.hold();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({ "name": "c", "event_kinds": ["order.*"], "module_id": module, "url": receiver.url }))
        .await;

    let mut expected = BTreeSet::new();
    let batch: Vec<_> = (0..10)
        .map(|i| json!({ "id": format!("b-{i}"), "kind": "order.created", "payload": { "n": format!("b-{i}") } }))
        .collect();
    server.emit(json!(batch)).await;
    expected.extend((0..10).map(|i| format!("b-{i}")));
    for i in 0..10 {
        server
            .emit(json!({ "id": format!("s-{i}"), "kind": "order.paid", "payload": { "n": format!("s-{i}") } }))
            .await;
        expected.insert(format!("s-{i}"));
    }
    server.kill().await;

    let restarted = Server::start(&dir, &[]).await;
    receiver.release();
    let delivered = eventually("every acknowledged event at the receiver", || async {
        let seen: BTreeSet<String> = receiver
            .received()
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["n"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (seen == expected).then_some(seen)
    })
    .await;
    assert_eq!(delivered.len(), 20);

    // And the restarted host knows each of them ended delivered: none stuck.
    for id in &expected {
        let deliveries = restarted.deliveries_of(id).await;
        assert_eq!(deliveries.len(), 1, "one delivery for {id}");
        let d = restarted
            .final_delivery(deliveries[0]["id"].as_str().unwrap())
            .await;
        assert_eq!(d["status"], "delivered", "{d}");
    }
}
