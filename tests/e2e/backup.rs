//! Backups while the host works: a copy taken under load holds every event acknowledged
//! before it began, and a second host started on it sends what was pending in it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{
    client_with_key, data_dir, error_message, eventually, tenant_client, Receiver, Server,
    ADMIN_KEY,
};

#[tokio::test]
async fn a_backup_taken_under_load_starts_a_host_with_every_event_acknowledged_before_it() {
    let (_tmp, dir) = data_dir();
    let backups = tempfile::tempdir().unwrap();
    let copy_dir = backups.path().join("copy");
    let receiver = Receiver::start().await;
    // Held: deliveries stay pending, in flight or queued, while the copy is taken.
    receiver.hold();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({ "name": "orders", "event_kinds": ["order.*"],
                                "module_id": module, "url": receiver.url }))
        .await;

    // Load: batches of events, each id noted once acknowledged, until told to stop.
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let (client, url) = (client_with_key(ADMIN_KEY), server.url.clone());
        tokio::spawn(async move {
            for round in 0..10_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let ids: Vec<String> = (0..10).map(|i| format!("load-{round}-{i}")).collect();
                let batch: Vec<_> = ids
                    .iter()
                    .map(|id| json!({ "id": id, "kind": "order.created", "payload": { "id": id } }))
                    .collect();
                let response = client
                    .post(format!("{url}/v1/events"))
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                acknowledged.lock().unwrap().extend(ids);
            }
        })
    };
    eventually("some load to be acknowledged", || async {
        (acknowledged.lock().unwrap().len() >= 200).then_some(())
    })
    .await;
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let (status, report) = server
        .post_json(
            "/v1/backup",
            &json!({ "dir": copy_dir.display().to_string() }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(report["secrets_key_copied"], true, "{report}");
    // Written last: its presence says the backup is whole.
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy_dir.join("backup.json")).unwrap()).unwrap();
    assert_eq!(marker["records"], report["records"], "{marker}");
    assert_eq!(marker["taken_at"], report["taken_at"], "{marker}");
    assert!(report["pending"].as_u64().unwrap() > 0, "{report}");

    // What a backup refuses, naming the field; and who may take one.
    for (bad, why) in [
        (copy_dir.display().to_string(), "not an empty directory"),
        ("relative/dir".to_string(), "not an absolute path"),
        (
            dir.join("inside").display().to_string(),
            "inside the data directory",
        ),
        (
            format!("{}/nope/../copy", backups.path().display()),
            "has `.` or `..` in it",
        ),
    ] {
        let (status, body) = server.post_json("/v1/backup", &json!({ "dir": bad })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_message(&body).starts_with("dir: "), "{body}");
        assert!(error_message(&body).contains(why), "{body}");
    }
    let tenant = tenant_client(&server, "admin", "acme").await;
    let (status, _) = server
        .send(
            tenant
                .post(format!("{}/v1/backup", server.url))
                .json(&json!({ "dir": backups.path().join("t").display().to_string() })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    drop(server);

    // A second host on the copy holds every event acknowledged before the backup began,
    // and delivers what was pending in it.
    let copy = Server::start(&copy_dir, &[]).await;
    for id in &before {
        let (status, body) = copy.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
    }
    receiver.release();
    let deliveries = copy.deliveries_of(&before[0]).await;
    assert_eq!(deliveries.len(), 1);
    let done = copy
        .final_delivery(deliveries[0]["id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "delivered", "{done}");
}
