//! Handing finished deliveries over to retention without an entry for each.
//!
//! A `finished` entry for every delivery cost an index write on the path of each one (about
//! a tenth of the host's throughput flat out). Almost every delivery finishes moments after
//! it was made, long before it may be pruned, so the entry is written only for those that
//! need one:
//!
//! - The pruner walks the deliveries in id order (generated ids sort by when they were made)
//!   up to those made `shortest_keep` ago, each once, from the place it noted last time. A
//!   finished one past its cutoff is removed there and then; one finished but kept longer gets
//!   its `finished` entry; a pending one is left to write its own.
//! - Before walking, the pruner raises the *bound*, kept in `meta`: deliveries generated
//!   before it are handed over, and write their `finished` entry themselves when they finish
//!   (before the record, as [`Store::note_finished`] does), and once more after it should the
//!   bound have passed them while the record was written. A SeqCst fence between raising the
//!   bound and reading a record, and another between writing a record and reading the bound,
//!   make sure that either the walk sees the finished record or the writer sees the bound.
//! - A delivery whose id does not tell when it was made is always handed over.
//!
//! Left open: should the process stop between a delivery's finishing record and its entry
//! exactly while the walk passes it, the delivery is kept (never lost, never pruned).

use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use super::*;

/// The `meta` key of the bound: deliveries generated before it (ms, big-endian) are
/// handed over.
const HANDED_OVER_BEFORE: &[u8] = b"retention_handed_over_before";
/// The `meta` key of the last delivery the walk handed over.
const HANDED_OVER_TO: &[u8] = b"retention_handed_over_to";
/// At most this long past the shortest retention a delivery is walked, so the walk finds
/// those that finished within it of being made already past their cutoff.
const MARGIN: Duration = Duration::from_secs(60);

/// The few fields of a delivery record the walk reads.
#[derive(serde::Deserialize)]
struct Handed {
    status: DeliveryStatus,
    updated_at: Millis,
    webhook_id: WebhookId,
}

/// The bound as `meta` keeps it (0 for a store never walked).
pub(in crate::store) fn handed_over_before(meta: &sled::Tree) -> Result<u64, StoreError> {
    Ok(meta
        .get(HANDED_OVER_BEFORE)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Makes the next walk start from the first delivery (a backup's copy).
pub(in crate::store) fn forget_hand_over_place(meta: &sled::Tree) -> Result<(), StoreError> {
    meta.remove(HANDED_OVER_TO)?;
    Ok(())
}

fn wall_millis() -> u64 {
    u64::from_be_bytes(pin_value())
}

impl Store {
    /// Whether `id` was handed over: it writes its own `finished` entry.
    fn handed_over(&self, id: &DeliveryId) -> bool {
        id.generated_at()
            .is_none_or(|at| at < self.handed_over.load(Ordering::SeqCst))
    }

    /// Before the record that finishes a delivery: its `finished` entry, if it was handed
    /// over (an entry whose delivery did not finish after all is dropped by the pruning
    /// walk). `false` when it was not handed over: then [`Store::note_finished_after`].
    pub(in crate::store) fn note_finished(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        let Some(key) = finished_key(delivery) else {
            return Ok(true);
        };
        if !self.handed_over(&delivery.id) {
            return Ok(false);
        }
        self.ingest.finished.insert(key, &[] as &[u8])?;
        Ok(true)
    }

    /// After the record that finishes a delivery not handed over before it: its entry, if
    /// the walk handed it over meanwhile (it may have seen the record still pending).
    pub(in crate::store) fn note_finished_after(
        &self,
        delivery: &Delivery,
        noted: bool,
    ) -> Result<(), StoreError> {
        if noted {
            return Ok(());
        }
        fence(Ordering::SeqCst);
        if let Some(key) = finished_key(delivery).filter(|_| self.handed_over(&delivery.id)) {
            self.ingest.finished.insert(key, &[] as &[u8])?;
        }
        Ok(())
    }

    /// Hands over the deliveries made more than `shortest_keep` (and a margin) ago that
    /// were not yet (see the module doc), `batch` between two notes of its place and two
    /// calls of `stop`. Counts what it removed into `removed`; `false` when stopped first.
    pub(in crate::store) fn hand_over(
        &self,
        shortest_keep: Duration,
        cutoff: &(dyn Fn(&WebhookId, Finished) -> Option<Millis> + Sync),
        batch: usize,
        stop: StopWalk<'_>,
        removed: &mut u64,
    ) -> Result<bool, StoreError> {
        let past = shortest_keep + (shortest_keep / 10).min(MARGIN);
        // Made by now less `past`, this very millisecond included.
        let past = u64::try_from(past.as_millis()).unwrap_or(u64::MAX);
        let bound = (wall_millis() + 1).saturating_sub(past);
        if bound > self.handed_over.load(Ordering::SeqCst) {
            // Kept first: after a restart, writers still take what was walked for handed over.
            self.meta.insert(HANDED_OVER_BEFORE, &bound.to_be_bytes())?;
            self.handed_over.fetch_max(bound, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        let end = DeliveryId::first_generated_at(self.handed_over.load(Ordering::SeqCst));
        let from = self.meta.get(HANDED_OVER_TO)?;
        let start = match &from {
            Some(key) => Bound::Excluded(key.as_ref()),
            None => Bound::Unbounded,
        };
        let mut walked = 0usize;
        let mut last = None;
        for entry in self
            .ingest
            .deliveries
            .range::<&[u8], _>((start, Bound::Excluded(end.as_bytes())))
        {
            let (key, value) = entry?;
            if self.hand_over_one(&key, &value, cutoff)? {
                *removed += 1;
            }
            walked += 1;
            if walked % batch == 0 {
                self.meta.insert(HANDED_OVER_TO, key.as_ref())?;
                if stop(*removed) {
                    return Ok(false);
                }
            }
            last = Some(key);
        }
        if let Some(last) = last {
            self.meta.insert(HANDED_OVER_TO, last)?;
        }
        Ok(true)
    }

    /// Hands over one delivery record: removed when finished and past its cutoff, given its
    /// `finished` entry when finished and kept, left alone while pending. `true` when removed.
    fn hand_over_one(
        &self,
        key: &[u8],
        record: &[u8],
        cutoff: &(dyn Fn(&WebhookId, Finished) -> Option<Millis> + Sync),
    ) -> Result<bool, StoreError> {
        let handed: Handed = match serde_json::from_slice(record) {
            Ok(handed) => handed,
            Err(e) => {
                let id = String::from_utf8_lossy(key);
                tracing::error!(delivery = %id, "unreadable delivery record kept: {e}");
                return Ok(false);
            }
        };
        let Some(finished) = Finished::of(handed.status) else {
            return Ok(false);
        };
        let expired = cutoff(&handed.webhook_id, finished).is_some_and(|c| handed.updated_at < c);
        if expired {
            // Only as read: a delivery written again since (taken up again) stays.
            let gone = self
                .ingest
                .deliveries
                .compare_and_swap(key, Some(record), None as Option<&[u8]>)?
                .is_ok();
            return Ok(gone);
        }
        let Ok(id) = std::str::from_utf8(key).map(DeliveryId::parse) else {
            return Ok(false);
        };
        let Ok(id) = id else {
            return Ok(false);
        };
        let entry = entry_key(&handed.webhook_id, finished, handed.updated_at, &id);
        self.ingest.finished.insert(entry, &[] as &[u8])?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{delivery, event, reopen, test_sealer};

    fn finish(store: &Store, d: &mut Delivery, status: DeliveryStatus, at: i64) {
        d.status = status;
        d.next_attempt_at = None;
        d.updated_at = Millis(at);
        store.update_delivery(d).unwrap();
    }

    fn never(_: u64) -> bool {
        false
    }

    /// A delivery that finishes before the walk reaches it costs no entry, and the walk
    /// removes it once it is past its cutoff; one finished but kept longer gets its entry.
    #[test]
    fn the_walk_removes_what_finished_before_it_without_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let (e1, e2) = (event("h1"), event("h2"));
        let (mut done, mut failed) = (delivery(&e1, 1_000), delivery(&e2, 1_000));
        store.insert_event(&e1, &[done.clone()]).unwrap();
        store.insert_event(&e2, &[failed.clone()]).unwrap();
        finish(&store, &mut done, DeliveryStatus::Delivered, 2_000);
        finish(&store, &mut failed, DeliveryStatus::Dead, 2_000);
        assert_eq!(store.ingest.finished.len(), 0, "no entry on the way");

        let cutoff = |_: &WebhookId, f: Finished| match f {
            Finished::Succeeded => Some(Millis(10_000)),
            Finished::Failed => Some(Millis(1_000)),
        };
        let keep = Some(Duration::ZERO);
        assert_eq!(
            store.prune_deliveries(&cutoff, keep, 10, &never).unwrap(),
            1
        );
        assert!(store.delivery(&done.id).unwrap().is_none());
        assert!(store.delivery(&failed.id).unwrap().is_some());
        assert_eq!(store.ingest.finished.len(), 1, "the kept one's entry");
        // Walked once: the next pass goes by the entry.
        let later = |_: &WebhookId, _: Finished| Some(Millis(10_000));
        assert_eq!(store.prune_deliveries(&later, keep, 10, &never).unwrap(), 1);
        assert_eq!(store.ingest.finished.len(), 0);
    }

    /// One pending when the walk passed writes its own entry when it finishes, also after a
    /// restart; one made after the walk is left to the next.
    #[test]
    fn a_delivery_pending_when_walked_writes_its_entry_when_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let e1 = event("p1");
        let mut pending = delivery(&e1, 1_000);
        let cutoff = |_: &WebhookId, _: Finished| Some(Millis(10_000));
        let keep = Some(Duration::ZERO);
        {
            let store = Store::open(dir.path(), test_sealer()).unwrap();
            store.insert_event(&e1, &[pending.clone()]).unwrap();
            assert_eq!(
                store.prune_deliveries(&cutoff, keep, 10, &never).unwrap(),
                0
            );
        }
        let store = reopen(dir.path(), test_sealer()).unwrap();
        finish(&store, &mut pending, DeliveryStatus::Delivered, 2_000);
        assert_eq!(store.ingest.finished.len(), 1);
        // Kept for an hour: this walk hands over nothing new.
        let e2 = event("p2");
        let mut young = delivery(&e2, 1_000);
        store.insert_event(&e2, &[young.clone()]).unwrap();
        finish(&store, &mut young, DeliveryStatus::Delivered, 2_000);
        let an_hour = Some(Duration::from_secs(3_600));
        assert_eq!(
            store
                .prune_deliveries(&cutoff, an_hour, 10, &never)
                .unwrap(),
            1
        );
        assert!(store.delivery(&pending.id).unwrap().is_none());
        assert!(store.delivery(&young.id).unwrap().is_some());
        assert_eq!(
            store.prune_deliveries(&cutoff, keep, 10, &never).unwrap(),
            1
        );
        assert!(store.delivery(&young.id).unwrap().is_none());
    }

    /// The walk notes its place: stopped, the next one goes on from there.
    #[test]
    fn a_stopped_walk_goes_on_from_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        for i in 0..5 {
            let e = event(&format!("s{i}"));
            let mut d = delivery(&e, 1_000);
            store.insert_event(&e, &[d.clone()]).unwrap();
            finish(&store, &mut d, DeliveryStatus::Delivered, 2_000);
        }
        let cutoff = |_: &WebhookId, _: Finished| Some(Millis(10_000));
        let keep = Some(Duration::ZERO);
        let after_two = |removed: u64| removed >= 2;
        assert_eq!(
            store
                .prune_deliveries(&cutoff, keep, 1, &after_two)
                .unwrap(),
            2
        );
        assert_eq!(store.prune_deliveries(&cutoff, keep, 1, &never).unwrap(), 3);
        assert_eq!(store.ingest.deliveries.len(), 0);
    }
}
