//! Connections: shared destinations with auth and default headers. Secrets are write-only.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{data_dir, error_message, Receiver, Server};

#[tokio::test]
async fn webhooks_send_through_their_connection_with_its_auth_and_headers() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;

    let (status, erp) = server
        .post_json(
            "/v1/connections",
            &json!({
                "name": "ERP", "description": "back office",
                "base_url": format!("{}/erp/api", receiver.url),
                "auth": { "type": "basic", "username": "shop", "password": "s3cret-password" },
                "headers": { "x-source": "connection", "x-shop": "from-connection" },
                "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{erp}");
    let erp_id = erp["id"].as_str().unwrap();
    let (_, crm) = server
        .post_json(
            "/v1/connections",
            &json!({ "name": "CRM", "base_url": format!("{}/crm", receiver.url),
                     "auth": { "type": "query", "name": "api_key", "value": "q-secret-value" } }),
        )
        .await;
    let (_, tokened) = server
        .post_json(
            "/v1/connections",
            &json!({ "name": "Tokened", "base_url": receiver.url,
                     "auth": { "type": "header", "name": "x-api-key", "value": "h-secret-value" } }),
        )
        .await;

    // Secrets never come back: not on create, get, list or expand.
    let (_, listed) = server.get("/v1/connections").await;
    let (_, got) = server.get(&format!("/v1/connections/{erp_id}")).await;
    for text in [
        erp.to_string(),
        crm.to_string(),
        tokened.to_string(),
        listed.to_string(),
        got.to_string(),
    ] {
        for secret in [
            "s3cret-password",
            "q-secret-value",
            "h-secret-value",
            "MfKQ9r8G",
        ] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
    assert_eq!(got["auth"], json!({ "type": "basic", "username": "shop" }));
    assert_eq!(got["signing_secret_set"], true);

    // Relative URL through the ERP connection; the webhook's header overrides the connection's.
    let webhook = server
        .create_webhook(json!({
            "name": "orders to ERP", "event_kinds": ["order.*"], "module_id": module,
            "connection_id": erp_id, "url": "/orders?src=wh", "headers": { "x-shop": "from-webhook" }
        }))
        .await;
    server
        .create_webhook(
            json!({ "name": "crm", "event_kinds": ["order.*"], "module_id": module,
                                "connection_id": crm["id"] }),
        )
        .await;
    server
        .create_webhook(
            json!({ "name": "tokened", "event_kinds": ["order.*"], "module_id": module,
                                "connection_id": tokened["id"], "url": "/t" }),
        )
        .await;
    server
        .emit(json!({ "id": "o-1", "kind": "order.created", "payload": { "n": 1 } }))
        .await;
    let got = receiver.wait_for(3).await;
    let at = |prefix: &str| got.iter().find(|r| r.path.starts_with(prefix)).unwrap();
    let erp_request = at("/erp/api/orders");
    assert_eq!(erp_request.path, "/erp/api/orders?src=wh");
    assert_eq!(
        erp_request.header("authorization"),
        Some("Basic c2hvcDpzM2NyZXQtcGFzc3dvcmQ=")
    );
    assert_eq!(erp_request.header("x-source"), Some("connection"));
    assert_eq!(erp_request.header("x-shop"), Some("from-webhook"));
    assert_eq!(at("/crm").path, "/crm?api_key=q-secret-value");
    assert_eq!(at("/t").header("x-api-key"), Some("h-secret-value"));

    // The stored delivery shows the request without the credentials.
    for delivery in server.deliveries_of("o-1").await {
        let text = delivery.to_string();
        for secret in ["s3cret", "c2hvcDpz", "q-secret-value", "h-secret-value"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }

    // Expanded webhook shows its connection (without secrets).
    let id = webhook["id"].as_str().unwrap();
    let (_, expanded) = server
        .get(&format!("/v1/webhooks/{id}?expand=connection,module"))
        .await;
    assert_eq!(expanded["connection"]["name"], "ERP");
    assert_eq!(expanded["module"]["name"], "forward");
    assert!(!expanded.to_string().contains("s3cret"));

    // Changing the connection moves every webhook using it, without a restart.
    let (status, changed) = server
        .patch_json(
            &format!("/v1/connections/{erp_id}"),
            &json!({ "base_url": format!("{}/erp/v2", receiver.url), "auth": { "type": "bearer", "token": "new-token" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    server
        .emit(json!({ "id": "o-2", "kind": "order.created", "payload": { "n": 2 } }))
        .await;
    let got = receiver.wait_for(6).await;
    let moved = got
        .iter()
        .find(|r| r.path.starts_with("/erp/v2/orders"))
        .unwrap();
    assert_eq!(moved.header("authorization"), Some("Bearer new-token"));

    // A connection in use cannot be deleted; once unused it can.
    let (status, body) = server.delete(&format!("/v1/connections/{erp_id}")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_message(&body).contains(id), "{body}");
    let (status, _) = server.delete(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.delete(&format!("/v1/connections/{erp_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get(&format!("/v1/connections/{erp_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_connections_are_refused_naming_the_field() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let cases = [
        (json!({ "base_url": "http://h/" }), "name: is required"),
        (json!({ "name": "x" }), "base_url: is required"),
        (
            json!({ "name": "x", "base_url": "ftp://h/" }),
            "base_url: scheme `ftp` is not allowed",
        ),
        (
            json!({ "name": "x".repeat(101), "base_url": "http://h/" }),
            "name: is 101 characters; the limit is 100",
        ),
        (
            json!({ "name": "x", "base_url": "http://h/", "auth": { "type": "magic" } }),
            "unknown variant `magic`",
        ),
        (
            json!({ "name": "x", "base_url": "http://h/", "auth": { "type": "basic", "username": "a:b", "password": "p" } }),
            "auth.username",
        ),
        (
            json!({ "name": "x", "base_url": "http://h/", "auth": { "type": "bearer", "token": "" } }),
            "auth.token: must be 1 to",
        ),
        (
            json!({ "name": "x", "base_url": "http://h/", "auth": { "type": "header", "name": "bad name", "value": "v" } }),
            "auth.name",
        ),
        (
            json!({ "name": "x", "base_url": "http://h/", "headers": { "connection": "close" } }),
            "headers.connection",
        ),
        (
            json!({ "name": "x", "base_url": "http://h/", "signing_secret": "hunter2" }),
            "signing_secret: must be `whsec_`",
        ),
        (
            json!({ "name": "x", "base_url": "http://h/", "colour": 1 }),
            "unknown field `colour`",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = server.post_json("/v1/connections", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(
            error_message(&answer).contains(expected),
            "{body}: expected {expected:?} in {answer}"
        );
        assert!(
            !answer.to_string().contains("hunter2"),
            "a secret was echoed: {answer}"
        );
    }
    let (_, listed) = server.get("/v1/connections").await;
    assert_eq!(listed["data"], json!([]), "nothing was stored");

    // Webhooks: an unknown connection, and a relative URL without one.
    let (status, answer) = server
        .post_json(
            "/v1/webhooks",
            &json!({ "name": "w", "event_kinds": ["a"], "module_id": module,
                                            "connection_id": "con_01m83j646jgje8srde3sxseqgm" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(error_message(&answer)
        .contains("connection `con_01m83j646jgje8srde3sxseqgm` does not exist"));
    let (status, answer) = server
        .post_json(
            "/v1/webhooks",
            &json!({ "name": "w", "event_kinds": ["a"], "module_id": module, "url": "/orders" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_message(&answer).contains("url: `/orders` is a relative URL"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_path_cannot_add_the_connections_query_auth_or_climb_in_disguise() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let sellasist = server
        .upload("sellasist", wasmhooks::examples::SELLASIST_ACTION)
        .await;
    let (status, crm) = server
        .post_json(
            "/v1/connections",
            &json!({ "name": "CRM", "base_url": format!("{}/crm", receiver.url),
                     "auth": { "type": "query", "name": "api_key", "value": "q-secret-value" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{crm}");
    let hook = |kind: &str, url: &str, path: &str| {
        json!({ "name": "w", "event_kinds": [kind], "module_id": sellasist,
                "connection_id": crm["id"], "url": url, "retry_schedule": [],
                "config": { "path": path } })
    };

    // A webhook URL: refused when saved, naming the field and what is wrong.
    for (url, expected) in [
        (
            "/orders?api_key=ATTACKER",
            "sets the query parameter `api_key`, which the connection sets itself",
        ),
        (
            "/orders?x=1&API_KEY=ATTACKER",
            "sets the query parameter `api_key`",
        ),
        ("/orders/%2e%2e/orders", "reads as `..`"),
        ("/orders/.%2E/orders", "reads as `..`"),
        ("/orders/..;/orders", "reads as `..`"),
        ("/orders/a%2f..%2fadmin", "encoded slash"),
    ] {
        let (status, body) = server
            .post_json("/v1/webhooks", &hook("order.created", url, "/orders"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        let message = error_message(&body);
        assert!(
            message.starts_with("url: ") && message.contains(expected),
            "{url}: {body}"
        );
    }
    let (_, listed) = server.get("/v1/webhooks").await;
    assert_eq!(listed["data"], json!([]), "nothing was stored");

    // A plugin's path: the delivery fails with the reason, and nothing is sent.
    for (i, (path, expected)) in [
        (
            "/orders?api_key=ATTACKER",
            "sets the query parameter `api_key`",
        ),
        ("/orders/..;/admin?x=ATTACKER", "reads as `..`"),
        ("/orders/%2e%2e/orders?x=ATTACKER", "reads as `..`"),
    ]
    .into_iter()
    .enumerate()
    {
        let kind = format!("order.plugin-{i}");
        server.create_webhook(hook(&kind, "/orders", path)).await;
        let ack = server
            .emit(json!({ "kind": kind, "payload": { "id_order": 1 } }))
            .await;
        let delivery = server
            .final_delivery(ack["deliveries"][0].as_str().unwrap())
            .await;
        assert_eq!(delivery["status"], "failed", "{path}: {delivery}");
        let error = delivery["error"].as_str().unwrap();
        assert!(
            error.starts_with("request path: ") && error.contains(expected),
            "{path}: {error}"
        );
    }
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| !r.path.contains("ATTACKER")),
        "{:?}",
        receiver.received()
    );

    // A path under the base with its own parameters goes, with the connection's key once.
    server
        .create_webhook(hook("order.fine", "/orders", "/orders/7?note=ok"))
        .await;
    let ack = server
        .emit(json!({ "kind": "order.fine", "payload": { "id_order": 7 } }))
        .await;
    let delivery = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(
        receiver.received()[0].path,
        "/crm/orders/7?note=ok&api_key=q-secret-value"
    );
}
