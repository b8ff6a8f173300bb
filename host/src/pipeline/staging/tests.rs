//! Tests of the staging: the sweep, refills, entries written behind, revisits.
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Bound;

use super::*;

/// A queue in memory that counts the entries read.
#[derive(Default)]
struct Queue {
    entries: RefCell<BTreeMap<QueuePosition, WebhookId>>,
    written: Cell<Option<Millis>>,
    in_flight: RefCell<HashMap<DeliveryId, Millis>>,
    reads: Cell<usize>,
}

impl Queue {
    /// Queues delivery `n` of `webhook` due at `due`, noting the write like the store.
    fn put(&self, due: i64, n: usize, webhook: &str) -> DeliveryId {
        let id = DeliveryId::parse(&format!("dlv_{n:08}")).unwrap();
        let webhook = WebhookId::parse(&format!("wh_{webhook}")).unwrap();
        self.entries.borrow_mut().insert(
            QueuePosition {
                due: Millis(due),
                id: id.clone(),
            },
            webhook,
        );
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
        let position = QueuePosition {
            due,
            id: id.clone(),
        };
        self.entries.borrow_mut().remove(&position);
    }
}

impl QueueView for Queue {
    fn entries<'a>(
        &'a self,
        from: QueueFrom<'_>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a> {
        // Lazily, a few entries at a time (like sled's iterator): a pass reads only
        // what it looks at.
        let from = match from {
            QueueFrom::Due(due) => Start::Due(due),
            QueueFrom::At(at) => Start::At(at.clone()),
            QueueFrom::After(after) => Start::After(after.clone()),
        };
        let mut next = Some(from);
        let mut chunk = std::collections::VecDeque::new();
        Box::new(std::iter::from_fn(move || {
            if chunk.is_empty() {
                let start = next.as_ref()?.bound();
                chunk.extend(
                    self.entries
                        .borrow()
                        .range((start, Bound::Unbounded))
                        .take(64)
                        .map(|(position, webhook)| QueueEntry {
                            position: position.clone(),
                            webhook: Some(webhook.clone()),
                        }),
                );
            }
            let entry = chunk.pop_front()?;
            next = Some(Start::After(entry.position.clone()));
            self.reads.set(self.reads.get() + 1);
            Some(Ok(entry))
        }))
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

/// An owned [`QueueFrom`], for the lazy walk above.
enum Start {
    Due(Millis),
    At(QueuePosition),
    After(QueuePosition),
}

impl Start {
    /// Where the walk starts, as a bound on positions ("dlv_0" sorts before any other id).
    fn bound(&self) -> Bound<QueuePosition> {
        match self {
            Start::Due(due) => Bound::Included(QueuePosition {
                due: *due,
                id: DeliveryId::parse("dlv_0").unwrap(),
            }),
            Start::At(at) => Bound::Included(at.clone()),
            Start::After(after) => Bound::Excluded(after.clone()),
        }
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
    let id = format!("wh_{webhook}");
    let key: LineKey = (
        Some(Arc::from(id.as_str())),
        Some(WebhookId::parse(&id).unwrap()),
    );
    let mut done = Vec::new();
    if let Some(line) = staging.lines_mut().get_mut(&key) {
        while done.len() < n {
            let Some((due, id, _)) = line.pop_front() else {
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
    let total = 3 * MAX_STAGED_PER_LINE + 500;
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
    for n in 0..2 * MAX_STAGED_PER_LINE {
        queue.put(n as i64, n, "busy");
    }
    let late = queue.put(1_000_000 - 1, 999_999, "quiet");
    let mut staging = Staging::default();
    stage(&mut staging, &queue, Instant::now());
    assert_eq!(work(&mut staging, &queue, "quiet", 10), vec![late]);
    assert_eq!(staging.staged_len(), MAX_STAGED_PER_LINE);
}

#[test]
fn a_webhook_is_staged_while_many_busy_ones_fill_the_staging() {
    let queue = Queue::default();
    // More busy webhooks with full lines than the staging holds, then a quiet one.
    let busy = MAX_STAGED / MAX_STAGED_PER_LINE + 2;
    let mut n = 0;
    for webhook in 0..busy {
        for _ in 0..MAX_STAGED_PER_LINE {
            queue.put(n as i64, n, &format!("busy{webhook}"));
            n += 1;
        }
    }
    let late = queue.put(1_000_000 - 1, n, "quiet");
    let mut staging = Staging::default();
    let at = Instant::now();
    for _ in 0..(n / MAX_VISITED + 2) {
        stage(&mut staging, &queue, at);
    }
    assert_eq!(work(&mut staging, &queue, "quiet", 10), vec![late]);
    assert!(
        staging.staged_len() <= MAX_STAGED + busy * LINE_WHEN_CROWDED,
        "{} staged",
        staging.staged_len()
    );
    // Once the busy lines have room again, they are refilled.
    for webhook in 0..busy {
        work(
            &mut staging,
            &queue,
            &format!("busy{webhook}"),
            MAX_STAGED_PER_LINE,
        );
    }
    stage(&mut staging, &queue, at);
    assert!(
        staging.staged_len() > 0,
        "the rest of the backlog is staged again"
    );
}

#[test]
fn two_endpoints_left_behind_are_both_refilled() {
    let queue = Queue::default();
    let per = MAX_STAGED_PER_LINE + 1_000;
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
            for (due, id, _) in staging.lines_mut().values().flat_map(|l| l.iter()) {
                assert!(
                    !in_flight.iter().any(|(_, f)| f == id),
                    "seed {seed}: {id} ({due:?}) staged while in flight"
                );
            }
            // Start some of each line; finish some in flight.
            let mut now_started = Vec::new();
            for line in staging.lines_mut().values_mut() {
                for _ in 0..dice.below(8) {
                    let Some((due, id, _)) = line.pop_front() else {
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
                let (due, id) = in_flight.swap_remove(dice.below(in_flight.len() as u64) as usize);
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
                while let Some((due, id, _)) = line.pop_front() {
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
