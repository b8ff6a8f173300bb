//! Traces: with an OTLP endpoint set, a delivery's spans (the delivery, its attempt, its
//! plugin call) reach the collector over OTLP/HTTP, carrying the delivery's and webhook's ids.

use serde_json::json;

use crate::support::{data_dir, eventually, Receiver, Server};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_deliverys_spans_reach_an_otlp_collector_with_its_ids() {
    let (_tmp, dir) = data_dir();
    let collector = Receiver::start().await;
    let receiver = Receiver::start().await;
    let server = Server::start(
        &dir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            // Export every 100 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let webhook = server
        .create_webhook(json!({ "name": "traced", "event_kinds": ["order.*"],
                                "module_id": module, "url": receiver.url }))
        .await;
    let webhook = webhook["id"].as_str().unwrap().to_string();
    let ack = server
        .emit(json!({ "kind": "order.created", "payload": { "n": 1 } }))
        .await;
    let delivery = ack["deliveries"][0].as_str().unwrap().to_string();
    let done = server.final_delivery(&delivery).await;
    assert_eq!(done["status"], "delivered", "{done}");

    let needles: [&[u8]; 5] = [
        b"wasmhooks.delivery",
        b"wasmhooks.attempt",
        b"wasmhooks.plugin",
        delivery.as_bytes(),
        webhook.as_bytes(),
    ];
    let exports = eventually("the spans to reach the collector", || async {
        let got = collector.received();
        let bytes: Vec<u8> = got.iter().flat_map(|r| r.body.to_vec()).collect();
        needles
            .iter()
            .all(|needle| contains(&bytes, needle))
            .then_some(got)
    })
    .await;
    for export in &exports {
        assert_eq!(export.method, "POST");
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(
            export.header("content-type"),
            Some("application/x-protobuf")
        );
    }
    assert!(
        !exports.iter().any(|r| contains(&r.body, b"\"n\":1")),
        "spans carry ids, not payloads"
    );
}
