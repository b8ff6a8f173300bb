//! Input limits: each refusal is a clear 413 or 400 naming the limit, and stores nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{data_dir, error_message, Server};

#[tokio::test]
async fn every_input_limit_refuses_clearly_and_changes_nothing() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(
        &dir,
        &[
            ("WASMHOOKS_API__MAX_EVENT_BYTES", "1000"),
            ("WASMHOOKS_API__MAX_BODY_BYTES", "20000"),
            ("WASMHOOKS_API__MAX_BATCH_EVENTS", "3"),
            ("WASMHOOKS_API__MAX_MODULE_BYTES", "1000"),
        ],
    )
    .await;

    // One event over max_event_bytes.
    let big = "x".repeat(1000);
    let (status, body) = server
        .post_json(
            "/v1/events",
            &json!({"kind": "a", "payload": {"blob": big}}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    assert_eq!(
        error_message(&body),
        "the event (payload and attributes) is 1011 bytes; the limit is 1000"
    );

    // In a batch the refusal names the event; the others are not stored either.
    let (status, body) = server
        .post_json(
            "/v1/events",
            &json!([
                {"id": "evt_ok_1", "kind": "a", "payload": {}},
                {"id": "evt_big", "kind": "a", "payload": {"blob": big}}
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error_message(&body).starts_with("events[1] (payload and attributes) is "));
    let (status, _) = server.get("/v1/events/evt_ok_1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // More events than max_batch_events.
    let batch: Vec<Value> = (0..4)
        .map(|_| json!({"kind": "a", "payload": {}}))
        .collect();
    let (status, body) = server.post_json("/v1/events", &json!(batch)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        error_message(&body),
        "the event batch is 4 events; the limit is 3"
    );

    // A request body over max_body_bytes.
    let huge = "y".repeat(30_000);
    let (status, body) = server
        .post_json(
            "/v1/events",
            &json!({"kind": "a", "payload": {"blob": huge}}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        error_message(&body).contains("api.max_body_bytes"),
        "{body}"
    );

    // Too many attributes, and an attribute value too long.
    let attributes: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, body) = server
        .post_json(
            "/v1/events",
            &json!({"kind": "a", "attributes": attributes, "payload": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        error_message(&body),
        "attributes: has 65 entries; the limit is 64"
    );
    let (status, body) = server
        .post_json(
            "/v1/events",
            &json!({"kind": "a", "attributes": {"shop": "s".repeat(1025)}, "payload": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        error_message(&body),
        "attributes.shop: is 1025 bytes; the limit is 1024"
    );

    // A module over max_module_bytes.
    let (status, body) = server
        .post_raw(
            "/v1/modules?name=big",
            "application/wasm",
            wasmhooks::examples::FORWARD.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error_message(&body).contains("max_module_bytes"), "{body}");

    // Too many headers on a connection or a webhook, and a header value too long.
    let headers: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    let (status, body) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "c", "base_url": "https://erp.example/", "headers": headers}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        error_message(&body),
        "headers: has 65 headers; the limit is 64"
    );
    let (status, body) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "c", "base_url": "https://erp.example/",
                    "headers": {"x-long": "v".repeat(8193)}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        error_message(&body)
            .ends_with("the value of header `x-long` is 8193 bytes; the limit is 8192"),
        "{body}"
    );

    // Nothing of the above was stored.
    for id in ["evt_ok_1", "evt_big"] {
        let (status, _) = server.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }
    let (_, modules) = server.get("/v1/modules").await;
    assert_eq!(modules["data"], json!([]));
    let (_, connections) = server.get("/v1/connections").await;
    assert_eq!(connections["data"], json!([]));
}
