//! The due queue on PostgreSQL, read a page at a time; the hint of where to read it again
//! (what was queued, heard from other hosts, or left by a lapsed claim); and the hosts
//! sharing the database.

use std::collections::VecDeque;

use super::{cached, db_error, Postgres};
use crate::model::{DeliveryId, Millis, WebhookId};
use crate::storage::{Peers, QueueEntry, QueueFrom, QueuePosition, StorageError};

/// Queue entries read in one round trip.
const QUEUE_PAGE: i64 = 256;
/// A host not heard from for this long (ms) no longer counts among the peers.
const HOST_GONE_MS: i64 = 5_000;
/// How often lapsed claims are looked for (ms).
const REAP_EVERY_MS: i64 = 1_000;
/// Most lapsed claims released at once.
const REAP_AT_MOST: i64 = 10_000;

/// The due queue from a position on, read a page at a time.
pub(super) struct DueFrom<'a> {
    engine: &'a Postgres,
    /// The first page's start; later pages start after the last entry read.
    start: Option<(Millis, Option<(String, bool)>)>,
    last: Option<(i64, String)>,
    page: VecDeque<QueueEntry>,
    done: bool,
}

impl DueFrom<'_> {
    fn next_page(&mut self) -> Result<(), StorageError> {
        let engine = self.engine;
        let (sql, due, id): (&str, i64, String) = match (&self.last, &self.start) {
            (Some((due, id)), _) => (
                "SELECT due, id, webhook_id FROM deliveries
                 WHERE due IS NOT NULL AND (due, id) > ($1, $2) ORDER BY due, id LIMIT $3",
                *due,
                id.clone(),
            ),
            (None, Some((due, None))) => (
                "SELECT due, id, webhook_id FROM deliveries
                 WHERE due >= $1 AND $2::text IS NOT NULL ORDER BY due, id LIMIT $3",
                due.as_i64(),
                String::new(),
            ),
            (None, Some((due, Some((id, true))))) => (
                "SELECT due, id, webhook_id FROM deliveries
                 WHERE due IS NOT NULL AND (due, id) >= ($1, $2) ORDER BY due, id LIMIT $3",
                due.as_i64(),
                id.clone(),
            ),
            (None, Some((due, Some((id, false))))) => (
                "SELECT due, id, webhook_id FROM deliveries
                 WHERE due IS NOT NULL AND (due, id) > ($1, $2) ORDER BY due, id LIMIT $3",
                due.as_i64(),
                id.clone(),
            ),
            (None, None) => unreachable!("a walk has a start"),
        };
        let rows = engine.call("due_from", async {
            let client = engine.client().await?;
            client
                .query(&cached(&client, sql).await?, &[&due, &id, &QUEUE_PAGE])
                .await
                .map_err(db_error)
        })?;
        self.done = (rows.len() as i64) < QUEUE_PAGE;
        for row in rows {
            let due: i64 = row.get(0);
            let id: String = row.get(1);
            let webhook: &str = row.get(2);
            self.last = Some((due, id.clone()));
            let Ok(id) = DeliveryId::parse(&id) else {
                tracing::warn!(delivery = %id, "skipping a queue entry with a malformed id");
                continue;
            };
            self.page.push_back(QueueEntry {
                position: QueuePosition {
                    due: Millis(due),
                    id,
                },
                webhook: WebhookId::parse(webhook).ok(),
            });
        }
        Ok(())
    }
}

impl Iterator for DueFrom<'_> {
    type Item = Result<QueueEntry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.page.pop_front() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.next_page() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

impl Postgres {
    /// The queue entries from `from` on, read lazily.
    pub(super) fn queue_from(&self, from: QueueFrom<'_>) -> DueFrom<'_> {
        let start = match from {
            QueueFrom::Due(due) => (due, None),
            QueueFrom::At(at) => (at.due, Some((at.id.as_str().to_string(), true))),
            QueueFrom::After(after) => (after.due, Some((after.id.as_str().to_string(), false))),
        };
        DueFrom {
            engine: self,
            start: Some(start),
            last: None,
            page: VecDeque::new(),
            done: false,
        }
    }

    /// What this handle queued and what other hosts announced, and, once a second, the due
    /// times of deliveries whose claim lapsed (a host that died holding them): released here,
    /// so the scheduler goes back for them.
    pub(super) fn written_and_lapsed(&self) -> Option<Millis> {
        let written = self.inner.channels.due.take();
        let now = super::pruning::wall_clock();
        let last = self
            .inner
            .reaped_at
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.as_i64() - last < REAP_EVERY_MS {
            return written;
        }
        self.inner
            .reaped_at
            .store(now.as_i64(), std::sync::atomic::Ordering::Relaxed);
        match self.call("take_written_due", self.release_lapsed(now)) {
            Ok(Some(due)) => Some(written.map_or(due, |w| w.min(due))),
            Ok(None) => written,
            Err(e) => {
                tracing::warn!("releasing lapsed claims: {e}");
                written
            }
        }
    }

    /// Notes `holder` alive, forgets hosts silent for [`HOST_GONE_MS`] (by the wall clock:
    /// hosts' clocks may differ), and ranks the others by id.
    pub(super) fn note_alive(&self, holder: u64) -> Result<Peers, StorageError> {
        let now = super::pruning::wall_clock().as_i64();
        let holder = holder as i64;
        let alive: Vec<i64> = self.call("peers", async {
            let client = self.client().await?;
            client
                .execute(
                    &cached(
                        &client,
                        "INSERT INTO hosts (holder, seen_at) VALUES ($1, $2)
                     ON CONFLICT (holder) DO UPDATE SET seen_at = excluded.seen_at",
                    )
                    .await?,
                    &[&holder, &now],
                )
                .await
                .map_err(db_error)?;
            client
                .execute(
                    &cached(&client, "DELETE FROM hosts WHERE seen_at < $1").await?,
                    &[&(now - HOST_GONE_MS * 10)],
                )
                .await
                .map_err(db_error)?;
            let rows = client
                .query(
                    &cached(
                        &client,
                        "SELECT holder FROM hosts WHERE seen_at >= $1 ORDER BY holder",
                    )
                    .await?,
                    &[&(now - HOST_GONE_MS)],
                )
                .await
                .map_err(db_error)?;
            Ok::<_, StorageError>(rows.iter().map(|row| row.get(0)).collect())
        })?;
        let rank = alive
            .iter()
            .position(|h| *h == holder)
            .unwrap_or(alive.len());
        Ok(Peers {
            rank,
            count: alive.len().max(rank + 1),
        })
    }

    /// Queue entries, counted.
    pub(super) fn count_queue(&self) -> usize {
        let counted = self.call("queue_len", async {
            let client = self.client().await?;
            client
                .query_one(
                    &cached(
                        &client,
                        "SELECT count(*) FROM deliveries WHERE due IS NOT NULL",
                    )
                    .await?,
                    &[],
                )
                .await
                .map_err(db_error)
        });
        match counted {
            Ok(row) => row.get::<_, i64>(0) as usize,
            Err(e) => {
                tracing::warn!("counting the queue: {e}");
                0
            }
        }
    }

    /// Releases claims that lapsed before `now` (at most [`REAP_AT_MOST`]) and returns the
    /// earliest due time among their deliveries. Rows being written now are passed over (the
    /// next look takes them), so this never waits on, or deadlocks with, a write.
    async fn release_lapsed(&self, now: Millis) -> Result<Option<Millis>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &cached(
                    &client,
                    "WITH released AS (
                     UPDATE deliveries
                     SET claim_holder = NULL, claim_due = NULL, claim_until = NULL
                     WHERE id IN (
                         SELECT id FROM deliveries
                         WHERE claim_holder IS NOT NULL AND claim_until <= $1
                         ORDER BY id LIMIT $2
                         FOR UPDATE SKIP LOCKED
                     )
                     RETURNING due
                 )
                 SELECT min(due) FROM released",
                )
                .await?,
                &[&now.as_i64(), &REAP_AT_MOST],
            )
            .await
            .map_err(db_error)?;
        Ok(row.get::<_, Option<i64>>(0).map(Millis))
    }
}
