//! Another writer on the same storage (as a second host on a shared database would be):
//! the host follows what it changes, and never undoes it with an older copy.

use std::sync::Arc;

use serde_json::json;
use wasmhooks::catalog::{Error, Principal};
use wasmhooks::config::Config;
use wasmhooks::model::{Delivery, DeliveryStatus, Millis, Role};
use wasmhooks::pipeline::{EventInput, RecoverInput, WebhookInput};

use crate::support::{data_dir, eventually, Receiver};

/// A webhook of the `forward` example on `order.*`, with the fields of `fields` besides.
fn forward_webhook(
    p: &wasmhooks::pipeline::Pipeline,
    mut fields: serde_json::Value,
) -> wasmhooks::model::Webhook {
    let (module, _) = p
        .catalog()
        .upload_module("forward", "1", wasmhooks::examples::FORWARD)
        .unwrap();
    fields["event_kinds"] = json!(["order.*"]);
    fields["module_id"] = json!(module.id);
    let input: WebhookInput = serde_json::from_value(fields).unwrap();
    p.catalog().create_webhook(input).unwrap()
}

#[tokio::test]
async fn a_webhook_another_writer_changes_is_followed_and_never_undone() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let mut config = Config {
        data_dir: dir,
        ..Config::default()
    };
    config.delivery.allowed_destinations = vec!["127.0.0.1".into()];
    let mut host = wasmhooks::Host::open(config).unwrap();
    host.start();
    let p = host.pipeline().clone();
    let created = forward_webhook(&p, json!({ "name": "ours", "url": receiver.url }));
    let storage: Arc<dyn wasmhooks::storage::Storage> = p.storage().clone();

    // Another writer renames it in storage: the host's copy follows.
    let mut theirs = storage.webhook(&created.id).unwrap().unwrap();
    theirs.name = "renamed elsewhere".into();
    storage.put_webhook(&mut theirs).unwrap();
    eventually("the rename to be followed", || async {
        let kept = p.catalog().webhook(&created.id).unwrap();
        (kept.name == "renamed elsewhere").then_some(())
    })
    .await;

    // A change the host makes (a failure streak) is made on what the other writer saved,
    // even before the host has followed it, and keeps it.
    let mut theirs = storage.webhook(&created.id).unwrap().unwrap();
    theirs.description = Some("described elsewhere".into());
    storage.put_webhook(&mut theirs).unwrap();
    let changed = p
        .catalog()
        .change_webhook(&created.id, |w| w.failing_since = Some(Millis(5)))
        .unwrap()
        .expect("changed");
    assert_eq!(changed.description.as_deref(), Some("described elsewhere"));
    assert_eq!(changed.failing_since, Some(Millis(5)));
    let stored = storage.webhook(&created.id).unwrap().unwrap();
    assert_eq!(stored, changed);

    // Paused elsewhere: once followed, new events no longer go to it.
    let mut theirs = stored;
    theirs.enabled = false;
    storage.put_webhook(&mut theirs).unwrap();
    eventually("the pause to be followed", || async {
        let kept = p.catalog().webhook(&created.id).unwrap();
        (!kept.enabled).then_some(())
    })
    .await;
    let event: EventInput =
        serde_json::from_value(json!({ "kind": "order.created", "payload": {} })).unwrap();
    let emitted = p.emit(vec![event]).await.unwrap();
    assert!(
        emitted[0].deliveries.is_empty(),
        "a paused webhook takes no events"
    );

    // Deleted elsewhere: forgotten.
    storage.delete_webhook(&created.id).unwrap();
    eventually("the delete to be followed", || async {
        p.catalog().webhook(&created.id).is_err().then_some(())
    })
    .await;
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tenant_acts_only_on_its_webhook_as_stored_not_as_remembered() {
    let (_tmp, dir) = data_dir();
    let config = Config {
        data_dir: dir,
        ..Config::default()
    };
    // Not started: nothing follows the storage's changes, so the copy in memory stays as
    // it was, as on a host that has not yet heard of another host's write.
    let host = wasmhooks::Host::open(config).unwrap();
    let p = host.pipeline().clone();
    let created = forward_webhook(
        &p,
        json!({ "name": "acme's", "url": "https://acme.example/hook", "tenant": "acme" }),
    );
    let storage: Arc<dyn wasmhooks::storage::Storage> = p.storage().clone();
    // Another host moves it to another tenant.
    let mut moved = storage.webhook(&created.id).unwrap().unwrap();
    moved.tenant = Some("globex".into());
    storage.put_webhook(&mut moved).unwrap();
    let remembered = p.catalog().webhook(&created.id).unwrap();
    assert_eq!(
        remembered.tenant.as_deref(),
        Some("acme"),
        "not followed yet"
    );

    let acme = Principal {
        role: Role::Admin,
        tenant: Some("acme".into()),
        key_id: None,
    };
    let not_found = |e: Error| assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let catalog = p.catalog();
    not_found(catalog.webhook_seen_by(&created.id, &acme).unwrap_err());
    not_found(catalog.pause_webhook_as(&created.id, &acme).unwrap_err());
    let enable: WebhookInput = serde_json::from_value(json!({ "enabled": true })).unwrap();
    not_found(
        catalog
            .update_webhook_signed(&created.id, enable, &acme)
            .unwrap_err(),
    );
    not_found(
        catalog
            .rotate_signing_secret_as(&created.id, Default::default(), &acme)
            .unwrap_err(),
    );
    not_found(catalog.delete_webhook_as(&created.id, &acme).unwrap_err());
    // Nothing of it changed; its new tenant sees it as stored.
    let globex = Principal {
        tenant: Some("globex".into()),
        ..acme.clone()
    };
    assert_eq!(
        catalog.webhook_seen_by(&created.id, &globex).unwrap(),
        moved
    );
    assert_eq!(storage.webhook(&created.id).unwrap().unwrap(), moved);

    // acme's failed delivery of it stays acme's: recovering the webhook as its new tenant
    // walks globex's history, not the one the stale copy names.
    let event: wasmhooks::model::Event = serde_json::from_value(json!({
        "id": "evt-acme-1", "kind": "order.created", "tenant": "acme",
        "occurred_at": 1_000, "received_at": 1_000, "payload": {}
    }))
    .unwrap();
    storage
        .insert_and_commit(vec![(event.clone(), Vec::new())])
        .await
        .unwrap();
    let mut failed = Delivery::pending(&remembered, &event, Millis(1_000), Millis(1_000));
    failed.status = DeliveryStatus::Failed;
    failed.next_attempt_at = None;
    storage.update_delivery(&mut failed).unwrap();
    let since = || serde_json::from_value::<RecoverInput>(json!({ "since": 0 })).unwrap();
    let recovered = p.recover(&created.id, since(), &globex).await.unwrap();
    assert!(recovered.replayed.is_empty(), "{:?}", recovered.replayed);
    not_found(p.recover(&created.id, since(), &acme).await.unwrap_err());
    // Nor is that delivery replayed: its webhook is another tenant's now.
    let replay = p.replay(&failed.id).await;
    assert!(
        matches!(replay, Err(Error::Conflict(ref why)) if why.contains("moved to another tenant")),
        "{replay:?}"
    );
}
