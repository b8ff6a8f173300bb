//! Secrets (connection credentials, signing secrets) are used when sending but never appear in
//! an API response (after the one that hands out a generated secret), a log line, a dry run,
//! or the data directory's files.

use serde_json::json;
use wasmhooks::signature::SigningSecret;

use crate::support::{data_dir, eventually, Receiver, Server};

/// Whether `needle` occurs in any file under `dir`.
fn found_in_files(dir: &std::path::Path, needle: &str) -> Option<std::path::PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            return Some(path);
        }
    }
    None
}

#[tokio::test]
async fn secrets_are_absent_from_responses_logs_dry_runs_and_disk() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[("RUST_LOG", "wasmhooks=trace,info")]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;

    let token = "tok-0123456789-never-shown";
    let password = "pw-0123456789-never-shown";
    let shared = SigningSecret::generate().to_text();
    let (status, bearer) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "erp", "base_url": receiver.url,
                    "auth": {"type": "bearer", "token": token}, "signing_secret": shared}),
        )
        .await;
    assert_eq!(status, 201, "{bearer}");
    let (status, basic) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "crm", "base_url": receiver.url,
                    "auth": {"type": "basic", "username": "shop", "password": password}}),
        )
        .await;
    assert_eq!(status, 201, "{basic}");
    let via_bearer = server
        .create_webhook(
            json!({"name": "a", "event_kinds": ["a"], "module_id": module,
                               "connection_id": bearer["id"], "url": "/in"}),
        )
        .await;
    let own = server
        .create_webhook(
            json!({"name": "b", "event_kinds": ["a"], "module_id": module,
                               "connection_id": basic["id"], "url": "/in"}),
        )
        .await;
    // A generated secret is handed out once, in the create response.
    let generated = own["signing_secret"].as_str().unwrap().to_string();
    let secrets = [
        token.to_string(),
        password.to_string(),
        shared[6..].to_string(),
        generated[6..].to_string(),
    ];

    let ack = server.emit(json!({"kind": "a", "payload": {"n": 1}})).await;
    for id in ack["deliveries"].as_array().unwrap() {
        let delivery = server.final_delivery(id.as_str().unwrap()).await;
        assert_eq!(delivery["status"], "delivered", "{delivery}");
    }
    // The receiver did get the credentials: they are used, only never shown.
    let got = receiver.wait_for(2).await;
    assert!(got
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {token}"))));

    let rotated_path = format!(
        "/v1/webhooks/{}/rotate-secret",
        via_bearer["id"].as_str().unwrap()
    );
    let (status, _) = server.post_json(&rotated_path, &json!({})).await;
    assert_eq!(status, 200);

    let mut seen = Vec::new();
    for path in [
        "/v1/connections".to_string(),
        format!("/v1/connections/{}", bearer["id"].as_str().unwrap()),
        format!(
            "/v1/connections/{}?expand=webhooks",
            basic["id"].as_str().unwrap()
        ),
        "/v1/webhooks".to_string(),
        format!(
            "/v1/webhooks/{}?expand=connection",
            own["id"].as_str().unwrap()
        ),
        "/v1/deliveries".to_string(),
        format!(
            "/v1/deliveries/{}?expand=webhook",
            ack["deliveries"][0].as_str().unwrap()
        ),
        format!(
            "/v1/deliveries/{}?expand=webhook",
            ack["deliveries"][1].as_str().unwrap()
        ),
        "/v1/events?ids=".to_string() + ack["id"].as_str().unwrap(),
    ] {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.push((path, body.to_string()));
    }
    for webhook in [&via_bearer, &own] {
        let path = format!("/v1/webhooks/{}/test", webhook["id"].as_str().unwrap());
        let (status, run) = server
            .post_json(&path, &json!({"kind": "a", "payload": {"n": 2}}))
            .await;
        assert_eq!(status, 200, "{run}");
        seen.push((path, run.to_string()));
    }
    for (path, text) in &seen {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{path} shows a secret: {text}"
            );
        }
    }

    // Log lines, at trace level, never carry them either.
    let logs = eventually("log lines", || async {
        let lines = server.stderr.lock().unwrap().clone();
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    for line in &logs {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "log line shows a secret: {line}"
            );
        }
    }

    // Nor the data directory: credentials are sealed at rest.
    let _ = server.kill().await;
    for secret in &secrets {
        assert_eq!(found_in_files(&dir, secret), None, "{secret} is on disk");
    }
}
