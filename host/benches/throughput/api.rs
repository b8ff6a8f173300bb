//! Calls to the host's HTTP API with the admin key: uploading modules (and variants of one)
//! and making webhooks.

use serde_json::Value;

use crate::ADMIN_KEY;

pub(crate) fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

pub(crate) async fn call(client: &reqwest::Client, request: reqwest::RequestBuilder) -> Value {
    let _ = client;
    let response = request.send().await.expect("request to the host");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// The same component with a custom section naming `variant`: another module id, same code.
pub(crate) fn module_variant(bytes: &[u8], variant: u32) -> Vec<u8> {
    let name = b"wasmhooks-bench";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(&variant.to_le_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

pub(crate) async fn upload(
    client: &reqwest::Client,
    host: &str,
    bytes: Vec<u8>,
    name: &str,
) -> String {
    let body = call(
        client,
        client
            .post(format!("{host}/v1/modules?name={name}&version=1.0.0"))
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await;
    body["id"].as_str().unwrap().to_string()
}

pub(crate) async fn webhook(client: &reqwest::Client, host: &str, definition: Value) -> String {
    let body = call(
        client,
        client.post(format!("{host}/v1/webhooks")).json(&definition),
    )
    .await;
    body["id"].as_str().unwrap().to_string()
}
