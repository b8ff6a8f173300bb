//! Retention on sled: the indexes the pruning walks follow, and the walks.
//!
//! - `finished`: one entry per finished delivery, keyed `webhook id, 0, outcome class,
//!   finish time (u64 big-endian ms), delivery id`, written just before the record that
//!   finishes it ([`Store::update_delivery`]). One webhook's deliveries of one class sort by
//!   finish time, so a walk takes each run's expired head and stops at the first one kept.
//! - `received`: one entry per event, keyed `receipt time (u64 big-endian ms), event key`,
//!   written with the event at ingest.
//! - `renewed`: `event key -> time`, for an event kept as though received later (a replay of
//!   an old one); its `received` entry is then written again at that time.
//!
//! Entries may outlive what they point at or be older than it (a crash between two writes, a
//! round undone, an event renewed or stored again after it was pruned): a walk checks each
//! against the record before removing anything, and drops the entries that no longer hold.
//!
//! An event is kept while a pending delivery needs it. Deliveries are made for events as
//! they arrive, and a replay renews its event first, so only a pending delivery made before
//! the cutoff can need an event received before it: the walk reads those (the due queue
//! names every pending delivery, with when it was made) and keeps their events.
//!
//! Records stored before these indexes existed get their entries from a one-time walk
//! ([`Store::prepare_pruning`]); a backup leaves the indexes out and its copy rebuilds them.

use std::collections::HashSet;
use std::ops::Bound;

use super::codec::decode_event;
use super::*;
use crate::model::DeliveryStatus;
use crate::storage::{Finished, StopWalk};

/// The `meta` key marking that every record stored has its index entries.
pub(super) const INDEXED: &[u8] = b"retention_indexed";

/// A margin on the creation time of pending deliveries read for their events: a delivery
/// is made at its event's receipt, or later (a replay, which renews the event).
const MADE_EARLIER_BY: i64 = 60_000;

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
    let webhook = delivery.webhook_id.as_str().as_bytes();
    let id = delivery.id.as_str().as_bytes();
    let mut key = Vec::with_capacity(webhook.len() + 10 + id.len());
    key.extend_from_slice(webhook);
    key.push(0);
    key.push(class(finished));
    key.extend_from_slice(&millis_be(delivery.updated_at));
    key.extend_from_slice(id);
    Some(key)
}

/// An event's `received` entry at `at`.
pub(super) fn received_key(at: Millis, event_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + event_key.len());
    key.extend_from_slice(&millis_be(at));
    key.extend_from_slice(event_key.as_bytes());
    key
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

/// A `received` entry's time and event key.
fn parse_received(key: &[u8]) -> Option<(Millis, &str)> {
    let (at, event) = key.split_first_chunk::<8>()?;
    Some((
        Millis(u64::from_be_bytes(*at) as i64),
        std::str::from_utf8(event).ok()?,
    ))
}

/// The few fields of a delivery record a walk reads.
#[derive(serde::Deserialize)]
struct Glance {
    status: DeliveryStatus,
    updated_at: Millis,
}

impl Store {
    /// See [`crate::storage::Pruning::prepare_pruning`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn prepare_pruning(&self, stop: StopWalk<'_>) -> Result<bool, StoreError> {
        if self.meta.contains_key(INDEXED)? {
            return Ok(true);
        }
        let mut written = 0u64;
        for entry in self.ingest.deliveries.iter() {
            let (_, value) = entry?;
            // One that does not decode is never pruned; lists name it.
            if let Ok(delivery) = decode::<Delivery>("deliveries", &value) {
                if let Some(key) = finished_key(&delivery) {
                    self.ingest.finished.insert(key, &[] as &[u8])?;
                }
            }
            written += 1;
            if written % 1024 == 0 && stop(0) {
                return Ok(false);
            }
        }
        for entry in self.ingest.events.iter() {
            let (key, value) = entry?;
            let (Ok(event), Ok(key)) = (decode_event(&value), std::str::from_utf8(&key)) else {
                continue;
            };
            let at = self
                .renewed_at(key)?
                .map_or(event.received_at, |renewed| renewed.max(event.received_at));
            self.ingest
                .received
                .insert(received_key(at, key), &[] as &[u8])?;
            written += 1;
            if written % 1024 == 0 && stop(0) {
                return Ok(false);
            }
        }
        self.meta.insert(INDEXED, &[1u8])?;
        Ok(true)
    }

    fn renewed_at(&self, event_key: &str) -> Result<Option<Millis>, StoreError> {
        Ok(self.renewed.get(event_key)?.and_then(|v| {
            let at: [u8; 8] = v.as_ref().try_into().ok()?;
            Some(Millis(u64::from_be_bytes(at) as i64))
        }))
    }

    /// See [`crate::storage::Pruning::prune_deliveries`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn prune_deliveries(
        &self,
        cutoff: &(dyn Fn(&WebhookId, Finished) -> Option<Millis> + Sync),
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let mut removed = 0u64;
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
                if let Some((_, _, at, id)) = parse_finished(&key) {
                    let record = self.ingest.deliveries.get(id.as_str())?;
                    let glance = record.and_then(|r| serde_json::from_slice::<Glance>(&r).ok());
                    // Only the record this entry was written for: finished then, and not
                    // changed since.
                    if glance.is_some_and(|g| g.status.is_final() && g.updated_at == at) {
                        self.ingest.deliveries.remove(id.as_str())?;
                        removed += 1;
                    }
                }
                self.ingest.finished.remove(&key)?;
                in_batch += 1;
                if in_batch >= batch {
                    in_batch = 0;
                    if stop(removed) {
                        return Ok(removed);
                    }
                }
            }
        }
        Ok(removed)
    }

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
        if self
            .ingest
            .received
            .range(..end.as_slice())
            .next()
            .is_none()
        {
            return Ok(0);
        }
        let needed = self.events_pending_deliveries_need(before)?;
        let batch = batch.max(1);
        let mut removed = 0u64;
        let mut from: Vec<u8> = Vec::new();
        loop {
            // One batch under the lock a renewal takes, so none lands between a check and
            // the removal; renewals and everything else go on between batches.
            let (walked, last) = {
                let _renewals = self.renewals.lock().unwrap_or_else(|e| e.into_inner());
                let mut walked = 0;
                let mut last = None;
                for entry in self
                    .ingest
                    .received
                    .range::<&[u8], _>((
                        Bound::Excluded(from.as_slice()),
                        Bound::Excluded(&end[..]),
                    ))
                    .take(batch)
                {
                    let (key, _) = entry?;
                    walked += 1;
                    if self.prune_event_at(&key, &needed)? {
                        removed += 1;
                    }
                    last = Some(key);
                }
                (walked, last)
            };
            match last {
                Some(key) if walked == batch => from = key.to_vec(),
                _ => return Ok(removed),
            }
            if stop(removed) {
                return Ok(removed);
            }
        }
    }

    /// Handles one `received` entry older than the cutoff: removes its event unless a newer
    /// entry stands for it or a pending delivery needs it, and the entry unless it must be
    /// walked again. `true` when the event was removed.
    fn prune_event_at(&self, key: &[u8], needed: &HashSet<String>) -> Result<bool, StoreError> {
        let Some((at, event_key)) = parse_received(key) else {
            tracing::warn!(key = ?key, "dropping a malformed retention entry");
            self.ingest.received.remove(key)?;
            return Ok(false);
        };
        if needed.contains(event_key) {
            return Ok(false);
        }
        let renewed = self.renewed_at(event_key)?;
        let stored = self.ingest.events.get(event_key)?;
        // An event stored again after it was pruned, or renewed, has a newer entry of its own.
        let current = match (&stored, renewed) {
            (None, _) => false,
            (_, Some(renewed)) if renewed > at => false,
            (Some(record), _) => decode_event(record).map_or(true, |e| e.received_at <= at),
        };
        if current {
            self.ingest.events.remove(event_key)?;
            self.renewed.remove(event_key)?;
            self.ingest.recent.forget(event_key);
        }
        self.ingest.received.remove(key)?;
        Ok(current)
    }

    /// The keys of the events that pending deliveries made before `before` (give or take
    /// [`MADE_EARLIER_BY`]) point at: the only pending deliveries that can need an event
    /// received before it. Their queue entries say when they were made; the records of the
    /// others are not read.
    fn events_pending_deliveries_need(
        &self,
        before: Millis,
    ) -> Result<HashSet<String>, StoreError> {
        let bound = before.as_i64().saturating_add(MADE_EARLIER_BY);
        let mut needed = HashSet::new();
        for entry in self.ingest.queue.iter() {
            let (key, value) = entry?;
            let Some((_, id)) = parse_queue_key(&key) else {
                continue;
            };
            if parse_queue_value(&value)
                .1
                .is_some_and(|made| made.as_i64() >= bound)
            {
                continue;
            }
            let Some(delivery) = self.delivery(&id).ok().flatten() else {
                continue;
            };
            if delivery.status.is_final() {
                continue;
            }
            let tenant = delivery.events_tenant();
            for event in std::iter::once(&delivery.event_id).chain(&delivery.batch_events) {
                needed.insert(event_key(tenant, event));
                if tenant.is_some() {
                    // Or stored before ids were scoped per tenant, under the id alone.
                    needed.insert(event_key(None, event));
                }
            }
        }
        Ok(needed)
    }

    /// See [`crate::storage::Pruning::renew_event`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn renew_event(
        &self,
        tenant: Option<&str>,
        id: &EventId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let _renewals = self.renewals.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = event_key(tenant, id);
        if !self.ingest.events.contains_key(key.as_str())? {
            // Stored before ids were scoped per tenant: under the id alone.
            let legacy = match tenant {
                Some(_) => self.stored_event(id.as_str())?,
                None => None,
            };
            if legacy.is_none_or(|e| e.tenant.as_deref() != tenant) {
                return Ok(false);
            }
            key = id.as_str().to_string();
        }
        self.ingest
            .received
            .insert(received_key(now, &key), &[] as &[u8])?;
        self.renewed.insert(key.as_str(), &millis_be(now))?;
        Ok(true)
    }
}
