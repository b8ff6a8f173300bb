//! Inputs an attacker or a careless caller sends, each refused with a message naming what was
//! wrong and changing nothing; and a data directory no other user can read.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{data_dir, error_message, Server};

#[tokio::test]
async fn bad_definitions_are_refused_by_name() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let base = || json!({ "name": "w", "event_kinds": ["a"], "module_id": module, "url": "https://example.com/in" });
    let with = |field: &str, value: Value| {
        let mut definition = base();
        definition[field] = value;
        definition
    };
    let kinds: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    let scope: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("a{i}"), json!(["1"]))).collect();
    // Within the per-attribute limits, 80 KB in all: matched against every event.
    let large_scope: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("a{i}"), json!(["x".repeat(1000), "y".repeat(1000)])))
        .collect();
    let cases = [
        (
            with("url", json!("https://example.com/a\r\nx-injected: 1")),
            "url: ",
        ),
        (with("url", json!("https://example.com/a b")), "url: "),
        (with("url", json!("http:///x")), "url: "),
        (with("url", json!("https://[2002:7f00:1::1]/x")), "6to4"),
        (
            with("url", json!("https://[::ffff:0:7f00:1]/x")),
            "loopback",
        ),
        (with("url", json!("https://[fec0::1]/x")), "site-local"),
        (with("event_kinds", json!(kinds)), "event_kinds: "),
        (with("scope", json!(scope)), "scope: "),
        (
            with("scope", json!(large_scope)),
            "scope: is 80110 bytes of names and values; the limit is 65536",
        ),
        (
            with("scope", json!({ "store": ["x".repeat(1025)] })),
            "scope.store: ",
        ),
        (
            with("config", json!({ "blob": "x".repeat(300 * 1024) })),
            "config: ",
        ),
        (with("retry_schedule", json!(["0s"])), "retry_schedule[0]: "),
        (with("tenant", json!("a\u{7}b")), "tenant: "),
    ];
    for (definition, expected) in cases {
        let (status, body) = server.post_json("/v1/webhooks", &definition).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expected}: {body}");
        assert!(
            error_message(&body).contains(expected),
            "{expected}: {body}"
        );
    }
    let (_, list) = server.get("/v1/webhooks").await;
    assert_eq!(
        list["data"],
        json!([]),
        "a refused definition stored nothing"
    );

    // null for a field that cannot be cleared is refused, not read as "unchanged".
    let hook = server.create_webhook(base()).await;
    let id = hook["id"].as_str().unwrap();
    for field in ["name", "event_kinds", "module_id", "config", "enabled"] {
        let (status, body) = server
            .patch_json(&format!("/v1/webhooks/{id}"), &json!({ field: null }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(
            error_message(&body).starts_with(&format!("{field}: cannot be null")),
            "{body}"
        );
    }
    let (status, body) = server
        .post_json(
            "/v1/connections",
            &json!({ "name": null, "base_url": "https://e.com" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // An event's tenant with control characters.
    let (status, body) = server
        .post_json(
            "/v1/events",
            &json!({ "kind": "a", "tenant": "acme\u{0}x", "payload": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_message(&body).starts_with("tenant: "), "{body}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_private_and_webhook_headers_are_sealed() {
    use std::os::unix::fs::PermissionsExt;

    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "w", "event_kinds": ["a"], "module_id": module,
                                "url": "https://example.com/in",
                                "headers": { "authorization": "Bearer header-token-0451" } }),
        )
        .await;
    // Flushed: a clean shutdown is not needed for the check, the store flushes on its own.
    server.emit(json!({ "kind": "b", "payload": {} })).await;
    server.kill().await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let mut files = 0;
    let mut stack = vec![dir.clone()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                stack.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                let bytes = std::fs::read(&path).unwrap();
                let needle = b"header-token-0451";
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds the header in clear",
                    path.display()
                );
                files += 1;
            }
        }
    }
    assert!(files > 3, "the store wrote its files");
}
