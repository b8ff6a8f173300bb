//! The checks for engines that several hosts share: two handles on one storage, as two hosts
//! would hold, working at the same time. An engine whose storage one process owns (sled)
//! cannot open a second handle and leaves them out ([`Opener::shares`]).

use std::collections::{BTreeMap, HashSet};

use super::{claim, event, insert, outcome, pending, webhook, Opener};
use crate::model::{Delivery, DeliveryId, Event, Millis};
use crate::storage::{
    Changed, Conflict, Definitions, Deliveries, DeliveryQuery, Inserted, Storage,
};

/// Runs every shared-engine check, each on a storage of its own.
pub(super) async fn run(opener: &impl Opener) {
    a_claim_taken_through_one_handle_holds_against_the_other(opener).await;
    definitions_written_through_one_handle_are_fed_to_the_other(opener).await;
    the_same_event_from_two_handles_at_once_is_stored_once(opener).await;
    debounce_batches_and_lines_hold_with_two_handles_at_once(opener).await;
}

async fn a_claim_taken_through_one_handle_holds_against_the_other(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (opener.open(dir.path()), opener.open(dir.path()));
    let w = webhook();
    let e = event("shared-claim", None);
    let d = pending(&w, &e, 1_000);
    insert(&a, &e, std::slice::from_ref(&d)).await;
    let held = claim(&a, &d, 1, 1_000).expect("claimed through a");
    assert!(claim(&b, &d, 2, 2_000).is_none(), "b waits for a's lease");
    // Past the lease, b takes it, and a's outcome is refused.
    let taken = claim(&b, &d, 2, 62_000).expect("a's lease lapsed");
    let mut late = d.clone();
    late.rounds = 1;
    let refused = a.finish(&held, outcome(&mut late, false)).unwrap_err();
    assert_eq!(refused.conflict(), Some(Conflict::ClaimLost));
    let mut done = d.clone();
    done.status = crate::model::DeliveryStatus::Delivered;
    done.next_attempt_at = None;
    b.finish(&taken, outcome(&mut done, false)).unwrap();
    let stored = a.delivery(&d.id).unwrap().unwrap();
    assert_eq!(stored.status, crate::model::DeliveryStatus::Delivered);
    assert!(a
        .due_from(crate::storage::QueueFrom::Due(Millis::EARLIEST))
        .next()
        .is_none());
}

async fn definitions_written_through_one_handle_are_fed_to_the_other(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (opener.open(dir.path()), opener.open(dir.path()));
    let head = b.definition_feed_head().unwrap();
    let mut w = webhook();
    a.put_webhook(&mut w).unwrap();
    let fed = b.definition_changes(head).unwrap();
    assert!(!fed.reset);
    assert_eq!(fed.changed, vec![Changed::Webhook(w.id.clone())]);
    assert_eq!(b.webhook(&w.id).unwrap().as_ref(), Some(&w));
    // An edit through b over the version a wrote; a's stale copy is refused.
    let mut edited = b.webhook(&w.id).unwrap().unwrap();
    edited.name = "edited on b".into();
    b.put_webhook(&mut edited).unwrap();
    w.name = "stale on a".into();
    let refused = a.put_webhook(&mut w).unwrap_err();
    assert_eq!(refused.conflict(), Some(Conflict::Changed));
    let fed = a.definition_changes(fed.position).unwrap();
    assert_eq!(fed.changed, vec![Changed::Webhook(w.id.clone())]);
    assert_eq!(a.webhook(&w.id).unwrap().unwrap().name, "edited on b");
}

/// Inserts `events` through `storage`, one call per event, in order.
async fn insert_all(storage: &impl Storage, events: Vec<(Event, Vec<Delivery>)>) -> Vec<Inserted> {
    let mut inserted = Vec::new();
    for item in events {
        let mut one = storage.insert_and_commit(vec![item]).await.unwrap();
        inserted.push(one.pop().unwrap());
    }
    inserted
}

async fn the_same_event_from_two_handles_at_once_is_stored_once(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (opener.open(dir.path()), opener.open(dir.path()));
    let w = webhook();
    let make = |i: usize| {
        let e = event(&format!("twice-{i}"), None);
        let d = pending(&w, &e, 1_000);
        (e, vec![d])
    };
    let (from_a, from_b) = tokio::join!(
        insert_all(&a, (0..50).map(make).collect()),
        insert_all(&b, (0..50).map(make).collect()),
    );
    for (i, (x, y)) in from_a.iter().zip(&from_b).enumerate() {
        let new = [x, y]
            .iter()
            .filter(|r| matches!(r, Inserted::New(_)))
            .count();
        assert_eq!(new, 1, "event twice-{i} stored once: {x:?} / {y:?}");
    }
    assert_eq!(a.queue_len(), 50);
}

async fn debounce_batches_and_lines_hold_with_two_handles_at_once(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (opener.open(dir.path()), opener.open(dir.path()));
    let (debounced, batched, ordered) = (webhook(), webhook(), webhook());
    let make = |handle: &str, i: usize| {
        let e = event(&format!("{handle}-{i}"), None);
        let mut d = pending(&debounced, &e, 1_000);
        d.entity = Some("sku-1".into());
        let mut batch = pending(&batched, &e, 1_000);
        batch.batch_limit = 7;
        batch.batch_events = vec![e.id.clone()];
        let mut line = pending(&ordered, &e, 1_000);
        line.entity = Some("order-1".into());
        line.in_order = true;
        (e, vec![d, batch, line])
    };
    let (from_a, from_b) = tokio::join!(
        insert_all(&a, (0..40).map(|i| make("a", i)).collect()),
        insert_all(&b, (0..40).map(|i| make("b", i)).collect()),
    );
    let inserted: Vec<Inserted> = [from_a, from_b].concat();
    // Nothing is evaluated meanwhile: one debounced delivery took every event.
    let debounced_ids: HashSet<DeliveryId> = inserted
        .iter()
        .map(|i| match i {
            Inserted::New(ids) => ids[0].clone(),
            Inserted::Duplicate => panic!("no duplicates here"),
        })
        .collect();
    assert_eq!(debounced_ids.len(), 1, "one waiting delivery per entity");
    let waiting = a
        .delivery(debounced_ids.iter().next().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(waiting.replaced, 79);
    // Every event is in exactly one batch, and none holds more than its limit.
    let all = |webhook: &crate::model::Webhook| {
        a.scan_deliveries(&DeliveryQuery {
            webhook: Some(webhook.id.clone()),
            limit: 1_000,
            ..DeliveryQuery::default()
        })
        .unwrap()
        .deliveries
    };
    let batches = all(&batched);
    let mut seen = HashSet::new();
    for batch in &batches {
        assert!(
            batch.batch_events.len() <= 7,
            "{} events",
            batch.batch_events.len()
        );
        for e in &batch.batch_events {
            assert!(seen.insert(e.clone()), "{e} in two batches");
        }
    }
    assert_eq!(seen.len(), 80);
    // The line has 80 places, each given once, and its first is the one placed first.
    let line = all(&ordered);
    let positions: BTreeMap<u64, DeliveryId> = line
        .iter()
        .map(|d| (d.line_position.expect("placed"), d.id.clone()))
        .collect();
    assert_eq!(positions.len(), 80, "every place given once");
    let first = positions.values().next().unwrap();
    assert_eq!(b.first_in_line(&line[0]).unwrap().as_ref(), Some(first));
}
