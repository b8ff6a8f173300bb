//! A withdrawn credential stays withdrawn: a connection taken back from a tenant, detached
//! or rotated sends with what it is now, never with what a stored delivery once had; and a
//! webhook moved between tenants leaves each tenant's history with that tenant.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{data_dir, error_message, eventually, tenant_client, Receiver, Server};

/// Waits until the worker has looked at a pending delivery and put it off (its next attempt
/// moved well past its creation), and returns it.
async fn held_back(server: &Server, client: &reqwest::Client, id: &str) -> Value {
    eventually(&format!("delivery {id} to be held back"), || async {
        let (status, body) = server
            .send(client.get(format!("{}/v1/deliveries/{id}", server.url)))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "pending", "{body}");
        let created = body["created_at"]
            .as_str()?
            .parse::<jiff::Timestamp>()
            .ok()?;
        let next = body["next_attempt_at"]
            .as_str()?
            .parse::<jiff::Timestamp>()
            .ok()?;
        (next.as_second() - created.as_second() >= 30).then_some(body)
    })
    .await
}

#[tokio::test]
async fn a_connection_withdrawn_from_a_tenant_sends_nothing_more_with_its_credentials() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let erp = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let (status, connection) = server
        .post_json(
            "/v1/connections",
            &json!({ "name": "ERP", "base_url": format!("{}/erp", erp.url),
                     "auth": { "type": "bearer", "token": "erp-token-1" },
                     "headers": { "x-erp-shop": "7" }, "tenants": ["a"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{connection}");
    let connection = connection["id"].as_str().unwrap().to_string();
    let a = tenant_client(&server, "admin", "a").await;
    let (status, webhook) = server
        .send(a.post(format!("{}/v1/webhooks", server.url)).json(&json!({
            "name": "orders", "event_kinds": ["order.*"], "module_id": module,
            "connection_id": connection, "url": "/orders",
            "headers": { "x-api-key": "webhook-secret-header" }
        })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{webhook}");
    let webhook = webhook["id"].as_str().unwrap().to_string();
    let emit = |n: u32| {
        server.emit(json!({ "kind": "order.created", "tenant": "a", "payload": {"n": n} }))
    };

    // Shared: the request goes with the connection's token and both sets of headers, and
    // the stored delivery keeps neither the connection's nor the webhook's headers.
    let first = emit(1).await["deliveries"][0].as_str().unwrap().to_string();
    let got = erp.wait_for(1).await;
    assert_eq!(got[0].header("authorization"), Some("Bearer erp-token-1"));
    assert_eq!(got[0].header("x-erp-shop"), Some("7"));
    assert_eq!(got[0].header("x-api-key"), Some("webhook-secret-header"));
    let delivered = server.final_delivery(&first).await;
    assert_eq!(delivered["status"], "delivered", "{delivered}");
    let stored = delivered["requests"].to_string();
    assert!(!stored.contains("webhook-secret-header"), "{stored}");
    assert!(!stored.contains("x-erp-shop"), "{stored}");

    // The operator takes the connection back from tenant a.
    let (status, body) = server
        .patch_json(
            &format!("/v1/connections/{connection}"),
            &json!({ "tenants": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A new event's delivery waits instead of going out, and the webhook says why.
    let second = emit(2).await["deliveries"][0].as_str().unwrap().to_string();
    held_back(&server, &a, &second).await;
    let (_, view) = server
        .send(a.get(format!("{}/v1/webhooks/{webhook}", server.url)))
        .await;
    let reason = view["waiting_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not shared with tenant `a`"), "{view}");
    let (_, list) = server
        .send(a.get(format!("{}/v1/webhooks", server.url)))
        .await;
    assert_eq!(list["data"][0]["waiting_reason"], view["waiting_reason"]);

    // The tenant cannot change the webhook while it holds the withdrawn connection, not
    // even to switch it back on; nothing changes.
    for change in [
        json!({ "url": "/other" }),
        json!({ "config": { "x": 1 } }),
        json!({ "enabled": true }),
    ] {
        let (status, body) = server
            .send(
                a.patch(format!("{}/v1/webhooks/{webhook}", server.url))
                    .json(&change),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{change}: {body}");
        assert!(
            error_message(&body).starts_with("connection_id: "),
            "{change}: {body}"
        );
    }
    // A dry run shows no request through it either.
    let (status, run) = server
        .send(
            a.post(format!("{}/v1/webhooks/{webhook}/test", server.url))
                .json(&json!({ "kind": "order.created", "tenant": "a", "payload": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["decision"], "error", "{run}");
    assert!(run.get("requests").is_none(), "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not shared"),
        "{run}"
    );

    // A replay is refused while the webhook may send nothing; pausing it is allowed.
    let (status, body) = server
        .send(a.post(format!("{}/v1/deliveries/{first}/replay", server.url)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_message(&body).contains("sends nothing now"), "{body}");
    let (status, body) = server
        .send(a.post(format!("{}/v1/webhooks/{webhook}/disable", server.url)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false, "{body}");

    // Detached (to a URL of its own, and on again), the webhook no longer waits, and a
    // replay of the old delivery is built anew for where it sends now: no credential and
    // none of the connection's headers go anywhere.
    let (status, body) = server
        .send(
            a.patch(format!("{}/v1/webhooks/{webhook}", server.url))
                .json(&json!({ "connection_id": null, "url": elsewhere.url, "enabled": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, view) = server
        .send(a.get(format!("{}/v1/webhooks/{webhook}", server.url)))
        .await;
    assert!(view.get("waiting_reason").is_none(), "{view}");
    let (status, replay) = server
        .send(a.post(format!("{}/v1/deliveries/{first}/replay", server.url)))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    let replayed = server.final_delivery(replay["id"].as_str().unwrap()).await;
    assert_eq!(replayed["status"], "delivered", "{replayed}");
    let got = elsewhere.wait_for(1).await;
    assert!(got.iter().all(|r| r.header("authorization").is_none()));
    assert!(got.iter().all(|r| r.header("x-erp-shop").is_none()));
    assert_eq!(erp.received().len(), 1, "nothing more reached the ERP");

    // Shared again, attached again, then the token rotated: the next replay of the old
    // delivery goes with the new token.
    let (status, body) = server
        .patch_json(
            &format!("/v1/connections/{connection}"),
            &json!({ "tenants": ["a"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .send(
            a.patch(format!("{}/v1/webhooks/{webhook}", server.url))
                .json(&json!({ "connection_id": connection, "url": "/orders" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .patch_json(
            &format!("/v1/connections/{connection}"),
            &json!({ "auth": { "type": "bearer", "token": "erp-token-2" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The replay of a delivery built through the connection resends its bytes with the
    // connection's auth as it is now.
    let (status, replay) = server
        .send(a.post(format!("{}/v1/deliveries/{first}/replay", server.url)))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    let rotated = eventually("a request with the rotated token", || async {
        erp.received()
            .into_iter()
            .find(|r| r.header("authorization") == Some("Bearer erp-token-2"))
    })
    .await;
    assert_eq!(rotated.path, "/erp/orders");
    let old_token = erp
        .received()
        .iter()
        .filter(|r| r.header("authorization") == Some("Bearer erp-token-1"))
        .count();
    assert_eq!(
        old_token, 1,
        "the old token went only before the withdrawal"
    );
}

#[tokio::test]
async fn recover_and_replay_keep_each_tenants_history_with_that_tenant() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let globex_receiver = Receiver::start().await;
    let acme_receiver = Receiver::start().await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let webhook = server
        .create_webhook(json!({
            "name": "orders", "event_kinds": ["order.*"], "module_id": module,
            "url": globex_receiver.url, "tenant": "globex", "retry_schedule": ["1s"]
        }))
        .await;
    let webhook = webhook["id"].as_str().unwrap().to_string();
    let globex = tenant_client(&server, "admin", "globex").await;
    let acme = tenant_client(&server, "admin", "acme").await;

    // Two of globex's deliveries fail for good.
    globex_receiver.answer_with(&[500, 500, 500, 500]);
    let mut failed = Vec::new();
    for n in 0..2 {
        let emitted = server
            .emit(json!({ "kind": "order.created", "tenant": "globex",
                          "payload": {"secret": format!("globex-{n}")} }))
            .await;
        let id = emitted["deliveries"][0].as_str().unwrap().to_string();
        let done = server.final_delivery(&id).await;
        assert!(
            done["status"] == "failed" || done["status"] == "dead",
            "{done}"
        );
        failed.push(id);
    }
    // A third is in flight (held at the receiver, to fail and be retried) when the operator
    // moves the webhook to acme.
    globex_receiver.answer_with(&[500]);
    globex_receiver.hold();
    let emitted = server
        .emit(json!({ "kind": "order.created", "tenant": "globex",
                      "payload": {"secret": "globex-in-flight"} }))
        .await;
    let in_flight = emitted["deliveries"][0].as_str().unwrap().to_string();
    eventually("the third request to reach the receiver", || async {
        (globex_receiver.waiting() == 1).then_some(())
    })
    .await;
    let (status, body) = server
        .patch_json(
            &format!("/v1/webhooks/{webhook}"),
            &json!({ "tenant": "acme", "url": acme_receiver.url }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    globex_receiver.release();

    // The in-flight delivery's retry is not sent to acme's destination.
    let ended = server.final_delivery(&in_flight).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap_or_default()
            .contains("moved to another tenant"),
        "{ended}"
    );

    // Acme neither sees globex's deliveries nor recovers them.
    for id in &failed {
        let (status, _) = server
            .send(acme.get(format!("{}/v1/deliveries/{id}", server.url)))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, recovered) = server
        .send(
            acme.post(format!("{}/v1/webhooks/{webhook}/recover", server.url))
                .json(&json!({ "since": "2000-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{recovered}");
    assert_eq!(recovered["replayed"], 0, "{recovered}");
    // Nor does globex (whose history it is), or the operator, replay one to acme.
    for client in [&globex, &server.client] {
        let (status, body) = server
            .send(client.post(format!("{}/v1/deliveries/{}/replay", server.url, failed[0])))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            error_message(&body).contains("moved to another tenant"),
            "{body}"
        );
    }
    // Globex still reads its history.
    let (status, body) = server
        .send(globex.get(format!("{}/v1/deliveries/{}", server.url, failed[1])))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Acme's own events go to acme, and nothing of globex's ever did.
    server
        .emit(json!({ "kind": "order.created", "tenant": "acme", "payload": {"n": 1} }))
        .await;
    let got = acme_receiver.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert!(!String::from_utf8_lossy(&got[0].body).contains("globex"));
}

#[tokio::test]
async fn a_webhook_moved_to_another_tenant_starts_with_no_plugin_state_and_a_new_secret() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let (globex_receiver, acme_receiver) = (Receiver::start().await, Receiver::start().await);
    let module = server
        .upload("stock-edge", wasmhooks::examples::STOCK_EDGE)
        .await;
    let created = server
        .create_webhook(json!({
            "name": "edges", "tenant": "globex", "event_kinds": ["stock.changed"],
            "module_id": module, "url": globex_receiver.url,
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let old_secret = created["signing_secret"].as_str().unwrap().to_string();
    // Globex's stock level is in the plugin's state (a first sighting only records it).
    let first = server
        .emit(json!({ "kind": "stock.changed", "tenant": "globex",
                      "payload": { "sku": "S1", "stock": 57 } }))
        .await;
    let first = server
        .final_delivery(first["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(first["status"], "skipped", "{first}");

    let (status, moved) = server
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({ "tenant": "acme", "url": acme_receiver.url }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    let new_secret = moved["signing_secret"].as_str().expect("a new secret");
    assert_ne!(new_secret, old_secret);
    // Changes that keep the tenant show no secret.
    let (_, renamed) = server
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({ "name": "acme edges" }),
        )
        .await;
    assert!(renamed.get("signing_secret").is_none(), "{renamed}");

    // Acme's first level of the same SKU is a first sighting again: nothing of globex's level
    // reaches acme's receiver, and what is sent verifies only with the new secret.
    let zero = server
        .emit(json!({ "kind": "stock.changed", "tenant": "acme",
                      "payload": { "sku": "S1", "stock": 0 } }))
        .await;
    let zero = server
        .final_delivery(zero["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(zero["status"], "skipped", "{zero}");
    server
        .emit(json!({ "kind": "stock.changed", "tenant": "acme",
                      "payload": { "sku": "S1", "stock": 4 } }))
        .await;
    let got = acme_receiver.wait_for(1).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["previous"].as_f64(), Some(0.0), "{body}");
    let verifies = |secret: &str| {
        let secret = wasmhooks::signature::SigningSecret::parse(secret).unwrap();
        let header = |name| got[0].header(name).unwrap().to_string();
        wasmhooks::signature::verify(
            &secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
            &got[0].body,
            jiff::Timestamp::now().as_second(),
            300,
        )
        .is_ok()
    };
    assert!(verifies(new_secret));
    assert!(!verifies(&old_secret));
}
