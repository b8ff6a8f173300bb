//! The due queue in sled: a tree keyed by `due time (u64 big-endian ms) ++ delivery id`,
//! valued by the webhook, so a walk in key order reads deliveries in due order and the
//! scheduler can tell their endpoints without reading the records. Claims are taken here.
//!
//! A plain delivery's new entry is written before its record and the old one removed after
//! (see [`Store::write_outcome`]), so a crash can leave an entry whose time the record no
//! longer names: such an entry is dropped when it is met ([`Store::claim_positions`]).

use std::ops::Bound;

use super::*;
use crate::storage::{Claim, Claimed, QueueFrom, QueuePosition};

/// The key of a delivery due at `due`: keys sort by due time, then delivery id.
pub fn queue_key(due: Millis, id: &DeliveryId) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.as_str().len());
    key.extend_from_slice(&queue_due_prefix(due));
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The start of the keys due at `due`: every delivery due then or later sorts at or after it.
pub fn queue_due_prefix(due: Millis) -> [u8; 8] {
    (due.as_i64().max(0) as u64).to_be_bytes()
}

/// Splits a queue key into due time and delivery id.
pub fn parse_queue_key(key: &[u8]) -> Option<(Millis, DeliveryId)> {
    let (due, id) = key.split_at_checked(8)?;
    let due = u64::from_be_bytes(due.try_into().ok()?);
    let id = DeliveryId::parse(std::str::from_utf8(id).ok()?).ok()?;
    Some((Millis(due as i64), id))
}

impl Store {
    /// Queue entries in due order, up to `limit`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn due_entries(&self, limit: usize) -> Result<Vec<(Millis, DeliveryId)>, StoreError> {
        let mut out = Vec::new();
        for item in self.ingest.queue.iter().keys().take(limit) {
            let key = item?;
            match parse_queue_key(&key) {
                Some(entry) => out.push(entry),
                None => {
                    tracing::warn!(key = ?key, "dropping malformed queue key");
                    self.ingest.queue.remove(key)?;
                }
            }
        }
        Ok(out)
    }

    /// Queue entries from `from` on, in due order, lazily, each with its webhook (the
    /// entry's value). Malformed keys are skipped.
    pub fn due_from(
        &self,
        from: QueueFrom<'_>,
    ) -> impl Iterator<Item = Result<QueueEntry, StoreError>> + '_ {
        let start = match from {
            QueueFrom::Due(due) => Bound::Included(sled::IVec::from(&queue_due_prefix(due)[..])),
            QueueFrom::At(at) => Bound::Included(queue_key(at.due, &at.id).into()),
            QueueFrom::After(after) => Bound::Excluded(queue_key(after.due, &after.id).into()),
        };
        self.ingest
            .queue
            .range::<sled::IVec, _>((start, Bound::Unbounded))
            .filter_map(|item| match item {
                Err(e) => Some(Err(StoreError::from(e))),
                Ok((key, value)) => {
                    let (due, id) = parse_queue_key(&key)?;
                    Some(Ok(QueueEntry {
                        position: QueuePosition { due, id },
                        webhook: parse_queue_value(&value),
                    }))
                }
            })
    }

    /// The earliest due time among queue entries written since the last call (`None`: none
    /// written). Each entry is noted after it is written, so a sweep of the queue from that
    /// due time on finds every one.
    pub fn take_written_due(&self) -> Option<Millis> {
        self.ingest.written.take()
    }

    /// Removes a queue entry.
    ///
    /// # Errors
    /// On storage failure.
    pub fn remove_queue_entry(&self, due: Millis, id: &DeliveryId) -> Result<(), StoreError> {
        self.ingest.queue.remove(queue_key(due, id))?;
        Ok(())
    }

    /// Number of queue entries.
    pub fn queue_len(&self) -> usize {
        self.ingest.queue.len()
    }

    /// Claims the deliveries at `positions` (see [`crate::storage::Deliveries::claim`]). An
    /// entry whose delivery is gone, finished or due at another time is outdated and
    /// removed.
    ///
    /// # Errors
    /// On storage failure.
    pub fn claim_positions(
        &self,
        positions: &[QueuePosition],
        holder: u64,
        until: Millis,
        now: Millis,
    ) -> Result<Vec<Option<Claimed>>, StoreError> {
        let mut out = Vec::with_capacity(positions.len());
        for QueuePosition { due, id } in positions {
            let current = match self.delivery(id) {
                Ok(current) => current,
                Err(e @ (StoreError::Corrupt { .. } | StoreError::Sealed { .. })) => {
                    // One unreadable record holds back only itself: it stays queued (and is
                    // named in the log each time it comes up), and the others go on.
                    tracing::error!(delivery = %id, "cannot claim an unreadable delivery: {e}");
                    out.push(None);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(delivery) =
                current.filter(|d| !d.status.is_final() && d.next_attempt_at == Some(*due))
            else {
                self.remove_queue_entry(*due, id)?;
                out.push(None);
                continue;
            };
            let claim = Claim {
                id: id.clone(),
                due: *due,
                holder,
                until,
            };
            let Some(claim) = self.claims.take(claim, now) else {
                out.push(None);
                continue;
            };
            // Read with it when its plugin is still to run; a failed read here is the
            // evaluation's to meet and record (it reads the event again).
            let event = match delivery.requests.is_none() && delivery.batch_events.is_empty() {
                true => self
                    .event(delivery.events_tenant(), &delivery.event_id)
                    .ok()
                    .flatten(),
                false => None,
            };
            out.push(Some(Claimed {
                claim,
                delivery,
                event,
            }));
        }
        Ok(out)
    }
}
