//! Tests of the sled store.

use super::*;
use crate::model::DeliveryStatus;

pub(super) fn test_sealer() -> Sealer {
    Sealer::new([7; 32])
}

/// Reopens the store in `dir` once the previous one's threads let go of the lock.
pub(super) fn reopen(dir: &Path, sealer: Sealer) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Store::open(dir, sealer.clone()) {
            Err(StoreError::Sled(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Opens the sled store for the storage conformance suite.
struct SledOpener;

impl crate::storage::conformance::Opener for SledOpener {
    type Opened = Store;
    fn open(&self, dir: &Path) -> Store {
        reopen(dir, test_sealer()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sled_store_keeps_the_storage_contract() {
    crate::storage::conformance::run(&SledOpener).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sled_store_keeps_every_event_whole_across_a_crash() {
    crate::storage::conformance::a_crash_mid_ingest_leaves_every_event_whole_or_absent(
        &SledOpener,
        "store::tests::the_sled_store_keeps_every_event_whole_across_a_crash",
    )
    .await;
}

#[test]
fn an_entry_a_crash_left_behind_is_never_claimed_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let e = event("left");
    let mut d = delivery(&e, 1_000);
    store.insert_event(&e, std::slice::from_ref(&d)).unwrap();
    d.next_attempt_at = Some(Millis(4_000));
    store.update_delivery(&mut d).unwrap();
    // The old entry back, as a crash between the new entry and the old one's removal
    // leaves it.
    let old = queue_key(Millis(1_000), &d.id);
    store.ingest.queue.insert(old.as_slice(), &b""[..]).unwrap();
    assert_eq!(store.due_entries(10).unwrap().len(), 2);
    let at = |due| crate::storage::QueuePosition {
        due: Millis(due),
        id: d.id.clone(),
    };
    let claimed = store
        .claim_positions(&[at(1_000)], 1, Millis(9_000), Millis(1_000))
        .unwrap();
    assert!(claimed[0].is_none());
    assert_eq!(
        store.due_entries(10).unwrap(),
        vec![(Millis(4_000), d.id.clone())]
    );
    let claimed = store
        .claim_positions(&[at(4_000)], 1, Millis(9_000), Millis(4_000))
        .unwrap();
    let claimed = claimed[0].as_ref().expect("claimed where it is");
    assert_eq!(claimed.delivery, d);
    assert_eq!(
        claimed.event.as_ref().map(|e| &e.id),
        Some(&e.id),
        "read with it"
    );
}

#[test]
fn in_order_deliveries_stored_before_line_positions_keep_their_place_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let (e1, e2) = (event("old"), event("new"));
    let in_line = |e: &Event, webhook: &WebhookId| {
        let mut d = delivery(e, 1_000);
        d.webhook_id = webhook.clone();
        d.entity = Some("sku".into());
        d.in_order = true;
        d
    };
    let webhook = WebhookId::generate();
    // Stored the way it was before positions: its id in the key, no value.
    let old = in_line(&e1, &webhook);
    store.insert_event(&e1, &[]).unwrap();
    store
        .ingest
        .deliveries
        .insert(old.id.as_str(), encode(&old))
        .unwrap();
    let old_key = ingest::fifo_key(&old).unwrap();
    store.ingest.fifo.insert(old_key, &b""[..]).unwrap();
    let new = in_line(&e2, &webhook);
    store.insert_event(&e2, std::slice::from_ref(&new)).unwrap();
    let stored = store.delivery(&new.id).unwrap().unwrap();
    assert!(stored.line_position.is_some(), "placed by the store");
    assert_eq!(store.first_in_line(&new).unwrap(), Some(old.id.clone()));
    let mut old = store.delivery(&old.id).unwrap().unwrap();
    old.status = DeliveryStatus::Delivered;
    old.next_attempt_at = None;
    store.update_delivery(&mut old).unwrap();
    assert_eq!(store.first_in_line(&new).unwrap(), Some(new.id.clone()));
}

#[test]
fn a_line_goes_on_in_order_in_a_copy_taken_by_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let webhook = WebhookId::generate();
    let in_line = |e: &Event| {
        let mut d = delivery(e, 1_000);
        d.webhook_id = webhook.clone();
        d.entity = Some("sku".into());
        d.in_order = true;
        d.next_attempt_at = Some(Millis(1_000));
        d
    };
    let (e1, e2) = (event("before"), event("after"));
    let first = in_line(&e1);
    // Each start moves sled's sequence on (by two of its persist intervals), so a store
    // started a few times gives positions a new copy's sequence starts behind.
    for n in 0..3 {
        let store = reopen(dir.path(), test_sealer()).unwrap();
        let e = event(&format!("other-{n}"));
        let mut other = in_line(&e);
        other.entity = Some(format!("other-{n}"));
        store.insert_event(&e, &[other]).unwrap();
        store.flush().unwrap();
    }
    {
        let store = reopen(dir.path(), test_sealer()).unwrap();
        store
            .insert_event(&e1, std::slice::from_ref(&first))
            .unwrap();
        store.backup(&copy.path().join("b"), Millis(5_000)).unwrap();
    }
    let restored = reopen(&copy.path().join("b"), test_sealer()).unwrap();
    let second = in_line(&e2);
    restored
        .insert_event(&e2, std::slice::from_ref(&second))
        .unwrap();
    let placed = |id: &DeliveryId| {
        let d = restored.delivery(id).unwrap().unwrap();
        d.line_position.unwrap()
    };
    assert!(
        placed(&second.id) > placed(&first.id),
        "{} after {}",
        placed(&second.id),
        placed(&first.id)
    );
    assert_eq!(
        restored.first_in_line(&second).unwrap(),
        Some(first.id.clone())
    );
}

fn connection() -> Connection {
    Connection {
        id: ConnectionId::parse("con_01JB0000000000000000000000").unwrap(),
        version: 0,
        name: "erp".into(),
        description: None,
        base_url: "https://erp.example/".into(),
        auth: crate::model::ConnectionAuth::Bearer {
            token: crate::model::Secret::new("tok-plain-to-find"),
        },
        headers: vec![],
        signing_secret: None,
        ca_certificate: None,
        tenants: Vec::new(),
        created_at: Millis(1),
        updated_at: Millis(1),
    }
}

/// Whether `needle` occurs in any file under `dir`.
fn found_in_files(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return true;
        }
    }
    false
}

#[test]
fn credentials_are_sealed_at_rest_and_clear_records_get_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let wid = WebhookId::parse("wh_01JB0000000000000000000000").unwrap();
    let keys = SigningKeys {
        current: crate::model::Secret::new("whsec-plain-to-find"),
        previous: None,
        previous_until: None,
    };
    {
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        store.put_connection(&mut connection()).unwrap();
        store.put_signing_keys(&wid, &keys).unwrap();
        // A record an earlier version wrote in clear. (Its old bytes stay in sled's log
        // until sled reuses the segment; only new writes are guaranteed sealed.)
        let mut old = connection();
        old.id = ConnectionId::parse("con_01JB0000000000000000000001").unwrap();
        old.auth = crate::model::ConnectionAuth::Bearer {
            token: crate::model::Secret::new("legacy"),
        };
        store
            .connections
            .insert(old.id.as_str(), encode(&old))
            .unwrap();
        store.flush().unwrap();
    }
    let store = reopen(dir.path(), test_sealer()).unwrap();
    let connections = store.connections().unwrap();
    assert_eq!(connections.len(), 2);
    assert_eq!(
        connections[0],
        Connection {
            version: 1,
            ..connection()
        }
    );
    let legacy = store
        .connections
        .get("con_01JB0000000000000000000001")
        .unwrap();
    assert_eq!(legacy.unwrap()[0], 1, "the clear record was sealed");
    assert_eq!(store.signing_keys(&wid).unwrap(), Some(keys));
    store.flush().unwrap();
    drop(store);
    assert!(!found_in_files(dir.path(), b"tok-plain-to-find"));
    assert!(!found_in_files(dir.path(), b"whsec-plain-to-find"));

    // Another key cannot open them: the host refuses to start, naming the record.
    let err = reopen(dir.path(), Sealer::new([9; 32]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("record con_01JB0000000000000000000000 in connections: cannot decrypt"),
        "{err}"
    );
}

pub(super) fn event(id: &str) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        kind: "order.created".into(),
        tenant: None,
        occurred_at: Millis(1),
        received_at: Millis(2),
        attributes: vec![],
        payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
    }
}

/// A plain pending delivery of `event`, due at `due` (also used by the submodules' tests).
pub(crate) fn delivery(event: &Event, due: i64) -> Delivery {
    Delivery {
        version: 0,
        id: DeliveryId::generate(),
        webhook_id: WebhookId::generate(),
        event_id: event.id.clone(),
        tenant: None,
        event_tenant: None,
        status: DeliveryStatus::Pending,
        created_at: Millis(due),
        updated_at: Millis(due),
        next_attempt_at: Some(Millis(due)),
        requests: None,
        rounds: 0,
        attempts: vec![],
        logs: vec![],
        skip_reason: None,
        error: None,
        extracted_value: None,
        replay_of: None,
        entity: None,
        in_order: false,
        line_position: None,
        batch_events: Vec::new(),
        batch_limit: 0,
        replaced: 0,
        replaced_events: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_commits_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            // Calls 0 and 1 carry the same event id; call 2 carries two events.
            let name = if i == 1 {
                "same-0".to_string()
            } else {
                format!("same-{i}")
            };
            let mut items = vec![{
                let e = event(&name);
                let d = delivery(&e, 1000 + i);
                (e, vec![d])
            }];
            if i == 2 {
                let e = event("extra");
                items.push((e, Vec::new()));
            }
            tokio::spawn(async move { (i, store.insert_and_commit(items).await.unwrap()) })
        })
        .collect();
    let mut answers = std::collections::BTreeMap::new();
    for call in calls {
        let (i, inserted) = call.await.unwrap();
        answers.insert(i, inserted);
    }
    let new = |r: &Inserted| matches!(r, Inserted::New(d) if d.len() == 1);
    // Of the two calls with one id, exactly one stored it.
    let pair = [&answers[&0][0], &answers[&1][0]];
    assert_eq!(pair.iter().filter(|r| new(r)).count(), 1, "{pair:?}");
    assert_eq!(
        pair.iter().filter(|r| **r == &Inserted::Duplicate).count(),
        1
    );
    assert_eq!(answers[&2].len(), 2);
    assert_eq!(answers[&2][1], Inserted::New(Vec::new()));
    for i in 2..40 {
        assert!(new(&answers[&i][0]), "call {i}: {:?}", answers[&i]);
    }
    assert!(store
        .event(None, &EventId::parse("extra").unwrap())
        .unwrap()
        .is_some());
    assert_eq!(store.due_entries(100).unwrap().len(), 39);
}

#[tokio::test]
async fn events_dedupe_and_queue_orders_by_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let e = event("e1");
    let late = delivery(&e, 2000);
    let early = delivery(&e, 1000);
    assert_eq!(
        store
            .insert_event(&e, &[late.clone(), early.clone()])
            .unwrap(),
        Inserted::New(vec![late.id.clone(), early.id.clone()])
    );
    assert_eq!(
        store.insert_event(&e, &[delivery(&e, 5)]).unwrap(),
        Inserted::Duplicate
    );
    store.commit().await.unwrap();
    let due = store.due_entries(10).unwrap();
    assert_eq!(
        due,
        vec![
            (Millis(1000), early.id.clone()),
            (Millis(2000), late.id.clone())
        ]
    );

    let mut done = early.clone();
    done.status = DeliveryStatus::Delivered;
    done.next_attempt_at = None;
    store.update_delivery(&mut done).unwrap();
    assert_eq!(
        store.due_entries(10).unwrap(),
        vec![(Millis(2000), late.id.clone())]
    );
    assert_eq!(
        store.delivery(&early.id).unwrap().unwrap().status,
        DeliveryStatus::Delivered
    );
}

#[test]
fn a_newer_event_replaces_a_waiting_delivery_of_the_same_entity_until_it_is_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let webhook = WebhookId::generate();
    let for_entity = |e: &Event, due: i64, entity: &str| {
        let mut d = delivery(e, due);
        d.webhook_id = webhook.clone();
        d.entity = Some(entity.into());
        d
    };
    let (e1, e2, e3, e4) = (event("e1"), event("e2"), event("e3"), event("e4"));
    let first = for_entity(&e1, 1000, "sku-1");
    assert_eq!(
        store
            .insert_event(&e1, std::slice::from_ref(&first))
            .unwrap(),
        Inserted::New(vec![first.id.clone()])
    );
    // e2 for the same entity: carried by the first delivery, due later.
    let second = for_entity(&e2, 5000, "sku-1");
    assert_eq!(
        store.insert_event(&e2, &[second]).unwrap(),
        Inserted::New(vec![first.id.clone()])
    );
    let waiting = store.delivery(&first.id).unwrap().unwrap();
    assert_eq!(waiting.event_id, e2.id);
    assert_eq!(waiting.replaced, 1);
    assert_eq!(waiting.replaced_events, vec![e1.id.clone()]);
    assert_eq!(
        store.due_entries(10).unwrap(),
        vec![(Millis(5000), first.id.clone())]
    );
    // A worker that read the old state cannot claim it; one that read the new state can.
    assert!(!store.close_collecting(&first, Millis(1000)).unwrap());
    assert!(store.close_collecting(&waiting, Millis(5000)).unwrap());
    // Once claimed, a newer event gets a delivery of its own; other entities always do.
    let third = for_entity(&e3, 6000, "sku-1");
    let other = for_entity(&e4, 6000, "sku-2");
    assert_eq!(
        store
            .insert_event(&e3, std::slice::from_ref(&third))
            .unwrap(),
        Inserted::New(vec![third.id.clone()])
    );
    assert_eq!(
        store
            .insert_event(&e4, std::slice::from_ref(&other))
            .unwrap(),
        Inserted::New(vec![other.id.clone()])
    );
}

#[test]
fn one_webhook_never_mixes_tenants_in_a_batch_or_a_debounced_entity() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let webhook = WebhookId::generate();
    // A webhook without a tenant, taking two tenants' events with the same ids.
    let of = |tenant: &str, batch: bool, id: &str| {
        let mut e = event(id);
        e.tenant = Some(tenant.into());
        let mut d = delivery(&e, 1000);
        d.webhook_id = webhook.clone();
        d.event_tenant = Some(tenant.into());
        if batch {
            d.batch_limit = 10;
            d.batch_events = vec![e.id.clone()];
        } else {
            d.entity = Some("sku-1".into());
        }
        (e, d)
    };
    for batch in [true, false] {
        let id = if batch { "in-batch" } else { "debounced" };
        let (ea, da) = of("a", batch, id);
        let (eb, db) = of("b", batch, id);
        assert_eq!(
            store.insert_event(&ea, std::slice::from_ref(&da)).unwrap(),
            Inserted::New(vec![da.id.clone()])
        );
        // B's event starts its own batch / debounced delivery, never joins A's.
        assert_eq!(
            store.insert_event(&eb, std::slice::from_ref(&db)).unwrap(),
            Inserted::New(vec![db.id.clone()])
        );
        let a = store.delivery(&da.id).unwrap().unwrap();
        assert_eq!(a.event_id, ea.id);
        assert_eq!(a.replaced, 0);
        assert!(a.batch_events.len() <= 1);
        let found = store
            .event(a.events_tenant(), &a.event_id)
            .unwrap()
            .unwrap();
        assert_eq!(found.tenant.as_deref(), Some("a"));
    }
}

#[test]
fn the_events_of_one_call_are_stored_together_and_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let webhook = WebhookId::generate();
    let (e1, e2, e3) = (event("c1"), event("c2"), event("c3"));
    let plain = delivery(&e1, 1000);
    let mut first = delivery(&e2, 2000);
    first.webhook_id = webhook.clone();
    first.entity = Some("sku-9".into());
    let mut second = delivery(&e3, 3000);
    second.webhook_id = webhook;
    second.entity = Some("sku-9".into());
    let again = delivery(&e1, 4000);
    let items: Vec<(&Event, &[Delivery])> = vec![
        (&e1, std::slice::from_ref(&plain)),
        (&e2, std::slice::from_ref(&first)),
        (&e3, std::slice::from_ref(&second)),
        // The same id twice in one call: the second is a duplicate.
        (&e1, std::slice::from_ref(&again)),
    ];
    let inserted = store.insert_events(&items).unwrap();
    assert_eq!(
        inserted,
        vec![
            Inserted::New(vec![plain.id.clone()]),
            Inserted::New(vec![first.id.clone()]),
            // Debounced onto the delivery the same call made for e2.
            Inserted::New(vec![first.id.clone()]),
            Inserted::Duplicate,
        ]
    );
    assert_eq!(store.delivery(&first.id).unwrap().unwrap().event_id, e3.id);
    assert!(store.delivery(&again.id).unwrap().is_none());
    assert_eq!(
        store.due_entries(10).unwrap(),
        vec![(Millis(1000), plain.id), (Millis(3000), first.id)]
    );
}

#[test]
fn a_delivery_reads_as_last_written_whether_kept_in_memory_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let in_sled = |store: &Store, id: &DeliveryId| -> Option<Delivery> {
        let raw = store.ingest.deliveries.get(id.as_str()).unwrap()?;
        Some(decode("deliveries", &raw).unwrap())
    };
    let e = event("kept-1");
    let mut d = delivery(&e, 1000);
    store.insert_event(&e, std::slice::from_ref(&d)).unwrap();
    assert_eq!(store.delivery(&d.id).unwrap().as_ref(), Some(&d));
    assert_eq!(in_sled(&store, &d.id).as_ref(), Some(&d));

    // Written again: read back as written, not as first kept.
    d.status = DeliveryStatus::Failed;
    d.rounds = 1;
    d.next_attempt_at = Some(Millis(5000));
    store.update_delivery(&mut d).unwrap();
    assert_eq!(store.delivery(&d.id).unwrap().as_ref(), Some(&d));
    d.status = DeliveryStatus::Delivered;
    d.next_attempt_at = None;
    store.update_delivery(&mut d).unwrap();
    assert_eq!(store.delivery(&d.id).unwrap().as_ref(), Some(&d));

    // An event stored already: its new delivery is neither stored nor kept.
    let again = delivery(&e, 2000);
    assert_eq!(
        store
            .insert_event(&e, std::slice::from_ref(&again))
            .unwrap(),
        Inserted::Duplicate
    );
    assert!(store.delivery(&again.id).unwrap().is_none());

    assert_eq!(in_sled(&store, &d.id).as_ref(), Some(&d));
}

#[test]
fn an_unreadable_delivery_is_named_and_passed_over_never_hiding_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let e = event("e-list");
    let good = delivery(&e, 5);
    store.insert_event(&e, std::slice::from_ref(&good)).unwrap();
    store
        .ingest
        .deliveries
        .insert("dlv_0000broken", &b"{\"id\": 12"[..])
        .unwrap();
    for descending in [true, false] {
        let query = crate::storage::DeliveryQuery {
            descending,
            limit: 10,
            ..Default::default()
        };
        let scanned = store.scan_deliveries(&query).unwrap();
        assert_eq!(scanned.unreadable, vec!["dlv_0000broken".to_string()]);
        assert_eq!(scanned.deliveries.len(), 1);
        assert_eq!(scanned.deliveries[0].id, good.id);
    }
}

#[test]
fn a_snapshot_left_half_written_by_a_failed_start_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let e = event("kept");
    store.insert_event(&e, &[]).unwrap();
    store.flush().unwrap();
    drop(store);
    // What a start on a full disk left: the snapshot it began and could not fill.
    std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFFF.generating"), b"").unwrap();
    let store = reopen(dir.path(), test_sealer()).unwrap();
    assert!(store.event(None, &e.id).unwrap().is_some());
}

#[test]
fn event_ids_are_unique_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let mut a = event("order-1");
    a.tenant = Some("a".into());
    let mut b = event("order-1");
    b.tenant = Some("b".into());
    b.kind = "order.updated".into();
    for e in [&a, &b] {
        assert!(matches!(
            store.insert_event(e, &[]).unwrap(),
            Inserted::New(_)
        ));
    }
    assert_eq!(store.insert_event(&a, &[]).unwrap(), Inserted::Duplicate);
    let id = EventId::parse("order-1").unwrap();
    let check = |s: &Store| {
        assert_eq!(
            s.event(Some("a"), &id).unwrap().unwrap().kind,
            "order.created"
        );
        assert_eq!(
            s.event(Some("b"), &id).unwrap().unwrap().kind,
            "order.updated"
        );
        assert!(s.event(None, &id).unwrap().is_none());
        assert!(s.event(Some("c"), &id).unwrap().is_none());
    };
    check(&store);
    drop(store);
    check(&reopen(dir.path(), test_sealer()).unwrap());
}

#[test]
fn plugin_state_is_scoped_per_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_sealer()).unwrap();
    let (a, b) = (WebhookId::generate(), WebhookId::generate());
    let mut stored: Webhook = serde_json::from_value(serde_json::json!({
        "id": a, "name": "w", "enabled": true, "event_kinds": ["*"], "config": {},
        "module_id": "mod_00000000000000000000000000000000", "method": "POST", "headers": {},
        "created_at": "1970-01-01T00:00:00Z", "updated_at": "1970-01-01T00:00:00Z",
    }))
    .unwrap();
    store.put_webhook(&mut stored).unwrap();
    let e = event("stateful");
    let mut d = delivery(&e, 1000);
    store.insert_event(&e, std::slice::from_ref(&d)).unwrap();
    let mut write = |changes: &[(String, Option<Vec<u8>>)]| {
        let due = d.next_attempt_at;
        let state = Some(crate::storage::StateWrite {
            webhook: &a,
            tenant: None,
            changes,
        });
        store.write_outcome(&mut d, due, state).unwrap();
    };
    write(&[("k".into(), Some(b"1".to_vec()))]);
    assert_eq!(store.state_get(&a, "k").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.state_get(&b, "k").unwrap(), None);
    assert_eq!(store.state_size(&a).unwrap(), 2);
    write(&[("k".into(), None)]);
    assert_eq!(store.state_get(&a, "k").unwrap(), None);
}

#[test]
fn host_secrets_are_made_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let first = store.host_secret("artifact_key").unwrap();
        assert_eq!(store.host_secret("artifact_key").unwrap(), first);
        assert_ne!(store.host_secret("other").unwrap(), first);
        store.flush().unwrap();
        first
    };
    // The closed store's threads let go of the lock shortly after it is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let store = loop {
        match Store::open(dir.path(), test_sealer()) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopening: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    assert_eq!(store.host_secret("artifact_key").unwrap(), first);
}
