//! The tenant boundary, tried as an attacker would with the keys a tenant or an emitter
//! really holds: tenant A's key against tenant B's data, through every route and `expand`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client_with_key, data_dir, error_message, eventually, tenant_client, Receiver, Server,
};

#[tokio::test]
async fn a_tenant_sees_only_its_own_webhooks_through_a_shared_module() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let receiver = Receiver::start().await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let a = tenant_client(&server, "admin", "a").await;
    let mut ids = Vec::new();
    for tenant in ["a", "b"] {
        let hook = server
            .create_webhook(json!({
                "name": format!("{tenant} hook"), "tenant": tenant, "event_kinds": ["order.*"],
                "module_id": module, "url": format!("{}/{tenant}", receiver.url),
                "headers": { "x-token": format!("secret-of-{tenant}") }
            }))
            .await;
        ids.push(hook["id"].as_str().unwrap().to_string());
    }
    let (status, view) = server
        .send(a.get(format!(
            "{}/v1/modules/{module}?expand=webhooks",
            server.url
        )))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["used_by"], json!([ids[0]]), "{view}");
    let hooks = view["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{view}");
    assert_eq!(hooks[0]["id"], ids[0]);
    assert!(!view.to_string().contains("secret-of-b"), "{view}");
    // The unbound admin still sees both.
    let (_, all) = server.get(&format!("/v1/modules/{module}")).await;
    assert_eq!(all["used_by"].as_array().unwrap().len(), 2, "{all}");
}

#[tokio::test]
async fn a_connections_credentials_never_leave_its_base_url() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let erp = Receiver::start().await;
    let thief = Receiver::start().await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let sellasist = server
        .upload("sellasist", wasmhooks::examples::SELLASIST_ACTION)
        .await;
    let (status, shared) = server
        .post_json(
            "/v1/connections",
            &json!({ "name": "ERP", "base_url": format!("{}/erp/api", erp.url),
                     "auth": { "type": "bearer", "token": "erp-token-123" }, "tenants": ["a"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{shared}");
    assert_eq!(shared["tenants"], json!(["a"]));
    let shared_id = shared["id"].as_str().unwrap();
    let (_, private) = server
        .post_json(
            "/v1/connections",
            &json!({ "name": "Root only", "base_url": erp.url,
                     "auth": { "type": "bearer", "token": "root-token" } }),
        )
        .await;
    let private_id = private["id"].as_str().unwrap();
    let a = tenant_client(&server, "admin", "a").await;

    // Tenant A sees and may attach only the connection shared with it.
    let (_, list) = server
        .send(a.get(format!("{}/v1/connections", server.url)))
        .await;
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![shared_id], "{list}");
    let (status, _) = server
        .send(a.get(format!("{}/v1/connections/{private_id}", server.url)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let hook = |connection: &str, url: Value| {
        json!({ "name": "x", "event_kinds": ["order.*"], "module_id": module,
                "connection_id": connection, "url": url })
    };
    let (status, body) = server
        .send(
            a.post(format!("{}/v1/webhooks", server.url))
                .json(&hook(private_id, json!("/orders"))),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // An absolute URL of the tenant's choosing, or a path climbing out of the base, is
    // refused; nothing is stored.
    for url in [
        json!(format!("{}/steal", thief.url)),
        json!("../../steal"),
        json!("/../steal"),
    ] {
        let (status, body) = server
            .send(
                a.post(format!("{}/v1/webhooks", server.url))
                    .json(&hook(shared_id, url.clone())),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            error_message(&body).contains("outside the connection's base URL"),
            "{body}"
        );
    }
    let (_, hooks) = server
        .send(a.get(format!("{}/v1/webhooks", server.url)))
        .await;
    assert_eq!(hooks["data"], json!([]), "{hooks}");

    // A plugin path that climbs out of the base fails the delivery, unsent.
    let created = server
        .send(a.post(format!("{}/v1/webhooks", server.url)).json(&json!({
            "name": "climber", "event_kinds": ["order.*"], "module_id": sellasist,
            "connection_id": shared_id, "url": "/orders", "retry_schedule": [],
            "config": { "path": "/../../steal", "expected_status": 200 }
        })))
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
    let emitted = server
        .emit(json!({ "kind": "order.created", "tenant": "a", "payload": {"id_order": 1} }))
        .await;
    let delivery_id = emitted["deliveries"][0].as_str().unwrap();
    let delivery = server.final_delivery(delivery_id).await;
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert!(
        delivery["error"]
            .as_str()
            .unwrap()
            .contains("outside the connection's base URL"),
        "{delivery}"
    );
    // A path under the base goes, with the credentials.
    let (status, body) = server
        .send(
            a.post(format!("{}/v1/webhooks", server.url))
                .json(&hook(shared_id, json!("/orders"))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server
        .emit(json!({ "kind": "order.paid", "tenant": "a", "payload": {} }))
        .await;
    let got = erp.wait_for(1).await;
    assert_eq!(got[0].path, "/erp/api/orders");
    assert_eq!(got[0].header("authorization"), Some("Bearer erp-token-123"));
    assert!(thief.received().is_empty());
    let stored_steal = erp.received().iter().any(|r| r.path.contains("steal"));
    assert!(!stored_steal);
    let _ = module;
}

#[tokio::test]
async fn an_emitter_cannot_poison_lists_with_a_time_past_year_9999() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let receiver = Receiver::start().await;
    receiver.hold();
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "later", "event_kinds": ["order.*"], "module_id": module,
                                "url": receiver.url, "delay": "30d" }),
        )
        .await;
    let (status, key) = server
        .post_json("/v1/keys", &json!({ "name": "e", "role": "emitter" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let emitter = client_with_key(key["key"].as_str().unwrap());
    for at in [json!(253_402_300_800_000i64), json!(i64::MAX), json!(-1)] {
        let (status, body) = server
            .send(
                emitter
                    .post(format!("{}/v1/events", server.url))
                    .json(&json!({ "kind": "order.created", "occurred_at": at, "payload": {} })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{at}: {body}");
        assert!(error_message(&body).starts_with("occurred_at: "), "{body}");
    }
    // The last accepted instant plus a delay saturates and reads back.
    let (status, body) = server
        .send(
            emitter
                .post(format!("{}/v1/events", server.url))
                .json(&json!({
                    "kind": "order.created", "occurred_at": "9999-12-30T00:00:00Z", "payload": {}
                })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, list) = server.get("/v1/deliveries").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        list["data"][0]["next_attempt_at"], "9999-12-30T00:00:00.000Z",
        "{list}"
    );
    let hook_id = list["data"][0]["webhook_id"].as_str().unwrap().to_string();
    let (status, recovered) = server
        .post_json(
            &format!("/v1/webhooks/{hook_id}/recover"),
            &json!({ "since": "2020-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{recovered}");
    // After a restart too.
    server.kill().await;
    let server = Server::start(&dir, &[]).await;
    let (status, list) = server.get("/v1/deliveries").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn event_ids_belong_to_their_tenant_and_the_hosts_kinds_to_the_host() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let receiver = Receiver::start().await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    for tenant in ["a", "b"] {
        server
            .create_webhook(json!({ "name": tenant, "tenant": tenant, "event_kinds": ["order.*"],
                                    "module_id": module, "url": format!("{}/{tenant}", receiver.url) }))
            .await;
    }
    let a = tenant_client(&server, "emitter", "a").await;
    let b = tenant_client(&server, "emitter", "b").await;
    // A claims B's id first: both events are stored and delivered, each to its own tenant.
    for (client, tenant) in [(&a, "a"), (&b, "b")] {
        let (status, body) = server
            .send(
                client
                    .post(format!("{}/v1/events", server.url))
                    .json(&json!({
                        "id": "order-1", "kind": "order.created", "payload": { "from": tenant }
                    })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["duplicate"], false, "{tenant}: {body}");
        assert_eq!(body["deliveries"].as_array().unwrap().len(), 1);
    }
    let (_, again) = server
        .send(
            a.post(format!("{}/v1/events", server.url))
                .json(&json!({ "id": "order-1", "kind": "order.created", "payload": {} })),
        )
        .await;
    assert_eq!(again["duplicate"], true, "{again}");
    let got = receiver.wait_for(2).await;
    for tenant in ["a", "b"] {
        let request = got.iter().find(|r| r.path == format!("/{tenant}")).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["from"], tenant);
    }
    for (client, tenant) in [(&a, "a"), (&b, "b")] {
        let (status, event) = server
            .send(client.get(format!("{}/v1/events/order-1", server.url)))
            .await;
        assert_eq!(status, StatusCode::OK, "{event}");
        assert_eq!(event["payload"]["from"], tenant);
        let (status, _) = server
            .send(client.get(format!("{}/v1/events/order-1?tenant=other", server.url)))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, event) = server.get("/v1/events/order-1?tenant=b").await;
    assert_eq!((status, &event["tenant"]), (StatusCode::OK, &json!("b")));
    let (status, _) = server.get("/v1/events/order-1").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no event without a tenant has that id"
    );

    // The host's own kinds and id prefixes are refused, and nothing is stored.
    for (event, field) in [
        (
            json!({ "kind": "webhook.disabled", "payload": { "webhook_id": "wh_x" } }),
            "kind",
        ),
        (json!({ "kind": "webhook.response", "payload": {} }), "kind"),
        (
            json!({ "id": "evt_response_dlv_01abc", "kind": "order.created", "payload": {} }),
            "id",
        ),
        // In any case: a receiver comparing without case must not be fooled.
        (
            json!({ "kind": "Webhook.disabled", "payload": { "webhook_id": "wh_x" } }),
            "kind",
        ),
        (
            json!({ "id": "EVT_RESPONSE_x", "kind": "order.created", "payload": {} }),
            "id",
        ),
    ] {
        let (status, body) = server
            .send(a.post(format!("{}/v1/events", server.url)).json(&event))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            error_message(&body).starts_with(&format!("{field}: ")),
            "{body}"
        );
    }
    let (_, deliveries) = server.get("/v1/deliveries").await;
    assert_eq!(deliveries["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn expanding_a_deeply_nested_event_answers_instead_of_panicking() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let receiver = Receiver::start().await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "deep", "event_kinds": ["deep"], "module_id": module,
                                "url": receiver.url }),
        )
        .await;
    // 127 levels inside the event object: as deep as a request body may go.
    let payload = format!("{}\"bottom\"{}", "[".repeat(127), "]".repeat(127));
    let body = format!(r#"{{"id": "deep-1", "kind": "deep", "payload": {payload}}}"#);
    let response = server
        .client
        .post(format!("{}/v1/events", server.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let emitted: Value = response.json().await.unwrap();
    let delivery = emitted["deliveries"][0].as_str().unwrap().to_string();
    for path in [
        format!("/v1/deliveries/{delivery}?expand=event,webhook"),
        "/v1/events?ids=deep-1".to_string(),
    ] {
        let response = server
            .client
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let text = response.text().await.unwrap();
        assert!(text.contains(&payload), "{path}: {text}");
    }
    eventually("the server to stay up", || async {
        let (status, _) = server.get("/healthz").await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
}
