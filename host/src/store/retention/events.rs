//! Pruning events: the `received` walk, the pins that keep an event a pending delivery needs,
//! and the pin a replay takes on a stored event.

use std::ops::Bound;

use super::super::codec::decode_event;
use super::*;

/// How long an entry whose record is missing is left alone: its record may be on its way (an
/// ingest round writes the entry first; a replay pins its event before writing the delivery).
const ON_ITS_WAY: i64 = 3_600_000;
/// The longest a pinned event waits to be looked at again: its entry moves past the cutoff by
/// as long as it has waited past it already (at least a second), so a delivery pending for
/// months costs one look an hour, not one a pass, and one pending a moment is seen again soon.
const LOOK_AGAIN_AFTER: i64 = 3_600_000;

/// The few fields of a delivery a pin is checked against.
#[derive(serde::Deserialize)]
struct Pinned {
    status: DeliveryStatus,
    event_id: EventId,
    #[serde(default)]
    batch_events: Vec<EventId>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    event_tenant: Option<String>,
}

impl Pinned {
    /// Whether this pending delivery points at the event under `key`.
    fn needs(&self, key: &str) -> bool {
        let tenant = self.event_tenant.as_deref().or(self.tenant.as_deref());
        !self.status.is_final()
            && std::iter::once(&self.event_id)
                .chain(&self.batch_events)
                .any(|id| event_key(tenant, id) == key)
    }
}

fn system_millis() -> i64 {
    i64::from_be_bytes(pin_value())
}

impl Store {
    /// See [`crate::storage::Pruning::prune_events`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn prune_events(
        &self,
        before: Millis,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StoreError> {
        let end = millis_be(before);
        let batch = batch.max(1);
        let mut removed = 0u64;
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut walked = 0;
            for entry in self
                .ingest
                .received
                .range::<&[u8], _>((Bound::Excluded(from.as_slice()), Bound::Excluded(&end[..])))
                .take(batch)
            {
                let (key, value) = entry?;
                walked += 1;
                removed += if is_round(&key) {
                    self.prune_round_at(&key, &value, before)?
                } else {
                    u64::from(self.prune_event_at(&key, &value, before)?)
                };
                from = key.to_vec();
            }
            if walked < batch || stop(removed) {
                return Ok(removed);
            }
        }
    }

    /// Handles one event's `received` entry older than `before` (see [`Store::prune_one`]):
    /// the entry goes unless it must be walked again as it is. `true` when the event was
    /// removed.
    fn prune_event_at(&self, key: &[u8], value: &[u8], before: Millis) -> Result<bool, StoreError> {
        let Some((at, event_key)) = parse_received(key) else {
            tracing::warn!(key = ?key, "dropping a malformed retention entry");
            self.ingest.received.remove(key)?;
            return Ok(false);
        };
        let fate = self.prune_one(at, event_key, value, before)?;
        if fate != Fate::Left {
            self.ingest.received.remove(key)?;
        }
        Ok(fate == Fate::Removed)
    }

    /// Handles a round's `received` entry older than `before`: each of its events as
    /// [`Store::prune_one`] decides, one to be walked again as it is getting an entry of its
    /// own first; then the round's entry goes. Returns how many events were removed.
    fn prune_round_at(&self, key: &[u8], value: &[u8], before: Millis) -> Result<u64, StoreError> {
        let at = parse_received_at(key);
        let Some(events) = round_events(value) else {
            tracing::error!(key = ?key, "unreadable retention entry of a round: its events are kept");
            return Ok(0);
        };
        let mut removed = 0;
        for (event_key, listed) in events {
            match self.prune_one(at, event_key, listed, before)? {
                Fate::Removed => removed += 1,
                Fate::Left => {
                    self.ingest
                        .received
                        .insert(received_key(at, event_key), listed)?;
                }
                Fate::Gone | Fate::Kept => {}
            }
        }
        self.ingest.received.remove(key)?;
        Ok(removed)
    }

    /// Decides on one event received at `at` (before `before`), `listed` naming the
    /// deliveries stored with it: removes it unless a pending delivery needs it (one listed,
    /// or one holding a pin on it), in which case it gets an entry further on.
    fn prune_one(
        &self,
        at: Millis,
        event_key: &str,
        listed: &[u8],
        before: Millis,
    ) -> Result<Fate, StoreError> {
        // Against a replay pinning this event between the check and the removal.
        let _pinning = self.pinning.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = self.ingest.events.get(event_key)? else {
            if at.as_i64() < before.as_i64().saturating_sub(ON_ITS_WAY) {
                return Ok(Fate::Gone);
            }
            return Ok(Fate::Left);
        };
        let event = match decode_event(&record) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(event = event_key, "unreadable event record kept: {e}");
                return Ok(Fate::Left);
            }
        };
        if event.received_at > at {
            // Stored again after an earlier one of its id was pruned: it has its own entry.
            return Ok(Fate::Gone);
        }
        // Stored before ids were scoped per tenant, a tenant's event is keyed by its id
        // alone; deliveries pin it by its tenant's key.
        let scoped = event_key_of(&event);
        let needed = self.needed_by_listed(listed, event_key, &scoped)?
            || self.pinned(event_key)?
            || (scoped != event_key && self.pinned(&scoped)?);
        if needed {
            // The new entry before the old one goes: a crash between leaves both, never none.
            let waited = before.as_i64().saturating_sub(at.as_i64());
            let again = before.as_i64() + waited.clamp(1_000, LOOK_AGAIN_AFTER);
            self.ingest
                .received
                .insert(received_key(Millis(again), event_key), listed)?;
            return Ok(Fate::Kept);
        }
        self.ingest.events.remove(event_key)?;
        self.ingest.recent.forget(event_key);
        Ok(Fate::Removed)
    }

    /// Whether a delivery a `received` entry lists (stored with its event) is pending and
    /// still points at the event, under its stored key or its tenant's. One that is gone was
    /// pruned: the entry is written after the records it names.
    fn needed_by_listed(&self, value: &[u8], key: &str, scoped: &str) -> Result<bool, StoreError> {
        let Some(ids) = stored_with(value) else {
            tracing::error!(entry = key, "unreadable retention entry: its event is kept");
            return Ok(true);
        };
        for id in ids {
            let Some(record) = self.ingest.deliveries.get(id.as_str())? else {
                continue;
            };
            match serde_json::from_slice::<Pinned>(&record) {
                Ok(delivery) if delivery.needs(key) || delivery.needs(scoped) => return Ok(true),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(delivery = %id, "unreadable delivery record keeps its events: {e}");
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether a pending delivery holds a pin on the event under `key`; stale pins (of
    /// deliveries that finished or are gone) are removed on the way.
    fn pinned(&self, key: &str) -> Result<bool, StoreError> {
        for pin in self.ingest.pins.scan_prefix(pin_prefix(key)) {
            let (pin, written) = pin?;
            let id = std::str::from_utf8(&pin[2 + key.len()..])
                .ok()
                .and_then(|id| DeliveryId::parse(id).ok());
            let Some(id) = id else {
                self.ingest.pins.remove(&pin)?;
                continue;
            };
            let record = match self.ingest.deliveries.get(id.as_str())? {
                Some(record) => record,
                None => {
                    let written =
                        <[u8; 8]>::try_from(written.as_ref()).map_or(0, i64::from_be_bytes);
                    if system_millis().saturating_sub(written) < ON_ITS_WAY {
                        return Ok(true);
                    }
                    self.ingest.pins.remove(&pin)?;
                    continue;
                }
            };
            match serde_json::from_slice::<Pinned>(&record) {
                Ok(delivery) if delivery.needs(key) => return Ok(true),
                Ok(_) => {
                    self.ingest.pins.remove(&pin)?;
                }
                Err(e) => {
                    tracing::error!(delivery = %id, "unreadable delivery record keeps its events: {e}");
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// See [`crate::storage::Pruning::keep_event_for`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn keep_event_for(
        &self,
        tenant: Option<&str>,
        id: &EventId,
        delivery: &DeliveryId,
        received_by: Millis,
    ) -> Result<bool, StoreError> {
        let _pinning = self.pinning.lock().unwrap_or_else(|e| e.into_inner());
        let Some(event) = self.event(tenant, id)? else {
            return Ok(false);
        };
        if event.received_at > received_by {
            // Another event of the same id, stored after the one the delivery had was pruned.
            return Ok(false);
        }
        let key = event_key(tenant, id);
        self.ingest
            .pins
            .insert(pin_key(&key, delivery), &pin_value())?;
        Ok(true)
    }
}

/// The key an event is stored under now (its tenant's).
fn event_key_of(event: &Event) -> String {
    event_key(event.tenant.as_deref(), &event.id)
}

/// What became of one event a `received` entry named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Removed.
    Removed,
    /// Gone already, or stored again since (with an entry of its own).
    Gone,
    /// Needed: it has an entry further on.
    Kept,
    /// To be walked again at the same time (its record may be on its way, or is unreadable).
    Left,
}

/// A `received` entry's time.
fn parse_received_at(key: &[u8]) -> Millis {
    key.split_first_chunk::<8>()
        .map_or(Millis(0), |(at, _)| Millis(u64::from_be_bytes(*at) as i64))
}

/// A `received` entry's time and event key.
fn parse_received(key: &[u8]) -> Option<(Millis, &str)> {
    let (at, event) = key.split_first_chunk::<8>()?;
    Some((
        Millis(u64::from_be_bytes(*at) as i64),
        std::str::from_utf8(event).ok()?,
    ))
}
