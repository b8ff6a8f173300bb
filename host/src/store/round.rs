//! Plain ingest without a sled transaction: ordered writes made all-or-nothing by an intent.
//!
//! sled makes every operation on every tree wait while any transaction runs (a database-wide
//! lock), and under load the ingest transactions ran a quarter of the time: the async threads
//! blocked in their delivery updates and reads, and with them every request, evaluation and
//! send they were serving (BENCHMARKS.md, sixth pass). Events whose deliveries are all plain
//! (no debounce, order or batch index to keep in step) are stored with plain writes instead:
//!
//! 1. an *intent* record listing what the round adds: event ids, delivery ids, queue keys;
//! 2. per event, its record and its deliveries' records; then the round's retention entries,
//!    one per run of up to 16 events (listing them, so the pruner never meets an entry before
//!    what it names); then the
//!    deliveries' queue entries, so the scheduler (which starts from queue entries) never
//!    meets a delivery before its event;
//! 3. the intent's removal.
//!
//! Calls are answered only after the flush that follows the round (the commit thread), and
//! sled recovers a prefix of its log. So after a crash an intent still stored marks a round
//! that was never acknowledged, and [`undo_unfinished`] removes everything it lists before
//! anything reads the trees. A round that fails midway is undone at once (and, should that
//! fail too, before the next round, or at the next open). Rounds never overlap: [`EventTrees::insert_events`] holds
//! the ingest lock, which also makes the repeated-id check and the writes one step.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{decode, encode, EncodedEvent, EventTrees, Inserted, StoreError};
use crate::model::{Delivery, Event};

/// What an unfinished round added, to be removed if it never finished.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Intent {
    events: Vec<String>,
    /// The events' retention entries, and pins (written by earlier versions; both absent in
    /// intents written before there were any).
    #[serde(default)]
    received: Vec<Vec<u8>>,
    #[serde(default)]
    pins: Vec<Vec<u8>>,
    deliveries: Vec<String>,
    queue: Vec<Vec<u8>>,
}

/// The most events one retention entry of a round lists.
const ROUND_ENTRY_EVENTS: usize = 16;

/// Intent keys: unique within the process; intents left by an earlier one are undone at open.
static NEXT_INTENT: AtomicU64 = AtomicU64::new(0);

/// Why a round stopped early.
enum Stop {
    /// A write failed.
    Failed(StoreError),
    /// Tests: the writes were cut here, as by a crash.
    #[cfg(test)]
    Cut,
}

impl From<sled::Error> for Stop {
    fn from(e: sled::Error) -> Self {
        Stop::Failed(e.into())
    }
}

/// Counts writes, so tests can stop a round after any of them.
struct Writes(Option<usize>);

impl Writes {
    fn next(&mut self) -> Result<(), Stop> {
        match &mut self.0 {
            #[cfg(test)]
            Some(0) => Err(Stop::Cut),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Stores plain events and their deliveries (see the module doc); the caller holds the
/// ingest lock. An id already stored, or repeated within `items`, is a duplicate.
pub(super) fn insert_plain(
    trees: &EventTrees,
    items: &[(&Event, &[Delivery])],
    encoded: &[EncodedEvent],
) -> Result<Vec<Inserted>, StoreError> {
    match insert_cut(trees, items, encoded, None) {
        Ok(inserted) => Ok(inserted),
        Err(Stop::Failed(e)) => Err(e),
        #[cfg(test)]
        Err(Stop::Cut) => unreachable!("only tests cut rounds"),
    }
}

/// [`insert_plain`], stopping after `cut` writes when given (tests: a crash there).
fn insert_cut(
    trees: &EventTrees,
    items: &[(&Event, &[Delivery])],
    encoded: &[EncodedEvent],
    cut: Option<usize>,
) -> Result<Vec<Inserted>, Stop> {
    // An intent left by a round whose undo failed: its events may look stored while their
    // deliveries are not. Undo it before deciding what is a duplicate.
    if !trees.intents.is_empty() {
        undo_unfinished(trees).map_err(Stop::Failed)?;
    }
    let mut inserted = Vec::with_capacity(items.len());
    let mut intent = Intent::default();
    let mut new = Vec::new();
    let mut seen = HashSet::new();
    let mut keys = Vec::with_capacity(items.len());
    for (i, (event, deliveries)) in items.iter().enumerate() {
        let key = super::event_key(event.tenant.as_deref(), &event.id);
        keys.push(key.clone());
        if !seen.insert(key.clone()) || trees.events.get(key.as_str())?.is_some() {
            inserted.push(Inserted::Duplicate);
            continue;
        }
        intent.events.push(key);
        for (delivery, (key, _)) in deliveries.iter().zip(&encoded[i].1) {
            intent.deliveries.push(delivery.id.to_string());
            intent.queue.push(key.clone());
        }
        inserted.push(Inserted::New(
            deliveries.iter().map(|d| d.id.clone()).collect(),
        ));
        new.push(i);
    }
    if new.is_empty() {
        return Ok(inserted);
    }
    // One retention entry for each run of up to `ROUND_ENTRY_EVENTS` of the round's events,
    // at the latest receipt among them: small values in a tree that is appended to (sled
    // rewrites a leaf whole now and then, and a leaf holds 16 entries).
    let runs: Vec<&[usize]> = new.chunks(ROUND_ENTRY_EVENTS).collect();
    for run in &runs {
        let received_at = run.iter().map(|&i| items[i].0.received_at).max();
        intent.received.push(super::retention::round_key(
            received_at.expect("a run has events"),
            &keys[run[0]],
        ));
    }
    let key = NEXT_INTENT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let mut writes = Writes(cut);
    writes.next()?;
    trees.intents.insert(key, encode(&intent))?;
    let written = (|| -> Result<(), Stop> {
        for &i in &new {
            let (_, deliveries) = items[i];
            let (event_bytes, records) = &encoded[i];
            writes.next()?;
            trees
                .events
                .insert(keys[i].as_str(), event_bytes.as_slice())?;
            for (delivery, (_, bytes)) in deliveries.iter().zip(records) {
                writes.next()?;
                trees
                    .deliveries
                    .insert(delivery.id.as_str(), bytes.as_slice())?;
            }
        }
        // After the records it names: the pruner never meets an entry whose deliveries are
        // still on their way.
        for (run, received) in runs.iter().zip(&intent.received) {
            writes.next()?;
            trees.received.insert(
                received.as_slice(),
                super::retention::round_value(run.iter().map(|&i| {
                    let listed = items[i].1.iter().map(|d| &d.id);
                    (keys[i].as_str(), super::retention::received_value(listed))
                })),
            )?;
        }
        for &i in &new {
            let (_, deliveries) = items[i];
            let (_, records) = &encoded[i];
            for (delivery, (queue_key, _)) in deliveries.iter().zip(records) {
                writes.next()?;
                trees
                    .queue
                    .insert(queue_key.as_slice(), super::ingest::queue_value(delivery))?;
            }
        }
        writes.next()?;
        trees.intents.remove(key)?;
        Ok(())
    })();
    match written {
        Ok(()) => Ok(inserted),
        Err(Stop::Failed(e)) => {
            if let Err(undo) = undo(trees, &key, &intent) {
                tracing::error!("undoing a failed ingest round: {undo} (undone at the next open)");
            }
            Err(Stop::Failed(e))
        }
        #[cfg(test)]
        Err(Stop::Cut) => Err(Stop::Cut),
    }
}

/// Removes what `intent` lists, then the intent.
fn undo(trees: &EventTrees, key: &[u8], intent: &Intent) -> Result<(), StoreError> {
    for queue_key in &intent.queue {
        trees.queue.remove(queue_key.as_slice())?;
    }
    for id in &intent.deliveries {
        trees.deliveries.remove(id.as_str())?;
    }
    for id in &intent.events {
        trees.events.remove(id.as_str())?;
    }
    for key in &intent.received {
        trees.received.remove(key.as_slice())?;
    }
    for pin in &intent.pins {
        trees.pins.remove(pin.as_slice())?;
    }
    trees.intents.remove(key)?;
    Ok(())
}

/// Undoes the rounds a crash left unfinished (never acknowledged); returns how many events
/// they held. Run at open, before anything reads the event, delivery or queue trees.
///
/// # Errors
/// On storage failure or an unreadable intent.
pub(super) fn undo_unfinished(trees: &EventTrees) -> Result<usize, StoreError> {
    let mut events = 0;
    for entry in trees.intents.iter() {
        let (key, value) = entry?;
        let intent: Intent = decode("ingest_intents", &value)?;
        undo(trees, &key, &intent)?;
        events += intent.events.len();
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Millis;
    use crate::store::tests::{delivery, event, test_sealer};
    use crate::store::{queue_key, Store};

    /// Every way a round of two events (two deliveries, one) can be cut by a crash: after
    /// reopening, either all of it is there or none of it, and the calls' retry completes it.
    #[test]
    fn a_round_cut_by_a_crash_at_any_write_is_all_there_or_gone_after_reopening() {
        let e1 = event("evt_round_1");
        let e2 = event("evt_round_2");
        let d1 = [delivery(&e1, 10), delivery(&e1, 11)];
        let d2 = [delivery(&e2, 12)];
        let items: Vec<(&Event, &[Delivery])> = vec![(&e1, &d1), (&e2, &d2)];
        // intent, 2 events, 3 records, the round's retention entry, 3 queue entries, the
        // intent's removal
        let all_writes = 11;
        for cut in 0..=all_writes {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open(dir.path(), test_sealer()).unwrap();
                let encoded = super::super::ingest::encode_items(&items);
                let result = insert_cut(&store.ingest, &items, &encoded, Some(cut));
                assert_eq!(result.is_ok(), cut == all_writes, "cut after {cut} writes");
                store.flush().unwrap();
            }
            let store = super::super::tests::reopen(dir.path(), test_sealer()).unwrap();
            let complete = cut == all_writes;
            for (e, ds) in [(&e1, &d1[..]), (&e2, &d2[..])] {
                assert_eq!(
                    store.event(None, &e.id).unwrap().is_some(),
                    complete,
                    "cut {cut}"
                );
                for d in ds {
                    assert_eq!(store.delivery(&d.id).unwrap().is_some(), complete);
                    let key = queue_key(d.next_attempt_at.unwrap(), &d.id);
                    assert_eq!(store.ingest.queue.contains_key(&key).unwrap(), complete);
                }
            }
            assert_eq!(store.ingest.intents.len(), 0);
            let indexed = if complete { 1 } else { 0 };
            assert_eq!(
                store.ingest.received.len(),
                indexed,
                "one entry a round: cut {cut}"
            );
            // The emitter's retry (same ids) stores it, or finds it stored.
            let again = store.insert_events(&items).unwrap();
            let expected = if complete {
                vec![Inserted::Duplicate, Inserted::Duplicate]
            } else {
                vec![
                    Inserted::New(d1.iter().map(|d| d.id.clone()).collect()),
                    Inserted::New(vec![d2[0].id.clone()]),
                ]
            };
            assert_eq!(again, expected, "cut {cut}");
            assert_eq!(store.queue_len(), 3);
        }
    }

    #[test]
    fn an_intent_left_behind_is_undone_before_the_next_round_looks_for_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let e = event("evt_left");
        let ds = [delivery(&e, 5)];
        let items: Vec<(&Event, &[Delivery])> = vec![(&e, &ds)];
        let encoded = super::super::ingest::encode_items(&items);
        // The event written, its delivery not: as after a failed round whose undo failed.
        assert!(insert_cut(&store.ingest, &items, &encoded, Some(3)).is_err());
        assert!(store.ingest.events.get(e.id.as_str()).unwrap().is_some());
        let again = store.insert_events(&items).unwrap();
        assert_eq!(again, vec![Inserted::New(vec![ds[0].id.clone()])]);
        assert!(store.delivery(&ds[0].id).unwrap().is_some());
        assert_eq!(store.queue_len(), 1);
    }

    #[test]
    fn an_id_repeated_within_a_round_is_a_duplicate_of_its_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let e = event("evt_twice");
        let first = [delivery(&e, 5)];
        let second = [delivery(&e, 6)];
        let items: Vec<(&Event, &[Delivery])> = vec![(&e, &first), (&e, &second)];
        let inserted = store.insert_events(&items).unwrap();
        assert_eq!(
            inserted,
            vec![
                Inserted::New(vec![first[0].id.clone()]),
                Inserted::Duplicate
            ]
        );
        assert!(store.delivery(&second[0].id).unwrap().is_none());
        assert_eq!(
            store.due_entries(10).unwrap(),
            vec![(Millis(5), first[0].id.clone())]
        );
    }
}
