//! The storage contract as tests: every implementation of [`Storage`] runs [`run`] with a
//! way to open (and reopen) its storage in a directory, and
//! [`a_crash_mid_ingest_leaves_every_event_whole_or_absent`] from a test of its own (the
//! check runs that test again as a child process and kills it); it must pass every check.
//! The sled store runs both in its tests; a second engine runs the same, from its own crate
//! with this crate's `conformance` feature:
//!
//! ```ignore
//! struct MyOpener;
//! impl wasmhooks::storage::conformance::Opener for MyOpener {
//!     type Opened = MyStorage;
//!     fn open(&self, dir: &std::path::Path) -> MyStorage { MyStorage::open(dir) }
//! }
//! #[tokio::test(flavor = "multi_thread")]
//! async fn keeps_the_contract() { wasmhooks::storage::conformance::run(&MyOpener).await }
//! ```
//!
//! Most checks hold one handle on the storage at a time; an engine several hosts share also
//! runs the `shared` checks, with two handles at once (claims, the change feed, concurrent
//! ingest and routing).

use std::path::Path;

use crate::model::{
    Delivery, DeliveryId, DeliveryStatus, Event, EventId, Millis, Webhook, WebhookId,
};

use super::{
    Capacity, Claim, Conflict, Definitions, Deliveries, DeliveryQuery, Inserted, Outcome,
    PluginStates, QueueFrom, QueuePosition, StateWrite, Storage, StorageError,
};

mod definitions;
mod lists;
mod pruning;
mod shared;

/// Opens the storage kept in a directory (again, after the last handle to it was dropped).
/// Each check passes a fresh, empty directory; an engine that keeps no files there (a
/// database server) names its database after it, so each check starts empty and a reopen
/// finds what was written.
pub trait Opener {
    /// The storage.
    type Opened: Storage;
    /// Opens it.
    fn open(&self, dir: &Path) -> Self::Opened;
    /// Whether [`Capacity::backup`] writes a copy this opener opens (an engine whose
    /// backups are the database's own tools' says no, and the backup checks are left out).
    fn backs_up(&self) -> bool {
        true
    }
    /// Whether opening a directory again while a handle is open gives a second handle on the
    /// same storage, as a second host sharing it would hold (then the shared-engine checks
    /// run too).
    fn shares(&self) -> bool {
        false
    }
}

/// Runs every check, each in a directory of its own.
pub async fn run(opener: &impl Opener) {
    acknowledged_events_survive_a_reopen(opener).await;
    ingest_is_idempotent_and_ids_are_per_tenant(opener).await;
    the_queue_reads_in_due_order_from_any_position(opener).await;
    a_new_state_moves_the_queue_entry_and_a_final_one_removes_it(opener).await;
    claims_are_exclusive_until_they_lapse_and_finish_only_while_held(opener).await;
    an_outcome_is_written_whole_and_only_over_the_version_read(opener).await;
    outcomes_finished_at_once_are_each_written_or_refused_on_their_own(opener).await;
    a_delivery_cannot_be_claimed_where_it_no_longer_is(opener).await;
    lists::a_delivery_query_filters_and_pages(opener).await;
    a_debounced_delivery_takes_newer_events_until_closed(opener).await;
    a_batch_takes_events_until_closed_or_full(opener).await;
    in_order_deliveries_wait_for_the_first_in_line(opener).await;
    definitions::definitions_state_and_secrets_read_back(opener).await;
    definitions::definitions_are_written_over_their_version_and_fed_in_order(opener).await;
    pruning::finished_work_is_pruned_past_its_time_and_pending_work_is_kept(opener).await;
    pruning::a_pruning_walk_stops_between_steps_and_the_next_goes_on(opener).await;
    if opener.backs_up() {
        a_backup_opens_with_every_event_and_the_queue_as_copied(opener).await;
        pruning::a_backup_prunes_like_its_original(opener).await;
    }
    if opener.shares() {
        shared::run(opener).await;
    }
}

fn event(id: &str, tenant: Option<&str>) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        kind: "order.created".into(),
        tenant: tenant.map(str::to_string),
        occurred_at: Millis(1),
        received_at: Millis(2),
        attributes: vec![],
        payload: serde_json::value::RawValue::from_string(format!("{{\"id\":\"{id}\"}}")).unwrap(),
    }
}

fn webhook() -> Webhook {
    serde_json::from_value(serde_json::json!({
        "id": WebhookId::generate(),
        "name": "conformance",
        "enabled": true,
        "event_kinds": ["*"],
        "config": {},
        "method": "POST",
        "headers": {},
        "module_id": "mod_00000000000000000000000000000000",
        "url": "https://receiver.example/in",
        "created_at": "1970-01-01T00:00:00Z",
        "updated_at": "1970-01-01T00:00:00Z",
    }))
    .expect("a minimal webhook")
}

fn pending(webhook: &Webhook, event: &Event, due: i64) -> Delivery {
    Delivery::pending(webhook, event, Millis(due), Millis(due))
}

async fn insert(storage: &impl Storage, event: &Event, deliveries: &[Delivery]) -> Inserted {
    let mut inserted = storage
        .insert_and_commit(vec![(event.clone(), deliveries.to_vec())])
        .await
        .unwrap();
    inserted.pop().unwrap()
}

fn due_entries(storage: &impl Storage) -> Vec<(Millis, DeliveryId)> {
    storage
        .due_from(QueueFrom::Due(Millis::EARLIEST))
        .map(|entry| entry.map(|e| (e.position.due, e.position.id)).unwrap())
        .collect()
}

/// Claims one delivery at (`due`, `id`), as the scheduler claims a pass's.
fn claim_at(
    storage: &impl Storage,
    id: &DeliveryId,
    due: Millis,
    holder: u64,
    until: Millis,
    now: Millis,
) -> Result<Option<(Claim, Delivery)>, StorageError> {
    let position = QueuePosition {
        due,
        id: id.clone(),
    };
    let mut claimed = storage.claim(&[position], holder, until, now)?;
    assert_eq!(claimed.len(), 1, "one answer per position");
    Ok(claimed.pop().unwrap().map(|c| (c.claim, c.delivery)))
}

fn claim(storage: &impl Storage, d: &Delivery, holder: u64, now: i64) -> Option<Claim> {
    let due = d.next_attempt_at.unwrap();
    claim_at(
        storage,
        &d.id,
        due,
        holder,
        Millis(now + 60_000),
        Millis(now),
    )
    .unwrap()
    .map(|(claim, _)| claim)
}

async fn acknowledged_events_survive_a_reopen(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let w = webhook();
    let e = event("kept", Some("acme"));
    let d = pending(&w, &e, 5_000);
    {
        let storage = opener.open(dir.path());
        assert_eq!(
            insert(&storage, &e, std::slice::from_ref(&d)).await,
            Inserted::New(vec![d.id.clone()])
        );
    }
    let storage = opener.open(dir.path());
    let found = storage.event(Some("acme"), &e.id).unwrap().unwrap();
    assert_eq!(found.payload.get(), e.payload.get());
    assert_eq!(storage.delivery(&d.id).unwrap().as_ref(), Some(&d));
    assert_eq!(due_entries(&storage), vec![(Millis(5_000), d.id.clone())]);
}

async fn ingest_is_idempotent_and_ids_are_per_tenant(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let a = event("order-1", Some("a"));
    let first = pending(&w, &a, 1_000);
    assert!(matches!(
        insert(&storage, &a, std::slice::from_ref(&first)).await,
        Inserted::New(_)
    ));
    // The same id again: a duplicate, and nothing of it is stored.
    let again = pending(&w, &a, 2_000);
    assert_eq!(
        insert(&storage, &a, std::slice::from_ref(&again)).await,
        Inserted::Duplicate
    );
    assert!(storage.delivery(&again.id).unwrap().is_none());
    // The same id of another tenant is another event.
    let b = event("order-1", Some("b"));
    assert!(matches!(
        insert(&storage, &b, &[pending(&w, &b, 1_000)]).await,
        Inserted::New(_)
    ));
    assert!(storage.event(None, &a.id).unwrap().is_none());
    assert!(storage.event(Some("c"), &a.id).unwrap().is_none());
    assert_eq!(due_entries(&storage).len(), 2);
}

async fn the_queue_reads_in_due_order_from_any_position(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let mut expected = Vec::new();
    for (i, due) in [7_000, 1_000, 5_000, 1_000, 3_000].into_iter().enumerate() {
        let e = event(&format!("q-{i}"), None);
        let d = pending(&w, &e, due);
        insert(&storage, &e, std::slice::from_ref(&d)).await;
        expected.push((Millis(due), d.id));
    }
    expected.sort();
    assert_eq!(due_entries(&storage), expected);
    assert_eq!(storage.queue_len(), 5);
    // From a position: the entries after it, in order; each carries its webhook.
    let all: Vec<_> = storage
        .due_from(QueueFrom::Due(Millis::EARLIEST))
        .map(Result::unwrap)
        .collect();
    let after: Vec<_> = storage
        .due_from(QueueFrom::After(&all[1].position))
        .map(Result::unwrap)
        .collect();
    assert_eq!(after, all[2..]);
    let at: Vec<_> = storage
        .due_from(QueueFrom::At(&all[1].position))
        .map(Result::unwrap)
        .collect();
    assert_eq!(at, all[1..]);
    // From a due time: every entry due then or later, however their ids sort.
    let from_due: Vec<_> = storage
        .due_from(QueueFrom::Due(Millis(1_000)))
        .map(Result::unwrap)
        .collect();
    assert_eq!(from_due, all);
    let from_due: Vec<_> = storage
        .due_from(QueueFrom::Due(Millis(1_001)))
        .map(Result::unwrap)
        .collect();
    assert_eq!(from_due, all[2..]);
    assert!(all.iter().all(|e| e.webhook.as_ref() == Some(&w.id)));
    // Writes are reported by their earliest due time, once.
    let _ = storage.take_written_due();
    let e = event("q-late", None);
    insert(&storage, &e, &[pending(&w, &e, 500)]).await;
    assert_eq!(storage.take_written_due(), Some(Millis(500)));
    assert_eq!(storage.take_written_due(), None);
}

async fn a_new_state_moves_the_queue_entry_and_a_final_one_removes_it(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let e = event("moving", None);
    let mut d = pending(&w, &e, 1_000);
    insert(&storage, &e, std::slice::from_ref(&d)).await;
    d.next_attempt_at = Some(Millis(9_000));
    d.rounds = 1;
    storage.update_delivery(&mut d).unwrap();
    assert_eq!(due_entries(&storage), vec![(Millis(9_000), d.id.clone())]);
    assert_eq!(d.version, 1, "a write counts the version up");
    // A copy read before that write is refused, and changes nothing.
    let mut stale = d.clone();
    stale.version = 0;
    stale.status = DeliveryStatus::Failed;
    let refused = storage.update_delivery(&mut stale);
    assert_eq!(refused.unwrap_err().conflict(), Some(Conflict::Changed));
    assert_eq!(stale.version, 0);
    assert_eq!(storage.delivery(&d.id).unwrap().as_ref(), Some(&d));
    d.status = DeliveryStatus::Delivered;
    d.next_attempt_at = None;
    storage.update_delivery(&mut d).unwrap();
    assert!(due_entries(&storage).is_empty());
    assert_eq!(
        storage.delivery(&d.id).unwrap().unwrap().status,
        DeliveryStatus::Delivered
    );
}

/// An outcome of `d`, without plugin state.
fn outcome(d: &mut Delivery, keep: bool) -> Outcome<'_> {
    Outcome {
        delivery: d,
        state: None,
        keep,
    }
}

async fn claims_are_exclusive_until_they_lapse_and_finish_only_while_held(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let e = event("claimed", None);
    let d = pending(&w, &e, 1_000);
    insert(&storage, &e, std::slice::from_ref(&d)).await;
    let (a, b) = (1, 2);
    let (first, read) = claim_at(
        &storage,
        &d.id,
        Millis(1_000),
        a,
        Millis(61_000),
        Millis(1_000),
    )
    .unwrap()
    .expect("a due delivery can be claimed");
    assert_eq!(read, d);
    // Exclusive while it runs; the holder itself may claim again.
    assert!(claim(&storage, &d, b, 2_000).is_none());
    assert!(claim(&storage, &d, b, 60_999).is_none());
    let first = {
        let again = claim_at(
            &storage,
            &d.id,
            Millis(1_000),
            a,
            Millis(61_000),
            Millis(2_000),
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(again.holder, first.holder);
        again
    };
    // Renewed, it holds past its first lapse.
    storage.renew(&first, Millis(90_000)).unwrap();
    assert!(claim(&storage, &d, b, 61_000).is_none(), "renewed");
    // Lapsed: another holder takes it; the first one can neither renew nor write, and its
    // plugin state goes unwritten with its result.
    let second = claim(&storage, &d, b, 90_000).expect("a lapsed claim frees the delivery");
    let lost = storage.renew(&first, Millis(120_000)).unwrap_err();
    assert_eq!(lost.conflict(), Some(Conflict::ClaimLost));
    let mut late = d.clone();
    late.status = DeliveryStatus::Delivered;
    late.next_attempt_at = None;
    let changes = [("late".to_string(), Some(b"1".to_vec()))];
    let refused = storage.finish(
        &first,
        Outcome {
            delivery: &mut late,
            state: Some(StateWrite {
                webhook: &w.id,
                tenant: None,
                changes: &changes,
            }),
            keep: false,
        },
    );
    assert_eq!(refused.unwrap_err().conflict(), Some(Conflict::ClaimLost));
    assert_eq!(storage.delivery(&d.id).unwrap().as_ref(), Some(&d));
    assert_eq!(storage.state_get(&w.id, "late").unwrap(), None);
    // The holder in force finishes: written, the entry moved, the claim over.
    let mut done = d.clone();
    done.next_attempt_at = Some(Millis(70_000));
    done.rounds = 1;
    storage
        .finish(&second, outcome(&mut done, true))
        .expect("a save midway");
    storage.finish(&second, outcome(&mut done, false)).unwrap();
    assert_eq!(done.version, 2);
    assert_eq!(due_entries(&storage), vec![(Millis(70_000), d.id.clone())]);
    let again = storage.finish(&second, outcome(&mut done, false));
    assert_eq!(
        again.unwrap_err().conflict(),
        Some(Conflict::ClaimLost),
        "finished once"
    );
    let third = claim(&storage, &done, a, 70_000).expect("due again, free to claim");
    assert_eq!(third.due, Millis(70_000));
}

/// Many workers finishing at once (an engine may write their outcomes together): each
/// outcome is written, or refused for its own reason, whatever its neighbours'.
async fn outcomes_finished_at_once_are_each_written_or_refused_on_their_own(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let mut work = Vec::new();
    for i in 0..24 {
        let e = event(&format!("at-once-{i}"), None);
        let d = pending(&w, &e, 1_000);
        insert(&storage, &e, std::slice::from_ref(&d)).await;
        let held = claim(&storage, &d, 1, 1_000).expect("due");
        let claim = match i % 3 {
            // Lapsed and taken by another holder: this one's outcome is refused.
            1 => {
                claim(&storage, &d, 2, 61_000).expect("lapsed");
                held
            }
            // Saved midway under the claim: the worker's older copy is refused.
            2 => {
                let mut saved = d.clone();
                saved.rounds = 1;
                storage.finish(&held, outcome(&mut saved, true)).unwrap();
                held
            }
            _ => held,
        };
        work.push((i, claim, d));
    }
    let answers: Vec<_> = std::thread::scope(|scope| {
        let storage = &storage;
        let workers: Vec<_> = work
            .iter()
            .map(|(i, claim, d)| {
                scope.spawn(move || {
                    let mut done = d.clone();
                    done.status = DeliveryStatus::Delivered;
                    done.next_attempt_at = None;
                    let written = storage.finish(claim, outcome(&mut done, false));
                    // A conflict, or what else went wrong.
                    let written = written.map_err(|e| e.conflict().ok_or_else(|| e.to_string()));
                    (*i, written, done)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (i, written, done) in answers {
        let stored = storage.delivery(&done.id).unwrap().unwrap();
        match i % 3 {
            0 => {
                assert_eq!(written, Ok(()), "outcome {i}");
                assert_eq!(stored, done, "outcome {i}");
            }
            1 => {
                assert_eq!(written, Err(Ok(Conflict::ClaimLost)), "outcome {i}");
                assert_eq!(stored.status, DeliveryStatus::Pending, "outcome {i}");
            }
            _ => {
                assert_eq!(written, Err(Ok(Conflict::Changed)), "outcome {i}");
                assert_eq!((stored.status, stored.rounds), (DeliveryStatus::Pending, 1));
            }
        }
    }
    assert_eq!(due_entries(&storage).len(), 16, "the refused stay queued");
}

/// A debounced delivery claimed and then put off (its webhook paused) while a newer event of
/// its entity arrives: the worker's older copy is refused, and the newer event is kept. An
/// outcome's plugin state is written with it, or not at all.
async fn an_outcome_is_written_whole_and_only_over_the_version_read(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let mut w = webhook();
    storage.put_webhook(&mut w).unwrap();
    let (e1, e2) = (event("o-1", None), event("o-2", None));
    let debounced = |e: &Event, due: i64| {
        let mut d = pending(&w, e, due);
        d.entity = Some("sku-1".into());
        d
    };
    let first = debounced(&e1, 1_000);
    insert(&storage, &e1, std::slice::from_ref(&first)).await;
    let (held, mut read) = claim_at(
        &storage,
        &first.id,
        Millis(1_000),
        1,
        Millis(31_000),
        Millis(1_000),
    )
    .unwrap()
    .unwrap();
    // Ingest between the claim and the write: the waiting delivery takes the newer event.
    insert(&storage, &e2, &[debounced(&e2, 3_000)]).await;
    read.next_attempt_at = Some(Millis(60_000));
    let changes = [("seen".to_string(), Some(b"o-1".to_vec()))];
    let state = || {
        Some(StateWrite {
            webhook: &w.id,
            tenant: None,
            changes: &changes,
        })
    };
    let refused = storage.finish(
        &held,
        Outcome {
            delivery: &mut read,
            state: state(),
            keep: false,
        },
    );
    assert_eq!(refused.unwrap_err().conflict(), Some(Conflict::Changed));
    let stored = storage.delivery(&first.id).unwrap().unwrap();
    assert_eq!(stored.event_id, e2.id, "the newer event is kept");
    assert_eq!(
        due_entries(&storage),
        vec![(Millis(3_000), first.id.clone())]
    );
    assert_eq!(
        storage.state_get(&w.id, "seen").unwrap(),
        None,
        "nothing written"
    );
    // Claimed as it is now, its outcome and state are written together.
    let (held, mut current) = claim_at(
        &storage,
        &first.id,
        Millis(3_000),
        1,
        Millis(33_000),
        Millis(3_000),
    )
    .unwrap()
    .unwrap();
    assert!(storage.close(&held, &current).unwrap());
    current.status = DeliveryStatus::Delivered;
    current.next_attempt_at = None;
    storage
        .finish(
            &held,
            Outcome {
                delivery: &mut current,
                state: state(),
                keep: false,
            },
        )
        .unwrap();
    assert_eq!(
        storage.delivery(&first.id).unwrap().as_ref(),
        Some(&current)
    );
    assert_eq!(
        storage.state_get(&w.id, "seen").unwrap(),
        Some(b"o-1".to_vec())
    );
    assert!(due_entries(&storage).is_empty());
}

async fn a_delivery_cannot_be_claimed_where_it_no_longer_is(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let e = event("stale", None);
    let mut d = pending(&w, &e, 1_000);
    insert(&storage, &e, std::slice::from_ref(&d)).await;
    // Moved to 4 s: the entry moves with it, and the old place cannot be claimed.
    d.next_attempt_at = Some(Millis(4_000));
    storage.update_delivery(&mut d).unwrap();
    assert_eq!(due_entries(&storage), vec![(Millis(4_000), d.id.clone())]);
    let stale = claim_at(
        &storage,
        &d.id,
        Millis(1_000),
        1,
        Millis(9_000),
        Millis(1_000),
    )
    .unwrap();
    assert!(stale.is_none());
    assert_eq!(due_entries(&storage), vec![(Millis(4_000), d.id.clone())]);
    // A finished delivery cannot be claimed either; a missing one neither.
    d.status = DeliveryStatus::Failed;
    storage.update_delivery(&mut d).unwrap();
    assert!(claim(&storage, &d, 1, 4_000).is_none());
    let missing = DeliveryId::generate();
    assert!(
        claim_at(&storage, &missing, Millis(1), 1, Millis(9), Millis(1))
            .unwrap()
            .is_none()
    );
}

async fn a_debounced_delivery_takes_newer_events_until_closed(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let of = |e: &Event, due: i64, entity: &str| {
        let mut d = pending(&w, e, due);
        d.entity = Some(entity.into());
        d
    };
    let (e1, e2, e3, e4) = (
        event("d1", None),
        event("d2", None),
        event("d3", None),
        event("d4", None),
    );
    let first = of(&e1, 1_000, "sku-1");
    insert(&storage, &e1, std::slice::from_ref(&first)).await;
    // A newer event of the entity: carried by the waiting delivery, due at its own time.
    assert_eq!(
        insert(&storage, &e2, &[of(&e2, 5_000, "sku-1")]).await,
        Inserted::New(vec![first.id.clone()])
    );
    let waiting = storage.delivery(&first.id).unwrap().unwrap();
    assert_eq!(waiting.event_id, e2.id);
    assert_eq!(
        due_entries(&storage),
        vec![(Millis(5_000), first.id.clone())]
    );
    // Claimed and closed as it was read; closing as an older read is refused.
    let claim = claim(&storage, &waiting, 1, 5_000).unwrap();
    assert!(!storage.close(&claim, &first).unwrap());
    let claim = self::claim(&storage, &waiting, 1, 5_000).unwrap();
    assert!(storage.close(&claim, &waiting).unwrap());
    // Closed: a newer event gets a delivery of its own; another entity always does.
    let third = of(&e3, 6_000, "sku-1");
    assert_eq!(
        insert(&storage, &e3, std::slice::from_ref(&third)).await,
        Inserted::New(vec![third.id.clone()])
    );
    let other = of(&e4, 6_000, "sku-2");
    assert_eq!(
        insert(&storage, &e4, std::slice::from_ref(&other)).await,
        Inserted::New(vec![other.id.clone()])
    );
}

async fn a_batch_takes_events_until_closed_or_full(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let of = |e: &Event| {
        let mut d = pending(&w, e, 1_000);
        d.batch_limit = 2;
        d.batch_events = vec![e.id.clone()];
        d
    };
    let events: Vec<Event> = (0..4).map(|i| event(&format!("b{i}"), None)).collect();
    let first = of(&events[0]);
    insert(&storage, &events[0], std::slice::from_ref(&first)).await;
    assert_eq!(
        insert(&storage, &events[1], &[of(&events[1])]).await,
        Inserted::New(vec![first.id.clone()])
    );
    let batch = storage.delivery(&first.id).unwrap().unwrap();
    assert_eq!(
        batch.batch_events,
        vec![events[0].id.clone(), events[1].id.clone()]
    );
    // Full: the next event starts a batch of its own, which closing then ends.
    let next = of(&events[2]);
    assert_eq!(
        insert(&storage, &events[2], std::slice::from_ref(&next)).await,
        Inserted::New(vec![next.id.clone()])
    );
    let claim = claim(&storage, &next, 1, 1_000).unwrap();
    assert!(storage.close(&claim, &next).unwrap());
    let last = of(&events[3]);
    assert_eq!(
        insert(&storage, &events[3], std::slice::from_ref(&last)).await,
        Inserted::New(vec![last.id.clone()])
    );
}

async fn in_order_deliveries_wait_for_the_first_in_line(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    let of = |e: &Event, entity: &str| {
        let mut d = pending(&w, e, 1_000);
        d.entity = Some(entity.into());
        d.in_order = true;
        d
    };
    let (e1, e2, e3) = (event("f1", None), event("f2", None), event("f3", None));
    let mut first = of(&e1, "sku-1");
    let second = of(&e2, "sku-1");
    let elsewhere = of(&e3, "sku-2");
    for (e, d) in [(&e1, &first), (&e2, &second), (&e3, &elsewhere)] {
        // In order: never merged, each its own delivery.
        assert_eq!(
            insert(&storage, e, std::slice::from_ref(d)).await,
            Inserted::New(vec![d.id.clone()])
        );
    }
    // The line goes by the order stored, not by id: one made on another host's clock
    // (an id that sorts first) and stored last waits behind both.
    let e4 = event("f4", None);
    let mut late = of(&e4, "sku-1");
    late.id = DeliveryId::parse("dlv_00000000000000000000000001").unwrap();
    insert(&storage, &e4, std::slice::from_ref(&late)).await;
    assert_eq!(
        storage.first_in_line(&late).unwrap(),
        Some(first.id.clone())
    );
    assert_eq!(
        storage.first_in_line(&second).unwrap(),
        Some(first.id.clone())
    );
    assert_eq!(
        storage.first_in_line(&elsewhere).unwrap(),
        Some(elsewhere.id.clone())
    );
    // Once the first is finished, the second is first in line.
    first.status = DeliveryStatus::Delivered;
    first.next_attempt_at = None;
    storage.update_delivery(&mut first).unwrap();
    assert_eq!(
        storage.first_in_line(&second).unwrap(),
        Some(second.id.clone())
    );
    // Then the one stored last.
    let mut second = storage.delivery(&second.id).unwrap().unwrap();
    second.status = DeliveryStatus::Delivered;
    second.next_attempt_at = None;
    storage.update_delivery(&mut second).unwrap();
    assert_eq!(storage.first_in_line(&late).unwrap(), Some(late.id.clone()));
    // A delivery that is not in order has no line.
    assert_eq!(storage.first_in_line(&pending(&w, &e1, 1)).unwrap(), None);
}

/// Set in the child process of [`a_crash_mid_ingest_leaves_every_event_whole_or_absent`]:
/// the directory its storage is in.
const CRASH_CHILD_DIR: &str = "WASMHOOKS_CONFORMANCE_CRASH_DIR";
/// Events per ingest call in the crash check; some are debounced (they change an index).
const CRASH_BATCH: usize = 8;

/// A crash in the middle of ingest: a child process ingests batches without end, naming each
/// batch on stdout once it is acknowledged, and is killed (SIGKILL) after some have been.
/// Reopened, the storage holds every acknowledged event, and every event it holds is whole:
/// its delivery stored and queued. `test` is the name of the test calling this, which runs
/// again as the child.
pub async fn a_crash_mid_ingest_leaves_every_event_whole_or_absent(
    opener: &impl Opener,
    test: &str,
) {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        ingest_until_killed(opener, Path::new(&dir)).await;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        if let Some(batch) = line.strip_prefix("acked batch ") {
            acked.push(batch.parse::<usize>().unwrap());
            if acked.len() >= 40 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acked.len() >= 40, "the child stopped early");

    let storage = opener.open(dir.path());
    let all = DeliveryQuery {
        limit: usize::MAX,
        ..DeliveryQuery::default()
    };
    let deliveries = storage.scan_deliveries(&all).unwrap();
    assert!(
        deliveries.unreadable.is_empty(),
        "{:?}",
        deliveries.unreadable
    );
    let queued: std::collections::HashSet<DeliveryId> = due_entries(&storage)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    for delivery in &deliveries.deliveries {
        assert!(
            storage.event(None, &delivery.event_id).unwrap().is_some(),
            "delivery {} without its event {}",
            delivery.id,
            delivery.event_id
        );
        assert!(
            queued.contains(&delivery.id),
            "delivery {} not queued",
            delivery.id
        );
    }
    let carried: std::collections::HashSet<&EventId> = deliveries
        .deliveries
        .iter()
        .flat_map(|d| d.replaced_events.iter().chain([&d.event_id]))
        .collect();
    let last = acked.iter().max().copied().unwrap_or(0);
    for batch in 0..=last + 1 {
        for i in 0..CRASH_BATCH {
            let id = EventId::parse(&format!("crash-{batch}-{i}")).unwrap();
            let stored = storage.event(None, &id).unwrap().is_some();
            if acked.contains(&batch) {
                assert!(stored, "acknowledged event {id} is gone");
            }
            if stored {
                assert!(carried.contains(&id), "event {id} without a delivery");
            }
        }
    }
}

/// The child's side: ingests batches until it is killed.
async fn ingest_until_killed(opener: &impl Opener, dir: &Path) -> ! {
    use std::io::Write;
    let storage = opener.open(dir);
    let w = webhook();
    for batch in 0.. {
        let items = (0..CRASH_BATCH)
            .map(|i| {
                let e = event(&format!("crash-{batch}-{i}"), None);
                let mut d = pending(&w, &e, 1_000 + batch as i64);
                if i % 4 == 3 {
                    // The batch's two debounced events share an entity: the second replaces
                    // the first in its waiting delivery, so the round changes an index too.
                    d.entity = Some(format!("sku-{batch}"));
                }
                (e, vec![d])
            })
            .collect();
        storage.insert_and_commit(items).await.unwrap();
        println!("acked batch {batch}");
        std::io::stdout().flush().unwrap();
    }
    unreachable!("the loop ends only when the process is killed")
}

async fn a_backup_opens_with_every_event_and_the_queue_as_copied(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let w = webhook();
    let (first, second) = (event("first", Some("acme")), event("second", None));
    let waiting = pending(&w, &first, 5_000);
    let mut done = pending(&w, &second, 1_000);
    let report = {
        let storage = opener.open(dir.path());
        storage.put_webhook(&mut w.clone()).unwrap();
        insert(&storage, &first, std::slice::from_ref(&waiting)).await;
        insert(&storage, &second, std::slice::from_ref(&done)).await;
        let (held, _) = claim_at(
            &storage,
            &done.id,
            Millis(1_000),
            1,
            Millis(31_000),
            Millis(1_000),
        )
        .unwrap()
        .unwrap();
        done.status = DeliveryStatus::Delivered;
        done.next_attempt_at = None;
        let changes = [("seen".to_string(), Some(b"1".to_vec()))];
        let state = Some(StateWrite {
            webhook: &w.id,
            tenant: None,
            changes: &changes,
        });
        let outcome = Outcome {
            delivery: &mut done,
            state,
            keep: false,
        };
        storage.finish(&held, outcome).unwrap();
        // Received after the backup began, with a delivery made then: not in the copy.
        let mut late = event("late", None);
        late.received_at = Millis(20_000);
        insert(&storage, &late, &[pending(&w, &late, 20_000)]).await;
        storage
            .backup(&copy.path().join("backup"), Millis(10_000))
            .unwrap()
    };
    assert_eq!((report.deliveries, report.pending), (2, 1), "{report:?}");
    let restored = opener.open(&copy.path().join("backup"));
    for (tenant, e) in [(Some("acme"), &first), (None, &second)] {
        let found = restored.event(tenant, &e.id).unwrap().unwrap();
        assert_eq!(found.payload.get(), e.payload.get());
    }
    assert_eq!(
        restored.delivery(&waiting.id).unwrap().as_ref(),
        Some(&waiting)
    );
    assert_eq!(restored.delivery(&done.id).unwrap().as_ref(), Some(&done));
    assert_eq!(
        due_entries(&restored),
        vec![(Millis(5_000), waiting.id.clone())]
    );
    assert_eq!(
        restored.state_get(&w.id, "seen").unwrap(),
        Some(b"1".to_vec())
    );
    assert!(restored
        .event(None, &EventId::parse("late").unwrap())
        .unwrap()
        .is_none());
}
