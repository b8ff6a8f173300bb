//! Group commit: callers that need durability queue a job; one background thread inserts the
//! waiting API calls' events in one transaction, flushes sled once for everyone waiting,
//! then answers them all. Under load many calls share one transaction and one sync; idle, a
//! lone call is written and flushed at once. Under load flushes are spaced by at least
//! [`FLUSH_SPACING`].

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{EventTrees, Inserted, StoreError};
use crate::model::{Delivery, Event};

/// The least time between the ends of two flushes. Each flush writes and syncs sled's
/// current buffer, so one per event (single-event API calls under load) cost more CPU in
/// syscalls and rewritten pages than the events themselves; waiting up to this long adds
/// at most as much to an acknowledgement.
const FLUSH_SPACING: Duration = Duration::from_millis(1);

/// Most events in one shared transaction.
const MAX_SHARED: usize = 256;

/// What the commit thread is asked to do.
enum Job {
    /// Answer once everything written so far is durable.
    Commit(oneshot::Sender<Result<(), String>>),
    /// Insert these events with their deliveries, then answer once they are durable.
    Insert {
        items: Vec<(Event, Vec<Delivery>)>,
        answer: oneshot::Sender<Result<Vec<Inserted>, String>>,
    },
}

/// Handle to the commit thread.
#[derive(Clone)]
pub(super) struct Committer {
    tx: mpsc::UnboundedSender<Job>,
}

impl Committer {
    /// Starts the commit thread for `db`, inserting events into `trees`. It ends when every
    /// handle is dropped.
    pub(super) fn start(db: sled::Db, trees: EventTrees) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("wasmhooks-commit".into())
            .spawn(move || {
                let mut last_flush: Option<Instant> = None;
                while let Some(first) = rx.blocking_recv() {
                    // Under load, flush at most once per FLUSH_SPACING: the jobs that arrive
                    // meanwhile share the next transaction and flush.
                    if let Some(wait) =
                        last_flush.and_then(|t| FLUSH_SPACING.checked_sub(t.elapsed()))
                    {
                        std::thread::sleep(wait);
                    }
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                    }
                    run(&db, &trees, jobs);
                    last_flush = Some(Instant::now());
                }
            })
            .expect("spawn commit thread");
        Committer { tx }
    }

    /// Waits until everything written before the call is on disk.
    pub(super) async fn commit(&self) -> Result<(), StoreError> {
        let (answer, rx) = oneshot::channel();
        self.tx.send(Job::Commit(answer)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?.map_err(io_error)
    }

    /// Inserts events (see [`EventTrees::insert_events`]) and waits until they are on disk.
    pub(super) async fn insert(
        &self,
        items: Vec<(Event, Vec<Delivery>)>,
    ) -> Result<Vec<Inserted>, StoreError> {
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Job::Insert { items, answer })
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?.map_err(io_error)
    }
}

type InsertJob = (
    Vec<(Event, Vec<Delivery>)>,
    oneshot::Sender<Result<Vec<Inserted>, String>>,
);

/// Inserts the events of `group` (calls) in one transaction, pushing each call's result.
/// When the shared transaction fails each call's events are tried alone, so one call's
/// failure is not another's.
fn insert_group(
    trees: &EventTrees,
    group: &[InsertJob],
    results: &mut Vec<Result<Vec<Inserted>, String>>,
) {
    let all: Vec<(&Event, &[Delivery])> = group
        .iter()
        .flat_map(|(items, _)| items.iter().map(|(e, d)| (e, d.as_slice())))
        .collect();
    match trees.insert_events(&all) {
        Ok(mut inserted) => {
            for (items, _) in group {
                let rest = inserted.split_off(items.len());
                results.push(Ok(std::mem::replace(&mut inserted, rest)));
            }
        }
        Err(_) if group.len() > 1 => {
            for (items, _) in group {
                let own: Vec<(&Event, &[Delivery])> =
                    items.iter().map(|(e, d)| (e, d.as_slice())).collect();
                results.push(trees.insert_events(&own).map_err(|e| e.to_string()));
            }
        }
        Err(e) => results.push(Err(e.to_string())),
    }
}

fn closed() -> StoreError {
    StoreError::Sled(sled::Error::ReportableBug("commit thread gone".into()))
}

fn io_error(message: String) -> StoreError {
    StoreError::Sled(sled::Error::Io(std::io::Error::other(message)))
}

/// One round: the waiting calls' events in shared transactions, then one flush, then the
/// answers.
fn run(db: &sled::Db, trees: &EventTrees, jobs: Vec<Job>) {
    let mut inserts: Vec<InsertJob> = Vec::new();
    let mut commits = Vec::new();
    for job in jobs {
        match job {
            Job::Commit(answer) => commits.push(answer),
            Job::Insert { items, answer } => inserts.push((items, answer)),
        }
    }
    let mut results: Vec<Result<Vec<Inserted>, String>> = Vec::with_capacity(inserts.len());
    // Calls share transactions of up to MAX_SHARED events (a larger call has its own): a
    // transaction holds its writes and the pages it replaced in memory until it ends.
    let mut start = 0;
    while start < inserts.len() {
        let mut end = start + 1;
        let mut events = inserts[start].0.len();
        while end < inserts.len() && events + inserts[end].0.len() <= MAX_SHARED {
            events += inserts[end].0.len();
            end += 1;
        }
        insert_group(trees, &inserts[start..end], &mut results);
        start = end;
    }
    let flushed = db.flush().map(|_| ()).map_err(|e| e.to_string());
    for ((_, answer), result) in inserts.into_iter().zip(results) {
        let _ = answer.send(match (&flushed, result) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), result) => result,
        });
    }
    for answer in commits {
        let _ = answer.send(flushed.clone());
    }
}
