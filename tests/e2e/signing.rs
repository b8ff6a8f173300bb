//! Every delivery is signed per Standard Webhooks: stable `webhook-id` across retries, the
//! attempt's `webhook-timestamp`, and `webhook-signature` under the webhook's secret (or its
//! connection's); a rotation signs with both secrets for the overlap. Secrets never appear in
//! reads.

use serde_json::json;
use wasmhooks::signature::{verify, SigningSecret};

use crate::support::{data_dir, Received, Receiver, Server};

fn headers(r: &Received) -> (String, String, String) {
    let get = |name| {
        r.header(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_string()
    };
    (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    )
}

fn verifies(secret: &str, r: &Received) -> bool {
    let secret = SigningSecret::parse(secret).unwrap();
    let (id, ts, sig) = headers(r);
    let now = jiff::Timestamp::now().as_second();
    verify(&secret, &id, &ts, &sig, &r.body, now, 300).is_ok()
}

#[tokio::test]
async fn deliveries_are_signed_retried_with_the_same_id_and_rotated_with_overlap() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let created = server
        .create_webhook(json!({
            "name": "signed", "event_kinds": ["a"], "module_id": module,
            "url": format!("{}/in", receiver.url), "retry_schedule": ["100ms"]
        }))
        .await;
    let secret = created["signing_secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    let id = created["id"].as_str().unwrap();

    // Reads never show it.
    let (_, one) = server.get(&format!("/v1/webhooks/{id}")).await;
    let (_, list) = server.get("/v1/webhooks").await;
    for text in [one.to_string(), list.to_string()] {
        assert!(!text.contains(&secret[6..]), "{text}");
    }

    // A failed first attempt and its retry: same id, each signed for its own timestamp.
    receiver.answer_with(&[500]);
    let ack = server.emit(json!({"kind": "a", "payload": {"n": 1}})).await;
    let delivery = ack["deliveries"][0].as_str().unwrap();
    assert_eq!(server.final_delivery(delivery).await["status"], "delivered");
    let got = receiver.wait_for(2).await;
    assert_eq!(
        headers(&got[0]).0,
        headers(&got[1]).0,
        "webhook-id is stable"
    );
    for r in &got {
        assert!(verifies(&secret, r), "{:?}", headers(r));
    }

    // Rotation: the new secret (shown once) and the old one both verify during the overlap.
    let (status, rotated) = server
        .post_json(&format!("/v1/webhooks/{id}/rotate-secret"), &json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["signing_secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_valid_until"].is_string(), "{rotated}");
    server.emit(json!({"kind": "a", "payload": {"n": 2}})).await;
    let got = receiver.wait_for(3).await;
    let after = &got[2];
    assert_eq!(
        headers(after).2.split(' ').count(),
        2,
        "{:?}",
        headers(after)
    );
    assert!(verifies(&new_secret, after));
    assert!(verifies(&secret, after));

    // Bad input changes nothing.
    let (status, body) = server
        .post_json(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &json!({"secret": "whsec_short"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("secret: must be `whsec_`"),
        "{body}"
    );
    let (status, body) = server
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({"signing_secret": SigningSecret::generate().to_text()}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    server.emit(json!({"kind": "a", "payload": {"n": 3}})).await;
    let got = receiver.wait_for(4).await;
    assert!(verifies(&new_secret, &got[3]));
}

#[tokio::test]
async fn a_given_secret_or_the_connections_secret_signs() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;

    let own = SigningSecret::generate().to_text();
    let created = server
        .create_webhook(json!({
            "name": "own", "event_kinds": ["own"], "module_id": module,
            "url": format!("{}/own", receiver.url), "signing_secret": own
        }))
        .await;
    assert!(
        created.get("signing_secret").is_none(),
        "a given secret is not echoed"
    );

    let shared = SigningSecret::generate().to_text();
    let (status, connection) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "ERP", "base_url": receiver.url, "signing_secret": shared}),
        )
        .await;
    assert_eq!(status, 201, "{connection}");
    server
        .create_webhook(json!({
            "name": "via connection", "event_kinds": ["erp"], "module_id": module,
            "connection_id": connection["id"], "url": "/erp"
        }))
        .await;

    server.emit(json!({"kind": "own", "payload": {}})).await;
    server.emit(json!({"kind": "erp", "payload": {}})).await;
    let got = receiver.wait_for(2).await;
    for r in &got {
        let secret = if r.path == "/own" { &own } else { &shared };
        assert!(verifies(secret, r), "{}: {:?}", r.path, headers(r));
    }
}

#[tokio::test]
async fn an_ed25519_webhook_shows_only_public_keys_and_rotates_with_overlap() {
    use wasmhooks::signature::{verify_with, Verifier};
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let created = server
        .create_webhook(json!({
            "name": "v1a", "event_kinds": ["a"], "module_id": module,
            "url": format!("{}/in", receiver.url), "signature_scheme": "v1a"
        }))
        .await;
    assert!(created.get("signing_secret").is_none(), "{created}");
    let first = created["signing_public_keys"][0]
        .as_str()
        .unwrap()
        .to_string();
    let id = created["id"].as_str().unwrap();

    let (status, rotated) = server
        .post_json(&format!("/v1/webhooks/{id}/rotate-secret"), &json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated.get("signing_secret").is_none(), "{rotated}");
    let second = rotated["signing_public_key"].as_str().unwrap().to_string();
    assert!(second.starts_with("whpk_") && second != first);
    let (_, shown) = server.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["signing_public_keys"], json!([second, first]));
    assert!(!shown.to_string().contains("whsk_"), "{shown}");

    let ack = server.emit(json!({"kind": "a", "payload": {"n": 1}})).await;
    server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    let got = receiver.wait_for(1).await;
    let (message_id, ts, sig) = headers(&got[0]);
    assert_eq!(sig.matches("v1a,").count(), 2, "{sig}");
    let now = jiff::Timestamp::now().as_second();
    for key in [&first, &second] {
        let verifier = Verifier::parse(key).unwrap();
        assert_eq!(
            verify_with(&verifier, &message_id, &ts, &sig, &got[0].body, now, 300),
            Ok(())
        );
    }

    // Changing the scheme on a webhook goes through rotation, not an update.
    let (status, body) = server
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({"signature_scheme": "v1"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("signature_scheme:"));
}
