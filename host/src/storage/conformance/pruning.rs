//! The pruning part of the storage contract: what retention removes, and what it never does.

use std::path::Path;
use std::time::Duration;

use super::{event, insert, pending, webhook, Opener};
use crate::model::{
    Delivery, DeliveryId, DeliveryStatus, Event, EventId, Millis, Webhook, WebhookId,
};
use crate::storage::{Capacity, Deliveries, Finished, Inserted, Pruning};

fn received(id: &str, at: i64) -> Event {
    let mut e = event(id, None);
    e.received_at = Millis(at);
    e
}

fn made(w: &Webhook, e: &Event) -> Delivery {
    pending(w, e, e.received_at.as_i64())
}

fn finish(storage: &impl Deliveries, d: &mut Delivery, status: DeliveryStatus, at: i64) {
    d.status = status;
    d.next_attempt_at = None;
    d.updated_at = Millis(at);
    storage.update_delivery(d).unwrap();
}

fn never(_: u64) -> bool {
    false
}

fn stored(storage: &impl Deliveries, tenant: Option<&str>, id: &str) -> bool {
    storage
        .event(tenant, &EventId::parse(id).unwrap())
        .unwrap()
        .is_some()
}

fn tenant_event(id: &str, tenant: &str) -> Event {
    let mut e = event(id, Some(tenant));
    e.received_at = Millis(1_000);
    e
}

/// Finished deliveries go once past their webhook's cutoff for their outcome; pending ones
/// stay. Events go once past the cutoff unless a pending delivery points at them (its own
/// event, a batch's events, a debounced delivery's newest one; with or without a tenant) or
/// a replay keeps them; an id whose event went may be stored again.
pub(super) async fn finished_work_is_pruned_past_its_time_and_pending_work_is_kept(
    opener: &impl Opener,
) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    assert!(storage.prepare_pruning(&never).unwrap());
    let (w, kept_forever) = (webhook(), webhook());
    let events = [
        "p-done",
        "p-failed",
        "p-pending",
        "p-forever",
        "p-lone",
        "p-replayed",
    ];
    let events: Vec<Event> = events.iter().map(|id| received(id, 1_000)).collect();
    let mut deliveries = Vec::new();
    for e in &events {
        let owner = if e.id.as_str() == "p-forever" {
            &kept_forever
        } else {
            &w
        };
        let d = made(owner, e);
        let made = if e.id.as_str() == "p-lone" {
            vec![]
        } else {
            vec![d.clone()]
        };
        insert(&storage, e, &made).await;
        deliveries.push(d);
    }
    let young = received("p-young", 50_000);
    insert(&storage, &young, &[]).await;
    // A tenant's pending batch of two events, and a debounced delivery whose first event a
    // newer one replaced.
    let (b1, b2) = (tenant_event("p-b1", "acme"), tenant_event("p-b2", "acme"));
    let mut batch = made(&w, &b1);
    batch.batch_limit = 5;
    batch.batch_events = vec![b1.id.clone()];
    insert(&storage, &b1, std::slice::from_ref(&batch)).await;
    let mut second = made(&w, &b2);
    second.batch_limit = 5;
    second.batch_events = vec![b2.id.clone()];
    insert(&storage, &b2, &[second]).await;
    let (d1, d2) = (received("p-d1", 1_000), received("p-d2", 1_100));
    let mut debounced = made(&w, &d1);
    debounced.entity = Some("sku-1".into());
    insert(&storage, &d1, std::slice::from_ref(&debounced)).await;
    let mut newer = made(&w, &d2);
    newer.entity = Some("sku-1".into());
    insert(&storage, &d2, &[newer]).await;

    let [done, failed, waiting, forever, _, replayed] = &mut deliveries[..] else {
        unreachable!()
    };
    finish(&storage, done, DeliveryStatus::Delivered, 2_000);
    finish(&storage, failed, DeliveryStatus::Dead, 2_000);
    finish(&storage, forever, DeliveryStatus::Skipped, 2_000);
    finish(&storage, replayed, DeliveryStatus::Failed, 2_000);
    // Delivered ones go after 8 s, failed ones are kept until 1.5 s after they finish, the
    // second webhook keeps its own for ever.
    let cutoff = |webhook: &WebhookId, finished: Finished| match finished {
        _ if *webhook == kept_forever.id => None,
        Finished::Succeeded => Some(Millis(10_000)),
        Finished::Failed => Some(Millis(1_500)),
    };
    assert_eq!(
        storage
            .prune_deliveries(&cutoff, Some(Duration::ZERO), 2, &never)
            .unwrap(),
        1
    );
    assert!(storage.delivery(&done.id).unwrap().is_none());
    for kept in [&failed, &waiting, &forever, &replayed] {
        assert!(storage.delivery(&kept.id).unwrap().is_some(), "{}", kept.id);
    }
    // A replay keeps its event, unless it is gone or was stored after the original finished.
    let replay = DeliveryId::generate();
    let keep = |id: &str, by: i64| {
        let id = EventId::parse(id).unwrap();
        storage
            .keep_event_for(None, &id, &replay, Millis(by))
            .unwrap()
    };
    assert!(keep("p-replayed", 2_000));
    assert!(!keep("p-never", 2_000));
    assert!(!keep("p-young", 2_000));
    let mut replay_of = made(&w, &events[5]);
    replay_of.id = replay;
    storage.update_delivery(&mut replay_of).unwrap();

    assert_eq!(storage.prune_events(Millis(10_000), 2, &never).unwrap(), 5);
    for gone in ["p-done", "p-failed", "p-forever", "p-lone", "p-d1"] {
        assert!(!stored(&storage, None, gone), "{gone}");
    }
    for kept in ["p-pending", "p-replayed", "p-young", "p-d2"] {
        assert!(stored(&storage, None, kept), "{kept}");
    }
    for kept in ["p-b1", "p-b2"] {
        assert!(stored(&storage, Some("acme"), kept), "{kept}");
    }
    // Nothing more to do; a pending delivery's events go once it has finished (looked at
    // again within an hour past the cutoff).
    assert_eq!(storage.prune_events(Millis(10_000), 2, &never).unwrap(), 0);
    let an_hour_on = Millis(10_000 + 3_600_001);
    finish(&storage, waiting, DeliveryStatus::Delivered, 3_000);
    finish(&storage, &mut replay_of, DeliveryStatus::Delivered, 3_000);
    let mut batch = storage.delivery(&batch.id).unwrap().unwrap();
    finish(&storage, &mut batch, DeliveryStatus::Delivered, 3_000);
    assert_eq!(storage.prune_events(an_hour_on, 2, &never).unwrap(), 5);
    for gone in ["p-pending", "p-replayed", "p-young"] {
        assert!(!stored(&storage, None, gone), "{gone}");
    }
    assert!(!stored(&storage, Some("acme"), "p-b1"));
    assert!(stored(&storage, None, "p-d2"), "still pending");
    // Deliveries that finished after an earlier walk had passed them go as well.
    assert_eq!(
        storage
            .prune_deliveries(&cutoff, Some(Duration::ZERO), 2, &never)
            .unwrap(),
        3
    );
    for gone in [&waiting.id, &replay_of.id, &batch.id] {
        assert!(storage.delivery(gone).unwrap().is_none(), "{gone}");
    }
    // An id whose event went is new again, and kept from its new receipt.
    let again = received("p-done", 60_000);
    assert!(matches!(
        insert(&storage, &again, &[]).await,
        Inserted::New(_)
    ));
    assert_eq!(storage.prune_events(Millis(10_000), 2, &never).unwrap(), 0);
    assert!(stored(&storage, None, "p-done"));
}

/// A walk stops between steps when asked, and the next one goes on from there.
pub(super) async fn a_pruning_walk_stops_between_steps_and_the_next_goes_on(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let w = webhook();
    for i in 0..5 {
        let e = received(&format!("s-{i}"), 1_000);
        let mut d = made(&w, &e);
        insert(&storage, &e, std::slice::from_ref(&d)).await;
        finish(&storage, &mut d, DeliveryStatus::Delivered, 2_000);
    }
    let cutoff = |_: &WebhookId, _: Finished| Some(Millis(10_000));
    let after_two = |removed: u64| removed >= 2;
    let first = storage
        .prune_deliveries(&cutoff, Some(Duration::ZERO), 1, &after_two)
        .unwrap();
    assert_eq!(first, 2);
    assert_eq!(
        storage
            .prune_deliveries(&cutoff, Some(Duration::ZERO), 1, &never)
            .unwrap(),
        3
    );
    assert_eq!(
        storage.prune_events(Millis(10_000), 2, &after_two).unwrap(),
        2
    );
    assert_eq!(storage.prune_events(Millis(10_000), 2, &never).unwrap(), 3);
}

/// Records stored before the engine kept what pruning walks need are found by
/// `prepare_pruning`; a copy taken by a backup prunes like the original, and keeps what its
/// pending deliveries need.
pub(super) async fn a_backup_prunes_like_its_original(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let w = webhook();
    let copy_dir = copy.path().join("backup");
    let waiting = received("b-waiting", 1_000);
    {
        let storage = opener.open(dir.path());
        let e = received("b-done", 1_000);
        let mut d = made(&w, &e);
        insert(&storage, &e, std::slice::from_ref(&d)).await;
        finish(&storage, &mut d, DeliveryStatus::Delivered, 2_000);
        insert(&storage, &waiting, &[made(&w, &waiting)]).await;
        storage.backup(&copy_dir, Millis(5_000)).unwrap();
    }
    let restored = opener.open(Path::new(&copy_dir));
    assert!(restored.prepare_pruning(&never).unwrap());
    let cutoff = |_: &WebhookId, _: Finished| Some(Millis(10_000));
    assert_eq!(
        restored
            .prune_deliveries(&cutoff, Some(Duration::ZERO), 10, &never)
            .unwrap(),
        1
    );
    assert_eq!(
        restored.prune_events(Millis(10_000), 10, &never).unwrap(),
        1
    );
    assert!(stored(&restored, None, "b-waiting"));
}
