//! The scheduler's in-memory view of due work: due deliveries staged in a line per
//! endpoint, and how the due queue is walked to fill those lines.
//!
//! The queue (in sled, keyed by due time then delivery id) can hold millions of entries, and
//! reading one costs about a microsecond and a half, so each entry should be read about once.
//! Three walks share that work:
//!
//! - **The sweep** follows the queue in key order up to the entries due now, and continues
//!   from where it stopped as new entries arrive behind the last one it read. An entry whose
//!   endpoint's line is full is stepped over; the endpoint remembers the first key it had
//!   to leave behind.
//! - **A refill** walks again from that key, once the endpoint's line has room (half empty),
//!   and stops as soon as the line is full again — not at the end of a backlog that may
//!   hold a million entries of the same endpoint.
//! - **Entries written behind the sweep** (same millisecond as entries already read, or a
//!   debounced delivery moved to an earlier time) are noted by the store as they are written
//!   ([`QueueView::take_written_due`]); the sweep goes back to the earliest such due time.
//!
//! An entry of a delivery that is staged or in flight under another due time is kept aside
//! and looked at again when that delivery is no longer staged or in flight. A sweep from the
//! head of the queue now and then ([`FULL_SWEEP_EVERY`]) finds whatever is left (an entry
//! whose delivery could not be postponed after a storage error).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{DeliveryId, Millis, WebhookId};
use crate::storage::{queue_due_prefix, QueueEntry, StorageError};

/// Most due deliveries staged in memory, waiting for their endpoint.
pub(super) const MAX_STAGED: usize = 65_536;
/// Most staged deliveries of one endpoint.
pub(super) const MAX_STAGED_PER_ENDPOINT: usize = 4_096;
/// Most queue entries one pass reads (the walks continue in the next pass).
const MAX_VISITED: usize = 16_384;
/// How often the sweep starts again from the head of the queue, as a safety net.
pub(super) const FULL_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Most entries kept aside to look at again (beyond, the next pass sweeps from the head).
const MAX_REVISIT: usize = 4_096;
/// How often the entries kept aside are looked at (each look checks every one of them).
const REVISIT_EVERY: Duration = Duration::from_millis(10);

/// An endpoint as the lines are keyed (`None`: none known).
pub(super) type Endpoint = Option<Arc<str>>;

/// What the staging reads besides the queue's entries.
pub(super) trait QueueView {
    /// The queue's entries from `from` on, in key order.
    fn entries<'a>(
        &'a self,
        from: Bound<&[u8]>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a>;
    /// Whether the queue still holds `key`.
    fn contains(&self, key: &[u8]) -> Result<bool, StorageError>;
    /// The earliest due time written to the queue since the last call.
    fn take_written_due(&self) -> Option<Millis>;
    /// A webhook's endpoint.
    fn endpoint(&self, webhook: &WebhookId) -> Endpoint;
    /// The due time a delivery in flight was started for (`None`: not in flight).
    fn in_flight(&self, id: &DeliveryId) -> Option<Millis>;
}

/// A walk behind the sweep for endpoints whose lines have room again.
struct Refill {
    /// Where it continues.
    from: Bound<Vec<u8>>,
    /// The endpoints it fills that have not had an entry left behind again.
    pending: HashSet<Endpoint>,
}

/// What became of one entry offered to the lines.
enum Offered {
    Staged,
    /// Its endpoint's line was full.
    LeftBehind(Endpoint),
    /// Staged or in flight already (or kept aside for later).
    Skipped,
}

/// Due deliveries staged per endpoint, and where the walks of the queue have got to.
#[derive(Default)]
pub(super) struct Staging {
    /// The key of the last entry the sweep read (`None`: it starts at the head).
    cursor: Option<Vec<u8>>,
    /// When the sweep last started from the head.
    swept_from_head: Option<Instant>,
    /// Due deliveries per endpoint, in due order.
    lines: HashMap<Endpoint, VecDeque<(Millis, DeliveryId)>>,
    /// The staged deliveries, with the due time they are staged for.
    staged: HashMap<DeliveryId, Millis>,
    /// Each webhook's endpoint, worked out once.
    endpoint_of: HashMap<WebhookId, Endpoint>,
    /// Endpoints that had entries left behind (their line was full): the first such key.
    left_behind: HashMap<Endpoint, Vec<u8>>,
    refill: Option<Refill>,
    /// Entries of deliveries staged or in flight under another due time, by key.
    revisit: HashMap<Vec<u8>, QueueEntry>,
    /// When they were last looked at.
    revisited_at: Option<Instant>,
}

impl Staging {
    /// The lines, to start deliveries from.
    pub(super) fn lines_mut(&mut self) -> &mut HashMap<Endpoint, VecDeque<(Millis, DeliveryId)>> {
        &mut self.lines
    }

    /// Notes that staged deliveries were taken from their lines and started.
    pub(super) fn started(&mut self, ids: &[DeliveryId]) {
        for id in ids {
            self.staged.remove(id);
        }
        self.lines.retain(|_, line| !line.is_empty());
    }

    /// Forgets the endpoints worked out per webhook (after a webhook or connection changed).
    pub(super) fn forget_endpoints(&mut self) {
        self.endpoint_of.clear();
    }

    /// How many deliveries are staged.
    #[cfg(test)]
    fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Reads due entries into the lines: what was kept aside, then a refill, then the sweep.
    /// Lowers `wait` to when the first entry not yet due falls due.
    pub(super) fn stage(
        &mut self,
        view: &dyn QueueView,
        now: Millis,
        at: Instant,
        wait: &mut Duration,
    ) -> Result<(), StorageError> {
        if self
            .swept_from_head
            .is_none_or(|t| at.saturating_duration_since(t) >= FULL_SWEEP_EVERY)
        {
            self.swept_from_head = Some(at);
            self.cursor = None;
            self.left_behind.clear();
            self.refill = None;
        }
        if let Some(due) = view.take_written_due() {
            let behind = self
                .cursor
                .as_deref()
                .is_some_and(|key| key[..8.min(key.len())] >= queue_due_prefix(due)[..]);
            if behind {
                // Back to the start of that millisecond: every key due then is longer than
                // the prefix and sorts after it, so the sweep reads on from the first.
                self.cursor = Some(queue_due_prefix(due).to_vec());
            }
        }
        let mut budget = MAX_VISITED;
        self.look_again(view, at)?;
        self.refill(view, &mut budget)?;
        self.sweep(view, now, wait, &mut budget)?;
        if !self.revisit.is_empty() {
            *wait = (*wait).min(REVISIT_EVERY);
        }
        Ok(())
    }

    /// Offers the entries kept aside whose delivery is neither staged nor in flight now.
    fn look_again(&mut self, view: &dyn QueueView, at: Instant) -> Result<(), StorageError> {
        if self.revisit.is_empty()
            || self
                .revisited_at
                .is_some_and(|t| at.saturating_duration_since(t) < REVISIT_EVERY)
        {
            return Ok(());
        }
        self.revisited_at = Some(at);
        let ready: Vec<Vec<u8>> = self
            .revisit
            .iter()
            .filter(|(_, e)| !self.staged.contains_key(&e.id) && view.in_flight(&e.id).is_none())
            .map(|(key, _)| key.clone())
            .collect();
        for key in ready {
            let entry = self.revisit.remove(&key).expect("listed above");
            if view.contains(&entry.key)? {
                self.offer(view, entry);
            }
        }
        Ok(())
    }

    /// Continues (or starts) a refill for the endpoints whose lines have room again.
    fn refill(&mut self, view: &dyn QueueView, budget: &mut usize) -> Result<(), StorageError> {
        if self.refill.is_none() {
            let ready: Vec<Endpoint> = self
                .left_behind
                .keys()
                .filter(|endpoint| {
                    self.lines
                        .get(*endpoint)
                        .is_none_or(|line| line.len() < MAX_STAGED_PER_ENDPOINT / 2)
                })
                .cloned()
                .collect();
            let from = ready
                .iter()
                .filter_map(|endpoint| self.left_behind.remove(endpoint))
                .min();
            if let Some(from) = from {
                self.refill = Some(Refill {
                    from: Bound::Included(from),
                    pending: ready.into_iter().collect(),
                });
            }
        }
        let Some(mut refill) = self.refill.take() else {
            return Ok(());
        };
        // Up to where the sweep has read: what lies beyond is the sweep's.
        let Some(until) = self.cursor.clone() else {
            return Ok(());
        };
        let from = match &refill.from {
            Bound::Included(key) => Bound::Included(key.as_slice()),
            Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut last = None;
        for entry in view.entries(from) {
            let entry = entry?;
            if entry.key > until {
                return Ok(());
            }
            *budget = budget.saturating_sub(1);
            let key = entry.key.clone();
            if let Offered::LeftBehind(endpoint) = self.offer(view, entry) {
                refill.pending.remove(&endpoint);
                if refill.pending.is_empty() {
                    return Ok(());
                }
            }
            if *budget == 0 || self.staged.len() >= MAX_STAGED {
                last = Some(key);
                break;
            }
        }
        if let Some(key) = last {
            refill.from = Bound::Excluded(key);
            self.refill = Some(refill);
        }
        Ok(())
    }

    /// Reads on from the sweep's cursor up to the entries due now.
    fn sweep(
        &mut self,
        view: &dyn QueueView,
        now: Millis,
        wait: &mut Duration,
        budget: &mut usize,
    ) -> Result<(), StorageError> {
        if *budget == 0 || self.staged.len() >= MAX_STAGED {
            return Ok(());
        }
        let cursor = self.cursor.clone();
        let from = cursor.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        for entry in view.entries(from) {
            let entry = entry?;
            if entry.due > now {
                let until = Duration::from_millis((entry.due.as_i64() - now.as_i64()) as u64);
                *wait = (*wait).min(until);
                return Ok(());
            }
            self.cursor = Some(entry.key.clone());
            *budget = budget.saturating_sub(1);
            self.offer(view, entry);
            if *budget == 0 || self.staged.len() >= MAX_STAGED {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Stages one entry in its endpoint's line, or leaves it behind when the line is full.
    fn offer(&mut self, view: &dyn QueueView, entry: QueueEntry) -> Offered {
        let taken = self
            .staged
            .get(&entry.id)
            .copied()
            .or_else(|| view.in_flight(&entry.id));
        if let Some(due) = taken {
            if due != entry.due {
                // Another entry of the same delivery: look again once that one is done
                // (usually it is then gone, as stale or replaced).
                if self.revisit.len() < MAX_REVISIT {
                    self.revisit.insert(entry.key.clone(), entry);
                } else {
                    self.swept_from_head = None;
                }
            }
            return Offered::Skipped;
        }
        let endpoint = match &entry.webhook {
            Some(webhook) => self
                .endpoint_of
                .entry(webhook.clone())
                .or_insert_with(|| view.endpoint(webhook))
                .clone(),
            None => None,
        };
        let line = self.lines.entry(endpoint.clone()).or_default();
        if line.len() >= MAX_STAGED_PER_ENDPOINT {
            let first = self.left_behind.entry(endpoint.clone()).or_default();
            if first.is_empty() || entry.key < *first {
                *first = entry.key;
            }
            return Offered::LeftBehind(endpoint);
        }
        line.push_back((entry.due, entry.id.clone()));
        self.staged.insert(entry.id, entry.due);
        Offered::Staged
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use super::*;
    use crate::storage::{parse_queue_key, queue_key};

    /// A queue in memory that counts the entries read.
    #[derive(Default)]
    struct Queue {
        entries: RefCell<BTreeMap<Vec<u8>, WebhookId>>,
        written: Cell<Option<Millis>>,
        in_flight: RefCell<HashMap<DeliveryId, Millis>>,
        reads: Cell<usize>,
    }

    impl Queue {
        /// Queues delivery `n` of `webhook` due at `due`, noting the write like the store.
        fn put(&self, due: i64, n: usize, webhook: &str) -> DeliveryId {
            let id = DeliveryId::parse(&format!("dlv_{n:08}")).unwrap();
            let webhook = WebhookId::parse(&format!("wh_{webhook}")).unwrap();
            self.entries
                .borrow_mut()
                .insert(queue_key(Millis(due), &id), webhook);
            let earliest = self.written.get().map_or(due, |w| w.as_i64().min(due));
            self.written.set(Some(Millis(earliest)));
            id
        }

        /// Writes an entry without noting it (as if the note were lost).
        fn put_unnoted(&self, due: i64, n: usize, webhook: &str) {
            let written = self.written.get();
            self.put(due, n, webhook);
            self.written.set(written);
        }

        fn remove(&self, due: Millis, id: &DeliveryId) {
            self.entries.borrow_mut().remove(&queue_key(due, id));
        }
    }

    impl QueueView for Queue {
        fn entries<'a>(
            &'a self,
            from: Bound<&[u8]>,
        ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a> {
            // Lazily, a few entries at a time (like sled's iterator): a pass reads only
            // what it looks at.
            let mut next = match from {
                Bound::Included(k) => Bound::Included(k.to_vec()),
                Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
                Bound::Unbounded => Bound::Unbounded,
            };
            let mut chunk = std::collections::VecDeque::new();
            Box::new(std::iter::from_fn(move || {
                if chunk.is_empty() {
                    chunk.extend(
                        self.entries
                            .borrow()
                            .range((next.clone(), Bound::Unbounded))
                            .take(64)
                            .map(|(key, webhook)| {
                                let (due, id) = parse_queue_key(key).unwrap();
                                QueueEntry {
                                    due,
                                    id,
                                    webhook: Some(webhook.clone()),
                                    key: key.clone(),
                                }
                            }),
                    );
                }
                let entry = chunk.pop_front()?;
                next = Bound::Excluded(entry.key.clone());
                self.reads.set(self.reads.get() + 1);
                Some(Ok(entry))
            }))
        }

        fn contains(&self, key: &[u8]) -> Result<bool, StorageError> {
            Ok(self.entries.borrow().contains_key(key))
        }

        fn take_written_due(&self) -> Option<Millis> {
            self.written.take()
        }

        fn endpoint(&self, webhook: &WebhookId) -> Endpoint {
            Some(Arc::from(webhook.as_str()))
        }

        fn in_flight(&self, id: &DeliveryId) -> Option<Millis> {
            self.in_flight.borrow().get(id).copied()
        }
    }

    const NOW: Millis = Millis(1_000_000);

    fn stage(staging: &mut Staging, queue: &Queue, at: Instant) {
        let mut wait = Duration::from_secs(1);
        staging.stage(queue, NOW, at, &mut wait).unwrap();
    }

    /// Takes up to `n` staged deliveries of `webhook`'s line, as started and then finished
    /// (their entries gone).
    fn work(staging: &mut Staging, queue: &Queue, webhook: &str, n: usize) -> Vec<DeliveryId> {
        let endpoint: Endpoint = Some(Arc::from(format!("wh_{webhook}").as_str()));
        let mut done = Vec::new();
        if let Some(line) = staging.lines_mut().get_mut(&endpoint) {
            while done.len() < n {
                let Some((due, id)) = line.pop_front() else {
                    break;
                };
                queue.remove(due, &id);
                done.push(id);
            }
        }
        staging.started(&done);
        done
    }

    #[test]
    fn a_backlog_of_one_endpoint_is_read_about_once_and_delivered_in_order() {
        let queue = Queue::default();
        let total = 3 * MAX_STAGED_PER_ENDPOINT + 500;
        let ids: Vec<DeliveryId> = (0..total).map(|n| queue.put(n as i64, n, "a")).collect();
        let mut staging = Staging::default();
        let at = Instant::now();
        let mut delivered = Vec::new();
        for _ in 0..10_000 {
            stage(&mut staging, &queue, at);
            let done = work(&mut staging, &queue, "a", 300);
            if done.is_empty() && queue.entries.borrow().is_empty() {
                break;
            }
            delivered.extend(done);
        }
        assert_eq!(delivered, ids, "every delivery once, in due order");
        // The old sweep read the whole backlog again each time the line half emptied.
        assert!(
            queue.reads.get() < 2 * total,
            "{} reads for {total} entries",
            queue.reads.get()
        );
    }

    #[test]
    fn a_full_line_does_not_hold_back_another_endpoint() {
        let queue = Queue::default();
        for n in 0..2 * MAX_STAGED_PER_ENDPOINT {
            queue.put(n as i64, n, "busy");
        }
        let late = queue.put(1_000_000 - 1, 999_999, "quiet");
        let mut staging = Staging::default();
        stage(&mut staging, &queue, Instant::now());
        assert_eq!(work(&mut staging, &queue, "quiet", 10), vec![late]);
        assert_eq!(staging.staged_len(), MAX_STAGED_PER_ENDPOINT);
    }

    #[test]
    fn two_endpoints_left_behind_are_both_refilled() {
        let queue = Queue::default();
        let per = MAX_STAGED_PER_ENDPOINT + 1_000;
        for n in 0..per {
            queue.put(2 * n as i64, 2 * n, "a");
            queue.put(2 * n as i64 + 1, 2 * n + 1, "b");
        }
        let mut staging = Staging::default();
        let at = Instant::now();
        let (mut a, mut b) = (0, 0);
        for _ in 0..1_000 {
            stage(&mut staging, &queue, at);
            let (da, db) = (
                work(&mut staging, &queue, "a", 700).len(),
                work(&mut staging, &queue, "b", 300).len(),
            );
            a += da;
            b += db;
            if da + db == 0 {
                break;
            }
        }
        assert_eq!((a, b), (per, per));
    }

    #[test]
    fn an_entry_written_behind_the_sweep_is_found_without_reading_the_queue_again() {
        let queue = Queue::default();
        for n in 0..1_000 {
            queue.put(n as i64 * 10, n, "a");
        }
        let mut staging = Staging::default();
        let at = Instant::now();
        stage(&mut staging, &queue, at);
        work(&mut staging, &queue, "a", 1_000);
        let reads = queue.reads.get();
        // Due before the last entry the sweep read (same millisecond as an earlier one).
        let behind = queue.put(9_980, 5_000, "a");
        stage(&mut staging, &queue, at);
        assert_eq!(work(&mut staging, &queue, "a", 10), vec![behind]);
        assert!(
            queue.reads.get() - reads <= 3,
            "{}",
            queue.reads.get() - reads
        );
    }

    #[test]
    fn an_entry_of_a_delivery_in_flight_under_another_due_time_is_looked_at_again() {
        let queue = Queue::default();
        let id = queue.put(5, 1, "a");
        let mut staging = Staging::default();
        let at = Instant::now();
        stage(&mut staging, &queue, at);
        let started = work(&mut staging, &queue, "a", 1);
        assert_eq!(started, vec![id.clone()]);
        // While it is in flight, a newer event moves it to another due time.
        queue.in_flight.borrow_mut().insert(id.clone(), Millis(5));
        queue.put(7, 1, "a");
        let mut wait = Duration::from_secs(1);
        staging.stage(&queue, NOW, at, &mut wait).unwrap();
        assert_eq!(staging.staged_len(), 0, "not staged while in flight");
        assert!(wait <= REVISIT_EVERY, "looks again soon: {wait:?}");
        queue.in_flight.borrow_mut().clear();
        stage(&mut staging, &queue, at + REVISIT_EVERY);
        assert_eq!(work(&mut staging, &queue, "a", 1), vec![id]);
    }

    #[test]
    fn an_entry_nobody_noted_is_found_by_the_next_sweep_from_the_head() {
        let queue = Queue::default();
        for n in 0..100 {
            queue.put(n as i64 * 10, n, "a");
        }
        let mut staging = Staging::default();
        let at = Instant::now();
        stage(&mut staging, &queue, at);
        work(&mut staging, &queue, "a", 100);
        queue.put_unnoted(15, 500, "a");
        stage(&mut staging, &queue, at);
        assert_eq!(staging.staged_len(), 0, "behind the sweep, not noted");
        stage(&mut staging, &queue, at + FULL_SWEEP_EVERY);
        assert_eq!(work(&mut staging, &queue, "a", 10).len(), 1);
    }

    #[test]
    fn entries_not_yet_due_wait_and_say_when() {
        let queue = Queue::default();
        queue.put(NOW.as_i64() + 250, 1, "a");
        let mut staging = Staging::default();
        let mut wait = Duration::from_secs(1);
        staging
            .stage(&queue, NOW, Instant::now(), &mut wait)
            .unwrap();
        assert_eq!(staging.staged_len(), 0);
        assert_eq!(wait, Duration::from_millis(250));
    }

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn every_entry_is_started_once_and_never_while_in_flight_whatever_the_order() {
        for seed in 1..=4u64 {
            let queue = Queue::default();
            let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut staging = Staging::default();
            let at = Instant::now();
            let mut queued = HashSet::new();
            let mut started = HashSet::new();
            let mut in_flight: Vec<(Millis, DeliveryId)> = Vec::new();
            let mut n = 0;
            let mut t = 1_000;
            for round in 0..3_000 {
                if round < 2_000 {
                    // Arrivals, mostly for `a`, now and then behind what was read.
                    for _ in 0..dice.below(24) {
                        let endpoint = match dice.below(10) {
                            0..=6 => "a",
                            7 | 8 => "b",
                            _ => "c",
                        };
                        let due = if dice.below(20) == 0 {
                            t - dice.below(50) as i64
                        } else {
                            t
                        };
                        queued.insert(queue.put(due, n, endpoint));
                        n += 1;
                    }
                    t += 1;
                }
                stage(&mut staging, &queue, at);
                for (due, id) in staging.lines_mut().values().flat_map(|l| l.iter()) {
                    assert!(
                        !in_flight.iter().any(|(_, f)| f == id),
                        "seed {seed}: {id} ({due:?}) staged while in flight"
                    );
                }
                // Start some of each line; finish some in flight.
                let mut now_started = Vec::new();
                for line in staging.lines_mut().values_mut() {
                    for _ in 0..dice.below(8) {
                        let Some((due, id)) = line.pop_front() else {
                            break;
                        };
                        assert!(
                            started.insert(id.clone()),
                            "seed {seed}: {id} started twice"
                        );
                        queue.in_flight.borrow_mut().insert(id.clone(), due);
                        in_flight.push((due, id.clone()));
                        now_started.push(id);
                    }
                }
                staging.started(&now_started);
                for _ in 0..dice.below(40).min(in_flight.len() as u64) {
                    let (due, id) =
                        in_flight.swap_remove(dice.below(in_flight.len() as u64) as usize);
                    queue.remove(due, &id);
                    queue.in_flight.borrow_mut().remove(&id);
                }
            }
            // Drain: finish everything, with the clock standing still (no sweep from the head).
            for _ in 0..100_000 {
                for (due, id) in in_flight.drain(..) {
                    queue.remove(due, &id);
                    queue.in_flight.borrow_mut().remove(&id);
                }
                stage(&mut staging, &queue, at);
                let mut now_started = Vec::new();
                for line in staging.lines_mut().values_mut() {
                    while let Some((due, id)) = line.pop_front() {
                        assert!(
                            started.insert(id.clone()),
                            "seed {seed}: {id} started twice"
                        );
                        in_flight.push((due, id.clone()));
                        now_started.push(id);
                    }
                }
                staging.started(&now_started);
                if in_flight.is_empty() && queue.entries.borrow().is_empty() {
                    break;
                }
            }
            let missed: Vec<_> = queued.difference(&started).take(5).collect();
            assert!(
                missed.is_empty() && started.len() == queued.len(),
                "seed {seed}: {} queued, {} started; never started: {missed:?}",
                queued.len(),
                started.len()
            );
        }
    }
}
