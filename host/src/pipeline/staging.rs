//! The scheduler's in-memory view of due work: due deliveries staged in a line per webhook
//! (with its endpoint), and how the due queue is walked to fill those lines.
//!
//! The queue (in (due time, delivery id) order) can hold millions of entries, and reading one
//! from sled costs about a microsecond and a half, so each entry should be read about once.
//! Three walks share that work:
//!
//! - **The sweep** follows the queue in key order up to the entries due now, and continues
//!   from where it stopped as new entries arrive behind the last one it read. An entry whose
//!   line is full is stepped over; the line remembers the first position it left behind.
//!   With [`MAX_STAGED`] staged, a line with [`LINE_WHEN_CROWDED`] is full, so one tenant's
//!   many busy webhooks cannot keep another's from being staged.
//! - **A refill** walks again from there, once the line has room (half empty) and the
//!   staging is not crowded, and stops as soon as the line is full again — not at the end of
//!   a backlog that may hold a million entries of the same webhook.
//! - **Entries written behind the sweep** (same millisecond as entries already read, or a
//!   debounced delivery moved to an earlier time) are noted by the storage as they are
//!   written ([`QueueView::take_written_due`]); the sweep goes back to the earliest such due
//!   time.
//!
//! An entry of a delivery that is staged or in flight under another due time is kept aside
//! and looked at again when that delivery is no longer staged or in flight (it may be outdated
//! by then: its claim then fails, and the storage drops it). A sweep from the head of the
//! queue now and then ([`FULL_SWEEP_EVERY`]) finds whatever is left (an entry whose delivery
//! could not be postponed after a storage error, one another host wrote behind the sweep).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{DeliveryId, Millis, WebhookId};
use crate::storage::{QueueEntry, QueueFrom, QueuePosition, StorageError};

/// Due deliveries staged in memory, waiting for their endpoint, beyond which lines are kept
/// short (see [`LINE_WHEN_CROWDED`]).
pub(super) const MAX_STAGED: usize = 65_536;
/// Most staged deliveries of one webhook.
pub(super) const MAX_STAGED_PER_LINE: usize = 4_096;
/// Most staged deliveries of one webhook while [`MAX_STAGED`] are staged: beyond it, the
/// sweep leaves the entries of webhooks with this many behind and stages other webhooks'.
const LINE_WHEN_CROWDED: usize = 64;
/// Most queue entries one pass reads (the walks continue in the next pass).
const MAX_VISITED: usize = 16_384;
/// How often the sweep starts again from the head of the queue, as a safety net.
pub(super) const FULL_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Most entries kept aside to look at again (beyond, the next pass sweeps from the head).
const MAX_REVISIT: usize = 4_096;
/// How often the entries kept aside are looked at (each look checks every one of them).
const REVISIT_EVERY: Duration = Duration::from_millis(10);

/// An endpoint (`None`: none known).
pub(super) type Endpoint = Option<Arc<str>>;

/// What a line is for: one webhook's deliveries, with its endpoint. A line per webhook, not
/// per endpoint, so a webhook whose deliveries may not start (throttled by the fair share,
/// or its endpoint full) never stands in front of another webhook's.
pub(super) type LineKey = (Endpoint, Option<WebhookId>);

/// A staged delivery: its due time, its id, its webhook.
pub(super) type Staged = (Millis, DeliveryId, Option<WebhookId>);

/// What the staging reads besides the queue's entries.
pub(super) trait QueueView {
    /// The queue's entries from `from` on, in position order.
    fn entries<'a>(
        &'a self,
        from: QueueFrom<'_>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a>;
    /// The earliest due time written to the queue since the last call.
    fn take_written_due(&self) -> Option<Millis>;
    /// A webhook's endpoint.
    fn endpoint(&self, webhook: &WebhookId) -> Endpoint;
    /// The due time a delivery in flight was started for (`None`: not in flight).
    fn in_flight(&self, id: &DeliveryId) -> Option<Millis>;
}

/// Where the sweep has got to.
#[derive(Clone, Debug)]
enum Cursor {
    /// Just before the entries due at this time (it reads them next).
    Before(Millis),
    /// At this entry, read last.
    At(QueuePosition),
}

impl Cursor {
    /// Where a walk continues from here.
    fn onward(&self) -> QueueFrom<'_> {
        match self {
            Cursor::Before(due) => QueueFrom::Due(*due),
            Cursor::At(position) => QueueFrom::After(position),
        }
    }

    /// The due time of the entries it has passed or is about to read.
    fn due(&self) -> Millis {
        match self {
            Cursor::Before(due) => *due,
            Cursor::At(position) => position.due,
        }
    }
}

/// Where a refill continues.
#[derive(Clone, Debug)]
enum RefillFrom {
    /// At this entry (the first left behind).
    At(QueuePosition),
    /// After this entry (read last).
    After(QueuePosition),
}

/// A walk behind the sweep for lines that have room again.
struct Refill {
    /// Where it continues.
    from: RefillFrom,
    /// The lines it fills that have not had an entry left behind again.
    pending: HashSet<LineKey>,
}

/// What became of one entry offered to the lines.
enum Offered {
    Staged,
    /// Its line was full.
    LeftBehind(LineKey),
    /// Staged or in flight already (or kept aside for later).
    Skipped,
}

/// Due deliveries staged per webhook, and where the walks of the queue have got to.
#[derive(Default)]
pub(super) struct Staging {
    /// Where the sweep has got to (`None`: it starts at the head).
    cursor: Option<Cursor>,
    /// When the sweep last started from the head.
    swept_from_head: Option<Instant>,
    /// Due deliveries per webhook, in due order.
    lines: HashMap<LineKey, VecDeque<Staged>>,
    /// The staged deliveries, with the due time they are staged for.
    staged: HashMap<DeliveryId, Millis>,
    /// Each webhook's endpoint, worked out once.
    endpoint_of: HashMap<WebhookId, Endpoint>,
    /// Lines that had entries left behind (they were full): the first such position.
    left_behind: HashMap<LineKey, QueuePosition>,
    refill: Option<Refill>,
    /// Entries of deliveries staged or in flight under another due time, by position.
    revisit: HashMap<QueuePosition, Option<WebhookId>>,
    /// When they were last looked at.
    revisited_at: Option<Instant>,
}

impl Staging {
    /// The lines, to start deliveries from.
    pub(super) fn lines_mut(&mut self) -> &mut HashMap<LineKey, VecDeque<Staged>> {
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
            if self
                .cursor
                .as_ref()
                .is_some_and(|cursor| cursor.due() >= due)
            {
                // Back to the start of that millisecond: the sweep reads on from its first
                // entry.
                self.cursor = Some(Cursor::Before(due));
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
        let ready: Vec<QueuePosition> = self
            .revisit
            .keys()
            .filter(|p| !self.staged.contains_key(&p.id) && view.in_flight(&p.id).is_none())
            .cloned()
            .collect();
        for position in ready {
            let webhook = self.revisit.remove(&position).expect("listed above");
            self.offer(view, QueueEntry { position, webhook });
        }
        Ok(())
    }

    /// Continues (or starts) a refill for the lines that have room again.
    fn refill(&mut self, view: &dyn QueueView, budget: &mut usize) -> Result<(), StorageError> {
        // While crowded, lines are not refilled: the sweep stages new lines first.
        if self.refill.is_none() && self.staged.len() < MAX_STAGED {
            let ready: Vec<LineKey> = self
                .left_behind
                .keys()
                .filter(|key| {
                    self.lines
                        .get(*key)
                        .is_none_or(|line| line.len() < MAX_STAGED_PER_LINE / 2)
                })
                .cloned()
                .collect();
            let from = ready
                .iter()
                .filter_map(|key| self.left_behind.remove(key))
                .min();
            if let Some(from) = from {
                self.refill = Some(Refill {
                    from: RefillFrom::At(from),
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
            RefillFrom::At(position) => QueueFrom::At(position),
            RefillFrom::After(position) => QueueFrom::After(position),
        };
        let mut last = None;
        for entry in view.entries(from) {
            let entry = entry?;
            if until.onward().admits(&entry.position) {
                return Ok(());
            }
            *budget = budget.saturating_sub(1);
            let position = entry.position.clone();
            if let Offered::LeftBehind(line) = self.offer(view, entry) {
                refill.pending.remove(&line);
                if refill.pending.is_empty() {
                    return Ok(());
                }
            }
            if *budget == 0 || self.staged.len() >= MAX_STAGED {
                last = Some(position);
                break;
            }
        }
        if let Some(position) = last {
            refill.from = RefillFrom::After(position);
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
        if *budget == 0 {
            return Ok(());
        }
        let cursor = self.cursor.clone();
        let from = cursor
            .as_ref()
            .map_or(QueueFrom::Due(Millis::EARLIEST), Cursor::onward);
        for entry in view.entries(from) {
            let entry = entry?;
            let due = entry.position.due;
            if due > now {
                let until = Duration::from_millis((due.as_i64() - now.as_i64()) as u64);
                *wait = (*wait).min(until);
                return Ok(());
            }
            self.cursor = Some(Cursor::At(entry.position.clone()));
            *budget = budget.saturating_sub(1);
            self.offer(view, entry);
            if *budget == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Stages one entry in its webhook's line, or leaves it behind when the line is full.
    fn offer(&mut self, view: &dyn QueueView, entry: QueueEntry) -> Offered {
        let QueueEntry { position, webhook } = entry;
        let taken = self
            .staged
            .get(&position.id)
            .copied()
            .or_else(|| view.in_flight(&position.id));
        if let Some(due) = taken {
            if due != position.due {
                // Another entry of the same delivery: look again once that one is done
                // (usually it is then gone, as outdated or replaced).
                if self.revisit.len() < MAX_REVISIT {
                    self.revisit.insert(position, webhook);
                } else {
                    self.swept_from_head = None;
                }
            }
            return Offered::Skipped;
        }
        let endpoint = match &webhook {
            Some(webhook) => self
                .endpoint_of
                .entry(webhook.clone())
                .or_insert_with(|| view.endpoint(webhook))
                .clone(),
            None => None,
        };
        let key = (endpoint, webhook.clone());
        let line = self.lines.entry(key.clone()).or_default();
        // Crowded (as many staged as memory allows), a line with some staged already takes
        // no more, so a webhook that appears meanwhile is still staged.
        let crowded = self.staged.len() >= MAX_STAGED && line.len() >= LINE_WHEN_CROWDED;
        if line.len() >= MAX_STAGED_PER_LINE || crowded {
            match self.left_behind.get_mut(&key) {
                Some(first) if *first <= position => {}
                Some(first) => *first = position,
                None => {
                    self.left_behind.insert(key.clone(), position);
                }
            }
            return Offered::LeftBehind(key);
        }
        line.push_back((position.due, position.id.clone(), webhook));
        self.staged.insert(position.id, position.due);
        Offered::Staged
    }
}

#[cfg(test)]
mod tests;
