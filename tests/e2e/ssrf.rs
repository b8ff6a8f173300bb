//! The SSRF guard: without an allow-list, loopback, private, link-local and metadata
//! destinations are refused — addresses in URLs when the webhook or connection is written,
//! names when they resolve, checking the address actually connected to.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{data_dir, run_to_end, wasmhooks_command, Receiver, Server};

/// No allow-list: the harness's `127.0.0.1` entry is removed.
const GUARDED: &[(&str, &str)] = &[("WASMHOOKS_DELIVERY__ALLOWED_DESTINATIONS", "")];

#[tokio::test]
async fn restricted_addresses_in_urls_are_refused_when_written() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, GUARDED).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let cases = [
        ("http://127.0.0.1:9/in", "127.0.0.1 is a loopback address"),
        ("http://10.1.2.3/in", "10.1.2.3 is a private address"),
        (
            "http://169.254.169.254/latest/meta-data",
            "169.254.169.254 is a cloud metadata address",
        ),
        ("http://[::1]:9/in", "[::1] is a loopback address"),
        ("http://[::ffff:192.168.0.1]/in", "is a private address"),
        (
            "http://192.88.99.1/in",
            "192.88.99.1 is a 6to4 relay (deprecated) address",
        ),
        ("http://[2002:c058:6301::1]/in", "is a 6to4 (carries"),
    ];
    for (url, expected) in cases {
        let (status, body) = server
            .post_json(
                "/v1/webhooks",
                &json!({"name": "w", "event_kinds": ["a"], "module_id": module, "url": url}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{url}: {message}");
        assert!(
            message.contains("delivery.allowed_destinations"),
            "{message}"
        );
    }
    let (status, body) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "inside", "base_url": "http://192.168.1.10/api"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("base_url: destination refused: 192.168.1.10 is a private address"));
    // Nothing was created.
    let (_, webhooks) = server.get("/v1/webhooks").await;
    assert_eq!(webhooks["data"].as_array().unwrap().len(), 0, "{webhooks}");
    let (_, connections) = server.get("/v1/connections").await;
    assert_eq!(connections["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_at_connect_time_unless_allow_listed() {
    let receiver = Receiver::start().await;
    let port = receiver.url.rsplit(':').next().unwrap().to_string();
    let by_name = format!("http://localhost:{port}/in");

    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, GUARDED).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({
            "name": "by-name", "event_kinds": ["a"], "module_id": module,
            "url": by_name, "retry_schedule": []
        }))
        .await;
    let ack = server.emit(json!({"kind": "a", "payload": {}})).await;
    let delivery = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(delivery["status"], "dead", "{delivery}");
    let error = delivery["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("destination refused: localhost resolves to ")
            && error.contains("a loopback address")
            && error.contains("delivery.allowed_destinations"),
        "{error}"
    );
    assert!(receiver.received().is_empty());
    drop(server);

    // The same webhook reaches the receiver once loopback is allow-listed.
    let (_tmp2, dir2) = data_dir();
    let allowed = [(
        "WASMHOOKS_DELIVERY__ALLOWED_DESTINATIONS",
        r#"["127.0.0.0/8", "::1"]"#,
    )];
    let server = Server::start(&dir2, &allowed).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({
            "name": "by-name", "event_kinds": ["a"], "module_id": module, "url": by_name
        }))
        .await;
    let ack = server.emit(json!({"kind": "a", "payload": {}})).await;
    let delivery = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(receiver.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn a_bad_allow_list_stops_the_server_with_the_setting_named() {
    let (_tmp, dir) = data_dir();
    let output = run_to_end(
        wasmhooks_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .env(
                "WASMHOOKS_DELIVERY__ALLOWED_DESTINATIONS",
                r#"["intranet"]"#,
            ),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("delivery.allowed_destinations")
            && stderr.contains("`intranet` is neither an IP address nor a network"),
        "{stderr}"
    );
}
