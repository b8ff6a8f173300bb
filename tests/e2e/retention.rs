//! Retention: under a continuous load with retention of seconds, the data directory stops
//! growing with the number of events, pending deliveries outlive the pruning of everything
//! around them, and what was pruned answers 404.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client_with_key, error_message, eventually, tenant_client, Receiver, Server, ADMIN_KEY,
};

/// Bytes the files under `dir` take on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_usage(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// The sum of a metric's samples with these labels.
async fn metric(server: &Server, name: &str, label: &str) -> f64 {
    let response = client_with_key(ADMIN_KEY)
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// About 1 KB that does not compress.
fn filler(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect()
}

/// Emits `count` events of `kind` (about 1 KB each) in POSTs of 100, ids `{prefix}-{n}`.
async fn emit_many(server: &Server, kind: &str, prefix: &str, count: usize) {
    for start in (0..count).step_by(100) {
        let batch: Vec<Value> = (start..(start + 100).min(count))
            .map(|n| {
                let id = format!("{prefix}-{n}");
                let filler = filler(n as u64 + prefix.len() as u64 * 1_000_003);
                json!({ "id": id, "kind": kind, "payload": { "id": id, "filler": filler } })
            })
            .collect();
        server.emit(json!(batch)).await;
    }
}

#[tokio::test]
async fn under_load_with_retention_of_seconds_the_store_levels_off_and_pending_work_survives() {
    let (_tmp, dir) = crate::support::data_dir();
    let server = Server::start(
        &dir,
        &[
            ("WASMHOOKS_RETENTION__DELIVERED", "1s"),
            ("WASMHOOKS_RETENTION__FAILED", "1s"),
            ("WASMHOOKS_RETENTION__EVENTS", "2s"),
            ("WASMHOOKS_RETENTION__INTERVAL", "200ms"),
            ("WASMHOOKS_STORE__BALLAST_BYTES", "0"),
        ],
    )
    .await;
    let (fast, later) = (Receiver::start().await, Receiver::start().await);
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let hook = |name: &str, kind: &str, url: &str, extra: Value| {
        let mut definition = json!({ "name": name, "event_kinds": [kind],
                                     "module_id": module, "url": url });
        definition
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        definition
    };
    server
        .create_webhook(hook("fast", "order.created", &fast.url, json!({})))
        .await;
    // Pending far longer than any retention: its events must be there when it is sent.
    server
        .create_webhook(hook(
            "later",
            "order.later",
            &later.url,
            json!({ "delay": "12s" }),
        ))
        .await;
    let kept = server
        .create_webhook(hook(
            "kept",
            "order.kept",
            &fast.url,
            json!({ "retention": { "delivered": "forever" } }),
        ))
        .await;
    assert_eq!(kept["retention"]["delivered"], "forever", "{kept}");
    emit_many(&server, "order.later", "later", 20).await;
    emit_many(&server, "order.kept", "kept", 5).await;
    let first = server
        .emit(json!({ "id": "first", "kind": "order.created", "payload": { "id": "first" } }))
        .await;
    let first_delivery = first["deliveries"][0].as_str().unwrap().to_string();

    // Rounds of load; after each, wait for the pruner to catch up and measure.
    let mut sizes = Vec::new();
    let mut emitted = 1;
    for round in 0..4 {
        emit_many(&server, "order.created", &format!("r{round}"), 2_000).await;
        emitted += 2_000;
        fast.wait_for(emitted + 5).await;
        eventually("the pruner to catch up with the load", || async {
            let events = metric(&server, "wasmhooks_pruned_total", "kind=\"events\"").await;
            let deliveries = metric(&server, "wasmhooks_pruned_total", "kind=\"deliveries\"").await;
            (events >= emitted as f64 && deliveries >= emitted as f64).then_some(())
        })
        .await;
        sizes.push(disk_usage(&dir));
    }
    eprintln!("data directory after each round of 2,000 events: {sizes:?}");
    // Four times the events, but the directory holds what is live, not what was ever sent:
    // kept for ever, each round of 2,000 adds about 11 MB here; pruned, the size moves
    // within a few of sled's 512 KiB segments as they are cleaned and reused.
    let (second, last) = (sizes[1], sizes[3]);
    assert!(
        last <= second + (8 << 20),
        "the data directory grew with the events: {sizes:?}"
    );

    // Every delayed delivery outlived the pruning of its events' neighbours, and was sent
    // with its event.
    let got = later.wait_for(20).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["id"].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "{ids:?}");

    // Pruned: 404 by id, gone from lists; the id is new again for an emitter.
    let (status, body) = server
        .get(&format!("/v1/deliveries/{first_delivery}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = server.get("/v1/events/first").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, list) = server.get("/v1/deliveries?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"] != first_delivery.as_str()),
        "{list}"
    );
    let again = server
        .emit(json!({ "id": "first", "kind": "order.created", "payload": { "id": "first" } }))
        .await;
    assert_eq!(again["deliveries"].as_array().unwrap().len(), 1, "{again}");

    // The webhook that keeps its deliveries for ever still has them, past their events.
    let (status, list) = server
        .get(&format!(
            "/v1/deliveries?webhook_id={}&limit=100",
            kept["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 5, "{list}");
    let (status, _) = server.get("/v1/events/kept-0").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(metric(&server, "wasmhooks_prune_passes_total", "").await >= 1.0);
}

#[tokio::test]
async fn a_tenants_webhook_keeps_its_deliveries_no_longer_than_the_host_does() {
    let (_tmp, dir) = crate::support::data_dir();
    let server = Server::start(&dir, &[("WASMHOOKS_RETENTION__FAILED", "14d")]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let admin = tenant_client(&server, "admin", "acme").await;
    let create = |retention: Value| {
        admin
            .post(format!("{}/v1/webhooks", server.url))
            .json(
                &json!({ "name": "audit", "event_kinds": ["order.*"], "module_id": module,
                           "url": "https://receiver.example/in", "retention": retention }),
            )
            .send()
    };
    for (retention, field, why) in [
        (
            json!({ "failed": "30d" }),
            "retention.failed",
            "retention.failed = 14d",
        ),
        (
            json!({ "delivered": "forever" }),
            "retention.delivered",
            "forever is longer",
        ),
        (
            json!({ "delivered": "0s" }),
            "retention.delivered",
            "as soon as they finish",
        ),
        (
            json!({ "failed": "soon" }),
            "retention.failed",
            "or `forever`",
        ),
        (json!({ "kept": "1d" }), "kept", "unknown field"),
    ] {
        let response = create(retention.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{retention}");
        let body: Value = response.json().await.unwrap();
        let message = error_message(&body);
        assert!(
            message.contains(field) && message.contains(why),
            "{retention}: {body}"
        );
    }
    let response = create(json!({ "delivered": "1d", "failed": "14d" }))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["retention"],
        json!({ "delivered": "1d", "failed": "14d" })
    );
    // Operators without a tenant may keep any webhook's deliveries for ever.
    let body = server
        .create_webhook(json!({ "name": "audit", "event_kinds": ["order.*"],
                                "module_id": module, "url": "https://receiver.example/in",
                                "retention": { "failed": "forever" } }))
        .await;
    assert_eq!(body["retention"]["failed"], "forever");
}
