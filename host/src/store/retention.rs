//! Retention on sled: the indexes the pruning walks follow, and the walks.
//!
//! - `finished`: an entry per finished delivery that needs one, keyed `webhook id, 0, outcome
//!   class, finish time (u64 big-endian ms), delivery id`. One webhook's deliveries of one
//!   class sort by finish time, so a walk takes each run's expired head and stops at the first
//!   one kept. Most deliveries never get one: the walk in `hand_over.rs` removes those that
//!   finished soon after they were made, and writes entries only for those still kept then,
//!   and those pending then write their own when they finish.
//! - `received`: one entry per event, keyed `receipt time (u64 big-endian ms), event key`,
//!   written with the event at ingest, after its deliveries' records; its value lists the
//!   deliveries stored with the event, which keep it while they are pending.
//! - `pins`: one entry per event a pending delivery took after it was stored, keyed `event
//!   key length (u16 big-endian), event key, delivery id` (value: when it was written, system
//!   time), written before the delivery's record (a debounced delivery taking a newer event, a
//!   batch taking one more, a replay pointing at a stored event) and removed once the
//!   delivery has finished. An event with a pin, or whose entry lists a pending delivery
//!   pointing at it, is never pruned. Pins cost two writes per delivery; listing the
//!   deliveries stored with their event costs none.
//!
//! Entries may outlive what they point at (a crash between two writes, an event stored again
//! after it was pruned, a finished delivery's pins): a walk checks each against the record
//! before removing anything, drops the entries that no longer hold, and leaves alone those
//! whose record may still be on its way.
//!
//! Records stored before these indexes existed get their entries from a one-time walk
//! ([`Store::prepare_pruning`]), which keeps its place across restarts; a backup leaves the
//! indexes out and its copy rebuilds them.

mod events;
mod hand_over;

pub(super) use hand_over::{forget_hand_over_place, handed_over_before};

use std::ops::Bound;
use std::time::Duration;

use super::*;
use crate::model::DeliveryStatus;
use crate::storage::{Finished, StopWalk};

/// The `meta` key marking that every record stored has its index entries.
pub(super) const INDEXED: &[u8] = b"retention_indexed";
/// The `meta` keys of the one-time walk's place in the deliveries and events trees.
pub(super) const INDEXED_UP_TO: [&[u8]; 2] =
    [b"retention_indexed_deliveries", b"retention_indexed_events"];

fn class(finished: Finished) -> u8 {
    match finished {
        Finished::Succeeded => b'd',
        Finished::Failed => b'f',
    }
}

fn millis_be(at: Millis) -> [u8; 8] {
    (at.as_i64().max(0) as u64).to_be_bytes()
}

/// A finished delivery's `finished` entry; `None` while it is pending.
pub(super) fn finished_key(delivery: &Delivery) -> Option<Vec<u8>> {
    let finished = Finished::of(delivery.status)?;
    Some(entry_key(
        &delivery.webhook_id,
        finished,
        delivery.updated_at,
        &delivery.id,
    ))
}

/// The `finished` entry of delivery `id` of `webhook`, which ended so at `at`.
fn entry_key(webhook: &WebhookId, finished: Finished, at: Millis, id: &DeliveryId) -> Vec<u8> {
    let webhook = webhook.as_str().as_bytes();
    let id = id.as_str().as_bytes();
    let mut key = Vec::with_capacity(webhook.len() + 10 + id.len());
    key.extend_from_slice(webhook);
    key.push(0);
    key.push(class(finished));
    key.extend_from_slice(&millis_be(at));
    key.extend_from_slice(id);
    key
}

/// An event's `received` entry at `at`.
pub(super) fn received_key(at: Millis, event_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + event_key.len());
    key.extend_from_slice(&millis_be(at));
    key.extend_from_slice(event_key.as_bytes());
    key
}

/// What follows the time in the `received` entry of a round of plain events (see
/// [`round_key`]): no event key starts with it (keys are UTF-8).
const ROUND: u8 = 0xff;

/// The `received` entry of a run of plain events stored together in one round: at the
/// latest receipt among them, then [`ROUND`] and the first one's key. One entry a run, not
/// one an event: an index write less on almost every event's way.
pub(super) fn round_key(at: Millis, first_event_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + first_event_key.len());
    key.extend_from_slice(&millis_be(at));
    key.push(ROUND);
    key.extend_from_slice(first_event_key.as_bytes());
    key
}

/// A round's entry's value: per event, its key after its length (u16 big-endian), then its
/// [`received_value`] after its length (u32 big-endian).
pub(super) fn round_value<'a>(events: impl IntoIterator<Item = (&'a str, Vec<u8>)>) -> Vec<u8> {
    let mut value = Vec::new();
    for (key, listed) in events {
        let (Ok(key_len), Ok(listed_len)) = (u16::try_from(key.len()), u32::try_from(listed.len()))
        else {
            continue;
        };
        value.extend_from_slice(&key_len.to_be_bytes());
        value.extend_from_slice(key.as_bytes());
        value.extend_from_slice(&listed_len.to_be_bytes());
        value.extend_from_slice(&listed);
    }
    value
}

/// Whether a `received` entry is a round's.
fn is_round(key: &[u8]) -> bool {
    key.get(8) == Some(&ROUND)
}

/// A round's entry's events: each one's key and [`received_value`]; `None` when malformed.
fn round_events(value: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    let mut events = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let (key, tail) = tail.split_at_checked(u16::from_be_bytes(*len) as usize)?;
        let (len, tail) = tail.split_first_chunk::<4>()?;
        let (listed, tail) = tail.split_at_checked(u32::from_be_bytes(*len) as usize)?;
        events.push((std::str::from_utf8(key).ok()?, listed));
        rest = tail;
    }
    Some(events)
}

/// An event's `received` entry's value: the deliveries stored with the event, each id after
/// its length (one byte). A pending one among them keeps the event as a pin would, so a
/// delivery needs a pin only for an event it took later (a debounced delivery's newer event,
/// a batch's next one) or, as a replay, an event stored before it.
pub(super) fn received_value<'a>(deliveries: impl IntoIterator<Item = &'a DeliveryId>) -> Vec<u8> {
    let mut value = Vec::new();
    for id in deliveries {
        let id = id.as_str().as_bytes();
        // Ids are short; one that is not cannot be listed, and is pinned instead.
        if let Ok(len) = u8::try_from(id.len()) {
            value.push(len);
            value.extend_from_slice(id);
        }
    }
    value
}

/// The deliveries a `received` entry's value lists; `None` for a malformed one.
fn stored_with(value: &[u8]) -> Option<Vec<DeliveryId>> {
    let mut ids = Vec::new();
    let mut rest = value;
    while let Some((&len, tail)) = rest.split_first() {
        let (id, tail) = tail.split_at_checked(len as usize)?;
        ids.push(DeliveryId::parse(std::str::from_utf8(id).ok()?).ok()?);
        rest = tail;
    }
    Some(ids)
}

/// Whether `delivery` may hold pins: it took events after it was stored, or is a replay.
/// One that holds none is stored with its only event, whose entry lists it.
pub(super) fn holds_pins(delivery: &Delivery) -> bool {
    delivery.replay_of.is_some() || delivery.replaced > 0 || delivery.batch_events.len() > 1
}

/// The start of every pin of the event under `event_key`.
fn pin_prefix(event_key: &str) -> Vec<u8> {
    let len = u16::try_from(event_key.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + event_key.len() + 32);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(event_key.as_bytes());
    key
}

/// The pin of `event_key` for `delivery`.
pub(super) fn pin_key(event_key: &str, delivery: &DeliveryId) -> Vec<u8> {
    let mut key = pin_prefix(event_key);
    key.extend_from_slice(delivery.as_str().as_bytes());
    key
}

/// A pin's value: when it was written (system time, ms).
pub(super) fn pin_value() -> [u8; 8] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.to_be_bytes()
}

/// The pins a pending delivery holds: one per event it points at.
pub(super) fn pins_of(delivery: &Delivery) -> Vec<Vec<u8>> {
    let tenant = delivery.events_tenant();
    std::iter::once(&delivery.event_id)
        .chain(&delivery.batch_events)
        .map(|event| pin_key(&event_key(tenant, event), &delivery.id))
        .collect()
}

/// A `finished` entry's parts: webhook, class, finish time, delivery.
fn parse_finished(key: &[u8]) -> Option<(WebhookId, u8, Millis, DeliveryId)> {
    let split = key.iter().position(|&b| b == 0)?;
    let (webhook, rest) = key.split_at(split);
    let (&class, rest) = rest.get(1..)?.split_first()?;
    let (at, id) = rest.split_first_chunk::<8>()?;
    let webhook = WebhookId::parse(std::str::from_utf8(webhook).ok()?).ok()?;
    let id = DeliveryId::parse(std::str::from_utf8(id).ok()?).ok()?;
    Some((webhook, class, Millis(u64::from_be_bytes(*at) as i64), id))
}

/// The few fields of a delivery record the walks read.
#[derive(serde::Deserialize)]
struct Glance {
    status: DeliveryStatus,
    updated_at: Millis,
}

impl Store {
    /// See [`crate::storage::Pruning::prepare_pruning`]: walks the deliveries (a finished
    /// one's `finished` entry, a pending one's pins) and the events (their `received`
    /// entries), noting its place every 1,024 records so a stopped walk goes on from there.
    ///
    /// # Errors
    /// On storage failure.
    pub fn prepare_pruning(&self, stop: StopWalk<'_>) -> Result<bool, StoreError> {
        if self.meta.contains_key(INDEXED)? {
            return Ok(true);
        }
        let [deliveries_done, events_done] = INDEXED_UP_TO;
        let indexed = self.walk_from(
            &self.ingest.deliveries,
            deliveries_done,
            stop,
            |_, value| {
                // One that does not decode is never pruned; lists name it.
                let Ok(delivery) = decode::<Delivery>("deliveries", value) else {
                    return Ok(());
                };
                match finished_key(&delivery) {
                    Some(key) => self.ingest.finished.insert(key, &[] as &[u8]).map(drop),
                    None => pins_of(&delivery)
                        .into_iter()
                        .try_for_each(|pin| self.ingest.pins.insert(pin, &pin_value()).map(drop)),
                }
            },
        )?;
        if !indexed {
            return Ok(false);
        }
        let indexed = self.walk_from(&self.ingest.events, events_done, stop, |key, value| {
            let (Ok(event), Ok(key)) = (codec::decode_event(value), std::str::from_utf8(key))
            else {
                return Ok(());
            };
            // Only for what was stored before this start: an event stored since has its
            // entry (its round's, under another key), listing its deliveries, and an empty
            // one of its own would let it go while they are pending.
            if event.received_at >= self.opened_at {
                return Ok(());
            }
            let entry = received_key(event.received_at, key);
            self.ingest
                .received
                .compare_and_swap(entry, None as Option<&[u8]>, Some(&[] as &[u8]))
                .map(drop)
        })?;
        if indexed {
            self.meta.insert(INDEXED, &[1u8])?;
        }
        Ok(indexed)
    }

    /// Calls `each` on every record of `tree` after the place noted under `place` in `meta`,
    /// noting the place as it goes; `false` when `stop` said to stop first.
    fn walk_from(
        &self,
        tree: &sled::Tree,
        place: &[u8],
        stop: StopWalk<'_>,
        mut each: impl FnMut(&[u8], &[u8]) -> sled::Result<()>,
    ) -> Result<bool, StoreError> {
        let from = self.meta.get(place)?;
        let start = match &from {
            Some(key) => Bound::Excluded(key.as_ref()),
            None => Bound::Unbounded,
        };
        let mut walked = 0u64;
        for entry in tree.range::<&[u8], _>((start, Bound::Unbounded)) {
            let (key, value) = entry?;
            each(&key, &value)?;
            walked += 1;
            if walked % 1024 == 0 {
                self.meta.insert(place, key.as_ref())?;
                if stop(0) {
                    return Ok(false);
                }
            }
        }
        if let Some((last, _)) = tree.last()? {
            self.meta.insert(place, last.as_ref())?;
        }
        Ok(true)
    }

    /// See [`crate::storage::Pruning::prune_deliveries`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn prune_deliveries(
        &self,
        cutoff: &(dyn Fn(&WebhookId, Finished) -> Option<Millis> + Sync),
        shortest_keep: Option<Duration>,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let mut removed = 0u64;
        if let Some(keep) = shortest_keep {
            if !self.hand_over(keep, cutoff, batch, stop, &mut removed)? {
                return Ok(removed);
            }
        }
        let mut in_batch = 0;
        // Each run (one webhook, one class) is walked from its oldest entry to its cutoff;
        // the next run starts just past this one's keys.
        let mut run_start: Vec<u8> = Vec::new();
        while let Some(first) = self.ingest.finished.range(run_start.as_slice()..).next() {
            let (first, _) = first?;
            let Some((webhook, class, _, _)) = parse_finished(&first) else {
                tracing::warn!(key = ?first, "dropping a malformed retention entry");
                self.ingest.finished.remove(&first)?;
                continue;
            };
            let mut prefix = webhook.as_str().as_bytes().to_vec();
            prefix.extend_from_slice(&[0, class]);
            run_start = prefix.clone();
            run_start.push(0xff);
            let finished = if class == b'd' {
                Finished::Succeeded
            } else {
                Finished::Failed
            };
            let Some(before) = cutoff(&webhook, finished) else {
                continue;
            };
            let mut end = prefix.clone();
            end.extend_from_slice(&millis_be(before));
            for entry in self
                .ingest
                .finished
                .range(prefix.as_slice()..end.as_slice())
            {
                let (key, _) = entry?;
                if self.prune_finished_at(&key)? {
                    removed += 1;
                }
                in_batch += 1;
                if in_batch >= batch {
                    in_batch = 0;
                    if stop(removed) {
                        return Ok(removed);
                    }
                }
            }
            if stop(removed) {
                return Ok(removed);
            }
        }
        Ok(removed)
    }

    /// Handles one expired `finished` entry: removes the delivery it was written for, if that
    /// record is still as it finished then. `true` when a delivery was removed.
    fn prune_finished_at(&self, key: &[u8]) -> Result<bool, StoreError> {
        let Some((_, _, at, id)) = parse_finished(key) else {
            tracing::warn!(key = ?key, "dropping a malformed retention entry");
            self.ingest.finished.remove(key)?;
            return Ok(false);
        };
        let record = self.ingest.deliveries.get(id.as_str())?;
        let glance = match record.as_deref().map(serde_json::from_slice::<Glance>) {
            // Gone already.
            None => None,
            Some(Ok(glance)) => Some(glance),
            Some(Err(e)) => {
                tracing::error!(delivery = %id, "unreadable delivery record kept: {e}");
                return Ok(false);
            }
        };
        match glance {
            // Its record is on its way (the entry is written first): walked again next time.
            Some(glance) if !glance.status.is_final() => return Ok(false),
            Some(glance) if glance.updated_at == at => {
                self.ingest.deliveries.remove(id.as_str())?;
                self.ingest.finished.remove(key)?;
                return Ok(true);
            }
            // Gone, or finished at another time (that time has an entry of its own).
            _ => {}
        }
        self.ingest.finished.remove(key)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{event, test_sealer};

    /// A store written before the indexes: the one-time walk stopped midway goes on from its
    /// place, and ends with every event indexed.
    #[test]
    fn the_indexing_walk_goes_on_from_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let events: Vec<Event> = (0..3000).map(|i| event(&format!("legacy-{i}"))).collect();
        let items: Vec<(&Event, &[Delivery])> = events.iter().map(|e| (e, &[][..])).collect();
        store.insert_events(&items).unwrap();
        // As an earlier version left it: no entries, not marked.
        store.ingest.received.clear().unwrap();
        store.meta.remove(INDEXED).unwrap();
        let stops = std::sync::atomic::AtomicU64::new(0);
        let stop_once = |_: u64| stops.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        assert!(!store.prepare_pruning(&stop_once).unwrap());
        assert_eq!(store.ingest.received.len(), 1024);
        assert!(store.prepare_pruning(&|_| false).unwrap());
        assert_eq!(store.ingest.received.len(), 3000);
        assert!(store.meta.contains_key(INDEXED).unwrap());
    }

    /// A delivery stored with its event is named in the event's entry and costs no pin; one
    /// that took a newer event pins it, and lets go when it finishes.
    #[test]
    fn only_an_event_taken_after_the_delivery_was_stored_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let (e1, e2) = (event("e1"), event("e2"));
        let plain = crate::store::tests::delivery(&e1, 1000);
        let mut debounced = crate::store::tests::delivery(&e1, 1000);
        debounced.entity = Some("sku-1".into());
        store
            .insert_event(&e1, &[plain.clone(), debounced.clone()])
            .unwrap();
        assert_eq!(store.ingest.pins.len(), 0);
        let (_, listed) = store.ingest.received.first().unwrap().unwrap();
        assert_eq!(
            stored_with(&listed).unwrap(),
            vec![plain.id.clone(), debounced.id.clone()]
        );

        let mut newer = crate::store::tests::delivery(&e2, 2000);
        newer.webhook_id = debounced.webhook_id.clone();
        newer.entity = Some("sku-1".into());
        store.insert_event(&e2, &[newer]).unwrap();
        let mut waiting = store.delivery(&debounced.id).unwrap().unwrap();
        assert_eq!(waiting.event_id, e2.id);
        assert_eq!(store.ingest.pins.len(), 1, "the newer event is pinned");

        waiting.status = DeliveryStatus::Delivered;
        waiting.next_attempt_at = None;
        store.update_delivery(&mut waiting).unwrap();
        assert_eq!(
            store.ingest.pins.len(),
            0,
            "a finished delivery holds no pin"
        );
    }

    /// Plain events stored together share one entry; pruned, each goes its own way: those
    /// nobody needs go, one a pending delivery needs gets an entry of its own.
    #[test]
    fn the_events_of_one_round_share_an_entry_and_are_pruned_each_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let (e1, e2, e3) = (event("r1"), event("r2"), event("r3"));
        let mut waiting = crate::store::tests::delivery(&e1, 1_000);
        let mut done = crate::store::tests::delivery(&e2, 1_000);
        let items: Vec<(&Event, &[Delivery])> = vec![
            (&e1, std::slice::from_ref(&waiting)),
            (&e2, std::slice::from_ref(&done)),
            (&e3, &[]),
        ];
        store.insert_events(&items).unwrap();
        assert_eq!(store.ingest.received.len(), 1, "one entry for the round");
        done.status = DeliveryStatus::Delivered;
        done.next_attempt_at = None;
        store.update_delivery(&mut done).unwrap();

        let never = |_: u64| false;
        assert_eq!(store.prune_events(Millis(10_000), 10, &never).unwrap(), 2);
        assert!(store.event(None, &e1.id).unwrap().is_some());
        assert!(store.event(None, &e2.id).unwrap().is_none());
        assert!(store.event(None, &e3.id).unwrap().is_none());
        let (entry, _) = store.ingest.received.first().unwrap().unwrap();
        assert_eq!(store.ingest.received.len(), 1);
        assert!(entry.ends_with(b"r1"), "the kept event's own entry");

        waiting.status = DeliveryStatus::Delivered;
        waiting.next_attempt_at = None;
        store.update_delivery(&mut waiting).unwrap();
        let an_hour_on = Millis(10_000 + 3_600_001);
        assert_eq!(store.prune_events(an_hour_on, 10, &never).unwrap(), 1);
        assert_eq!(store.ingest.received.len(), 0);
    }

    /// As on a backup's copy: the one-time walk runs after the start, and an event stored
    /// since (once the walk has passed the deliveries) is kept by its round's entry, which
    /// lists its pending delivery.
    #[test]
    fn the_indexing_walk_leaves_what_was_stored_since_the_start_to_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        store.meta.remove(INDEXED).unwrap();
        store.meta.insert(INDEXED_UP_TO[0], "dlv_zz").unwrap();
        let mut since = event("since");
        since.received_at = Millis(jiff::Timestamp::now().as_millisecond());
        let waiting = crate::store::tests::delivery(&since, since.received_at.as_i64());
        store
            .insert_events(&[(&since, std::slice::from_ref(&waiting))])
            .unwrap();
        assert!(store.prepare_pruning(&|_| false).unwrap());
        let later = Millis(since.received_at.as_i64() + 60_000);
        assert_eq!(store.prune_events(later, 10, &|_| false).unwrap(), 0);
        assert!(
            store.event(None, &since.id).unwrap().is_some(),
            "still needed"
        );
    }

    /// A large round has an entry per 16 events: no value grows with the round.
    #[test]
    fn a_large_round_has_an_entry_per_run_of_sixteen_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let many: Vec<Event> = (0..40).map(|i| event(&format!("m{i}"))).collect();
        let items: Vec<(&Event, &[Delivery])> = many.iter().map(|e| (e, &[][..])).collect();
        store.insert_events(&items).unwrap();
        assert_eq!(store.ingest.received.len(), 3);
        assert_eq!(
            store.prune_events(Millis(10_000), 100, &|_| false).unwrap(),
            40
        );
        assert_eq!(store.ingest.received.len(), 0);
    }

    #[test]
    fn a_new_store_needs_no_indexing_walk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        assert!(store.meta.contains_key(INDEXED).unwrap());
    }
}
