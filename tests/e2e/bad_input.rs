//! Bad input gets a clear 4xx naming what was wrong, and changes nothing.

use serde_json::{json, Value};

use crate::support::{data_dir, Server};

fn error_of(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {body}")),
        body["error"]["message"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn bad_modules_are_refused_with_the_reason() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let path = "/v1/modules?name=x";

    let (status, body) = server
        .post_raw(path, "application/wasm", b"hello".to_vec())
        .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&body).0, "invalid_module");
    assert!(error_of(&body).1.contains("not a WebAssembly component"));

    let core = wat::parse_str("(module)").unwrap();
    let (status, body) = server.post_raw(path, "application/wasm", core).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body)
            .1
            .contains("core WebAssembly module, not a component"),
        "{body}"
    );

    let other_world = wat::parse_str("(component)").unwrap();
    let (status, body) = server.post_raw(path, "application/wasm", other_world).await;
    assert_eq!(status, 422);
    assert!(
        error_of(&body)
            .1
            .contains("does not implement the wasmhooks:plugin/webhook@0.1.0 world"),
        "{body}"
    );

    let mut broken = wasmhooks::examples::FORWARD.to_vec();
    broken.truncate(broken.len() / 2);
    let (status, body) = server.post_raw(path, "application/wasm", broken).await;
    assert_eq!(status, 422);
    assert!(error_of(&body).1.starts_with("invalid component"), "{body}");

    let (status, body) = server
        .post_raw(path, "text/plain", wasmhooks::examples::FORWARD.to_vec())
        .await;
    assert_eq!(status, 415, "{body}");

    let (status, body) = server
        .post_raw(
            "/v1/modules",
            "application/wasm",
            wasmhooks::examples::FORWARD.to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).1.starts_with("name:"), "{body}");

    let (_, list) = server.get("/v1/modules").await;
    assert_eq!(list["data"], json!([]), "nothing was stored");

    // The same bytes twice: one module, 201 then 200.
    let (first, a) = server
        .post_raw(
            path,
            "application/wasm",
            wasmhooks::examples::FORWARD.to_vec(),
        )
        .await;
    let (second, b) = server
        .post_raw(
            path,
            "application/wasm",
            wasmhooks::examples::FORWARD.to_vec(),
        )
        .await;
    assert_eq!((first.as_u16(), second.as_u16()), (201, 200));
    assert_eq!(a["id"], b["id"]);
}

#[tokio::test]
async fn bad_webhooks_are_refused_naming_the_field() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let valid = json!({ "name": "ok", "event_kinds": ["order.*"], "module_id": module, "url": "http://127.0.0.1:9/x" });
    let with = |key: &str, value: Value| {
        let mut v = valid.clone();
        v[key] = value;
        v
    };
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            with("name", json!("n".repeat(101))),
            400,
            "validation_error",
            "name: is 101 characters; the limit is 100",
        ),
        (
            with("name", json!("  ")),
            400,
            "validation_error",
            "name: must not be empty",
        ),
        (
            with("url", json!("ftp://host/x")),
            400,
            "validation_error",
            "url: scheme `ftp` is not allowed",
        ),
        (
            with("url", json!("not-a-url")),
            400,
            "validation_error",
            "url: `not-a-url` is a relative URL; give an absolute http(s) URL or a connection",
        ),
        (
            with("url", json!(format!("http://h/{}", "x".repeat(2048)))),
            400,
            "validation_error",
            "url: is 2057 bytes",
        ),
        (
            with("method", json!("FETCH")),
            400,
            "validation_error",
            "method: `FETCH` is not supported",
        ),
        (
            with("module_id", json!("mod_00000000000000000000000000000000")),
            404,
            "not_found",
            "module `mod_00000000000000000000000000000000` does not exist",
        ),
        (
            with("module_id", json!("forward")),
            400,
            "validation_error",
            "module_id: `forward` is not a valid module id",
        ),
        (
            with("event_kinds", json!([])),
            400,
            "validation_error",
            "event_kinds: at least one",
        ),
        (
            with("event_kinds", json!(["order.*", "or der"])),
            400,
            "validation_error",
            "event_kinds[1]: event kind pattern `or der` is invalid",
        ),
        (
            with("headers", json!({ "webhook-signature": "x" })),
            400,
            "validation_error",
            "headers.webhook-signature: header `webhook-signature` is reserved",
        ),
        (
            with("headers", json!({ "bad name": "x" })),
            400,
            "validation_error",
            "headers.bad name: `bad name` is not a valid header name",
        ),
        (
            with("config", json!([1])),
            400,
            "validation_error",
            "config: must be a JSON object",
        ),
        (
            with("colour", json!("red")),
            400,
            "invalid_json",
            "unknown field `colour`",
        ),
        (
            json!({ "name": "no url", "event_kinds": ["a"], "module_id": module }),
            400,
            "validation_error",
            "url: a url or a connection is required",
        ),
        (
            json!({ "name": "x", "event_kinds": "a.b", "module_id": module, "url": "http://h/" }),
            400,
            "invalid_json",
            "invalid type",
        ),
    ];
    for (body, status, code, message) in cases {
        let (got, answer) = server.post_json("/v1/webhooks", &body).await;
        assert_eq!(got.as_u16(), status, "{body} → {answer}");
        let (got_code, got_message) = error_of(&answer);
        assert_eq!(got_code, code, "{body} → {answer}");
        assert!(
            got_message.contains(message),
            "{body}: expected {message:?} in {got_message:?}"
        );
    }

    let (status, body) = server
        .post_raw("/v1/webhooks", "application/json", b"{\"name\": ".to_vec())
        .await;
    assert_eq!((status.as_u16(), error_of(&body).0), (400, "invalid_json"));
    let (status, body) = server
        .post_raw("/v1/webhooks", "text/plain", valid.to_string().into_bytes())
        .await;
    assert_eq!(
        (status.as_u16(), error_of(&body).0),
        (415, "unsupported_media_type")
    );

    let (_, list) = server.get("/v1/webhooks").await;
    assert_eq!(list["data"], json!([]), "no refused webhook was stored");
    let (status, _) = server.post_json("/v1/webhooks", &valid).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn bad_events_and_lookups_are_refused_and_store_nothing() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({ "payload": {} }),
            "invalid_json",
            "missing field `kind`",
        ),
        (
            json!({ "kind": "order.created" }),
            "invalid_json",
            "missing field `payload`",
        ),
        (
            json!({ "kind": "order created", "payload": {} }),
            "validation_error",
            "kind: event kind `order created` is invalid",
        ),
        (
            json!({ "kind": "a.b", "payload": {}, "id": "has space" }),
            "validation_error",
            "id: event id `has space`",
        ),
        (
            json!({ "kind": "a.b", "payload": {}, "attributes": { "store": 7 } }),
            "validation_error",
            "attributes.store: must be a string",
        ),
        (
            json!({ "kind": "a.b", "payload": {}, "occurred_at": "yesterday" }),
            "invalid_json",
            "not an RFC 3339 timestamp",
        ),
        (json!([]), "validation_error", "events: at least one event"),
        (
            json!([{ "id": "first-ok", "kind": "a.b", "payload": {} }, { "kind": "", "payload": {} }]),
            "validation_error",
            "events[1].kind",
        ),
    ];
    for (body, code, message) in cases {
        let (status, answer) = server.post_json("/v1/events", &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(error_of(&answer).0, code, "{body} → {answer}");
        assert!(
            error_of(&answer).1.contains(message),
            "{body}: expected {message:?} in {answer}"
        );
    }
    // The valid first event of the refused batch was not stored.
    let (status, body) = server.get("/v1/events/first-ok").await;
    assert_eq!((status.as_u16(), error_of(&body).0), (404, "not_found"));

    let (status, body) = server
        .post_raw("/v1/events", "application/json", b"[{".to_vec())
        .await;
    assert_eq!((status.as_u16(), error_of(&body).0), (400, "invalid_json"));

    let (status, body) = server.get("/v1/deliveries/dlv_nope").await;
    assert_eq!((status.as_u16(), error_of(&body).0), (404, "not_found"));
    let (status, body) = server.get("/v1/deliveries?status=lost").await;
    assert_eq!(status, 400);
    assert!(error_of(&body).1.contains("unknown status `lost`"));
    let (status, body) = server.get("/v1/deliveries?limit=0").await;
    assert_eq!(
        (status.as_u16(), error_of(&body).0),
        (400, "validation_error")
    );
    let (status, body) = server.get("/v1/nothing-here").await;
    assert_eq!((status.as_u16(), error_of(&body).0), (404, "not_found"));
    let (status, body) = server.post_json("/v1/deliveries", &json!({})).await;
    assert_eq!(
        (status.as_u16(), error_of(&body).0),
        (405, "method_not_allowed")
    );
}
