//! The contract's definitions part: webhooks and connections written only over the version
//! read and fed in order to whoever follows the change feed; plugin state (written with an
//! outcome) and the host's secrets read back after a reopen.

use super::{claim_at, event, insert, pending, webhook, Opener};
use crate::model::{Connection, ConnectionId, DeliveryStatus, Millis, WebhookId};
use crate::storage::{
    Capacity, Changed, Conflict, Definitions, Outcome, PluginStates, StateWrite, Storage,
};

/// Writes plugin state as an evaluation does: with the outcome of a delivery made for it.
async fn write_state(
    storage: &impl Storage,
    webhook: &WebhookId,
    changes: &[(String, Option<Vec<u8>>)],
) {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let e = event(&format!("state-{n}"), None);
    let mut w = self::webhook();
    w.id = webhook.clone();
    if storage.webhook(webhook).unwrap().is_none() {
        storage.put_webhook(&mut w).unwrap();
    }
    let mut d = pending(&w, &e, 1);
    insert(storage, &e, std::slice::from_ref(&d)).await;
    let (held, _) = claim_at(storage, &d.id, Millis(1), 7, Millis(30_001), Millis(1))
        .unwrap()
        .unwrap();
    d.status = DeliveryStatus::Delivered;
    d.next_attempt_at = None;
    let state = Some(StateWrite {
        webhook,
        tenant: None,
        changes,
    });
    storage
        .finish(
            &held,
            Outcome {
                delivery: &mut d,
                state,
                keep: false,
            },
        )
        .unwrap();
}

/// Definitions are written only over the version read, and every write and delete is in
/// the change feed, in order, for whoever follows it.
pub(super) async fn definitions_are_written_over_their_version_and_fed_in_order(
    opener: &impl Opener,
) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let start = storage.definition_feed_head().unwrap();
    let mut w = webhook();
    storage.put_webhook(&mut w).unwrap();
    assert_eq!(w.version, 1);
    let mut stale = w.clone();
    stale.version = 0;
    stale.name = "stale".into();
    let refused = storage.put_webhook(&mut stale).unwrap_err();
    assert_eq!(refused.conflict(), Some(Conflict::Changed));
    assert_eq!(storage.webhook(&w.id).unwrap().as_ref(), Some(&w));
    let mut again = webhook();
    again.id = w.id.clone();
    let refused = storage.put_webhook(&mut again).unwrap_err();
    assert_eq!(refused.conflict(), Some(Conflict::Changed), "created twice");
    w.name = "renamed".into();
    storage.put_webhook(&mut w).unwrap();
    assert_eq!(storage.webhook(&w.id).unwrap().unwrap().version, 2);

    let mut c: Connection = serde_json::from_value(serde_json::json!({
        "id": ConnectionId::generate(), "name": "erp", "base_url": "https://erp.example/",
        "auth": {"type": "none"}, "headers": {},
        "created_at": "1970-01-01T00:00:00Z", "updated_at": "1970-01-01T00:00:00Z",
    }))
    .expect("a minimal connection");
    storage.put_connection(&mut c).unwrap();
    let mut stale = c.clone();
    stale.version = 0;
    let refused = storage.put_connection(&mut stale).unwrap_err();
    assert_eq!(refused.conflict(), Some(Conflict::Changed));
    assert_eq!(storage.connection(&c.id).unwrap().as_ref(), Some(&c));
    storage.delete_connection(&c.id).unwrap();
    assert_eq!(storage.connection(&c.id).unwrap(), None);
    storage.delete_webhook(&w.id).unwrap();

    let fed = storage.definition_changes(start).unwrap();
    assert!(!fed.reset);
    let named: Vec<Changed> = fed.changed.into_iter().collect();
    let (wh, con) = (
        Changed::Webhook(w.id.clone()),
        Changed::Connection(c.id.clone()),
    );
    assert_eq!(named.first(), Some(&wh));
    assert_eq!(named.last(), Some(&wh), "the delete, last");
    assert!(named.contains(&con));
    assert_eq!(storage.definition_feed_head().unwrap(), fed.position);
    let after = storage.definition_changes(fed.position).unwrap();
    assert!(after.changed.is_empty() && after.position == fed.position);
}

pub(super) async fn definitions_state_and_secrets_read_back(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = webhook();
    let secret = {
        let storage = opener.open(dir.path());
        storage.put_webhook(&mut w).unwrap();
        assert_eq!(storage.webhook(&w.id).unwrap().as_ref(), Some(&w));
        write_state(&storage, &w.id, &[("k".into(), Some(b"v".to_vec()))]).await;
        let secret = storage.host_secret("conformance").unwrap();
        assert_eq!(storage.host_secret("conformance").unwrap(), secret);
        assert_ne!(storage.host_secret("other").unwrap(), secret);
        storage.flush().unwrap();
        secret
    };
    let storage = opener.open(dir.path());
    assert_eq!(storage.webhooks().unwrap(), vec![w.clone()]);
    assert_eq!(storage.state_get(&w.id, "k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(storage.state_size(&w.id).unwrap(), 2);
    assert_eq!(storage.host_secret("conformance").unwrap(), secret);
    write_state(&storage, &w.id, &[("k".into(), None)]).await;
    assert_eq!(storage.state_get(&w.id, "k").unwrap(), None);
    // Cleared: every key of this webhook, none of another's.
    let other = webhook();
    for id in [&w.id, &other.id] {
        let two = [
            ("a".into(), Some(b"1".to_vec())),
            ("b".into(), Some(b"2".to_vec())),
        ];
        write_state(&storage, id, &two).await;
    }
    storage.state_clear(&w.id).unwrap();
    assert_eq!(storage.state_size(&w.id).unwrap(), 0);
    assert_eq!(storage.state_size(&other.id).unwrap(), 4);
    storage.delete_webhook(&w.id).unwrap();
    assert!(storage.webhook(&w.id).unwrap().is_none());
}
