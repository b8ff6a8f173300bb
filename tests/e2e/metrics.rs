//! `GET /metrics`, read as Prometheus reads it: each series moves as deliveries happen, labels
//! never name an event or a delivery, and only the operator or the metrics token reads it.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{
    client_with_key, data_dir, tenant_client, test_plugin, Receiver, Server, ADMIN_KEY,
};

const TOKEN: &str = "metrics-token-0123456789";

/// The parsed metrics, read with `client`.
async fn scrape(server: &Server, client: &reqwest::Client) -> prometheus_parse::Scrape {
    let response = client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for id_prefix in ["evt_", "dlv_"] {
        assert!(!text.contains(id_prefix), "an id in a label: {text}");
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `metric` with these labels (0 when absent).
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is not a plain sample"),
        })
        .sum()
}

#[tokio::test]
async fn metrics_move_with_deliveries_and_only_the_operator_or_the_token_reads_them() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[("WASMHOOKS_API__METRICS_TOKEN", TOKEN)]).await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.answer_with(&[500]);
    let forward = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let misbehave = server.upload("misbehave", &test_plugin("misbehave")).await;
    let id = |w: serde_json::Value| w["id"].as_str().unwrap().to_string();
    let delivering = id(server
        .create_webhook(
            json!({ "name": "ok", "event_kinds": ["order.*"], "module_id": forward,
                                "url": ok.url }),
        )
        .await);
    let dying = id(server
        .create_webhook(
            json!({ "name": "failing", "event_kinds": ["bill.*"], "module_id": forward,
                                "url": failing.url, "retry_schedule": [] }),
        )
        .await);
    let burning = id(server
        .create_webhook(
            json!({ "name": "burner", "event_kinds": ["burn.*"], "module_id": misbehave,
                                "config": { "mode": "loop" }, "limits": { "cpu_time": "50ms" },
                                "url": ok.url }),
        )
        .await);
    let token = client_with_key(TOKEN);
    let before = scrape(&server, &token).await;

    let events = json!([
        { "kind": "order.created", "payload": { "n": 1 } },
        { "kind": "order.created", "payload": { "n": 2 } },
        { "kind": "order.created", "payload": { "n": 3 } },
        { "kind": "bill.created", "payload": {} },
        { "kind": "burn.created", "payload": {} },
    ]);
    let ack = server.emit(events).await;
    for result in ack["data"].as_array().unwrap() {
        server
            .final_delivery(result["deliveries"][0].as_str().unwrap())
            .await;
    }
    let after = scrape(&server, &token).await;
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        value(&after, metric, labels) - value(&before, metric, labels)
    };
    assert_eq!(moved("wasmhooks_events_accepted_total", &[]), 5.0);
    let ended = "wasmhooks_deliveries_total";
    assert_eq!(
        moved(ended, &[("webhook", &delivering), ("outcome", "delivered")]),
        3.0
    );
    assert_eq!(
        moved(ended, &[("webhook", &dying), ("outcome", "dead")]),
        1.0
    );
    assert_eq!(
        moved(ended, &[("webhook", &burning), ("outcome", "failed")]),
        1.0
    );
    assert_eq!(moved("wasmhooks_attempts_total", &[("class", "2xx")]), 3.0);
    assert_eq!(moved("wasmhooks_attempts_total", &[("class", "5xx")]), 1.0);
    assert_eq!(moved("wasmhooks_delivery_latency_seconds_count", &[]), 3.0);
    assert_eq!(moved("wasmhooks_attempt_duration_seconds_count", &[]), 4.0);
    assert_eq!(moved("wasmhooks_plugin_evaluation_seconds_count", &[]), 5.0);
    assert_eq!(
        moved("wasmhooks_plugin_limit_hits_total", &[("limit", "cpu")]),
        1.0
    );
    assert!(
        value(
            &after,
            "wasmhooks_webhook_evaluation_ms_per_second",
            &[("webhook", &burning)]
        ) > 0.0
    );
    assert!(value(&after, "wasmhooks_store_size_bytes", &[]) > 0.0);
    assert!(value(&after, "wasmhooks_store_free_bytes", &[]) > 0.0);
    for gauge in [
        "wasmhooks_queue_depth",
        "wasmhooks_queue_oldest_due_age_seconds",
        "wasmhooks_evaluations_running",
        "wasmhooks_evaluations_waiting",
        "wasmhooks_throttled_webhooks",
    ] {
        assert!(after.samples.iter().any(|s| s.metric == gauge), "{gauge}");
    }

    // The operator's key reads them too; nobody else does, and the token reads nothing else.
    scrape(&server, &client_with_key(ADMIN_KEY)).await;
    let anonymous = reqwest::Client::new();
    let tenant = tenant_client(&server, "admin", "acme").await;
    let (status, key) = server
        .post_json("/v1/keys", &json!({ "name": "e", "role": "emitter" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let emitter = client_with_key(key["key"].as_str().unwrap());
    for (who, client, expected) in [
        ("no key", &anonymous, StatusCode::UNAUTHORIZED),
        ("a tenant's admin key", &tenant, StatusCode::FORBIDDEN),
        ("an emitter key", &emitter, StatusCode::FORBIDDEN),
    ] {
        let (status, _) = server
            .send(client.get(format!("{}/metrics", server.url)))
            .await;
        assert_eq!(status, expected, "{who}");
    }
    let (status, _) = server
        .send(token.get(format!("{}/v1/webhooks", server.url)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the token is no API key");
}

/// An emit whose caller stops waiting (a client that hung up) after its events were handed
/// to storage: they are stored all the same, and counted as accepted.
#[tokio::test]
async fn an_emit_dropped_while_its_events_are_stored_is_still_counted() {
    let (_tmp, dir) = data_dir();
    let config = wasmhooks::config::Config {
        data_dir: dir,
        ..Default::default()
    };
    let mut host = wasmhooks::Host::open(config).unwrap();
    host.start();
    let p = host.pipeline().clone();
    let input: wasmhooks::pipeline::EventInput =
        serde_json::from_value(json!({ "id": "hung-up", "kind": "order.created", "payload": {} }))
            .unwrap();
    // Polled once (the events go to storage), then dropped.
    let mut emit = Box::pin(p.emit(vec![input]));
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(emit.as_mut(), cx))
    })
    .await;
    assert!(
        first.is_pending(),
        "the emit was still waiting when dropped"
    );
    drop(emit);
    let id = wasmhooks::model::EventId::parse("hung-up").unwrap();
    crate::support::eventually("the event stored and counted", || async {
        let text = p.scrape_metrics().await;
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let counted = value(&scrape, "wasmhooks_events_accepted_total", &[]) >= 1.0;
        let stored = p.event(None, &id).is_ok();
        (counted && stored).then_some(())
    })
    .await;
}
