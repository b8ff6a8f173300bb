//! Events with their deliveries, on PostgreSQL: one transaction per call, all or nothing.
//!
//! A call whose deliveries are all plain is two statements (the events, then the deliveries
//! of those that were new), however many events it carries. Otherwise each event is stored
//! in turn: a debounced delivery gives its event to the one of its entity still waiting, a
//! batch joins the one collecting, an in-order delivery takes the next place in the
//! database's sequence. Two hosts routing to the same waiting delivery take turns on its row
//! (`FOR UPDATE`); two making the first one of a key at once meet on the unique index, and the
//! loser's transaction runs again.

use std::collections::HashSet;

use deadpool_postgres::Transaction;

use super::deliveries::{events_tenant, status_name};
use super::{cached, db_error, decode, encode, is_contended, Postgres};
use crate::model::{Delivery, DeliveryId, DeliveryMode, Event, Millis};
use crate::storage::{Inserted, StorageError};

/// Most times a call's transaction runs when other hosts' ingest keeps getting there first.
const TRIES: usize = 8;

/// The separator inside routing keys: tenants hold no control characters.
const SEP: char = '\u{1}';

/// The key of a webhook's routing for one delivery: the webhook, and the events' tenant when
/// the webhook takes several tenants' events (one tenant's events never join another's
/// batch or replace another's waiting event).
fn partition(delivery: &Delivery) -> String {
    match &delivery.event_tenant {
        Some(tenant) => format!("{}{SEP}{tenant}", delivery.webhook_id),
        None => format!("{}{SEP}", delivery.webhook_id),
    }
}

/// The `collecting` key of a webhook's open batch.
fn batch_key(delivery: &Delivery) -> String {
    format!("b{}", partition(delivery))
}

/// The `collecting` key of an entity's waiting debounced delivery.
fn debounce_key(delivery: &Delivery, entity: &str) -> String {
    format!("d{}{SEP}{entity}", partition(delivery))
}

/// The `line` of an in-order delivery: its webhook's (and tenant's) entity.
pub(super) fn line_key(delivery: &Delivery) -> Option<String> {
    match delivery.mode() {
        DeliveryMode::InOrder { entity } => Some(format!("{}{SEP}{entity}", partition(delivery))),
        _ => None,
    }
}

impl Postgres {
    /// Stores a call's events with their deliveries, in one transaction (run again when
    /// another host's took a routing key first).
    pub(super) async fn insert_items(
        &self,
        items: &[(Event, Vec<Delivery>)],
    ) -> Result<Vec<Inserted>, StorageError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.insert_once(items).await {
                Err(e) if tries < TRIES && is_contended(&e) => continue,
                result => return result,
            }
        }
    }

    async fn insert_once(
        &self,
        items: &[(Event, Vec<Delivery>)],
    ) -> Result<Vec<Inserted>, StorageError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(db_error)?;
        let plain = items
            .iter()
            .flat_map(|(_, deliveries)| deliveries)
            .all(|d| d.mode() == DeliveryMode::Plain);
        let inserted = if plain {
            insert_plain(&transaction, items).await?
        } else {
            let mut inserted = Vec::with_capacity(items.len());
            for (event, deliveries) in items {
                inserted.push(insert_routed(&transaction, event, deliveries).await?);
            }
            inserted
        };
        // A debounced or batched delivery moves to the new delivery's due time, or to its
        // creation time when full: both are covered by the earliest of either.
        let earliest = items
            .iter()
            .flat_map(|(_, deliveries)| deliveries)
            .map(|d| d.next_attempt_at.unwrap_or(d.created_at).min(d.created_at))
            .min();
        if let Some(due) = earliest {
            // Heard by every host at commit (`listen.rs`).
            transaction
                .execute(
                    &cached(&transaction, "SELECT pg_notify($1, $2)").await?,
                    &[&self.inner.channels.queued, &due.as_i64().to_string()],
                )
                .await
                .map_err(db_error)?;
        }
        transaction.commit().await.map_err(db_error)?;
        if let Some(due) = earliest {
            self.inner.channels.due.note(due);
        }
        Ok(inserted)
    }
}

/// The events of a call whose deliveries are all plain, then the deliveries of the events
/// that were new: two statements.
async fn insert_plain(
    transaction: &Transaction<'_>,
    items: &[(Event, Vec<Delivery>)],
) -> Result<Vec<Inserted>, StorageError> {
    let tenants: Vec<&str> = items
        .iter()
        .map(|(e, _)| e.tenant.as_deref().unwrap_or(""))
        .collect();
    let ids: Vec<&str> = items.iter().map(|(e, _)| e.id.as_str()).collect();
    let received: Vec<i64> = items.iter().map(|(e, _)| e.received_at.as_i64()).collect();
    let records: Vec<Vec<u8>> = items.iter().map(|(e, _)| encode(e)).collect();
    let rows = transaction
        .query(
            &cached(
                transaction,
                "INSERT INTO events (tenant, id, received_at, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[])
             ON CONFLICT DO NOTHING
             RETURNING tenant, id",
            )
            .await?,
            &[&tenants, &ids, &received, &records],
        )
        .await
        .map_err(db_error)?;
    let mut new: HashSet<(String, String)> = rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect();
    let mut inserted = Vec::with_capacity(items.len());
    let mut deliveries = Vec::new();
    for ((_, event_deliveries), (tenant, id)) in items.iter().zip(tenants.iter().zip(&ids)) {
        // The first of a call's events with an id is the one stored; a repeat is a duplicate.
        if new.remove(&(tenant.to_string(), id.to_string())) {
            deliveries.extend(event_deliveries.iter());
            inserted.push(Inserted::New(
                event_deliveries.iter().map(|d| d.id.clone()).collect(),
            ));
        } else {
            inserted.push(Inserted::Duplicate);
        }
    }
    if !deliveries.is_empty() {
        insert_deliveries(transaction, &deliveries).await?;
    }
    Ok(inserted)
}

/// New deliveries, as made at ingest (queued at their due time, or creation time), in one
/// statement.
async fn insert_deliveries(
    transaction: &Transaction<'_>,
    deliveries: &[&Delivery],
) -> Result<(), StorageError> {
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let webhooks: Vec<&str> = deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    let events_tenants: Vec<&str> = deliveries.iter().map(|d| events_tenant(d)).collect();
    let events: Vec<&str> = deliveries.iter().map(|d| d.event_id.as_str()).collect();
    let tenants: Vec<Option<&str>> = deliveries.iter().map(|d| d.tenant.as_deref()).collect();
    let statuses: Vec<&str> = deliveries.iter().map(|d| status_name(d.status)).collect();
    let replays: Vec<bool> = deliveries.iter().map(|d| d.replay_of.is_some()).collect();
    let created: Vec<i64> = deliveries.iter().map(|d| d.created_at.as_i64()).collect();
    let dues: Vec<Option<i64>> = deliveries.iter().map(|d| ingest_due(d)).collect();
    let versions: Vec<i64> = deliveries.iter().map(|d| d.version as i64).collect();
    let records: Vec<Vec<u8>> = deliveries.iter().map(|d| encode(*d)).collect();
    transaction
        .execute(
            &cached(
                transaction,
                "INSERT INTO deliveries (id, webhook_id, events_tenant, event_id, tenant, status,
                                     replay, created_at, due, version, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::bool[], $8::int8[], $9::int8[], $10::int8[],
                                  $11::bytea[])",
            )
            .await?,
            &[
                &ids,
                &webhooks,
                &events_tenants,
                &events,
                &tenants,
                &statuses,
                &replays,
                &created,
                &dues,
                &versions,
                &records,
            ],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Where a delivery made at ingest is queued: its due time, or its creation time.
fn ingest_due(delivery: &Delivery) -> Option<i64> {
    (!delivery.status.is_final()).then(|| {
        delivery
            .next_attempt_at
            .unwrap_or(delivery.created_at)
            .as_i64()
    })
}

/// One event whose deliveries include a routed one (debounced, in order, batched).
async fn insert_routed(
    transaction: &Transaction<'_>,
    event: &Event,
    deliveries: &[Delivery],
) -> Result<Inserted, StorageError> {
    let stored = transaction
        .execute(
            &cached(
                transaction,
                "INSERT INTO events (tenant, id, received_at, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            )
            .await?,
            &[
                &event.tenant.as_deref().unwrap_or(""),
                &event.id.as_str(),
                &event.received_at.as_i64(),
                &encode(event),
            ],
        )
        .await
        .map_err(db_error)?;
    if stored == 0 {
        return Ok(Inserted::Duplicate);
    }
    let mut carried = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let id = match delivery.mode() {
            DeliveryMode::Plain => {
                insert_one(transaction, delivery, None, None).await?;
                delivery.id.clone()
            }
            DeliveryMode::Batched { .. } => join_batch(transaction, event, delivery).await?,
            DeliveryMode::InOrder { .. } => {
                place_in_line(transaction, delivery).await?;
                delivery.id.clone()
            }
            DeliveryMode::Debounced { entity } => {
                replace_waiting(transaction, event, delivery, entity).await?
            }
        };
        carried.push(id);
    }
    Ok(Inserted::New(carried))
}

/// One new delivery, with its routing columns.
async fn insert_one(
    transaction: &Transaction<'_>,
    delivery: &Delivery,
    collecting: Option<&str>,
    line: Option<(&str, i64)>,
) -> Result<(), StorageError> {
    transaction
        .execute(
            &cached(
                transaction,
                "INSERT INTO deliveries (id, webhook_id, events_tenant, event_id, tenant, status,
                                     replay, created_at, due, collecting, line, line_position,
                                     version, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .await?,
            &[
                &delivery.id.as_str(),
                &delivery.webhook_id.as_str(),
                &events_tenant(delivery),
                &delivery.event_id.as_str(),
                &delivery.tenant,
                &status_name(delivery.status),
                &delivery.replay_of.is_some(),
                &delivery.created_at.as_i64(),
                &ingest_due(delivery),
                &collecting,
                &line.map(|(line, _)| line),
                &line.map(|(_, position)| position),
                &(delivery.version as i64),
                &encode(delivery),
            ],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The delivery collecting under `key`, locked for this transaction.
async fn collecting(
    transaction: &Transaction<'_>,
    key: &str,
) -> Result<Option<Delivery>, StorageError> {
    let row = transaction
        .query_opt(
            &cached(
                transaction,
                "SELECT id, record FROM deliveries WHERE collecting = $1 FOR UPDATE",
            )
            .await?,
            &[&key],
        )
        .await
        .map_err(db_error)?;
    row.map(|row| decode("deliveries", row.get(0), row.get(1)))
        .transpose()
}

/// Stops the delivery `id` collecting (another takes its key).
async fn stop_collecting(
    transaction: &Transaction<'_>,
    id: &DeliveryId,
) -> Result<(), StorageError> {
    transaction
        .execute(
            &cached(
                transaction,
                "UPDATE deliveries SET collecting = NULL WHERE id = $1",
            )
            .await?,
            &[&id.as_str()],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Writes a collecting delivery that took an event: its record, version, event and due time,
/// and whether it still collects.
async fn rewrite_collecting(
    transaction: &Transaction<'_>,
    delivery: &Delivery,
    still_collecting: bool,
) -> Result<(), StorageError> {
    transaction
        .execute(
            &cached(
                transaction,
                "UPDATE deliveries SET record = $2, version = $3, event_id = $4, due = $5,
                    collecting = CASE WHEN $6 THEN collecting END
             WHERE id = $1",
            )
            .await?,
            &[
                &delivery.id.as_str(),
                &encode(delivery),
                &(delivery.version as i64),
                &delivery.event_id.as_str(),
                &delivery.next_attempt_at.map(Millis::as_i64),
                &still_collecting,
            ],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Adds the event to its webhook's collecting batch when that has room (due at once when
/// that fills it) and returns the batch; otherwise `delivery` becomes the collecting batch.
async fn join_batch(
    transaction: &Transaction<'_>,
    event: &Event,
    delivery: &Delivery,
) -> Result<DeliveryId, StorageError> {
    let key = batch_key(delivery);
    if let Some(mut open) = collecting(transaction, &key).await? {
        // A batch never spans the webhook's move to another tenant.
        if open.replaceable()
            && open.tenant == delivery.tenant
            && open.batch_events.len() < open.batch_limit as usize
        {
            open.batch_events.push(event.id.clone());
            open.version = open.version.wrapping_add(1);
            open.updated_at = delivery.created_at;
            let full = open.batch_events.len() >= open.batch_limit as usize;
            if full {
                // Full: due now, and no longer collecting.
                open.next_attempt_at = Some(delivery.created_at);
            }
            transaction
                .execute(
                    &cached(
                        transaction,
                        "INSERT INTO pins (events_tenant, event_id, delivery_id, pinned_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .await?,
                    &[
                        &events_tenant(&open),
                        &event.id.as_str(),
                        &open.id.as_str(),
                        &delivery.created_at.as_i64(),
                    ],
                )
                .await
                .map_err(db_error)?;
            rewrite_collecting(transaction, &open, !full).await?;
            return Ok(open.id);
        }
        stop_collecting(transaction, &open.id).await?;
    }
    insert_one(transaction, delivery, Some(&key), None).await?;
    Ok(delivery.id.clone())
}

/// Gives an in-order delivery the next place in its entity's line, from the database's own
/// sequence (never a host's clock).
async fn place_in_line(
    transaction: &Transaction<'_>,
    delivery: &Delivery,
) -> Result<(), StorageError> {
    let position: i64 = transaction
        .query_one(
            &cached(transaction, "SELECT nextval('line_positions')").await?,
            &[],
        )
        .await
        .map_err(db_error)?
        .get(0);
    let mut placed = delivery.clone();
    placed.line_position = Some(position as u64);
    let line = line_key(&placed).expect("an in-order delivery has a line");
    insert_one(transaction, &placed, None, Some((&line, position))).await
}

/// Gives the event to the delivery of its entity waiting to be claimed (moved to the new
/// delivery's due time) and returns it; otherwise `delivery` becomes the one waiting.
async fn replace_waiting(
    transaction: &Transaction<'_>,
    event: &Event,
    delivery: &Delivery,
    entity: &str,
) -> Result<DeliveryId, StorageError> {
    let key = debounce_key(delivery, entity);
    if let Some(mut waiting) = collecting(transaction, &key).await? {
        if waiting.replaceable() && waiting.tenant == delivery.tenant {
            let due = delivery.next_attempt_at.unwrap_or(delivery.created_at);
            waiting.replace_event(event.id.clone(), due, delivery.created_at);
            waiting.version = waiting.version.wrapping_add(1);
            rewrite_collecting(transaction, &waiting, true).await?;
            return Ok(waiting.id);
        }
        stop_collecting(transaction, &waiting.id).await?;
    }
    insert_one(transaction, delivery, Some(&key), None).await?;
    Ok(delivery.id.clone())
}
