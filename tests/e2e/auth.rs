//! API keys: who may call what. Missing or wrong keys get 401, the wrong role 403, and a
//! tenant-bound key sees only its tenant. Key texts are shown once and never stored.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{client_with_key, data_dir, eventually, Receiver, Server};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Issue 24: `/healthz` answers anyone with its status only; the figures behind it are
/// host-wide (free bytes, queue depth, evaluation time of every tenant), a side channel on the
/// others' traffic, so only an admin key bound to no tenant sees them.
#[tokio::test]
async fn healthz_shows_its_figures_only_to_an_admin_key_without_a_tenant() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let url = format!("{}/healthz", server.url);
    let status_only = json!({ "status": "ok" });

    let (status, health) = server.send(reqwest::Client::new().get(&url)).await;
    assert_eq!((status, &health), (StatusCode::OK, &status_only));

    let (status, health) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    for figure in ["queue", "storage", "plugins", "fair_share"] {
        assert!(health.get(figure).is_some(), "{figure} missing: {health}");
    }

    for (role, tenant) in [
        ("admin", Some("acme")),
        ("emitter", None),
        ("emitter", Some("acme")),
    ] {
        let (_, key) = server
            .post_json(
                "/v1/keys",
                &json!({ "name": "k", "role": role, "tenant": tenant }),
            )
            .await;
        let holder = client_with_key(key["key"].as_str().unwrap());
        let (status, health) = server.send(holder.get(&url)).await;
        assert_eq!(
            (status, &health),
            (StatusCode::OK, &status_only),
            "{role} {tenant:?}"
        );
    }

    // A key that is no key is told so, as on every route.
    let (status, body) = server.send(client_with_key("not-a-key").get(&url)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
}

#[tokio::test]
async fn missing_wrong_and_revoked_keys_get_401_and_wrong_roles_403() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let anonymous = reqwest::Client::new();

    // Public routes need no key.
    let (status, _) = server
        .send(anonymous.get(format!("{}/healthz", server.url)))
        .await;
    assert_eq!(status, 200);
    let (status, doc) = server
        .send(anonymous.get(format!("{}/openapi.json", server.url)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    // No key, a malformed header, an unknown key.
    let (status, body) = server
        .send(anonymous.get(format!("{}/v1/webhooks", server.url)))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let (status, _) = server
        .send(
            anonymous
                .get(format!("{}/v1/webhooks", server.url))
                .header("authorization", "Basic abc"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let wrong = client_with_key("whk_01m83j646jgje8srde3sxseqgm_0000000000000000000000000000000000000000000000000000000000000000");
    let (status, body) = server
        .send(
            wrong
                .post(format!("{}/v1/events", server.url))
                .json(&json!({"kind": "a", "payload": 1})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (_, events) = server.get("/v1/deliveries").await;
    assert_eq!(events["data"], json!([]), "a refused emit stored nothing");

    // An emitter key: emits and reads events, nothing else.
    let (status, created) = server
        .post_json(
            "/v1/keys",
            &json!({ "name": "shop backend", "role": "emitter" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let emitter_key = created["key"].as_str().unwrap().to_string();
    assert!(emitter_key.starts_with("whk_"));
    let emitter = client_with_key(&emitter_key);
    let (status, _) = server
        .send(
            emitter
                .post(format!("{}/v1/events", server.url))
                .json(&json!({ "id": "e-1", "kind": "order.created", "payload": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, event) = server
        .send(emitter.get(format!("{}/v1/events/e-1", server.url)))
        .await;
    assert_eq!(
        (status, event["id"].as_str()),
        (StatusCode::OK, Some("e-1"))
    );
    for (method, path) in [
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/deliveries"),
        ("GET", "/v1/modules"),
        ("POST", "/v1/keys"),
    ] {
        let request = match method {
            "GET" => emitter.get(format!("{}{path}", server.url)),
            _ => emitter
                .post(format!("{}{path}", server.url))
                .json(&json!({})),
        };
        let (status, body) = server.send(request).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path}"
        );
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("emitter role"));
    }

    // Keys are listed without hashes or texts.
    let (_, keys) = server.get("/v1/keys").await;
    let text = keys.to_string();
    assert!(
        !text.contains(&emitter_key[20..]),
        "key text leaked: {text}"
    );
    assert!(!text.contains("hash"), "{text}");
    assert_eq!(keys["data"][0]["role"], "emitter");

    // Revoked: 401 from then on.
    let id = created["id"].as_str().unwrap();
    let (status, revoked) = server.delete(&format!("/v1/keys/{id}")).await;
    assert_eq!(
        (status, revoked["revoked"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (status, _) = server
        .send(emitter.get(format!("{}/v1/events/e-1", server.url)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bad key definitions.
    for (body, message) in [
        (json!({ "role": "admin" }), "name: is required"),
        (
            json!({ "name": "x", "role": "owner" }),
            "role: unknown role `owner`",
        ),
        (json!({ "name": "x" }), "role: is required"),
        (
            json!({ "name": "x", "role": "admin", "tenant": "" }),
            "tenant: must be 1 to 128",
        ),
    ] {
        let (status, answer) = server.post_json("/v1/keys", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{body} → {answer}"
        );
    }
    let (_, keys) = server.get("/v1/keys").await;
    assert_eq!(
        keys["data"].as_array().unwrap().len(),
        1,
        "no refused key was stored"
    );
}

#[tokio::test]
async fn tenant_bound_keys_see_and_emit_only_their_tenant() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let key =
        |role: &str| json!({ "name": format!("{role} of acme"), "role": role, "tenant": "acme" });
    let (_, emitter) = server.post_json("/v1/keys", &key("emitter")).await;
    let (_, admin) = server.post_json("/v1/keys", &key("admin")).await;
    let emitter = client_with_key(emitter["key"].as_str().unwrap());
    let acme = client_with_key(admin["key"].as_str().unwrap());

    // The tenant admin's webhook is pinned to its tenant; another tenant is refused.
    let (status, mine) = server
        .send(acme.post(format!("{}/v1/webhooks", server.url)).json(&json!({
            "name": "acme orders", "event_kinds": ["order.*"], "module_id": module, "url": receiver.url
        })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    assert_eq!(mine["tenant"], "acme");
    let (status, body) = server
        .send(acme.post(format!("{}/v1/webhooks", server.url)).json(&json!({
            "name": "x", "event_kinds": ["*"], "module_id": module, "url": receiver.url, "tenant": "globex"
        })))
        .await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    // Shared resources need an unbound admin.
    let (status, body) = server
        .send(
            acme.post(format!("{}/v1/keys", server.url))
                .json(&json!({ "name": "x", "role": "admin" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bound to tenant `acme`"));

    // The operator's webhook of another tenant is invisible to acme.
    let theirs = server
        .create_webhook(
            json!({ "name": "globex orders", "tenant": "globex", "event_kinds": ["order.*"],
                                "module_id": module, "url": receiver.url }),
        )
        .await;
    let (_, listed) = server
        .send(acme.get(format!("{}/v1/webhooks", server.url)))
        .await;
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme orders"]);
    let theirs_id = theirs["id"].as_str().unwrap();
    let (status, _) = server
        .send(acme.get(format!("{}/v1/webhooks/{theirs_id}", server.url)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .send(acme.delete(format!("{}/v1/webhooks/{theirs_id}", server.url)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The emitter's events get its tenant, and reach only acme's webhook.
    let (status, ack) = server
        .send(
            emitter
                .post(format!("{}/v1/events", server.url))
                .json(&json!({ "id": "a-1", "kind": "order.created", "payload": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(ack["deliveries"].as_array().unwrap().len(), 1);
    let (_, event) = server.get("/v1/events/a-1?tenant=acme").await;
    assert_eq!(event["tenant"], "acme");
    let (status, body) = server
        .send(
            emitter
                .post(format!("{}/v1/events", server.url))
                .json(&json!({ "kind": "order.created", "tenant": "globex", "payload": {} })),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));

    // Another tenant's event is not found through acme's keys.
    server
        .emit(json!({ "id": "g-1", "kind": "order.created", "tenant": "globex", "payload": {} }))
        .await;
    let (status, _) = server
        .send(emitter.get(format!("{}/v1/events/g-1", server.url)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // acme's admin sees only acme's deliveries.
    receiver.wait_for(2).await;
    let (_, deliveries) = server
        .send(acme.get(format!("{}/v1/deliveries", server.url)))
        .await;
    let list = deliveries["data"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{deliveries}");
    assert_eq!(list[0]["event_id"], "a-1");
}

#[tokio::test]
async fn the_first_start_prints_an_admin_key_once() {
    let (_tmp, dir) = data_dir();
    // No configured key: the server makes one.
    let server = Server::start(&dir, &[("WASMHOOKS_API__ADMIN_KEY", "")]).await;
    let key = eventually("the first admin key on stdout", || async {
        server
            .stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with("whk_"))
            .map(str::to_string)
    })
    .await;
    let admin = client_with_key(&key);
    let (status, _) = server
        .send(admin.get(format!("{}/v1/keys", server.url)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get("/v1/keys").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the test key is not configured here"
    );
    server.kill().await;

    // A restart keeps the key and prints nothing new.
    let server = Server::start(&dir, &[("WASMHOOKS_API__ADMIN_KEY", "")]).await;
    let (status, _) = server
        .send(admin.get(format!("{}/v1/webhooks", server.url)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let printed = server.kill().await;
    assert!(
        !printed.iter().any(|l| l.contains("whk_")),
        "a key was printed again: {printed:?}"
    );
}
