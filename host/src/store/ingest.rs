//! How events and their deliveries are written: the index keys that route a debounced,
//! in-order or batched delivery, and the ingest round that stores a call's events
//! together (a transaction when an index must change with them, ordered writes with an
//! intent record otherwise).

use super::*;
use crate::model::DeliveryMode;

/// The events tree's key of an event: its id, after its tenant and a zero byte when it has
/// one. Event ids are unique per tenant: two tenants' events of the same id are two events.
pub fn event_key(tenant: Option<&str>, id: &EventId) -> String {
    match tenant {
        None => id.as_str().to_string(),
        Some(tenant) => format!("{tenant}\0{id}"),
    }
}

/// The key of a webhook's index entries for one delivery: the webhook id, then, when the
/// webhook takes several tenants' events, a 1 byte and the events' tenant. One tenant's
/// events never join another's batch or replace another's waiting event.
pub(super) fn partition_key(delivery: &Delivery) -> Vec<u8> {
    let webhook = delivery.webhook_id.as_str();
    let mut key = Vec::with_capacity(webhook.len() + 1);
    key.extend_from_slice(webhook.as_bytes());
    if let Some(tenant) = &delivery.event_tenant {
        key.push(1);
        key.extend_from_slice(tenant.as_bytes());
    }
    key
}

/// The key of the debounce index: the partition ([`partition_key`]), a zero byte, the
/// entity.
pub(super) fn debounce_key(delivery: &Delivery, entity: &str) -> Vec<u8> {
    let mut key = partition_key(delivery);
    key.push(0);
    key.extend_from_slice(entity.as_bytes());
    key
}

/// The key of an in-order delivery in the FIFO index: its entity's prefix (partition, zero,
/// entity, zero), then [`FIFO_POSITIONED`] and its line position (big-endian), so one
/// entity's unfinished deliveries sort in the order they were stored. A delivery stored
/// before positions were given has its id there instead (ASCII, so it sorts first). The
/// value is the delivery id.
pub(super) fn fifo_key(delivery: &Delivery) -> Option<Vec<u8>> {
    let DeliveryMode::InOrder { entity } = delivery.mode() else {
        return None;
    };
    let mut key = debounce_key(delivery, entity);
    key.push(0);
    match delivery.line_position {
        Some(position) => {
            key.push(FIFO_POSITIONED);
            key.extend_from_slice(&position.to_be_bytes());
        }
        None => key.extend_from_slice(delivery.id.as_str().as_bytes()),
    }
    Some(key)
}

/// The byte before a line position in a FIFO key: above every byte of an id.
pub(super) const FIFO_POSITIONED: u8 = 0xFF;

/// A queue entry's value: the delivery's webhook, so the scheduler can apply per-endpoint
/// limits without reading the delivery.
pub(super) fn queue_value(delivery: &Delivery) -> &[u8] {
    delivery.webhook_id.as_str().as_bytes()
}

/// A queue entry's webhook.
pub(super) fn parse_queue_value(value: &[u8]) -> Option<WebhookId> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|w| WebhookId::parse(w).ok())
}

pub(super) fn abort(err: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(err)
}

/// An event's record, and its deliveries' queue keys and records, encoded before the
/// transaction (which may run more than once).
pub(super) type EncodedEvent = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// The trees a transactional event insertion writes (some delivery is debounced, in order or
/// batched; plain ones go through [`round`]).
pub(super) struct IngestTrees<'a> {
    events: &'a TransactionalTree,
    received: &'a TransactionalTree,
    pins: &'a TransactionalTree,
    dtree: &'a TransactionalTree,
    queue: &'a TransactionalTree,
    debounce: &'a TransactionalTree,
    fifo: &'a TransactionalTree,
    batches: &'a TransactionalTree,
    /// Added to the sequence for a line position (see [`LINE_BASE`]).
    line_base: u64,
}

/// The `meta` key of the base added to sled's id sequence for an in-order delivery's line
/// position (u64 big-endian; absent: 0). A store copied by a backup starts a new sequence, so
/// the copy's base lies past every position the original gave: a line never goes backwards.
pub(super) const LINE_BASE: &[u8] = b"line_positions_from";

/// A `meta` value of [`LINE_BASE`].
pub(super) fn parse_line_base(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Events' records, and their deliveries' queue keys and records.
pub(super) fn encode_items(items: &[(&Event, &[Delivery])]) -> Vec<EncodedEvent> {
    items
        .iter()
        .map(|(event, deliveries)| {
            let deliveries = deliveries
                .iter()
                .map(|d| {
                    let due = d.next_attempt_at.unwrap_or(d.created_at);
                    (queue_key(due, &d.id), encode(d))
                })
                .collect();
            (codec::encode_event(event), deliveries)
        })
        .collect()
}

/// A transaction's failure while an event is inserted.
type Aborted = ConflictableTransactionError<StoreError>;

/// One event of [`Store::insert_events`], inside its transaction.
pub(super) fn insert_one(
    trees: &IngestTrees<'_>,
    event: &Event,
    event_bytes: &[u8],
    deliveries: &[Delivery],
    encoded: &[(Vec<u8>, Vec<u8>)],
) -> Result<Inserted, Aborted> {
    let event_key = event_key(event.tenant.as_deref(), &event.id);
    if trees.events.get(event_key.as_str())?.is_some() {
        return Ok(Inserted::Duplicate);
    }
    trees.events.insert(event_key.as_bytes(), event_bytes)?;
    let mut carried = Vec::with_capacity(deliveries.len());
    // The deliveries stored with the event: its `received` entry lists them (no pins).
    let mut stored_with = Vec::with_capacity(deliveries.len());
    for (delivery, (key, bytes)) in deliveries.iter().zip(encoded) {
        let placed = match delivery.mode() {
            DeliveryMode::Plain => None,
            DeliveryMode::Batched { .. } => {
                if let Some(open) = join_batch(trees, event, &event_key, delivery)? {
                    carried.push(open);
                    continue;
                }
                None
            }
            DeliveryMode::InOrder { .. } => Some(place_in_line(trees, delivery)?),
            DeliveryMode::Debounced { entity } => {
                if let Some(waiting) = replace_waiting(trees, event, delivery, entity)? {
                    carried.push(waiting);
                    continue;
                }
                None
            }
        };
        let record = placed.as_deref().unwrap_or(bytes.as_slice());
        trees
            .dtree
            .insert(delivery.id.as_str().as_bytes(), record)?;
        trees.queue.insert(key.as_slice(), queue_value(delivery))?;
        carried.push(delivery.id.clone());
        stored_with.push(&delivery.id);
    }
    trees.received.insert(
        retention::received_key(event.received_at, &event_key),
        retention::received_value(stored_with),
    )?;
    Ok(Inserted::New(carried))
}

/// Adds the event to its webhook's collecting batch when that has room (due at once when
/// that fills it), and returns the batch; otherwise `delivery` becomes the collecting batch
/// and `None` is returned, for it to be stored.
fn join_batch(
    trees: &IngestTrees<'_>,
    event: &Event,
    event_key: &str,
    delivery: &Delivery,
) -> Result<Option<DeliveryId>, Aborted> {
    let IngestTrees {
        pins,
        dtree,
        queue,
        batches,
        ..
    } = trees;
    let index = partition_key(delivery);
    let index = index.as_slice();
    let open = match batches.get(index)? {
        Some(id) => dtree.get(&id)?,
        None => None,
    };
    if let Some(raw) = open {
        let mut open: Delivery = decode("deliveries", &raw).map_err(abort)?;
        // A batch never spans the webhook's move to another tenant.
        if open.replaceable()
            && open.tenant == delivery.tenant
            && open.batch_events.len() < open.batch_limit as usize
        {
            open.batch_events.push(event.id.clone());
            open.version = open.version.wrapping_add(1);
            let pin = retention::pin_key(event_key, &open.id);
            pins.insert(pin, &retention::pin_value())?;
            open.updated_at = delivery.created_at;
            if open.batch_events.len() >= open.batch_limit as usize {
                // Full: due now, and no longer collecting.
                if let Some(old) = open.next_attempt_at {
                    queue.remove(queue_key(old, &open.id))?;
                }
                open.next_attempt_at = Some(delivery.created_at);
                queue.insert(queue_key(delivery.created_at, &open.id), queue_value(&open))?;
                batches.remove(index)?;
            }
            dtree.insert(open.id.as_str().as_bytes(), encode(&open))?;
            return Ok(Some(open.id));
        }
    }
    batches.insert(index, delivery.id.as_str().as_bytes())?;
    Ok(None)
}

/// Gives an in-order delivery its place at the end of its entity's line, from the storage's
/// own sequence (never a host's clock), and returns its record as placed.
fn place_in_line(trees: &IngestTrees<'_>, delivery: &Delivery) -> Result<Vec<u8>, Aborted> {
    let mut placed = delivery.clone();
    placed.line_position = Some(trees.fifo.generate_id()?.saturating_add(trees.line_base));
    if let Some(line) = fifo_key(&placed) {
        trees.fifo.insert(line, placed.id.as_str().as_bytes())?;
    }
    Ok(encode(&placed))
}

/// Gives the event to the delivery of its entity waiting to be claimed (moved to the new
/// delivery's due time), and returns it; otherwise `delivery` becomes the one waiting and
/// `None` is returned, for it to be stored.
fn replace_waiting(
    trees: &IngestTrees<'_>,
    event: &Event,
    delivery: &Delivery,
    entity: &str,
) -> Result<Option<DeliveryId>, Aborted> {
    let IngestTrees {
        pins,
        dtree,
        queue,
        debounce,
        ..
    } = trees;
    let index = debounce_key(delivery, entity);
    let waiting = match debounce.get(&index)? {
        Some(id) => dtree.get(&id)?,
        None => None,
    };
    if let Some(raw) = waiting {
        let mut waiting: Delivery = decode("deliveries", &raw).map_err(abort)?;
        if waiting.replaceable() && waiting.tenant == delivery.tenant {
            if let Some(old) = waiting.next_attempt_at {
                queue.remove(queue_key(old, &waiting.id))?;
            }
            for pin in retention::pins_of(&waiting) {
                pins.remove(pin)?;
            }
            let due = delivery.next_attempt_at.unwrap_or(delivery.created_at);
            waiting.replace_event(event.id.clone(), due, delivery.created_at);
            waiting.version = waiting.version.wrapping_add(1);
            for pin in retention::pins_of(&waiting) {
                pins.insert(pin, &retention::pin_value())?;
            }
            queue.insert(queue_key(due, &waiting.id), queue_value(&waiting))?;
            dtree.insert(waiting.id.as_str().as_bytes(), encode(&waiting))?;
            return Ok(Some(waiting.id));
        }
    }
    debounce.insert(index, delivery.id.as_str().as_bytes())?;
    Ok(None)
}

/// The trees an event's insertion writes, apart from the [`Store`] so the commit thread can
/// insert without holding the store (and its handle to that thread).
#[derive(Clone)]
pub(super) struct EventTrees {
    pub(super) events: sled::Tree,
    pub(super) deliveries: sled::Tree,
    pub(super) queue: sled::Tree,
    pub(super) debounce: sled::Tree,
    pub(super) fifo: sled::Tree,
    pub(super) batches: sled::Tree,
    /// Plain ingest rounds not yet finished (see [`round`]).
    pub(super) intents: sled::Tree,
    /// Finished deliveries by webhook, outcome and finish time (see [`retention`]).
    pub(super) finished: sled::Tree,
    /// Events by receipt time (see [`retention`]).
    pub(super) received: sled::Tree,
    /// The events pending deliveries point at (see [`retention`]).
    pub(super) pins: sled::Tree,
    /// Added to sled's id sequence for a line position ([`LINE_BASE`]).
    pub(super) line_base: u64,
    /// Held while events are inserted: rounds never overlap, and an id's check for a
    /// duplicate and its writes are one step.
    pub(super) ingest_lock: Arc<std::sync::Mutex<()>>,
    pub(super) recent: Arc<recent::RecentEvents>,
    pub(super) recent_deliveries: Arc<recent::RecentDeliveries>,
    pub(super) written: Arc<WrittenDue>,
}

/// The earliest due time among the queue entries written since the scheduler last asked
/// ([`Store::take_written_due`]): its sweep walks the queue once, in key order, and an entry
/// written behind where it has got to (due no later than the entries it already passed) is
/// found by going back to that due time instead of walking the whole queue again.
pub(super) struct WrittenDue(std::sync::atomic::AtomicI64);

impl Default for WrittenDue {
    fn default() -> Self {
        WrittenDue(std::sync::atomic::AtomicI64::new(i64::MAX))
    }
}

impl WrittenDue {
    /// Notes an entry due at `due`, once it is written (so whoever takes the mark finds it).
    pub(super) fn note(&self, due: Millis) {
        self.0
            .fetch_min(due.as_i64(), std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn take(&self) -> Option<Millis> {
        let due = self.0.swap(i64::MAX, std::sync::atomic::Ordering::AcqRel);
        (due != i64::MAX).then_some(Millis(due))
    }
}

impl EventTrees {
    /// Stores events and queues their deliveries: all are stored or none (after a crash
    /// too); a later event sees the earlier ones' writes (a repeated id is a duplicate, a
    /// second event of an entity debounces onto the first's delivery). When no delivery is
    /// debounced, in order or batched, as ordered writes under an intent ([`round`]);
    /// otherwise in one transaction.
    ///
    /// # Errors
    /// On storage failure.
    pub(super) fn insert_events(
        &self,
        items: &[(&Event, &[Delivery])],
    ) -> Result<Vec<Inserted>, StoreError> {
        let encoded = encode_items(items);
        let _ingest = self.ingest_lock.lock().unwrap_or_else(|e| e.into_inner());
        let is_plain = |d: &&Delivery| d.mode() == DeliveryMode::Plain;
        let plain = items
            .iter()
            .flat_map(|(_, deliveries)| deliveries.iter())
            .all(|d| is_plain(&d));
        // Kept before they can be read or written through sled (see `recent`).
        let kept = || {
            items
                .iter()
                .flat_map(|(_, deliveries)| deliveries.iter())
                .filter(is_plain)
        };
        self.recent_deliveries.put(kept());
        let result = if plain {
            round::insert_plain(self, items, &encoded).map_err(TransactionError::Abort)
        } else {
            (
                &self.events,
                &self.received,
                &self.pins,
                &self.deliveries,
                &self.queue,
                &self.debounce,
                &self.fifo,
                &self.batches,
            )
                .transaction(
                    |(events, received, pins, dtree, queue, debounce, fifo, batches)| {
                        let trees = IngestTrees {
                            events,
                            received,
                            pins,
                            dtree,
                            queue,
                            debounce,
                            fifo,
                            batches,
                            line_base: self.line_base,
                        };
                        items
                            .iter()
                            .zip(&encoded)
                            .map(|((event, deliveries), (event_bytes, encoded))| {
                                insert_one(&trees, event, event_bytes, deliveries, encoded)
                            })
                            .collect::<Result<Vec<_>, _>>()
                    },
                )
        };
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                self.recent_deliveries.forget(kept().map(|d| &d.id));
                return Err(e.into());
            }
        };
        for ((event, deliveries), inserted) in items.iter().zip(&result) {
            if matches!(inserted, Inserted::New(_)) {
                self.recent.put(event);
            } else {
                self.recent_deliveries
                    .forget(deliveries.iter().filter(is_plain).map(|d| &d.id));
            }
        }
        // A debounced or batched delivery moves to the new delivery's due time, or to its
        // creation time when full: both are covered by the earliest of either.
        let earliest = items
            .iter()
            .flat_map(|(_, deliveries)| deliveries.iter())
            .map(|d| d.next_attempt_at.unwrap_or(d.created_at).min(d.created_at))
            .min();
        if let Some(due) = earliest {
            self.written.note(due);
        }
        Ok(result)
    }
}
