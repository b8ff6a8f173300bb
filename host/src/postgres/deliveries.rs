//! Deliveries on PostgreSQL: reads, claims as leases in the row, and writes over the version
//! read (the queue's reads and the hosts sharing the database are in `queue.rs`).
//!
//! A pass's claims are one statement that locks the rows it takes in id order and passes
//! over rows another host is locking now (`FOR UPDATE SKIP LOCKED`): two hosts claiming
//! overlapping passes never wait for, or deadlock with, each other; the one passed over is
//! the other's.
//!
//! An outcome is written only where the row's version and claim are still those the worker
//! had, and the queue (the `due` column) moves with it. Plain outcomes finished together share
//! one statement (`outcomes.rs`); plugin state changes, or pins to drop, make a transaction.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::outcomes::PlainOutcome;
use super::{cached, db_error, decode, encode, Postgres};
use crate::model::{Delivery, DeliveryId, DeliveryStatus, Event, EventId, Millis};
use crate::storage::{
    Claim, Claimed, Conflict, Deliveries, DeliveryQuery, Finished, Inserted, Outcome, Peers,
    QueueEntry, QueueFrom, QueuePosition, Scanned, StateWrite, StorageError, StorageFuture,
    Tenancy,
};

/// Most unreadable records one scan names (all are logged).
const MAX_UNREADABLE_NAMED: usize = 100;

/// A status as the `status` column holds it (the API's name).
pub(super) fn status_name(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Dead => "dead",
        DeliveryStatus::Skipped => "skipped",
    }
}

/// The tenant of a delivery's events, as the `events` table keys it (`""`: none).
pub(super) fn events_tenant(delivery: &Delivery) -> &str {
    delivery.events_tenant().unwrap_or("")
}

/// How a finished delivery is classed for retention (1 succeeded, 2 failed), and when.
fn finished(delivery: &Delivery) -> (Option<i16>, Option<i64>) {
    match Finished::of(delivery.status) {
        None => (None, None),
        Some(Finished::Succeeded) => (Some(1), Some(delivery.updated_at.as_i64())),
        Some(Finished::Failed) => (Some(2), Some(delivery.updated_at.as_i64())),
    }
}

/// Where an unfinished delivery is queued after a write.
fn due_after_write(delivery: &Delivery) -> Option<i64> {
    match delivery.status.is_final() {
        true => None,
        false => delivery.next_attempt_at.map(Millis::as_i64),
    }
}

/// Whether a finished delivery may hold pins (a batch's later events, a replay's event).
fn holds_pins(delivery: &Delivery) -> bool {
    delivery.status.is_final() && (delivery.replay_of.is_some() || delivery.batch_events.len() > 1)
}

/// The columns a write of a delivery's new state sets, `$2` on (`$1` is its id).
const WRITE_COLUMNS: &str = "record = $2, version = $3, status = $4, event_id = $5, due = $6,
    finished_class = $7, finished_at = $8,
    line = CASE WHEN $9 THEN NULL ELSE deliveries.line END,
    collecting = CASE WHEN $9 THEN NULL ELSE deliveries.collecting END";

/// The values of [`WRITE_COLUMNS`], for `delivery` at its new version.
pub(super) struct WriteValues {
    pub(super) id: String,
    pub(super) record: Vec<u8>,
    pub(super) version: i64,
    pub(super) status: &'static str,
    pub(super) event: String,
    pub(super) due: Option<i64>,
    pub(super) class: Option<i16>,
    pub(super) finished_at: Option<i64>,
    pub(super) is_final: bool,
}

impl WriteValues {
    fn of(delivery: &Delivery) -> WriteValues {
        let (class, finished_at) = finished(delivery);
        WriteValues {
            id: delivery.id.as_str().to_string(),
            record: encode(delivery),
            version: delivery.version as i64,
            status: status_name(delivery.status),
            event: delivery.event_id.as_str().to_string(),
            due: due_after_write(delivery),
            class,
            finished_at,
            is_final: delivery.status.is_final(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.id,
            &self.record,
            &self.version,
            &self.status,
            &self.event,
            &self.due,
            &self.class,
            &self.finished_at,
            &self.is_final,
        ]
    }
}

impl Postgres {
    async fn read_delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &cached(&client, "SELECT id, record FROM deliveries WHERE id = $1").await?,
                &[&id.as_str()],
            )
            .await
            .map_err(db_error)?;
        row.map(|row| decode("deliveries", row.get(0), row.get(1)))
            .transpose()
    }

    async fn read_event(
        &self,
        tenant: Option<&str>,
        id: &EventId,
    ) -> Result<Option<Event>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &cached(
                    &client,
                    "SELECT record FROM events WHERE tenant = $1 AND id = $2",
                )
                .await?,
                &[&tenant.unwrap_or(""), &id.as_str()],
            )
            .await
            .map_err(db_error)?;
        row.map(|row| decode("events", id.as_str(), row.get(0)))
            .transpose()
    }

    async fn scan(&self, query: &DeliveryQuery) -> Result<Scanned, StorageError> {
        let mut out = Scanned::default();
        let mut after = query.after.as_ref().map(|id| id.as_str().to_string());
        let client = self.client().await?;
        while out.deliveries.len() < query.limit {
            let wanted = (query.limit - out.deliveries.len()) as i64;
            let (sql, params) = scan_statement(query, after.as_deref(), wanted);
            let params: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let statement = cached(&client, &sql).await?;
            let rows = client.query(&statement, &params).await.map_err(db_error)?;
            let exhausted = (rows.len() as i64) < wanted;
            for row in &rows {
                let id: &str = row.get(0);
                after = Some(id.to_string());
                match decode::<Delivery>("deliveries", id, row.get(1)) {
                    Ok(delivery) if query.keeps(&delivery) => out.deliveries.push(delivery),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(delivery = %id, "unreadable delivery record passed over: {e}");
                        if out.unreadable.len() < MAX_UNREADABLE_NAMED {
                            out.unreadable.push(id.to_string());
                        }
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    async fn claim_rows(
        &self,
        positions: &[QueuePosition],
        holder: u64,
        until: Millis,
        now: Millis,
    ) -> Result<Vec<Option<Claimed>>, StorageError> {
        let ids: Vec<&str> = positions.iter().map(|p| p.id.as_str()).collect();
        let dues: Vec<i64> = positions.iter().map(|p| p.due.as_i64()).collect();
        let holder = holder as i64;
        let client = self.client().await?;
        let rows = client
            .query(
                &cached(
                    &client,
                    "WITH wanted AS (
                     SELECT * FROM unnest($1::text[], $2::int8[]) AS w (id, due)
                 ),
                 locked AS (
                     SELECT d.id FROM deliveries d JOIN wanted w ON d.id = w.id AND d.due = w.due
                     WHERE d.status = 'pending'
                       AND (d.claim_holder IS NULL OR d.claim_holder = $3
                            OR d.claim_until <= $5)
                     ORDER BY d.id
                     FOR UPDATE OF d SKIP LOCKED
                 ),
                 claimed AS (
                     UPDATE deliveries d
                     SET claim_holder = $3, claim_due = d.due, claim_until = $4
                     FROM locked l
                     WHERE d.id = l.id
                     RETURNING d.id, d.record, d.events_tenant, d.event_id
                 )
                 SELECT c.id, c.record, e.record
                 FROM claimed c
                 LEFT JOIN events e ON e.tenant = c.events_tenant AND e.id = c.event_id",
                )
                .await?,
                &[&ids, &dues, &holder, &until.as_i64(), &now.as_i64()],
            )
            .await
            .map_err(db_error)?;
        let mut found: HashMap<String, (Vec<u8>, Option<Vec<u8>>)> = rows
            .into_iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect();
        let mut out = Vec::with_capacity(positions.len());
        for position in positions {
            let Some((record, event)) = found.remove(position.id.as_str()) else {
                out.push(None);
                continue;
            };
            let delivery: Delivery = match decode("deliveries", position.id.as_str(), &record) {
                Ok(delivery) => delivery,
                Err(e) => {
                    // One unreadable record holds back only itself: its claim lapses, and
                    // it is named in the log each time it comes up.
                    tracing::error!(delivery = %position.id, "cannot claim an unreadable delivery: {e}");
                    out.push(None);
                    continue;
                }
            };
            // Read with it when its plugin is still to run; a failed read here is the
            // evaluation's to meet and record (it reads the event again).
            let event = (delivery.requests.is_none() && delivery.batch_events.is_empty())
                .then_some(event)
                .flatten()
                .and_then(|bytes| {
                    decode::<Event>("events", delivery.event_id.as_str(), &bytes).ok()
                });
            out.push(Some(Claimed {
                claim: Claim {
                    id: position.id.clone(),
                    due: position.due,
                    holder: holder as u64,
                    until,
                },
                delivery,
                event,
            }));
        }
        Ok(out)
    }

    /// Ends `claim` when it is the one in force.
    async fn end_claim(&self, claim: &Claim) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute(
                &cached(&client, "UPDATE deliveries SET claim_holder = NULL, claim_due = NULL, claim_until = NULL
                 WHERE id = $1 AND claim_holder = $2 AND claim_due = $3").await?,
                &[
                    &claim.id.as_str(),
                    &(claim.holder as i64),
                    &claim.due.as_i64(),
                ],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn close_collecting(&self, claim: &Claim, read: &Delivery) -> Result<bool, StorageError> {
        // The same version is the same record: what was read is what is stored.
        let closed = if read.replaceable() {
            let client = self.client().await?;
            let statement = cached(
                &client,
                "UPDATE deliveries SET collecting = NULL
                 WHERE id = $1 AND version = $2 AND due = $3 AND status = 'pending'",
            )
            .await?;
            let id = read.id.as_str();
            let version = read.version as i64;
            let due = claim.due.as_i64();
            client
                .execute(&statement, &[&id, &version, &due])
                .await
                .map_err(db_error)?
                == 1
        } else {
            false
        };
        if !closed {
            self.end_claim(claim).await?;
        }
        Ok(closed)
    }

    async fn write_outcome(
        &self,
        claim: &Claim,
        delivery: &Delivery,
        read: u64,
        state: Option<StateWrite<'_>>,
        keep: bool,
    ) -> Result<(), StorageError> {
        let read = read as i64;
        let holder = claim.holder as i64;
        let claim_due = claim.due.as_i64();
        let changes = state.filter(|s| !s.changes.is_empty());
        let written = if changes.is_none() && !holds_pins(delivery) {
            let outcome = PlainOutcome {
                values: WriteValues::of(delivery),
                read,
                holder,
                claim_due,
                keep,
            };
            self.inner.outcomes.write(outcome).await?
        } else {
            let values = WriteValues::of(delivery);
            let mut params: Vec<&(dyn ToSql + Sync)> = values.params().to_vec();
            params.extend([&read as &(dyn ToSql + Sync), &holder, &claim_due, &keep]);
            let statement = format!(
                "UPDATE deliveries SET {WRITE_COLUMNS},
                     claim_holder = CASE WHEN $13 THEN claim_holder END,
                     claim_due = CASE WHEN $13 THEN claim_due END,
                     claim_until = CASE WHEN $13 THEN claim_until END
                 WHERE id = $1 AND version = $10 AND claim_holder = $11 AND claim_due = $12"
            );
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(db_error)?;
            let written = transaction
                .execute(&cached(&transaction, &statement).await?, &params)
                .await
                .map_err(db_error)?
                == 1;
            if written {
                after_write(&transaction, delivery, changes).await?;
                transaction.commit().await.map_err(db_error)?;
            }
            written
        };
        if written {
            return Ok(());
        }
        // Refused: say why, and end the claim if it is still this one's (on a connection
        // of its own: this one goes back to the pool first, so refusals never hold one
        // while they wait for another).
        let row = {
            let client = self.client().await?;
            let statement = cached(
                &client,
                "SELECT claim_holder, claim_due FROM deliveries WHERE id = $1",
            )
            .await?;
            client
                .query_opt(&statement, &[&claim.id.as_str()])
                .await
                .map_err(db_error)?
        };
        let held = row.is_some_and(|row| {
            row.get::<_, Option<i64>>(0) == Some(holder)
                && row.get::<_, Option<i64>>(1) == Some(claim_due)
        });
        if !held {
            return Err(StorageError::Conflict(Conflict::ClaimLost));
        }
        if !keep {
            self.end_claim(claim).await?;
        }
        Err(StorageError::Conflict(Conflict::Changed))
    }

    async fn write_unclaimed(&self, delivery: &Delivery, read: u64) -> Result<bool, StorageError> {
        let values = WriteValues::of(delivery);
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(db_error)?;
        let written = if read == 0 {
            let replay = delivery.replay_of.is_some();
            let created = delivery.created_at.as_i64();
            let mut params: Vec<&(dyn ToSql + Sync)> = values.params().to_vec();
            let webhook = delivery.webhook_id.as_str();
            let tenant = events_tenant(delivery);
            params.extend([
                &webhook as &(dyn ToSql + Sync),
                &tenant,
                &delivery.tenant,
                &replay,
                &created,
            ]);
            let statement = format!(
                "INSERT INTO deliveries (id, record, version, status, event_id, due,
                                         finished_class, finished_at, webhook_id, events_tenant,
                                         tenant, replay, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12, $13, $14)
                 ON CONFLICT (id) DO UPDATE SET {WRITE_COLUMNS}
                 WHERE deliveries.version = 0"
            );
            transaction
                .execute(&cached(&transaction, &statement).await?, &params)
                .await
                .map_err(db_error)?
                == 1
        } else {
            let read = read as i64;
            let mut params: Vec<&(dyn ToSql + Sync)> = values.params().to_vec();
            params.push(&read);
            let statement =
                format!("UPDATE deliveries SET {WRITE_COLUMNS} WHERE id = $1 AND version = $10");
            transaction
                .execute(&cached(&transaction, &statement).await?, &params)
                .await
                .map_err(db_error)?
                == 1
        };
        if written {
            after_write(&transaction, delivery, None).await?;
            transaction.commit().await.map_err(db_error)?;
        }
        Ok(written)
    }
}

/// What goes with a delivery's write in its transaction: its plugin state changes (while
/// the webhook is still the tenant's it was when the evaluation began), and its pins once it
/// is finished.
async fn after_write(
    client: &impl GenericClient,
    delivery: &Delivery,
    state: Option<StateWrite<'_>>,
) -> Result<(), StorageError> {
    if let Some(state) = state {
        let still = client
            .query_opt(
                &cached(
                    client,
                    "SELECT 1 FROM webhooks WHERE id = $1 AND tenant IS NOT DISTINCT FROM $2
                 FOR SHARE",
                )
                .await?,
                &[&state.webhook.as_str(), &state.tenant],
            )
            .await
            .map_err(db_error)?
            .is_some();
        if still {
            let webhook = state.webhook.as_str();
            for (key, value) in state.changes {
                let written = match value {
                    Some(value) => {
                        client
                            .execute(
                                &cached(client, "INSERT INTO plugin_state (webhook_id, key, value)
                                 VALUES ($1, $2, $3)
                                 ON CONFLICT (webhook_id, key) DO UPDATE SET value = excluded.value").await?,
                                &[&webhook, key, value],
                            )
                            .await
                    }
                    None => {
                        client
                            .execute(
                                &cached(client, "DELETE FROM plugin_state WHERE webhook_id = $1 AND key = $2").await?,
                                &[&webhook, key],
                            )
                            .await
                    }
                };
                written.map_err(db_error)?;
            }
        }
    }
    if holds_pins(delivery) {
        client
            .execute(
                &cached(client, "DELETE FROM pins WHERE delivery_id = $1").await?,
                &[&delivery.id.as_str()],
            )
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

/// The statement and parameters of one page of a delivery scan.
fn scan_statement(
    query: &DeliveryQuery,
    after: Option<&str>,
    limit: i64,
) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut sql = String::from("SELECT id, record FROM deliveries WHERE true");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut filter = |sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(webhook) = &query.webhook {
        filter(
            &mut sql,
            " AND webhook_id = ?",
            Box::new(webhook.as_str().to_string()),
        );
    }
    if let Some(event) = &query.event {
        filter(
            &mut sql,
            " AND event_id = ?",
            Box::new(event.as_str().to_string()),
        );
    }
    if !query.statuses.is_empty() {
        let names: Vec<String> = query
            .statuses
            .iter()
            .map(|s| status_name(*s).to_string())
            .collect();
        filter(&mut sql, " AND status = ANY(?)", Box::new(names));
    }
    if let Some(replays) = query.replays {
        filter(&mut sql, " AND replay = ?", Box::new(replays));
    }
    match &query.tenant {
        Tenancy::Any => {}
        Tenancy::Only(None) => sql.push_str(" AND tenant IS NULL"),
        Tenancy::Only(Some(tenant)) => {
            filter(&mut sql, " AND tenant = ?", Box::new(tenant.clone()));
        }
    }
    if let Some(from) = query.created_from {
        filter(&mut sql, " AND created_at >= ?", Box::new(from.as_i64()));
    }
    if let Some(before) = query.created_before {
        filter(&mut sql, " AND created_at < ?", Box::new(before.as_i64()));
    }
    if let Some(after) = after {
        let clause = if query.descending {
            " AND id < ?"
        } else {
            " AND id > ?"
        };
        filter(&mut sql, clause, Box::new(after.to_string()));
    }
    let order = if query.descending { "DESC" } else { "ASC" };
    filter(
        &mut sql,
        &format!(" ORDER BY id {order} LIMIT ?"),
        Box::new(limit),
    );
    (sql, params)
}

impl Deliveries for Postgres {
    fn insert_and_commit(
        &self,
        items: Vec<(Event, Vec<Delivery>)>,
    ) -> StorageFuture<'_, Vec<Inserted>> {
        let engine = self.clone();
        let runtime = self.inner.runtime.as_ref().expect("runtime until dropped");
        let stored = runtime.spawn(async move {
            let started = std::time::Instant::now();
            let inserted = engine.insert_items(&items).await;
            engine.timed("insert_and_commit", started);
            inserted
        });
        Box::pin(async move {
            stored.await.map_err(|e| StorageError::Unavailable {
                source: format!("the ingest task ended: {e}").into(),
                out_of_space: false,
            })?
        })
    }

    fn event(&self, tenant: Option<&str>, id: &EventId) -> Result<Option<Event>, StorageError> {
        self.call("event", self.read_event(tenant, id))
    }

    fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StorageError> {
        self.call("delivery", self.read_delivery(id))
    }

    fn scan_deliveries(&self, query: &DeliveryQuery) -> Result<Scanned, StorageError> {
        if query.limit == 0 {
            return Ok(Scanned::default());
        }
        self.call("scan_deliveries", self.scan(query))
    }

    fn claim(
        &self,
        positions: &[QueuePosition],
        holder: u64,
        until: Millis,
        now: Millis,
    ) -> Result<Vec<Option<Claimed>>, StorageError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        self.call("claim", self.claim_rows(positions, holder, until, now))
    }

    fn close(&self, claim: &Claim, read: &Delivery) -> Result<bool, StorageError> {
        self.call("close", self.close_collecting(claim, read))
    }

    fn finish(&self, claim: &Claim, outcome: Outcome<'_>) -> Result<(), StorageError> {
        let Outcome {
            delivery,
            state,
            keep,
        } = outcome;
        let read = delivery.version;
        delivery.version = read.wrapping_add(1);
        let written = self.call(
            "finish",
            self.write_outcome(claim, delivery, read, state, keep),
        );
        match written {
            Ok(()) => {
                if let Some(due) = due_after_write(delivery) {
                    self.inner.channels.due.note(Millis(due));
                }
                Ok(())
            }
            Err(e) => {
                delivery.version = read;
                Err(e)
            }
        }
    }

    fn renew(&self, claim: &Claim, until: Millis) -> Result<(), StorageError> {
        let renewed = self.call("renew", async {
            let client = self.client().await?;
            client
                .execute(
                    &cached(
                        &client,
                        "UPDATE deliveries SET claim_until = greatest(claim_until, $4)
                     WHERE id = $1 AND claim_holder = $2 AND claim_due = $3",
                    )
                    .await?,
                    &[
                        &claim.id.as_str(),
                        &(claim.holder as i64),
                        &claim.due.as_i64(),
                        &until.as_i64(),
                    ],
                )
                .await
                .map_err(db_error)
        })?;
        match renewed {
            1 => Ok(()),
            _ => Err(StorageError::Conflict(Conflict::ClaimLost)),
        }
    }

    fn update_delivery(&self, delivery: &mut Delivery) -> Result<(), StorageError> {
        let read = delivery.version;
        delivery.version = read.wrapping_add(1);
        match self.call("update_delivery", self.write_unclaimed(delivery, read)) {
            Ok(true) => {
                if let Some(due) = due_after_write(delivery) {
                    self.inner.channels.due.note(Millis(due));
                }
                Ok(())
            }
            Ok(false) => {
                delivery.version = read;
                Err(StorageError::Conflict(Conflict::Changed))
            }
            Err(e) => {
                delivery.version = read;
                Err(e)
            }
        }
    }

    fn first_in_line(&self, delivery: &Delivery) -> Result<Option<DeliveryId>, StorageError> {
        let Some(line) = super::ingest::line_key(delivery) else {
            return Ok(None);
        };
        let first = self.call("first_in_line", async {
            let client = self.client().await?;
            client
                .query_opt(
                    &cached(
                        &client,
                        "SELECT id FROM deliveries WHERE line = $1
                     ORDER BY line_position, id LIMIT 1",
                    )
                    .await?,
                    &[&line],
                )
                .await
                .map_err(db_error)
        })?;
        Ok(first.and_then(|row| DeliveryId::parse(row.get::<_, &str>(0)).ok()))
    }

    fn due_from<'a>(
        &'a self,
        from: QueueFrom<'_>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a> {
        Box::new(self.queue_from(from))
    }

    /// What this handle queued and what other hosts announced, and, once a second, the due
    /// times of deliveries whose claim lapsed (a host that died holding them): released here,
    /// so the scheduler goes back for them.
    fn take_written_due(&self) -> Option<Millis> {
        self.written_and_lapsed()
    }

    /// Notes `holder` alive, forgets hosts silent for [`HOST_GONE_MS`] (by the wall clock:
    /// hosts' clocks may differ), and ranks the others by id.
    fn peers(&self, holder: u64, _now: Millis) -> Result<Peers, StorageError> {
        self.note_alive(holder)
    }

    fn queue_len(&self) -> usize {
        self.count_queue()
    }
}
