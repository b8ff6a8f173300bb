//! Events, deliveries and the due queue in the sled store.

use super::*;
use crate::model::DeliveryMode;
use std::ops::Bound;

use crate::storage::{Conflict, DeliveryQuery, StateWrite};

impl Store {
    // ----- events and deliveries -----

    /// Stores a new event and queues its deliveries, all or nothing; an event whose id is
    /// already stored changes nothing. A delivery with an entity whose webhook already has a
    /// replaceable delivery waiting for that entity is not added: the waiting one takes this
    /// event and the new due time instead (debounce). Not durable until [`Store::commit`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn insert_event(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Inserted, StoreError> {
        let mut inserted = self.insert_events(&[(event, deliveries)])?;
        Ok(inserted.pop().expect("one result per event"))
    }

    /// [`Store::insert_event`] for several events: all are stored or none (see
    /// `EventTrees::insert_events`). Not durable until [`Store::commit`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn insert_events(
        &self,
        items: &[(&Event, &[Delivery])],
    ) -> Result<Vec<Inserted>, StoreError> {
        self.ingest.insert_events(items)
    }

    /// Stores events with their deliveries and makes them durable, as the events of one API
    /// call: together with those of every other call waiting meanwhile, in one round and
    /// one flush on the commit thread. A flush (and a sled transaction, which writes out
    /// and syncs sled's current log buffer when it begins) per call cost more than the
    /// call's writes; shared, many calls pay for one.
    ///
    /// # Errors
    /// On storage failure (then none of the events is stored).
    pub async fn insert_and_commit(
        &self,
        items: Vec<(Event, Vec<Delivery>)>,
    ) -> Result<Vec<Inserted>, StoreError> {
        self.committer.insert(items).await
    }

    /// Before a collecting delivery (debounced, or a batch) is evaluated: checks that it is
    /// still as the worker read it (the same version, due at `due`) and takes it out of the
    /// debounce and batch indexes, so no newer event can change it any more. `false` means it
    /// changed meanwhile.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn close_collecting(&self, read: &Delivery, due: Millis) -> Result<bool, StoreError> {
        let id = &read.id;
        let claimed = (
            &self.ingest.deliveries,
            &self.ingest.debounce,
            &self.ingest.batches,
        )
            .transaction(|(dtree, debounce, batches)| {
                let Some(raw) = dtree.get(id.as_str())? else {
                    return Ok(false);
                };
                let current: Delivery = decode("deliveries", &raw).map_err(abort)?;
                if current.version != read.version
                    || current.next_attempt_at != Some(due)
                    || !current.replaceable()
                {
                    return Ok(false);
                }
                if let Some(entity) = &current.entity {
                    let index = debounce_key(&current, entity);
                    if debounce.get(&index)?.as_deref() == Some(id.as_str().as_bytes()) {
                        debounce.remove(index)?;
                    }
                }
                let index = partition_key(&current);
                if batches.get(&index)?.as_deref() == Some(id.as_str().as_bytes()) {
                    batches.remove(index)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })?;
        Ok(claimed)
    }

    /// One event of `tenant` (or of none).
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn event(&self, tenant: Option<&str>, id: &EventId) -> Result<Option<Event>, StoreError> {
        let key = event_key(tenant, id);
        if let Some(event) = self.ingest.recent.get(&key) {
            return Ok(Some(Event::clone(&event)));
        }
        if let Some(event) = self.stored_event(&key)? {
            return Ok(Some(event));
        }
        // Events stored before ids were scoped per tenant are keyed by the id alone.
        match tenant {
            Some(tenant) => Ok(self
                .stored_event(id.as_str())?
                .filter(|e| e.tenant.as_deref() == Some(tenant))),
            None => Ok(None),
        }
    }

    pub(super) fn stored_event(&self, key: &str) -> Result<Option<Event>, StoreError> {
        self.ingest
            .events
            .get(key)?
            .map(|v| {
                codec::decode_event(&v).map_err(|source| StoreError::Corrupt {
                    tree: "events",
                    source,
                })
            })
            .transpose()
    }

    /// One delivery.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError> {
        if let Some(delivery) = self.ingest.recent_deliveries.get(id) {
            return Ok(Some(delivery));
        }
        self.ingest
            .deliveries
            .get(id.as_str())?
            .map(|v| decode("deliveries", &v))
            .transpose()
    }

    /// The deliveries `query` selects (see [`crate::storage::Deliveries::scan_deliveries`]):
    /// the tree is walked in id order from the cursor, each record decoded and filtered (sled
    /// has no secondary index to ask). A record that does not decode is logged, named in
    /// [`Scanned::unreadable`] and passed over: one bad record never hides the rest.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_deliveries(&self, query: &DeliveryQuery) -> Result<Scanned, StoreError> {
        let after = query.after.as_ref().map(|id| id.as_str().as_bytes());
        let tree = &self.ingest.deliveries;
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match (query.descending, after) {
                (false, None) => Box::new(tree.iter()),
                (false, Some(after)) => {
                    Box::new(tree.range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)))
                }
                (true, None) => Box::new(tree.iter().rev()),
                (true, Some(after)) => Box::new(
                    tree.range::<&[u8], _>((Bound::Unbounded, Bound::Excluded(after)))
                        .rev(),
                ),
            };
        let mut out = Scanned::default();
        if query.limit == 0 {
            return Ok(out);
        }
        for item in iter {
            let (key, value) = item?;
            let delivery: Delivery = match decode("deliveries", &value) {
                Ok(delivery) => delivery,
                Err(e) => {
                    let key = String::from_utf8_lossy(&key).into_owned();
                    tracing::error!(delivery = %key, "unreadable delivery record passed over: {e}");
                    if out.unreadable.len() < MAX_UNREADABLE_NAMED {
                        out.unreadable.push(key);
                    }
                    continue;
                }
            };
            if query.keeps(&delivery) {
                out.deliveries.push(delivery);
                if out.deliveries.len() >= query.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Writes a delivery's new state and moves its queue entry from where the stored record
    /// has it to its `next_attempt_at` (removed when the delivery is final), over the version
    /// it was read at (see [`Store::write_outcome`]).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the stored version is another, or on storage failure.
    pub fn update_delivery(&self, delivery: &mut Delivery) -> Result<(), StoreError> {
        self.write_versioned(delivery, OldEntry::AsStored, None, Absent::IsNew)
    }

    /// Writes a delivery's new state with its plugin's state changes, all or nothing, over
    /// the version the delivery was read at, and counts its `version` up. The queue entry
    /// moves from `old_due` to its `next_attempt_at` (removed when final).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] ([`Conflict::Changed`]) when the stored record is at another
    /// version or gone (nothing written), or on storage failure.
    pub fn write_outcome(
        &self,
        delivery: &mut Delivery,
        old_due: Option<Millis>,
        state: Option<StateWrite<'_>>,
    ) -> Result<(), StoreError> {
        self.write_versioned(delivery, OldEntry::Due(old_due), state, Absent::Gone)
    }

    /// Writes over the version read and counts it up (see [`Store::write_outcome`]).
    fn write_versioned(
        &self,
        delivery: &mut Delivery,
        old: OldEntry,
        state: Option<StateWrite<'_>>,
        absent: Absent,
    ) -> Result<(), StoreError> {
        let read = delivery.version;
        delivery.version = read.wrapping_add(1);
        let expected = Expected { read, absent };
        let written = self.write_over(delivery, expected, old, state);
        if written.is_err() {
            delivery.version = read;
        }
        written
    }

    /// [`Store::write_outcome`] with the version counted up already.
    fn write_over(
        &self,
        delivery: &Delivery,
        expected: Expected,
        old: OldEntry,
        state: Option<StateWrite<'_>>,
    ) -> Result<(), StoreError> {
        let write = Write {
            delivery,
            bytes: encode(delivery),
            expected,
            old,
            new_key: match (delivery.status.is_final(), delivery.next_attempt_at) {
                (false, Some(due)) => Some(queue_key(due, &delivery.id)),
                _ => None,
            },
        };
        let leaves_line = delivery.status.is_final() && fifo_key(delivery).is_some();
        let plain = !leaves_line
            && delivery.mode() == DeliveryMode::Plain
            && state.is_none_or(|s| s.changes.is_empty());
        if plain {
            self.write_plain(&write)?;
        } else {
            self.write_together(&write, leaves_line, state)?;
            self.ingest.recent_deliveries.forget([&delivery.id]);
        }
        if let Some(due) = write.new_key.as_ref().and(delivery.next_attempt_at) {
            self.ingest.written.note(due);
        }
        self.unpin_finished(delivery)
    }

    /// A plain delivery's write: nothing but its claim holder writes one (no debounce or
    /// batch can replace its event), so the version read here stays until the writes below,
    /// and there is no other record to keep in step: three plain writes, ordered so a crash
    /// between any two leaves it scheduled. The new queue entry first, then the record, then
    /// the old entry's removal: an entry whose due time the record does not name is dropped
    /// when the scheduler meets it.
    fn write_plain(&self, write: &Write<'_>) -> Result<(), StoreError> {
        let delivery = write.delivery;
        let stored = self.ingest.deliveries.get(delivery.id.as_str())?;
        if !write.expected.holds(stored.as_deref()) {
            return Err(Conflict::Changed.into());
        }
        let old_key = write.old_key(stored.as_deref());
        let noted = self.note_finished(delivery)?;
        if let Some(key) = &write.new_key {
            self.ingest
                .queue
                .insert(key.as_slice(), queue_value(delivery))?;
        }
        self.ingest
            .deliveries
            .insert(delivery.id.as_str().as_bytes(), write.bytes.as_slice())?;
        // At once: the copy kept since ingest must not outlive the record written over it,
        // even when the next write fails.
        self.ingest.recent_deliveries.forget([&delivery.id]);
        self.note_finished_after(delivery, noted)?;
        if let Some(key) = old_key.filter(|k| Some(k) != write.new_key.as_ref()) {
            self.ingest.queue.remove(key)?;
        }
        Ok(())
    }

    /// The write of a delivery that shares indexes with others (in order, debounced,
    /// batched) or comes with plugin state: one transaction.
    fn write_together(
        &self,
        write: &Write<'_>,
        leaves_line: bool,
        state: Option<StateWrite<'_>>,
    ) -> Result<(), StoreError> {
        let delivery = write.delivery;
        let noted = self.note_finished(delivery)?;
        (
            &self.ingest.deliveries,
            &self.ingest.queue,
            &self.ingest.fifo,
            &self.plugin_state,
            &self.webhooks,
        )
            .transaction(|(dtree, queue, fifo, plugin_state, webhooks)| {
                let stored = dtree.get(delivery.id.as_str())?;
                if !write.expected.holds(stored.as_deref()) {
                    return Err(ConflictableTransactionError::Abort(
                        Conflict::Changed.into(),
                    ));
                }
                let old_key = write.old_key(stored.as_deref());
                dtree.insert(delivery.id.as_str().as_bytes(), write.bytes.as_slice())?;
                if leaves_line {
                    // Where the storage placed it, whatever the copy written says.
                    let mut placed = delivery.clone();
                    placed.line_position = stored.as_deref().and_then(stored_line_position);
                    for line in [fifo_key(&placed), fifo_key(delivery)]
                        .into_iter()
                        .flatten()
                    {
                        fifo.remove(line)?;
                    }
                }
                if let Some(key) = &old_key {
                    queue.remove(key.as_slice())?;
                }
                if let Some(key) = &write.new_key {
                    queue.insert(key.as_slice(), queue_value(delivery))?;
                }
                if let Some(state) = self.state_to_keep(webhooks, state.as_ref())? {
                    for (key, value) in state.changes {
                        let key = Store::state_key(state.webhook, key);
                        match value {
                            Some(value) => plugin_state.insert(key, value.as_slice())?,
                            None => plugin_state.remove(key)?,
                        };
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        self.note_finished_after(delivery, noted)
    }

    /// Plugin state changes to keep: only while the webhook is still the tenant's it was when
    /// the evaluation began, so state made from one tenant's events never reaches another's.
    fn state_to_keep<'s>(
        &self,
        webhooks: &TransactionalTree,
        state: Option<&'s StateWrite<'s>>,
    ) -> Result<Option<&'s StateWrite<'s>>, ConflictableTransactionError<StoreError>> {
        let Some(state) = state else {
            return Ok(None);
        };
        let key = state.webhook.as_str().as_bytes();
        let tenant = webhooks
            .get(key)?
            .map(|v| self.decode_sealed::<Webhook>("webhooks", key, &v))
            .transpose()
            .map_err(ConflictableTransactionError::Abort)?
            .map(|w| w.tenant);
        Ok((tenant.as_ref().map(Option::as_deref) == Some(state.tenant)).then_some(state))
    }

    /// After a finished delivery's record is written: its events may be pruned now (a crash
    /// before this leaves pins the pruner finds stale).
    fn unpin_finished(&self, delivery: &Delivery) -> Result<(), StoreError> {
        if delivery.status.is_final() && retention::holds_pins(delivery) {
            for pin in retention::pins_of(delivery) {
                self.ingest.pins.remove(pin)?;
            }
        }
        Ok(())
    }

    /// For an in-order delivery: the first unfinished delivery of its webhook and entity
    /// (itself when nothing earlier is unfinished).
    ///
    /// # Errors
    /// On storage failure.
    pub fn first_in_line(&self, delivery: &Delivery) -> Result<Option<DeliveryId>, StoreError> {
        let DeliveryMode::InOrder { entity } = delivery.mode() else {
            return Ok(None);
        };
        let mut prefix = debounce_key(delivery, entity);
        prefix.push(0);
        let Some(first) = self.ingest.fifo.scan_prefix(&prefix).next() else {
            return Ok(None);
        };
        let (key, value) = first?;
        let id = match key.get(prefix.len()) {
            Some(&ingest::FIFO_POSITIONED) => &value[..],
            _ => &key[prefix.len()..],
        };
        Ok(std::str::from_utf8(id)
            .ok()
            .and_then(|id| DeliveryId::parse(id).ok()))
    }
}

/// What a record must be for a write over it to go ahead.
#[derive(Clone, Copy)]
struct Expected {
    /// The version read.
    read: u64,
    /// What no record at all means.
    absent: Absent,
}

/// One delivery's write, as [`Store::write_over`] prepared it.
struct Write<'a> {
    delivery: &'a Delivery,
    /// Its record.
    bytes: Vec<u8>,
    expected: Expected,
    old: OldEntry,
    /// Its queue entry after the write (`None`: final, or not due).
    new_key: Option<Vec<u8>>,
}

impl Write<'_> {
    /// Where its queue entry is before the write, given the record stored.
    fn old_key(&self, stored: Option<&[u8]>) -> Option<Vec<u8>> {
        let due = match self.old {
            OldEntry::Due(due) => due,
            OldEntry::AsStored => stored.and_then(stored_due),
        };
        due.map(|due| queue_key(due, &self.delivery.id))
    }
}

/// Where a delivery's queue entry is before a write.
#[derive(Clone, Copy)]
enum OldEntry {
    /// At this due time (the claim's), or nowhere.
    Due(Option<Millis>),
    /// Where the stored record names (its `next_attempt_at`, unless it is final).
    AsStored,
}

/// What a missing delivery record means to a write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// A delivery not stored yet (a replay is written first through
    /// [`Store::update_delivery`]): version 0.
    IsNew,
    /// Removed (an ingest round undone): a claimed outcome is refused, never made anew.
    Gone,
}

impl Expected {
    fn holds(&self, record: Option<&[u8]>) -> bool {
        match record {
            Some(record) => stored_version(record) == Some(self.read),
            None => self.absent == Absent::IsNew && self.read == 0,
        }
    }
}

/// The version a delivery record was written at: [`Delivery::version`] is its first field
/// when not zero, so it is read here without decoding the rest. `None` for a record that is
/// not a delivery's JSON.
fn stored_version(record: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = b"{\"version\":";
    let Some(rest) = record.strip_prefix(FIELD) else {
        return record.starts_with(b"{").then_some(0);
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// A stored in-order delivery record's position in its entity's line.
fn stored_line_position(record: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Placed {
        line_position: Option<u64>,
    }
    serde_json::from_slice::<Placed>(record).ok()?.line_position
}

/// Where a stored delivery record is queued: its `next_attempt_at` while it is unfinished.
fn stored_due(record: &[u8]) -> Option<Millis> {
    #[derive(serde::Deserialize)]
    struct Queued {
        status: crate::model::DeliveryStatus,
        next_attempt_at: Option<Millis>,
    }
    let queued: Queued = serde_json::from_slice(record).ok()?;
    queued.next_attempt_at.filter(|_| !queued.status.is_final())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_version_is_read_from_its_first_field() {
        let event = crate::store::tests::event("v");
        let mut delivery = crate::store::tests::delivery(&event, 1);
        assert_eq!(stored_version(&encode(&delivery)), Some(0));
        delivery.version = 42;
        assert_eq!(stored_version(&encode(&delivery)), Some(42));
        delivery.version = u64::MAX;
        assert_eq!(stored_version(&encode(&delivery)), Some(u64::MAX));
        assert_eq!(stored_version(b"\x01lz4"), None);
    }
}
