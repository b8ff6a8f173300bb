//! What the host needs from storage, as traits: the catalog of definitions, events and
//! deliveries with the due queue, plugin state, the host's own secrets, and how much room is
//! left. The pipeline works only through these; the `store` module implements them on sled,
//! and a networked database can implement them for several hosts (the contract below says
//! what any implementation must keep, and the `conformance` test suite checks it).
//!
//! # The contract
//! - **Acknowledged means durable.** When [`Deliveries::insert_and_commit`] returns, its
//!   events and deliveries survive a crash; [`Capacity::commit`] does the same for every
//!   write before it.
//! - **Ingest is idempotent and all-or-nothing.** An event id already stored (per tenant) is
//!   [`Inserted::Duplicate`] and changes nothing; a batch whose write fails leaves none of
//!   its events behind.
//! - **The queue.** Every unfinished delivery with a `next_attempt_at` has an entry at that
//!   time; entries are read in [`QueuePosition`] order (due time, then delivery id). An
//!   engine that leaves an outdated entry behind for a while (after a crash) keeps that to
//!   itself: such an entry is never claimed, and the engine drops it.
//! - **Claims.** The scheduler claims due deliveries before working on them
//!   ([`Deliveries::claim`]): at most one holder has a claim at a time; a claim lapses at its
//!   `until` unless renewed ([`Deliveries::renew`]), and the delivery is then free to claim
//!   again; a delivery that moved on (another due time, finished) cannot be claimed for the
//!   old time. A shared database keeps claims in its rows (a lease, judged by its own clock);
//!   one process owning its files may keep them in memory, since a restart ends every claim
//!   anyway.
//! - **One outcome, written whole or not at all.** [`Deliveries::finish`] writes a delivery's
//!   new state together with its plugin's state changes, only while the claim holds (no
//!   other holder has claimed the delivery since) and only over the version of the record
//!   the worker read ([`Delivery::version`]): a delivery that ingest changed meanwhile (a
//!   debounced one taking a newer event, a batch taking one more) is never overwritten with
//!   the older copy. A refused write is [`StorageError::Conflict`] and changes nothing.
//! - **Definitions are written over the version read.** A webhook or connection is stored
//!   only over the [`Webhook::version`] it was read at ([`Conflict::Changed`] otherwise),
//!   and every write and delete of one (and of a webhook's signing secrets) is in the change
//!   feed ([`Definitions::definition_changes`]) once it can be read, so hosts keeping copies
//!   in memory follow each other's changes.
//! - **Routing indexes.** A debounced delivery (an entity, not in order) waiting to be
//!   claimed takes a newer event of its entity instead of a new delivery; an in-order
//!   delivery is first in line only when none of its entity stored before it is unfinished
//!   (the storage gives each its [`Delivery::line_position`] from its own sequence, never
//!   from a host's clock); a batch delivery takes events until claimed or full.
//!
//! # Blocking calls
//! Only the calls that wait for durability ([`Deliveries::insert_and_commit`],
//! [`Capacity::commit`]) return futures; the rest block their caller. sled answers them from
//! the calling thread in microseconds, and a future per call would cost every delivery for
//! nothing. A networked engine runs each call's round trip inside
//! `tokio::task::block_in_place` (with `Handle::block_on` for an async driver): the host runs
//! on tokio's multi-thread runtime, whose other workers go on meanwhile. The flow holds no
//! async lock across a storage call, and whole-table walks (lists, pruning, backups) already
//! run on blocking threads. Should the hand-offs cost too much at thousands of deliveries a
//! second, the calls of a delivery's life (`claim`, `close`, `finish`, `renew`,
//! `first_in_line`) are the ones to make async.

/// The checks every engine must pass; an engine outside this crate runs them with the
/// `conformance` feature (see [`conformance::Opener`]).
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod seal;

use std::future::Future;
use std::pin::Pin;

use crate::model::{
    ApiKey, ApiKeyId, Connection, ConnectionId, Delivery, DeliveryId, DeliveryStatus, Event,
    EventId, Millis, ModuleId, ModuleInfo, SigningKeys, Webhook, WebhookId,
};

/// A future a storage call returns.
pub type StorageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The storage could not read or write at all (I/O, a lost connection).
    #[error("storage: {source}")]
    Unavailable {
        /// What the engine reported.
        source: Box<dyn std::error::Error + Send + Sync>,
        /// Whether it ran out of space (or quota).
        out_of_space: bool,
    },
    /// One record could not be read (it does not decode, or its seal does not open).
    #[error("{source}")]
    Record {
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A conditional write was refused; nothing was written.
    #[error("{0}")]
    Conflict(Conflict),
}

/// Why a conditional write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The claim no longer holds: another holder claimed the delivery after it lapsed.
    #[error("the claim lapsed and another holder took the delivery")]
    ClaimLost,
    /// The record changed since it was read (another version is stored, or none).
    #[error("the record changed since it was read")]
    Changed,
}

impl StorageError {
    /// Whether the storage ran out of space (or quota) under this failure.
    pub fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable {
                out_of_space: true,
                ..
            }
        )
    }

    /// Whether the storage itself failed, rather than one record.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }

    /// The conflict, when a conditional write was refused.
    pub fn conflict(&self) -> Option<Conflict> {
        match self {
            StorageError::Conflict(conflict) => Some(*conflict),
            _ => None,
        }
    }
}

/// A delivery's new state, written by [`Deliveries::finish`] with what else its evaluation
/// changed.
#[derive(Debug)]
pub struct Outcome<'a> {
    /// The new state. Its `version` is the one read; a write counts it up.
    pub delivery: &'a mut Delivery,
    /// Plugin state changes to make with it.
    pub state: Option<StateWrite<'a>>,
    /// The claim goes on (a save midway); otherwise the queue entry moves from the claimed
    /// due time to the delivery's `next_attempt_at` and the claim ends.
    pub keep: bool,
}

/// Plugin state changes of one webhook: a value, or `None` to remove the key. Written only
/// while the webhook is still `tenant`'s (it was when the evaluation began): the outcome is
/// written without them when the webhook moved to another tenant or is gone.
#[derive(Clone, Copy, Debug)]
pub struct StateWrite<'a> {
    /// The webhook whose state changes.
    pub webhook: &'a WebhookId,
    /// Its tenant when the evaluation began.
    pub tenant: Option<&'a str>,
    /// The changes, applied in order.
    pub changes: &'a [(String, Option<Vec<u8>>)],
}

/// Result of storing one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The event is new; these deliveries carry it (new ones, or waiting ones of the same
    /// entity whose event it replaced).
    New(Vec<DeliveryId>),
    /// An event with this id was already stored; nothing changed.
    Duplicate,
}

/// Which deliveries a walk ([`Deliveries::scan_deliveries`]) returns, as data an engine can
/// turn into its own query: every filter set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only this webhook's.
    pub webhook: Option<WebhookId>,
    /// Only this event's (its own event, not a batch's).
    pub event: Option<EventId>,
    /// Only in one of these statuses (empty: any).
    pub statuses: Vec<DeliveryStatus>,
    /// Only replays (`true`) or only originals (`false`).
    pub replays: Option<bool>,
    /// Only those recorded for this tenant (see [`Tenancy`]).
    pub tenant: Tenancy,
    /// Only created at or after this time.
    pub created_from: Option<Millis>,
    /// Only created before this time.
    pub created_before: Option<Millis>,
    /// Only those after this delivery in the walk's order (a page's cursor).
    pub after: Option<DeliveryId>,
    /// Newest first (ids sort by creation).
    pub descending: bool,
    /// Most deliveries returned.
    pub limit: usize,
}

/// Whose deliveries a walk returns, by the tenant each was recorded for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tenancy {
    /// Anyone's.
    #[default]
    Any,
    /// Only this tenant's (`None`: only those recorded without a tenant).
    Only(Option<String>),
}

impl DeliveryQuery {
    /// Whether `d` passes every filter but the cursor.
    pub fn keeps(&self, d: &Delivery) -> bool {
        self.webhook.as_ref().is_none_or(|w| &d.webhook_id == w)
            && self.event.as_ref().is_none_or(|e| &d.event_id == e)
            && (self.statuses.is_empty() || self.statuses.contains(&d.status))
            && self.replays.is_none_or(|r| d.replay_of.is_some() == r)
            && match &self.tenant {
                Tenancy::Any => true,
                Tenancy::Only(tenant) => &d.tenant == tenant,
            }
            && self.created_from.is_none_or(|t| d.created_at >= t)
            && self.created_before.is_none_or(|t| d.created_at < t)
    }

    /// Whether the delivery `id` lies past the cursor in the walk's order.
    pub fn is_past_cursor(&self, id: &DeliveryId) -> bool {
        match &self.after {
            None => true,
            Some(after) if self.descending => id.as_str() < after.as_str(),
            Some(after) => id.as_str() > after.as_str(),
        }
    }
}

/// What [`Deliveries::scan_deliveries`] found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The deliveries kept, in walk order.
    pub deliveries: Vec<Delivery>,
    /// Keys of records that did not decode (at most 100 are named).
    pub unreadable: Vec<String>,
}

/// A place in the due queue: entries sort by due time, then delivery id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueuePosition {
    /// When the delivery is due.
    pub due: Millis,
    /// The delivery.
    pub id: DeliveryId,
}

/// Where a read of the due queue starts ([`Deliveries::due_from`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueFrom<'a> {
    /// At the first entry due at or after this time ([`Millis::EARLIEST`]: the head).
    Due(Millis),
    /// At this position (the entry there, if any, is read).
    At(&'a QueuePosition),
    /// After this position.
    After(&'a QueuePosition),
}

impl QueueFrom<'_> {
    /// Whether an entry at `position` is read by a walk starting here.
    pub fn admits(&self, position: &QueuePosition) -> bool {
        match self {
            QueueFrom::Due(due) => position.due >= *due,
            QueueFrom::At(at) => position >= *at,
            QueueFrom::After(after) => position > *after,
        }
    }
}

/// One entry of the due queue, as the scheduler reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// Where it is: its due time and delivery.
    pub position: QueuePosition,
    /// Its webhook; `None` when unreadable.
    pub webhook: Option<WebhookId>,
}

/// A claim on a delivery ([`Deliveries::claim`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The delivery.
    pub id: DeliveryId,
    /// The due time it was claimed for.
    pub due: Millis,
    /// Who holds it (a host's random id).
    pub holder: u64,
    /// When it lapses, as taken (renewals move it on in storage).
    pub until: Millis,
}

impl Claim {
    /// Whether `other` is this claim, however often either was renewed.
    pub fn is(&self, other: &Claim) -> bool {
        self.id == other.id && self.due == other.due && self.holder == other.holder
    }
}

/// A delivery claimed ([`Deliveries::claim`]), as stored when claimed.
#[derive(Debug)]
pub struct Claimed {
    /// The claim.
    pub claim: Claim,
    /// The delivery.
    pub delivery: Delivery,
    /// Its own event, read with it when its plugin is still to run (no requests stored) and
    /// it is not a batch; `None` otherwise, or when the event is gone.
    pub event: Option<Event>,
}

/// What a backup copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupReport {
    /// Records copied, of every kind.
    pub records: u64,
    /// Deliveries among them.
    pub deliveries: u64,
    /// Deliveries still to be sent, queued in the copy.
    pub pending: u64,
}

/// Free space as the storage last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceStatus {
    /// Free bytes ([`u64::MAX`]: not measured here, a database server's).
    pub free: u64,
    /// The floor in force (0: no floor).
    pub floor: u64,
    /// Whether new writes are accepted (free space at or above the floor).
    pub accepting: bool,
}

/// Why a write that would grow the storage was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the data directory's filesystem has {} free, below the floor of {} \
     (store.min_free_bytes / store.min_free_percent); new events and definitions are refused \
     until space is freed, pending deliveries go on",
    mib(*free),
    mib(*floor)
)]
pub struct LowSpace {
    /// Free bytes.
    pub free: u64,
    /// The floor.
    pub floor: u64,
}

/// Bytes as MiB with one decimal, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Definitions: modules, webhooks, connections, API keys and webhooks' signing secrets.
/// Credentials are kept sealed at rest.
pub trait Definitions: Send + Sync {
    /// Stores a module's bytes and description.
    fn put_module(&self, info: &ModuleInfo, bytes: &[u8]) -> Result<(), StorageError>;
    /// Removes a module.
    fn delete_module(&self, id: &ModuleId) -> Result<(), StorageError>;
    /// A module's description.
    fn module_info(&self, id: &ModuleId) -> Result<Option<ModuleInfo>, StorageError>;
    /// A module's bytes.
    fn module_bytes(&self, id: &ModuleId) -> Result<Option<Vec<u8>>, StorageError>;
    /// Every module's description, in id order.
    fn modules(&self) -> Result<Vec<ModuleInfo>, StorageError>;
    /// Stores a webhook over the version it was read at (a new one: 0, and none stored),
    /// counting its `version` up; [`Conflict::Changed`] when another was stored meanwhile.
    fn put_webhook(&self, webhook: &mut Webhook) -> Result<(), StorageError>;
    /// Removes a webhook with its plugin state and signing secrets.
    fn delete_webhook(&self, id: &WebhookId) -> Result<(), StorageError>;
    /// One webhook.
    fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StorageError>;
    /// Every webhook, in id order.
    fn webhooks(&self) -> Result<Vec<Webhook>, StorageError>;
    /// Stores a connection over the version it was read at, like [`Definitions::put_webhook`].
    fn put_connection(&self, connection: &mut Connection) -> Result<(), StorageError>;
    /// One connection.
    fn connection(&self, id: &ConnectionId) -> Result<Option<Connection>, StorageError>;
    /// Removes a connection.
    fn delete_connection(&self, id: &ConnectionId) -> Result<(), StorageError>;
    /// Every connection, in id order.
    fn connections(&self) -> Result<Vec<Connection>, StorageError>;
    /// Stores an API key (its hash).
    fn put_api_key(&self, key: &ApiKey) -> Result<(), StorageError>;
    /// One API key.
    fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, StorageError>;
    /// Every API key, in id order.
    fn api_keys(&self) -> Result<Vec<ApiKey>, StorageError>;
    /// A webhook's signing secrets.
    fn signing_keys(&self, id: &WebhookId) -> Result<Option<SigningKeys>, StorageError>;
    /// Stores a webhook's signing secrets.
    fn put_signing_keys(&self, id: &WebhookId, keys: &SigningKeys) -> Result<(), StorageError>;
    /// The webhooks and connections written or deleted after position `after` of the
    /// change feed, in the order written, with the position reached (pass it next time).
    /// Every host's writes are in it, so a host keeping copies in memory follows what the
    /// others change. `reset` when the feed no longer reaches back to `after`: read
    /// everything again.
    fn definition_changes(&self, after: u64) -> Result<DefinitionChanges, StorageError>;
    /// The change feed's last position: a reader starting now follows from there.
    fn definition_feed_head(&self) -> Result<u64, StorageError>;
    /// Woken when any host announces a write to the change feed, where the engine can
    /// announce them (`None`: it cannot). Announcements can be lost, so a follower still
    /// reads the feed now and then.
    fn definition_announcements(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// What [`Definitions::definition_changes`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefinitionChanges {
    /// Where the feed was read to.
    pub position: u64,
    /// What changed, in the order written (an id may come more than once).
    pub changed: Vec<Changed>,
    /// The feed no longer holds everything after the position asked for.
    pub reset: bool,
}

/// One definition written or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Changed {
    /// A webhook (its signing secrets and plugin state with it).
    Webhook(WebhookId),
    /// A connection.
    Connection(ConnectionId),
}

/// Events, deliveries and the due queue (see the contract in the module docs).
pub trait Deliveries: Send + Sync {
    /// Stores events with their deliveries (routing debounced and batched ones into waiting
    /// deliveries) and makes them durable: all or none.
    fn insert_and_commit(
        &self,
        items: Vec<(Event, Vec<Delivery>)>,
    ) -> StorageFuture<'_, Vec<Inserted>>;
    /// One event of `tenant` (or of none).
    fn event(&self, tenant: Option<&str>, id: &EventId) -> Result<Option<Event>, StorageError>;
    /// One delivery.
    fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StorageError>;
    /// The deliveries `query` selects, in id (creation) order (newest first when
    /// `descending`), at most `limit`. A record that does not decode is named in
    /// [`Scanned::unreadable`] and passed over. Blocking, and it may read every delivery:
    /// callers run it off the async threads.
    fn scan_deliveries(&self, query: &DeliveryQuery) -> Result<Scanned, StorageError>;
    /// Claims the deliveries at `positions` for `holder` until `until`, each returned as
    /// stored (with its event, see [`Claimed`]) in the order asked, or `None` when it is
    /// gone, finished or due at another time, or when another holder's claim has not lapsed
    /// at `now`. The same holder may claim again. One call for a whole pass of the
    /// scheduler: it claims first, and spends endpoint and fair-share allowances only on
    /// what it holds.
    fn claim(
        &self,
        positions: &[QueuePosition],
        holder: u64,
        until: Millis,
        now: Millis,
    ) -> Result<Vec<Option<Claimed>>, StorageError>;
    /// Before a claimed collecting delivery (debounced, or a batch) is evaluated: closes it
    /// to newer events, if it still holds the events `read` has. `false` means a newer event
    /// changed it since it was read; it is due again as it is now, and the claim is over.
    fn close(&self, claim: &Claim, read: &Delivery) -> Result<bool, StorageError>;
    /// Writes a claimed delivery's outcome: its new state and its plugin's state changes,
    /// together or not at all, if `claim` still holds and the stored record is at the
    /// version the delivery was read at; the delivery's `version` is then counted up.
    /// Refused with [`Conflict::ClaimLost`] or [`Conflict::Changed`], writing nothing (a
    /// refused final write still ends the claim).
    fn finish(&self, claim: &Claim, outcome: Outcome<'_>) -> Result<(), StorageError>;
    /// Extends a claim in use to `until`; [`Conflict::ClaimLost`] when it no longer holds.
    fn renew(&self, claim: &Claim, until: Millis) -> Result<(), StorageError>;
    /// Writes a delivery's new state and moves its queue entry to its `next_attempt_at`
    /// (removed when final), without a claim: for deliveries no worker holds (replayed,
    /// recovered, or put off after a storage error). Only over the version read
    /// ([`Conflict::Changed`] otherwise; a delivery not stored yet is at version 0, so a new
    /// one is written this way); the delivery's `version` is counted up.
    fn update_delivery(&self, delivery: &mut Delivery) -> Result<(), StorageError>;
    /// For an in-order delivery: the first unfinished delivery of its webhook and entity.
    fn first_in_line(&self, delivery: &Delivery) -> Result<Option<DeliveryId>, StorageError>;
    /// Queue entries from `from` on, in position order, read lazily.
    fn due_from<'a>(
        &'a self,
        from: QueueFrom<'_>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a>;
    /// The earliest due time among entries this handle wrote since the last call (`None`:
    /// none): a reader that walks the queue once in order goes back there for entries
    /// written behind it. Only a hint: entries another host writes may not be in it, and
    /// the scheduler sweeps from the head now and then for those.
    fn take_written_due(&self) -> Option<Millis>;
    /// Number of queue entries.
    fn queue_len(&self) -> usize;
    /// The hosts working on this storage, as `holder` sees them at `now`: it notes itself
    /// alive, and learns how many are and where it stands among them, to take its share of
    /// limits meant for all of them together (per-endpoint concurrency and rate). Storage
    /// one process owns has that one host.
    fn peers(&self, holder: u64, now: Millis) -> Result<Peers, StorageError> {
        let _ = (holder, now);
        Ok(Peers { rank: 0, count: 1 })
    }
}

/// The hosts working on one storage, as one of them sees them ([`Deliveries::peers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peers {
    /// Where the asking host stands among them (from 0), in an order every host sees alike.
    pub rank: usize,
    /// How many there are, the asking host included.
    pub count: usize,
}

impl Peers {
    /// This host's share of `limit` meant for all of them: an even part, the rest going one
    /// each to the first hosts, so the shares add up to `limit`.
    pub fn share(&self, limit: usize) -> usize {
        let count = self.count.max(1);
        limit / count + usize::from(self.rank < limit % count)
    }
}

/// Plugin state, per webhook (written with a delivery's outcome, [`Deliveries::finish`]).
pub trait PluginStates: Send + Sync {
    /// One value.
    fn state_get(&self, webhook: &WebhookId, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Bytes (keys plus values) a webhook's state holds.
    fn state_size(&self, webhook: &WebhookId) -> Result<usize, StorageError>;
    /// Removes all of a webhook's state.
    fn state_clear(&self, webhook: &WebhookId) -> Result<(), StorageError>;
}

/// The host's own secrets and durability.
pub trait Capacity: Send + Sync {
    /// A random 32-byte secret under `name`, made on first use and kept.
    fn host_secret(&self, name: &str) -> Result<[u8; 32], StorageError>;
    /// Whether a write that grows the storage may go ahead now.
    fn admit(&self) -> Result<(), LowSpace>;
    /// Free space as last seen.
    fn space_status(&self) -> SpaceStatus;
    /// Why the storage could not be reached at its last try (`None`: it answered). A
    /// database out of reach makes the host unhealthy until a call gets through again; an
    /// embedded engine is always there.
    fn unreachable(&self) -> Option<String> {
        None
    }
    /// Bytes the storage holds, where the engine measures it (`None`: the data directory's
    /// size is what it holds).
    fn stored_bytes(&self) -> Option<u64> {
        None
    }
    /// A networked engine's connections (`None`: it has none).
    fn database_connections(&self) -> Option<crate::metrics::Connections> {
        None
    }
    /// Hands the engine where to note how long its calls take (an embedded engine, whose
    /// calls are the host's own work, may ignore it).
    fn time_calls(&self, calls: crate::metrics::StorageCalls) {
        let _ = calls;
    }
    /// Makes everything written so far durable; concurrent callers share the work.
    fn commit(&self) -> StorageFuture<'_, ()>;
    /// Makes everything written so far durable, blocking (shutdown, tests).
    fn flush(&self) -> Result<(), StorageError>;
    /// Writes a copy that a host of the same engine starts from, into `dir` (new or empty),
    /// while the host works on. It stands for `taken_at`: every event acknowledged before,
    /// with its deliveries (each as it was when copied, queued if pending, with its events),
    /// and nothing created after. Blocking.
    fn backup(
        &self,
        dir: &std::path::Path,
        taken_at: crate::model::Millis,
    ) -> Result<BackupReport, StorageError>;
}

/// How a finished delivery ended, as retention sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Delivered, or skipped by its plugin: kept for `retention.delivered`.
    Succeeded,
    /// Failed or dead: kept for `retention.failed`.
    Failed,
}

impl Finished {
    /// How a delivery of `status` ended; `None` while it is pending.
    pub fn of(status: crate::model::DeliveryStatus) -> Option<Finished> {
        use crate::model::DeliveryStatus;
        match status {
            DeliveryStatus::Pending => None,
            DeliveryStatus::Delivered | DeliveryStatus::Skipped => Some(Finished::Succeeded),
            DeliveryStatus::Failed | DeliveryStatus::Dead => Some(Finished::Failed),
        }
    }
}

/// Asked between two batches of a pruning walk, with what it has removed so far: `true`
/// stops the walk there (the host is shutting down).
pub type StopWalk<'a> = &'a (dyn Fn(u64) -> bool + Sync);

/// Pruning by age (retention). Each walk removes in small batches, each apart from the next,
/// so deliveries and API calls go on between them; a walk stopped midway loses nothing and the
/// next one goes on. Blocking.
///
/// What a pending delivery needs is never removed: its record, its events (however old), and
/// the indexes that route it.
pub trait Pruning: Send + Sync {
    /// Completes what the walks below need for records stored before this engine kept it (a
    /// one-time walk over every event and delivery); a no-op once done. `false` when it was
    /// stopped before the end (it starts over next time).
    fn prepare_pruning(&self, stop: StopWalk<'_>) -> Result<bool, StorageError>;
    /// Removes finished deliveries, with their attempts and logs, that finished before the
    /// cutoff `cutoff` gives for their webhook and outcome (`None`: kept), `batch` at a time.
    /// `shortest_keep` is the shortest time any finished delivery is kept now (`None`: all
    /// are kept for ever): an engine may leave a delivery made less than that long ago, by
    /// the wall clock, for a later pass. Returns how many it removed.
    fn prune_deliveries(
        &self,
        cutoff: &(dyn Fn(&WebhookId, Finished) -> Option<Millis> + Sync),
        shortest_keep: Option<std::time::Duration>,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StorageError>;
    /// Removes events received before `before` that no pending delivery needs, `batch` at a
    /// time; their ids may then be used again. An event a pending delivery needed may be left
    /// past the cutoff after that delivery has finished, for about as long as it was pending
    /// past it and at most an hour (so a delivery pending for months is not looked at every
    /// pass). Returns how many it removed.
    fn prune_events(
        &self,
        before: Millis,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StorageError>;
    /// Keeps a stored event for a new pending delivery made for it (a replay), before that
    /// delivery is written: the event is not pruned while the delivery is pending. `false`
    /// when the event is gone, or was received after `received_by` (the time the delivery
    /// replayed had finished: an event of the same id stored later is another event).
    fn keep_event_for(
        &self,
        tenant: Option<&str>,
        id: &EventId,
        delivery: &DeliveryId,
        received_by: Millis,
    ) -> Result<bool, StorageError>;
}

/// Everything the host stores.
pub trait Storage: Definitions + Deliveries + PluginStates + Capacity + Pruning {}

impl<T: Definitions + Deliveries + PluginStates + Capacity + Pruning> Storage for T {}
