//! Retention on PostgreSQL. Finished deliveries are found through their finish time (an
//! index on webhook, outcome and finish time), so nothing is written on a delivery's way for
//! retention; events go once no pending delivery names them and no pin holds them.
//!
//! A replay pins its event ([`Pruning::keep_event_for`]) before its delivery is written; the
//! pruner removes events under an exclusive advisory lock that pinning takes shared, so an
//! event is never removed between a pin's check and its write. A pin holds while its delivery
//! is pending, or for an hour while its delivery is not written yet.

use super::{cached, db_error, Postgres};
use crate::model::{DeliveryId, EventId, Millis, WebhookId};
use crate::storage::{Finished, Pruning, StopWalk, StorageError};

/// The advisory lock that orders pinning and event removal ("wh-pins").
const PIN_LOCK: i64 = 0x7768_2d70_696e_7321;
/// A pin whose delivery is not pending is dropped this long after it was made (a replay
/// whose write failed after its pin).
const STALE_PIN_MS: i64 = 3_600_000;

/// Where an event walk has got to, in receipt order (ties by tenant and id).
struct EventCursor {
    received_at: i64,
    tenant: String,
    id: String,
}

impl EventCursor {
    /// Before every event.
    const START: EventCursor = EventCursor {
        received_at: i64::MIN,
        tenant: String::new(),
        id: String::new(),
    };
}

impl Postgres {
    /// Every webhook with finished deliveries, walking the index one webhook at a time.
    async fn webhooks_with_finished(&self) -> Result<Vec<String>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &cached(
                    &client,
                    "WITH RECURSIVE hooks AS (
                     (SELECT webhook_id FROM deliveries WHERE finished_at IS NOT NULL
                      ORDER BY webhook_id LIMIT 1)
                     UNION ALL
                     SELECT (SELECT d.webhook_id FROM deliveries d
                             WHERE d.finished_at IS NOT NULL AND d.webhook_id > hooks.webhook_id
                             ORDER BY d.webhook_id LIMIT 1)
                     FROM hooks WHERE hooks.webhook_id IS NOT NULL
                 )
                 SELECT webhook_id FROM hooks WHERE webhook_id IS NOT NULL",
                )
                .await?,
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Removes at most `batch` deliveries of `webhook` that finished as `class` before
    /// `cutoff`.
    async fn remove_finished(
        &self,
        webhook: &str,
        class: i16,
        cutoff: Millis,
        batch: i64,
    ) -> Result<u64, StorageError> {
        let client = self.client().await?;
        client
            .execute(
                &cached(
                    &client,
                    "DELETE FROM deliveries WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE webhook_id = $1 AND finished_class = $2 AND finished_at < $3
                     LIMIT $4
                 )",
                )
                .await?,
                &[&webhook, &class, &cutoff.as_i64(), &batch],
            )
            .await
            .map_err(db_error)
    }

    /// Looks at the next `batch` events received before `before`, after `from` in receipt
    /// order, and removes those nothing needs: how many it removed, and the last one it
    /// looked at (`None`: none were left). Events kept (a pending delivery or a pin needs
    /// them) are passed over once per pass, not read again by every batch.
    async fn remove_events(
        &self,
        before: Millis,
        batch: i64,
        from: &EventCursor,
    ) -> Result<(u64, Option<EventCursor>), StorageError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(db_error)?;
        transaction
            .execute(
                &cached(&transaction, "SELECT pg_advisory_xact_lock($1)").await?,
                &[&PIN_LOCK],
            )
            .await
            .map_err(db_error)?;
        let rows = transaction
            .query(
                &cached(
                    &transaction,
                    "WITH page AS (
                     SELECT e.received_at, e.tenant, e.id,
                            NOT EXISTS (
                                SELECT 1 FROM deliveries d
                                WHERE d.status = 'pending' AND d.events_tenant = e.tenant
                                  AND d.event_id = e.id)
                            AND NOT EXISTS (
                                SELECT 1 FROM pins p
                                WHERE p.events_tenant = e.tenant AND p.event_id = e.id
                                  AND (EXISTS (SELECT 1 FROM deliveries d
                                               WHERE d.id = p.delivery_id
                                                 AND d.status = 'pending')
                                       OR (p.pinned_at >= $3 AND NOT EXISTS (
                                               SELECT 1 FROM deliveries d
                                               WHERE d.id = p.delivery_id)))) AS unneeded
                     FROM events e
                     WHERE e.received_at < $1 AND (e.received_at, e.tenant, e.id) > ($4, $5, $6)
                     ORDER BY e.received_at, e.tenant, e.id
                     LIMIT $2
                 ), gone AS (
                     DELETE FROM events e USING page
                     WHERE page.unneeded AND e.tenant = page.tenant AND e.id = page.id
                 )
                 SELECT received_at, tenant, id, unneeded FROM page
                 ORDER BY received_at, tenant, id",
                )
                .await?,
                &[
                    &before.as_i64(),
                    &batch,
                    &(wall_clock().as_i64() - STALE_PIN_MS),
                    &from.received_at,
                    &from.tenant,
                    &from.id,
                ],
            )
            .await
            .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)?;
        let removed = rows.iter().filter(|row| row.get::<_, bool>(3)).count() as u64;
        let last = match rows.last() {
            Some(last) if rows.len() as i64 == batch => Some(EventCursor {
                received_at: last.get(0),
                tenant: last.get(1),
                id: last.get(2),
            }),
            _ => None,
        };
        Ok((removed, last))
    }

    /// Drops pins that hold nothing any more: their delivery finished, or was never written
    /// within an hour of the pin.
    async fn drop_stale_pins(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute(
                &cached(
                    &client,
                    "DELETE FROM pins p WHERE NOT EXISTS (
                     SELECT 1 FROM deliveries d WHERE d.id = p.delivery_id AND d.status = 'pending'
                 ) AND (p.pinned_at < $1
                        OR EXISTS (SELECT 1 FROM deliveries d WHERE d.id = p.delivery_id))",
                )
                .await?,
                &[&(wall_clock().as_i64() - STALE_PIN_MS)],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn pin(
        &self,
        tenant: Option<&str>,
        id: &EventId,
        delivery: &DeliveryId,
        received_by: Millis,
    ) -> Result<bool, StorageError> {
        let tenant = tenant.unwrap_or("");
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(db_error)?;
        transaction
            .execute(
                &cached(&transaction, "SELECT pg_advisory_xact_lock_shared($1)").await?,
                &[&PIN_LOCK],
            )
            .await
            .map_err(db_error)?;
        let received = transaction
            .query_opt(
                &cached(
                    &transaction,
                    "SELECT received_at FROM events WHERE tenant = $1 AND id = $2",
                )
                .await?,
                &[&tenant, &id.as_str()],
            )
            .await
            .map_err(db_error)?
            .map(|row| Millis(row.get(0)));
        if received.is_none_or(|at| at > received_by) {
            return Ok(false);
        }
        transaction
            .execute(
                &cached(
                    &transaction,
                    "INSERT INTO pins (events_tenant, event_id, delivery_id, pinned_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .await?,
                &[
                    &tenant,
                    &id.as_str(),
                    &delivery.as_str(),
                    &wall_clock().as_i64(),
                ],
            )
            .await
            .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)?;
        Ok(true)
    }
}

/// Now by the wall clock (pins are aged by it, whatever clock the host runs on).
pub(super) fn wall_clock() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis(since.as_millis() as i64)
}

impl Pruning for Postgres {
    /// Nothing to prepare: the indexes retention reads were made with the tables.
    fn prepare_pruning(&self, _stop: StopWalk<'_>) -> Result<bool, StorageError> {
        Ok(true)
    }

    fn prune_deliveries(
        &self,
        cutoff: &(dyn Fn(&WebhookId, Finished) -> Option<Millis> + Sync),
        _shortest_keep: Option<std::time::Duration>,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StorageError> {
        let batch = batch.max(1) as i64;
        let mut removed = 0;
        for webhook in self.call("prune_deliveries", self.webhooks_with_finished())? {
            let Ok(id) = WebhookId::parse(&webhook) else {
                tracing::warn!(
                    webhook,
                    "finished deliveries of a malformed webhook id are kept"
                );
                continue;
            };
            for (class, finished) in [(1, Finished::Succeeded), (2, Finished::Failed)] {
                let Some(before) = cutoff(&id, finished) else {
                    continue;
                };
                loop {
                    let step = self.call(
                        "prune_deliveries",
                        self.remove_finished(&webhook, class, before, batch),
                    )?;
                    removed += step;
                    if step > 0 && stop(removed) {
                        return Ok(removed);
                    }
                    if (step as i64) < batch {
                        break;
                    }
                }
            }
        }
        Ok(removed)
    }

    fn prune_events(
        &self,
        before: Millis,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StorageError> {
        let batch = batch.max(1) as i64;
        self.call("prune_events", self.drop_stale_pins())?;
        let mut removed = 0;
        let mut from = EventCursor::START;
        loop {
            let (step, last) =
                self.call("prune_events", self.remove_events(before, batch, &from))?;
            removed += step;
            match last {
                Some(last) if !stop(removed) => from = last,
                _ => return Ok(removed),
            }
        }
    }

    fn keep_event_for(
        &self,
        tenant: Option<&str>,
        id: &EventId,
        delivery: &DeliveryId,
        received_by: Millis,
    ) -> Result<bool, StorageError> {
        self.call(
            "keep_event_for",
            self.pin(tenant, id, delivery, received_by),
        )
    }
}
