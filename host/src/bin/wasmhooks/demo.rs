//! `wasmhooks demo`: the whole product in one command. Starts a host on a temporary data dir
//! with the embedded example plugins, a built-in receiver, two webhooks, emits sample orders
//! through the REST API, and prints exactly what the receiver got and why one was skipped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::json;

use wasmhooks::client::Client;
use wasmhooks::config::Config;
use wasmhooks::Host;

/// A request the built-in receiver got.
struct Received {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// Runs the demo; with `keep_running` the server stays up until Ctrl-C.
///
/// # Errors
/// When the host cannot start or a step of the demo fails.
pub async fn run(keep_running: bool) -> anyhow::Result<std::process::ExitCode> {
    let data = tempfile::tempdir().context("creating a temporary data dir")?;
    let mut config = Config {
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    config.delivery.retry_schedule = vec![Duration::from_secs(1), Duration::from_secs(2)];
    // The cpu limit counts wall-clock time, and the demo often runs on a machine busy
    // building: the example plugins get the ceiling (they use microseconds).
    config.plugin.limits.cpu_time = config.plugin.max_limits.cpu_time;
    // The demo's receiver is on loopback, which the SSRF guard refuses unless allow-listed.
    config.delivery.allowed_destinations = vec!["127.0.0.1".into()];
    // A one-off admin key for this demo's own API calls.
    let (_, admin_key) = wasmhooks::model::generate_key();
    config.api.admin_key = Some(wasmhooks::model::Secret::new(admin_key.clone()));

    // The built-in receiver: records and answers 200.
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let store = received.clone();
    let receiver = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(Received {
                    method,
                    uri,
                    headers,
                    body,
                });
                "ok"
            }
        },
    );
    let receiver_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_url = format!("http://{}", receiver_listener.local_addr()?);
    tokio::spawn(async move { axum::serve(receiver_listener, receiver).await });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let mut host = Host::open(config)?;
    host.start();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pipeline = host.pipeline().clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, wasmhooks::api::router(pipeline))
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    println!("wasmhooks demo: API on {api}, receiver on {receiver_url}\n");

    let client = Client::new(&api, Some(&admin_key))?;
    let mut module_ids = Vec::new();
    for (name, bytes) in [
        ("forward", wasmhooks::examples::FORWARD),
        ("order-threshold", wasmhooks::examples::ORDER_THRESHOLD),
    ] {
        let info = client
            .upload_module(name, Some("0.1.0"), bytes.to_vec())
            .await?;
        println!(
            "uploaded module {name:<16} {} ({} bytes)",
            info.id,
            bytes.len()
        );
        module_ids.push(info.id.to_string());
    }
    let connection = client
        .post(
            "/v1/connections",
            &json!({
                "name": "Back office", "base_url": format!("{receiver_url}/back-office"),
                "auth": { "type": "bearer", "token": "demo-token" }, "headers": { "x-shop": "demo" }
            }),
        )
        .await?;
    println!(
        "created connection {} {:?} (bearer auth; the token is write-only)",
        connection["id"].as_str().unwrap_or(""),
        connection["name"].as_str().unwrap_or("")
    );
    let webhooks = [
        json!({ "name": "Forward every order", "event_kinds": ["order.*"], "module_id": module_ids[0],
                "url": format!("{receiver_url}/forward") }),
        json!({ "name": "Big orders to the back office", "event_kinds": ["order.created"],
                "module_id": module_ids[1], "config": { "threshold": 100 },
                "connection_id": connection["id"], "url": "/big-orders" }),
    ];
    for webhook in webhooks {
        let created = client.create_webhook(&webhook).await?;
        println!(
            "created webhook {} {:?} for {:?}",
            created.id, created.name, created.event_kinds
        );
    }
    let events = json!([
        { "id": "demo-order-1", "kind": "order.created", "attributes": { "store_id": "7" },
          "payload": { "id": "A-1001", "amount": 42.5, "currency": "EUR", "customer": { "email": "ana@example.com" } } },
        { "id": "demo-order-2", "kind": "order.created", "attributes": { "store_id": "7" },
          "payload": { "id": "A-1002", "amount": 250, "currency": "EUR", "customer": { "email": "bo@example.com" } } },
    ]);
    let emitted = client.emit(&events).await?;
    let expected: usize = emitted["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["deliveries"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    println!("emitted 2 events (202 Accepted, durable) → {expected} deliveries\n");

    // Wait until every delivery has ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let deliveries = loop {
        let page = client.get("/v1/deliveries").await?;
        let list = page["data"].as_array().cloned().unwrap_or_default();
        if list.len() >= expected && list.iter().all(|d| d["status"] != "pending") {
            break list;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("deliveries did not finish within 30 s: {page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    println!("deliveries:");
    for d in deliveries.iter().rev() {
        println!(
            "  {} event {} → {}{}",
            d["id"].as_str().unwrap_or(""),
            d["event_id"].as_str().unwrap_or(""),
            d["status"].as_str().unwrap_or(""),
            d["skip_reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    println!("\nwhat the receiver got:");
    for r in received.lock().unwrap().iter() {
        println!("  {} {}", r.method, r.uri);
        for (name, value) in &r.headers {
            if name.as_str().starts_with("webhook-")
                || name == "content-type"
                || name == "x-shop"
                || name == "authorization"
            {
                println!("    {name}: {}", value.to_str().unwrap_or("?"));
            }
        }
        println!("    body: {}\n", String::from_utf8_lossy(&r.body));
    }

    if keep_running {
        println!("server still running on {api} (Ctrl-C to stop)");
        crate::cli::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    host.shutdown().await?;
    Ok(std::process::ExitCode::SUCCESS)
}
