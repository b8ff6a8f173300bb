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

#[tokio::test]
async fn sigkill_under_load_loses_nothing_acknowledged_and_leaves_nothing_stuck() {
    use std::sync::{Arc, Mutex};

    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let settings = [("WASMHOOKS_DELIVERY__MAX_IN_FLIGHT", "16")];
    let server = Server::start(&dir, &settings).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({ "name": "c", "event_kinds": ["order.*"], "module_id": module, "url": receiver.url }))
        .await;

    // Four emitters send events one after another while deliveries flow; the host is killed
    // in the middle of it. Only events answered 202 count.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut emitters = tokio::task::JoinSet::new();
    for e in 0..4 {
        let (client, url, acked) = (server.client.clone(), server.url.clone(), acked.clone());
        emitters.spawn(async move {
            for i in 0.. {
                let id = format!("load-{e}-{i}");
                let body = json!({ "id": id, "kind": "order.created", "payload": { "n": id } });
                match client
                    .post(format!("{url}/v1/events"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => break,
                }
            }
        });
    }
    eventually("150 acknowledged events", || async {
        (acked.lock().unwrap().len() >= 150).then_some(())
    })
    .await;
    server.kill().await;
    while emitters.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();

    let restarted = Server::start(&dir, &settings).await;
    let seen = |r: &crate::support::Received| {
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["n"]
            .as_str()
            .unwrap()
            .to_string()
    };
    eventually("every acknowledged event at the receiver", || async {
        let got: BTreeSet<String> = receiver.received().iter().map(seen).collect();
        acked.is_subset(&got).then_some(())
    })
    .await;
    // Duplicates are bounded by what was in flight at the kill.
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in receiver.received() {
        *counts.entry(seen(&r)).or_default() += 1;
    }
    let duplicated = counts.values().filter(|n| **n > 1).count();
    assert!(duplicated <= 16, "{duplicated} events were sent twice");
    // Nothing is stuck: the queue drains and every acknowledged event's delivery ended.
    eventually("an empty queue", || async {
        let (_, health) = restarted.get("/healthz").await;
        (health["queue"] == 0).then_some(())
    })
    .await;
    let (_, pending) = restarted.get("/v1/deliveries?status=pending").await;
    assert_eq!(pending["data"], json!([]));
}
