//! Plain outcomes written together: the outcomes workers finish while a write is under way
//! go to the database as one statement and one commit, not one each.
//!
//! A worker hands its outcome to a writer and waits for the answer: whether its row was
//! written (its version and its claim still those it read). A writer takes whatever is
//! waiting, up to [`MOST_PER_WRITE`], so nothing waits on purpose: alone, an outcome goes at
//! once; under load, the outcomes that arrived during one write share the next. Two writers
//! run, so one slow commit does not hold back every worker.
//!
//! When a write of several fails (a row the database refuses, a deadlock, a connection
//! lost), each of its outcomes is written again alone, so one outcome's trouble is never its
//! neighbours'. A write that outlasts the statement timeout (a connection that stopped
//! answering) is given up and its connection dropped. A writer that panics is started again.
//!
//! Only plain outcomes come here: one carrying plugin state or dropping pins is a
//! transaction of its own (`deliveries.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::ToSql;

use super::deliveries::WriteValues;
use super::{cached, db_error, PgError};
use crate::storage::StorageError;

/// Most outcomes one statement writes.
const MOST_PER_WRITE: usize = 256;

/// How many writes may be under way at once.
const WRITERS: usize = 2;

/// The statement: each outcome's row is written where its version and its claim are still
/// those the worker had; the ids of the rows written come back. The rows are locked first,
/// in id order (as a pass's claims lock them), so two writes that meet on rows wait for each
/// other rather than deadlock, whatever plan the update takes.
const WRITE: &str = "WITH o AS (
        SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::text[], $5::text[],
                             $6::bigint[], $7::smallint[], $8::bigint[], $9::boolean[],
                             $10::bigint[], $11::bigint[], $12::bigint[], $13::boolean[])
            AS o(id, record, version, status, event_id, due, class, finished_at, is_final,
                 read, holder, claim_due, keep)
    ), locked AS (
        SELECT id FROM deliveries WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
    )
    UPDATE deliveries AS d SET
        record = o.record, version = o.version, status = o.status, event_id = o.event_id,
        due = o.due, finished_class = o.class, finished_at = o.finished_at,
        line = CASE WHEN o.is_final THEN NULL ELSE d.line END,
        collecting = CASE WHEN o.is_final THEN NULL ELSE d.collecting END,
        claim_holder = CASE WHEN o.keep THEN d.claim_holder END,
        claim_due = CASE WHEN o.keep THEN d.claim_due END,
        claim_until = CASE WHEN o.keep THEN d.claim_until END
    FROM o JOIN locked ON locked.id = o.id
    WHERE d.id = o.id AND d.version = o.read
        AND d.claim_holder = o.holder AND d.claim_due = o.claim_due
    RETURNING d.id";

/// One plain outcome: the delivery's new state, the version it was read at, and the claim
/// it was worked under (kept when `keep`: the worker goes on with it).
pub(super) struct PlainOutcome {
    pub(super) values: WriteValues,
    pub(super) read: i64,
    pub(super) holder: i64,
    pub(super) claim_due: i64,
    pub(super) keep: bool,
}

/// An outcome waiting for a writer, and where its answer goes.
struct Waiting {
    outcome: PlainOutcome,
    answer: oneshot::Sender<Result<bool, StorageError>>,
}

/// Where workers hand their outcomes; the writers end when it is dropped.
pub(super) struct Outcomes {
    sender: mpsc::UnboundedSender<Waiting>,
}

impl Outcomes {
    /// Starts the writers on `runtime`, with connections from `pool`; a write is given up
    /// after `limit`.
    pub(super) fn start(
        pool: &Pool,
        runtime: &tokio::runtime::Runtime,
        limit: Duration,
    ) -> Outcomes {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WRITERS {
            runtime.spawn(keep_writing(pool.clone(), receiver.clone(), limit));
        }
        Outcomes { sender }
    }

    /// Writes `outcome` with the others waiting: whether its row was written.
    pub(super) async fn write(&self, outcome: PlainOutcome) -> Result<bool, StorageError> {
        let (answer, answered) = oneshot::channel();
        let ended = || StorageError::Unavailable {
            source: "the outcome writers have ended".into(),
            out_of_space: false,
        };
        self.sender
            .send(Waiting { outcome, answer })
            .map_err(|_| ended())?;
        answered.await.map_err(|_| ended())?
    }
}

/// Where writers take outcomes from.
type Receiver = Arc<Mutex<mpsc::UnboundedReceiver<Waiting>>>;

/// One writer, started again should it panic (the outcomes it held are answered with an
/// error: their deliveries go again), until the engine is dropped.
async fn keep_writing(pool: Pool, receiver: Receiver, limit: Duration) {
    loop {
        let writer = tokio::spawn(write_while_open(pool.clone(), receiver.clone(), limit));
        match writer.await {
            Err(e) if e.is_panic() => {
                tracing::error!("a PostgreSQL outcome writer panicked; starting another");
            }
            _ => return,
        }
    }
}

/// One writer: takes what is waiting and writes it, until the engine is dropped.
async fn write_while_open(pool: Pool, receiver: Receiver, limit: Duration) {
    let mut held_over: Vec<Waiting> = Vec::new();
    loop {
        let mut taken = std::mem::take(&mut held_over);
        {
            let mut receiver = receiver.lock().await;
            if taken.is_empty() {
                match receiver.recv().await {
                    Some(waiting) => taken.push(waiting),
                    None => return,
                }
            }
            while taken.len() < MOST_PER_WRITE {
                match receiver.try_recv() {
                    Ok(waiting) => taken.push(waiting),
                    Err(_) => break,
                }
            }
        }
        // One row is written once per statement: a second outcome for it waits for the next.
        let mut ids = HashSet::with_capacity(taken.len());
        let (mut batch, later): (Vec<Waiting>, Vec<Waiting>) = taken
            .into_iter()
            .partition(|waiting| ids.insert(waiting.outcome.values.id.clone()));
        held_over = later;
        match write(&pool, &batch, limit).await {
            Ok(written) => {
                for waiting in batch {
                    let done = written.contains(&waiting.outcome.values.id);
                    let _ = waiting.answer.send(Ok(done));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(waiting) = batch.pop() {
                    let _ = waiting.answer.send(Err(e));
                }
            }
            Err(e) if refused_by_database(&e) => {
                tracing::warn!(
                    outcomes = batch.len(),
                    "writing outcomes together failed, writing each alone: {e}"
                );
                for waiting in batch {
                    let alone = write(&pool, std::slice::from_ref(&waiting), limit).await;
                    let id = &waiting.outcome.values.id;
                    let answer = alone.map(|written| written.contains(id));
                    let _ = waiting.answer.send(answer);
                }
            }
            // The database could not be reached: each outcome would only wait as long again.
            Err(e) => {
                let (message, out_of_space) = match &e {
                    StorageError::Unavailable {
                        source,
                        out_of_space,
                    } => (source.to_string(), *out_of_space),
                    other => (other.to_string(), false),
                };
                for waiting in batch {
                    let _ = waiting.answer.send(Err(StorageError::Unavailable {
                        source: message.clone().into(),
                        out_of_space,
                    }));
                }
            }
        }
    }
}

/// Whether the database answered `e` (it refused the statement: a row, a deadlock, a
/// timeout of its own), rather than not being reached.
fn refused_by_database(e: &StorageError) -> bool {
    match e {
        StorageError::Unavailable { source, .. } => source
            .downcast_ref::<PgError>()
            .is_some_and(|e| e.0.as_db_error().is_some()),
        _ => false,
    }
}

/// Writes `batch` in one statement, giving up after `limit`: the ids of the rows written.
async fn write(
    pool: &Pool,
    batch: &[Waiting],
    limit: Duration,
) -> Result<HashSet<String>, StorageError> {
    let client = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => StorageError::Unavailable {
            source: Box::new(other),
            out_of_space: false,
        },
    })?;
    match tokio::time::timeout(limit, write_on(&client, batch)).await {
        Ok(written) => written,
        Err(_) => {
            // A connection that stopped answering is not given back to the pool.
            drop(deadpool_postgres::Object::take(client));
            Err(StorageError::Unavailable {
                source: format!(
                    "writing {} outcomes took longer than {} s",
                    batch.len(),
                    limit.as_secs()
                )
                .into(),
                out_of_space: false,
            })
        }
    }
}

/// [`write`] on `client`.
async fn write_on(
    client: &deadpool_postgres::Object,
    batch: &[Waiting],
) -> Result<HashSet<String>, StorageError> {
    let outcomes = batch.iter().map(|waiting| &waiting.outcome);
    let column = |pick: &dyn Fn(&PlainOutcome) -> i64| outcomes.clone().map(pick).collect();
    let ids: Vec<&str> = outcomes.clone().map(|o| o.values.id.as_str()).collect();
    let records: Vec<&[u8]> = outcomes
        .clone()
        .map(|o| o.values.record.as_slice())
        .collect();
    let versions: Vec<i64> = column(&|o| o.values.version);
    let statuses: Vec<&str> = outcomes.clone().map(|o| o.values.status).collect();
    let events: Vec<&str> = outcomes.clone().map(|o| o.values.event.as_str()).collect();
    let dues: Vec<Option<i64>> = outcomes.clone().map(|o| o.values.due).collect();
    let classes: Vec<Option<i16>> = outcomes.clone().map(|o| o.values.class).collect();
    let finished: Vec<Option<i64>> = outcomes.clone().map(|o| o.values.finished_at).collect();
    let finals: Vec<bool> = outcomes.clone().map(|o| o.values.is_final).collect();
    let reads: Vec<i64> = column(&|o| o.read);
    let holders: Vec<i64> = column(&|o| o.holder);
    let claim_dues: Vec<i64> = column(&|o| o.claim_due);
    let keeps: Vec<bool> = outcomes.map(|o| o.keep).collect();
    let params: [&(dyn ToSql + Sync); 13] = [
        &ids,
        &records,
        &versions,
        &statuses,
        &events,
        &dues,
        &classes,
        &finished,
        &finals,
        &reads,
        &holders,
        &claim_dues,
        &keeps,
    ];
    let rows = client
        .query(&cached(client, WRITE).await?, &params)
        .await
        .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|row| row.get::<_, String>(0))
        .collect())
}
