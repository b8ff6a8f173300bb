//! Debounce (Sellasist: "act only after N days, if the condition still holds"), with the
//! host's clock under the test's control: no test waits for real days.
//!
//! The host runs in-process here (the library API the binary is built on), with a
//! `ManualClock`; its scheduler looks at the queue at least every half second, so moving the
//! clock is all it takes for due work to start.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wasmhooks::clock::ManualClock;
use wasmhooks::config::Config;
use wasmhooks::model::{DeliveryStatus, Millis};
use wasmhooks::pipeline::{EventInput, Pipeline, WebhookInput};

use crate::support::{data_dir, eventually, Receiver};

const DAY: Duration = Duration::from_secs(86_400);

async fn emit(p: &Pipeline, sku: &str, amount: u32) -> String {
    let input: EventInput = serde_json::from_value(json!({
        "kind": "stock.changed", "payload": { "id": sku, "amount": amount }
    }))
    .unwrap();
    let results = p.emit(vec![input]).await.unwrap();
    assert_eq!(results[0].deliveries.len(), 1);
    results[0].deliveries[0].to_string()
}

async fn status_of(p: &Pipeline, id: &str) -> DeliveryStatus {
    let id = wasmhooks::model::DeliveryId::parse(id).unwrap();
    p.delivery(&id).unwrap().status
}

#[tokio::test]
async fn a_newer_event_for_the_same_entity_replaces_the_waiting_one() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let start = Millis(jiff::Timestamp::now().as_millisecond());
    let clock = Arc::new(ManualClock::new(start));
    let mut config = Config {
        data_dir: dir,
        ..Config::default()
    };
    config.plugin.max_limits.cpu_time = Duration::from_secs(20);
    config.plugin.limits.cpu_time = Duration::from_secs(10);
    config.delivery.allowed_destinations = vec!["127.0.0.1".into()];
    let mut host = wasmhooks::Host::open_with_clock(config, clock.clone()).unwrap();
    host.start();
    let p = host.pipeline().clone();
    let (module, _) = p
        .catalog()
        .upload_module("order-threshold", "1", wasmhooks::examples::ORDER_THRESHOLD)
        .unwrap();
    // "Fire if the amount is still ≥ 100 five days after it last changed."
    let webhook: WebhookInput = serde_json::from_value(json!({
        "name": "still high after 5 days", "event_kinds": ["stock.*"], "module_id": module.id,
        "config": { "threshold": 100 }, "url": receiver.url, "delay": "5d", "entity_key": "/id"
    }))
    .unwrap();
    p.catalog().create_webhook(webhook).unwrap();

    // Day 0: A goes high. Day 2: A drops back — the same delivery now carries the drop and
    // waits five days from it.
    let a = emit(&p, "A", 500).await;
    clock.advance(2 * DAY);
    assert_eq!(
        emit(&p, "A", 0).await,
        a,
        "the waiting delivery took the newer event"
    );
    let waiting = p
        .delivery(&wasmhooks::model::DeliveryId::parse(&a).unwrap())
        .unwrap();
    assert_eq!(waiting.replaced, 1);
    assert_eq!(
        waiting.next_attempt_at,
        Some(Millis(start.as_i64() + (7 * DAY).as_millis() as i64))
    );
    // Day 2: B is low; day 3: B goes high.
    let b = emit(&p, "B", 0).await;
    clock.advance(DAY);
    assert_eq!(emit(&p, "B", 700).await, b);

    // Day 7: A's delay ends; the plugin sees the latest state (0) and skips. B still waits.
    clock.advance(4 * DAY);
    eventually("A to be decided", || async {
        (status_of(&p, &a).await == DeliveryStatus::Skipped).then_some(())
    })
    .await;
    assert_eq!(status_of(&p, &b).await, DeliveryStatus::Pending);
    assert!(receiver.received().is_empty(), "nothing fired for A");

    // Day 8: B's delay ends; it fires once, with the latest amount.
    clock.advance(DAY);
    eventually("B to be delivered", || async {
        (status_of(&p, &b).await == DeliveryStatus::Delivered).then_some(())
    })
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (body["order_id"].as_str(), body["amount"].as_f64()),
        (Some("B"), Some(700.0))
    );

    // A decided delivery is never replaced: a new event for A starts a new one.
    assert_ne!(emit(&p, "A", 900).await, a);
    host.shutdown().await.unwrap();
}
