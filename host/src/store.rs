//! Durable storage in sled: modules, webhooks, events, deliveries, the due-time queue and
//! plugin state.
//!
//! Values are JSON; records holding credentials (connections, signing secrets) are sealed
//! with the host's secrets key ([`seal`]). The queue tree is keyed by `due time (u64 big-endian ms) ++ delivery id`,
//! so iterating it walks deliveries in due order and a million pending deliveries cost disk,
//! not memory. Event records are LZ4-compressed ([`codec`]).
//!
//! Changes that must be atomic with an index (an event whose deliveries are debounced, in
//! order or batched; a collecting or in-order delivery's new state) are sled transactions.
//! sled makes every operation on every tree wait while one runs, so the hot paths avoid
//! them: plain events are stored with ordered writes made all-or-nothing by an intent record
//! ([`round`]), and a plain delivery's new state is three ordered writes (see
//! [`Store::update_delivery`]); both rely on sled recovering a prefix of its log. Ingest
//! runs many API calls at once on the commit thread ([`Store::insert_and_commit`]), which
//! then flushes once for all of them (group commit). [`Store::commit`] makes everything
//! written so far durable, sharing that flush.

mod claims;
mod codec;
mod commit;
#[cfg(test)]
mod engine_faults;
mod recent;
mod round;
pub mod seal;
pub mod space;
mod storage_impl;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

pub use seal::Sealer;

use crate::storage::{parse_queue_key, queue_key, Inserted, QueueEntry, Scanned};

use crate::model::{
    ApiKey, ApiKeyId, Connection, ConnectionId, Delivery, DeliveryId, Event, EventId, Millis,
    ModuleId, ModuleInfo, SigningKeys, Webhook, WebhookId,
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode.
    #[error("corrupt record in {tree}: {source}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The decode error.
        source: serde_json::Error,
    },
    /// The store was not opened: too little free space to open it safely.
    #[error(transparent)]
    Space(#[from] space::OpenRefused),
    /// A sealed record could not be opened.
    #[error("record {id} in {tree}: {source}")]
    Sealed {
        /// The tree.
        tree: &'static str,
        /// The record's key.
        id: String,
        /// Why.
        source: seal::SealError,
    },
}

impl StoreError {
    /// Whether the filesystem ran out of space (or quota) under this failure.
    pub fn is_out_of_space(&self) -> bool {
        let StoreError::Sled(sled::Error::Io(e)) = self else {
            return false;
        };
        e.kind() == std::io::ErrorKind::StorageFull
            || e.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            // sled hands out copies of an I/O error that keep only its text.
            || e.to_string().contains("No space left on device")
    }

    /// Whether the store itself failed (I/O), rather than one record.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Sled(_))
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(err: TransactionError<StoreError>) -> Self {
        match err {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// The events tree's key of an event: its id, after its tenant and a zero byte when it has
/// one. Event ids are unique per tenant: two tenants' events of the same id are two events.
pub fn event_key(tenant: Option<&str>, id: &EventId) -> String {
    match tenant {
        None => id.as_str().to_string(),
        Some(tenant) => format!("{tenant}\0{id}"),
    }
}

/// The key of a webhook's index entries for one delivery: the webhook id, then, when the
/// webhook takes several tenants' events, a 1 byte and the events' tenant. One tenant's
/// events never join another's batch or replace another's waiting event.
fn partition_key(delivery: &Delivery) -> Vec<u8> {
    let webhook = delivery.webhook_id.as_str();
    let mut key = Vec::with_capacity(webhook.len() + 1);
    key.extend_from_slice(webhook.as_bytes());
    if let Some(tenant) = &delivery.event_tenant {
        key.push(1);
        key.extend_from_slice(tenant.as_bytes());
    }
    key
}

/// The key of the debounce index: the partition ([`partition_key`]), a zero byte, the
/// entity.
fn debounce_key(delivery: &Delivery, entity: &str) -> Vec<u8> {
    let mut key = partition_key(delivery);
    key.push(0);
    key.extend_from_slice(entity.as_bytes());
    key
}

/// The key of an in-order delivery in the FIFO index: its entity's prefix (partition, zero,
/// entity, zero) then its id, so one entity's unfinished deliveries sort by creation.
fn fifo_key(delivery: &Delivery) -> Option<Vec<u8>> {
    let entity = delivery.entity.as_deref().filter(|_| delivery.in_order)?;
    let mut key = debounce_key(delivery, entity);
    key.push(0);
    key.extend_from_slice(delivery.id.as_str().as_bytes());
    Some(key)
}

fn abort(err: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(err)
}

/// An event's record, and its deliveries' queue keys and records, encoded before the
/// transaction (which may run more than once).
type EncodedEvent = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// The trees a transactional event insertion writes (some delivery is debounced, in order or
/// batched; plain ones go through [`round`]).
struct IngestTrees<'a> {
    events: &'a TransactionalTree,
    dtree: &'a TransactionalTree,
    queue: &'a TransactionalTree,
    debounce: &'a TransactionalTree,
    fifo: &'a TransactionalTree,
    batches: &'a TransactionalTree,
}

/// Events' records, and their deliveries' queue keys and records.
fn encode_items(items: &[(&Event, &[Delivery])]) -> Vec<EncodedEvent> {
    items
        .iter()
        .map(|(event, deliveries)| {
            let deliveries = deliveries
                .iter()
                .map(|d| {
                    let due = d.next_attempt_at.unwrap_or(d.created_at);
                    (queue_key(due, &d.id), encode(d))
                })
                .collect();
            (codec::encode_event(event), deliveries)
        })
        .collect()
}

/// One event of [`Store::insert_events`], inside its transaction.
fn insert_one(
    trees: &IngestTrees<'_>,
    event: &Event,
    event_bytes: &[u8],
    deliveries: &[Delivery],
    encoded: &[(Vec<u8>, Vec<u8>)],
) -> Result<Inserted, ConflictableTransactionError<StoreError>> {
    let IngestTrees {
        events,
        dtree,
        queue,
        debounce,
        fifo,
        batches,
    } = trees;
    let event_key = event_key(event.tenant.as_deref(), &event.id);
    if events.get(event_key.as_str())?.is_some() {
        return Ok(Inserted::Duplicate);
    }
    events.insert(event_key.as_bytes(), event_bytes)?;
    let mut carried = Vec::with_capacity(deliveries.len());
    for (delivery, (key, bytes)) in deliveries.iter().zip(encoded) {
        let plain = delivery.batch_limit <= 1 && delivery.entity.is_none();
        if !plain {
            if delivery.batch_limit > 1 {
                // Join the webhook's collecting batch if it has room.
                let index = partition_key(delivery);
                let index = index.as_slice();
                let open = match batches.get(index)? {
                    Some(id) => dtree.get(&id)?,
                    None => None,
                };
                if let Some(raw) = open {
                    let mut open: Delivery = decode("deliveries", &raw).map_err(abort)?;
                    if open.replaceable() && open.batch_events.len() < open.batch_limit as usize {
                        open.batch_events.push(event.id.clone());
                        open.updated_at = delivery.created_at;
                        if open.batch_events.len() >= open.batch_limit as usize {
                            // Full: due now, and no longer collecting.
                            if let Some(old) = open.next_attempt_at {
                                queue.remove(queue_key(old, &open.id))?;
                            }
                            open.next_attempt_at = Some(delivery.created_at);
                            queue.insert(
                                queue_key(delivery.created_at, &open.id),
                                open.webhook_id.as_str().as_bytes(),
                            )?;
                            batches.remove(index)?;
                        }
                        dtree.insert(open.id.as_str().as_bytes(), encode(&open))?;
                        carried.push(open.id);
                        continue;
                    }
                }
                batches.insert(index, delivery.id.as_str().as_bytes())?;
            } else if let Some(line) = fifo_key(delivery) {
                fifo.insert(line, &[] as &[u8])?;
            } else if let Some(entity) = &delivery.entity {
                let index = debounce_key(delivery, entity);
                let waiting = match debounce.get(&index)? {
                    Some(id) => dtree.get(&id)?,
                    None => None,
                };
                if let Some(raw) = waiting {
                    let mut waiting: Delivery = decode("deliveries", &raw).map_err(abort)?;
                    if waiting.replaceable() {
                        if let Some(old) = waiting.next_attempt_at {
                            queue.remove(queue_key(old, &waiting.id))?;
                        }
                        let due = delivery.next_attempt_at.unwrap_or(delivery.created_at);
                        waiting.replace_event(event.id.clone(), due, delivery.created_at);
                        queue.insert(
                            queue_key(due, &waiting.id),
                            waiting.webhook_id.as_str().as_bytes(),
                        )?;
                        dtree.insert(waiting.id.as_str().as_bytes(), encode(&waiting))?;
                        carried.push(waiting.id);
                        continue;
                    }
                }
                debounce.insert(index, delivery.id.as_str().as_bytes())?;
            }
        }
        dtree.insert(delivery.id.as_str().as_bytes(), bytes.as_slice())?;
        queue.insert(key.as_slice(), delivery.webhook_id.as_str().as_bytes())?;
        carried.push(delivery.id.clone());
    }
    Ok(Inserted::New(carried))
}

/// The trees an event's insertion writes, apart from the [`Store`] so the commit thread can
/// insert without holding the store (and its handle to that thread).
#[derive(Clone)]
pub(super) struct EventTrees {
    events: sled::Tree,
    deliveries: sled::Tree,
    queue: sled::Tree,
    debounce: sled::Tree,
    fifo: sled::Tree,
    batches: sled::Tree,
    /// Plain ingest rounds not yet finished (see [`round`]).
    intents: sled::Tree,
    /// Held while events are inserted: rounds never overlap, and an id's check for a
    /// duplicate and its writes are one step.
    ingest_lock: Arc<std::sync::Mutex<()>>,
    recent: Arc<recent::RecentEvents>,
    recent_deliveries: Arc<recent::RecentDeliveries>,
    written: Arc<WrittenDue>,
}

/// The earliest due time among the queue entries written since the scheduler last asked
/// ([`Store::take_written_due`]): its sweep walks the queue once, in key order, and an entry
/// written behind where it has got to (due no later than the entries it already passed) is
/// found by going back to that due time instead of walking the whole queue again.
struct WrittenDue(std::sync::atomic::AtomicI64);

impl Default for WrittenDue {
    fn default() -> Self {
        WrittenDue(std::sync::atomic::AtomicI64::new(i64::MAX))
    }
}

impl WrittenDue {
    /// Notes an entry due at `due`, once it is written (so whoever takes the mark finds it).
    fn note(&self, due: Millis) {
        self.0
            .fetch_min(due.as_i64(), std::sync::atomic::Ordering::AcqRel);
    }

    fn take(&self) -> Option<Millis> {
        let due = self.0.swap(i64::MAX, std::sync::atomic::Ordering::AcqRel);
        (due != i64::MAX).then_some(Millis(due))
    }
}

impl EventTrees {
    /// Stores events and queues their deliveries: all are stored or none (after a crash
    /// too); a later event sees the earlier ones' writes (a repeated id is a duplicate, a
    /// second event of an entity debounces onto the first's delivery). When no delivery is
    /// debounced, in order or batched, as ordered writes under an intent ([`round`]);
    /// otherwise in one transaction.
    ///
    /// # Errors
    /// On storage failure.
    pub(super) fn insert_events(
        &self,
        items: &[(&Event, &[Delivery])],
    ) -> Result<Vec<Inserted>, StoreError> {
        let encoded = encode_items(items);
        let _ingest = self.ingest_lock.lock().unwrap_or_else(|e| e.into_inner());
        let is_plain = |d: &&Delivery| d.batch_limit <= 1 && d.entity.is_none();
        let plain = items
            .iter()
            .flat_map(|(_, deliveries)| deliveries.iter())
            .all(|d| is_plain(&d));
        // Kept before they can be read or written through sled (see `recent`).
        let kept = || {
            items
                .iter()
                .flat_map(|(_, deliveries)| deliveries.iter())
                .filter(is_plain)
        };
        self.recent_deliveries.put(kept());
        let result = if plain {
            round::insert_plain(self, items, &encoded).map_err(TransactionError::Abort)
        } else {
            (
                &self.events,
                &self.deliveries,
                &self.queue,
                &self.debounce,
                &self.fifo,
                &self.batches,
            )
                .transaction(|(events, dtree, queue, debounce, fifo, batches)| {
                    let trees = IngestTrees {
                        events,
                        dtree,
                        queue,
                        debounce,
                        fifo,
                        batches,
                    };
                    items
                        .iter()
                        .zip(&encoded)
                        .map(|((event, deliveries), (event_bytes, encoded))| {
                            insert_one(&trees, event, event_bytes, deliveries, encoded)
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
        };
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                self.recent_deliveries.forget(kept().map(|d| &d.id));
                return Err(e.into());
            }
        };
        for ((event, deliveries), inserted) in items.iter().zip(&result) {
            if matches!(inserted, Inserted::New(_)) {
                self.recent.put(event);
            } else {
                self.recent_deliveries
                    .forget(deliveries.iter().filter(is_plain).map(|d| &d.id));
            }
        }
        // A debounced or batched delivery moves to the new delivery's due time, or to its
        // creation time when full: both are covered by the earliest of either.
        let earliest = items
            .iter()
            .flat_map(|(_, deliveries)| deliveries.iter())
            .map(|d| d.next_attempt_at.unwrap_or(d.created_at).min(d.created_at))
            .min();
        if let Some(due) = earliest {
            self.written.note(due);
        }
        Ok(result)
    }
}

/// The host's sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    modules: sled::Tree,
    module_info: sled::Tree,
    webhooks: sled::Tree,
    connections: sled::Tree,
    api_keys: sled::Tree,
    plugin_state: sled::Tree,
    meta: sled::Tree,
    signing: sled::Tree,
    sealer: Sealer,
    /// The free-space guard over the data directory.
    space: Arc<space::SpaceGuard>,
    committer: commit::Committer,
    /// The event, delivery and queue trees and their indexes.
    ingest: EventTrees,
    /// Claims on deliveries: in memory, since only this process opens the files.
    claims: Arc<claims::Claims>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model types serialise")
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

/// The associated data a sealed record is bound to: its tree and key.
fn context(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(tree.len() + 1 + key.len());
    context.extend_from_slice(tree.as_bytes());
    context.push(0);
    context.extend_from_slice(key);
    context
}

/// Most unreadable records one scan names (all are logged).
const MAX_UNREADABLE_NAMED: usize = 100;

impl Store {
    /// Opens (or creates) the database in `dir`, sealing credentials with `sealer`. Records
    /// stored in clear by an earlier version are sealed now.
    ///
    /// # Errors
    /// When sled cannot open the directory (missing permissions, another process holds it),
    /// or a sealed record does not open with this key.
    pub fn open(dir: &Path, sealer: Sealer) -> Result<Store, StoreError> {
        Self::open_with_cache(dir, sealer, 16 << 20)
    }

    /// [`Store::open`] with sled's page cache limited to `cache_bytes`.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with_cache(
        dir: &Path,
        sealer: Sealer,
        cache_bytes: usize,
    ) -> Result<Store, StoreError> {
        let config = crate::config::StoreConfig {
            cache_bytes,
            min_free_bytes: 0,
            min_free_percent: 0.0,
            ballast_bytes: 0,
        };
        Self::open_guarded(dir, sealer, &config)
    }

    /// Opens the database in `dir` with `config`'s page cache and free-space guard: free
    /// space is checked (and the ballast released when low) before anything is written.
    ///
    /// # Errors
    /// [`StoreError::Space`] when too little space is left to open safely (nothing was
    /// written); otherwise as [`Store::open`].
    pub fn open_guarded(
        dir: &Path,
        sealer: Sealer,
        config: &crate::config::StoreConfig,
    ) -> Result<Store, StoreError> {
        let space = Arc::new(space::SpaceGuard::new(dir, config));
        space.before_open()?;
        let cache_bytes = config.cache_bytes;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes as u64)
            .flush_every_ms(Some(500))
            .open()?;
        let ingest = EventTrees {
            events: db.open_tree("events")?,
            deliveries: db.open_tree("deliveries")?,
            queue: db.open_tree("queue")?,
            debounce: db.open_tree("debounce")?,
            fifo: db.open_tree("fifo")?,
            batches: db.open_tree("batches")?,
            intents: db.open_tree("ingest_intents")?,
            ingest_lock: Arc::default(),
            recent: Arc::default(),
            recent_deliveries: Arc::default(),
            written: Arc::default(),
        };
        let store = Store {
            modules: db.open_tree("modules")?,
            module_info: db.open_tree("module_info")?,
            webhooks: db.open_tree("webhooks")?,
            connections: db.open_tree("connections")?,
            api_keys: db.open_tree("api_keys")?,
            plugin_state: db.open_tree("plugin_state")?,
            meta: db.open_tree("meta")?,
            signing: db.open_tree("signing")?,
            sealer,
            space,
            committer: commit::Committer::start(db.clone(), ingest.clone()),
            ingest,
            claims: Arc::default(),
            db,
        };
        let undone = round::undo_unfinished(&store.ingest)?;
        if undone > 0 {
            tracing::warn!(
                events = undone,
                "undid an ingest round a crash cut short (never acknowledged)"
            );
        }
        store.seal_plain_records()?;
        Ok(store)
    }

    /// Seals records an earlier version stored in clear, and checks every sealed one opens.
    fn seal_plain_records(&self) -> Result<(), StoreError> {
        for (tree, name) in [
            (&self.connections, "connections"),
            (&self.signing, "signing"),
            (&self.webhooks, "webhooks"),
        ] {
            for entry in tree.iter() {
                let (key, value) = entry?;
                if self.unseal(name, &key, &value)?.is_none() {
                    tree.insert(&key, self.sealer.seal(&context(name, &key), &value))?;
                }
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// The plain bytes of a record of a sealed tree; `None` when it was stored in clear.
    fn unseal(
        &self,
        tree: &'static str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.sealer
            .open(&context(tree, key), stored)
            .map_err(|source| StoreError::Sealed {
                tree,
                id: String::from_utf8_lossy(key).into_owned(),
                source,
            })
    }

    fn decode_sealed<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<T, StoreError> {
        match self.unseal(tree, key, stored)? {
            Some(plain) => decode(tree, &plain),
            None => decode(tree, stored),
        }
    }

    /// The free-space guard over the data directory.
    pub fn space(&self) -> &space::SpaceGuard {
        &self.space
    }

    /// Makes everything written so far durable. Concurrent callers share one flush.
    ///
    /// # Errors
    /// When the flush fails.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.committer.commit().await
    }

    /// Flushes synchronously (shutdown, tests).
    ///
    /// # Errors
    /// When the flush fails.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    // ----- modules -----

    /// Stores a module's bytes and description (overwriting the description).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_module(&self, info: &ModuleInfo, bytes: &[u8]) -> Result<(), StoreError> {
        (&self.modules, &self.module_info).transaction(|(modules, infos)| {
            modules.insert(info.id.as_str().as_bytes(), bytes)?;
            infos.insert(info.id.as_str().as_bytes(), encode(info))?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Deletes a module's bytes and description.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_module(&self, id: &ModuleId) -> Result<(), StoreError> {
        (&self.modules, &self.module_info).transaction(|(modules, infos)| {
            modules.remove(id.as_str().as_bytes())?;
            infos.remove(id.as_str().as_bytes())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// A module's description.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn module_info(&self, id: &ModuleId) -> Result<Option<ModuleInfo>, StoreError> {
        self.module_info
            .get(id.as_str())?
            .map(|v| decode("module_info", &v))
            .transpose()
    }

    /// A module's component bytes.
    ///
    /// # Errors
    /// On storage failure.
    pub fn module_bytes(&self, id: &ModuleId) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.modules.get(id.as_str())?)
    }

    /// Every module's description, in id order.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        self.module_info
            .iter()
            .values()
            .map(|v| decode("module_info", &v?))
            .collect()
    }

    // ----- webhooks -----

    /// Stores a webhook (create or replace).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        // Sealed: its headers and plugin config may hold tokens.
        let key = webhook.id.as_str().as_bytes();
        let sealed = self
            .sealer
            .seal(&context("webhooks", key), &encode(webhook));
        self.webhooks.insert(key, sealed)?;
        Ok(())
    }

    /// Deletes a webhook and its plugin state.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_webhook(&self, id: &WebhookId) -> Result<(), StoreError> {
        self.webhooks.remove(id.as_str())?;
        self.signing.remove(id.as_str())?;
        let mut prefix = id.as_str().as_bytes().to_vec();
        prefix.push(0);
        for key in self.plugin_state.scan_prefix(&prefix).keys() {
            self.plugin_state.remove(key?)?;
        }
        Ok(())
    }

    /// One webhook.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.webhooks
            .get(id.as_str())?
            .map(|v| self.decode_sealed("webhooks", id.as_str().as_bytes(), &v))
            .transpose()
    }

    /// Every webhook, oldest first.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.webhooks
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                self.decode_sealed("webhooks", &key, &value)
            })
            .collect()
    }

    // ----- connections -----

    /// Stores a connection (create or replace).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        let key = connection.id.as_str().as_bytes();
        let sealed = self
            .sealer
            .seal(&context("connections", key), &encode(connection));
        self.connections.insert(key, sealed)?;
        Ok(())
    }

    /// Deletes a connection.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_connection(&self, id: &ConnectionId) -> Result<(), StoreError> {
        self.connections.remove(id.as_str())?;
        Ok(())
    }

    /// Every connection, oldest first.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn connections(&self) -> Result<Vec<Connection>, StoreError> {
        self.connections
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                self.decode_sealed("connections", &key, &value)
            })
            .collect()
    }

    // ----- API keys -----

    /// Stores an API key (create or replace).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.api_keys.insert(key.id.as_str(), encode(key))?;
        Ok(())
    }

    /// One API key.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys
            .get(id.as_str())?
            .map(|v| decode("api_keys", &v))
            .transpose()
    }

    /// Every API key, oldest first.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.api_keys
            .iter()
            .values()
            .map(|v| decode("api_keys", &v?))
            .collect()
    }

    // ----- events and deliveries -----

    /// Stores a new event and queues its deliveries, all or nothing; an event whose id is
    /// already stored changes nothing. A delivery with an entity whose webhook already has a
    /// replaceable delivery waiting for that entity is not added: the waiting one takes this
    /// event and the new due time instead (debounce). Not durable until [`Store::commit`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn insert_event(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Inserted, StoreError> {
        let mut inserted = self.insert_events(&[(event, deliveries)])?;
        Ok(inserted.pop().expect("one result per event"))
    }

    /// [`Store::insert_event`] for several events: all are stored or none (see
    /// [`EventTrees::insert_events`]). Not durable until [`Store::commit`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn insert_events(
        &self,
        items: &[(&Event, &[Delivery])],
    ) -> Result<Vec<Inserted>, StoreError> {
        self.ingest.insert_events(items)
    }

    /// Stores events with their deliveries and makes them durable, as the events of one API
    /// call: together with those of every other call waiting meanwhile, in one round and
    /// one flush on the commit thread. A flush (and a sled transaction, which writes out
    /// and syncs sled's current log buffer when it begins) per call cost more than the
    /// call's writes; shared, many calls pay for one.
    ///
    /// # Errors
    /// On storage failure (then none of the events is stored).
    pub async fn insert_and_commit(
        &self,
        items: Vec<(Event, Vec<Delivery>)>,
    ) -> Result<Vec<Inserted>, StoreError> {
        self.committer.insert(items).await
    }

    /// Before a collecting delivery (debounced, or a batch) is evaluated: checks that it is
    /// still as the worker read it (due at `due`, the same events) and takes it out of the
    /// debounce and batch indexes, so no newer event can change it any more. `false` means it
    /// changed meanwhile.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn close_collecting(&self, read: &Delivery, due: Millis) -> Result<bool, StoreError> {
        let id = &read.id;
        let claimed = (
            &self.ingest.deliveries,
            &self.ingest.debounce,
            &self.ingest.batches,
        )
            .transaction(|(dtree, debounce, batches)| {
                let Some(raw) = dtree.get(id.as_str())? else {
                    return Ok(false);
                };
                let current: Delivery = decode("deliveries", &raw).map_err(abort)?;
                if current.next_attempt_at != Some(due)
                    || current.event_id != read.event_id
                    || current.batch_events != read.batch_events
                    || !current.replaceable()
                {
                    return Ok(false);
                }
                if let Some(entity) = &current.entity {
                    let index = debounce_key(&current, entity);
                    if debounce.get(&index)?.as_deref() == Some(id.as_str().as_bytes()) {
                        debounce.remove(index)?;
                    }
                }
                let index = partition_key(&current);
                if batches.get(&index)?.as_deref() == Some(id.as_str().as_bytes()) {
                    batches.remove(index)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })?;
        Ok(claimed)
    }

    /// One event of `tenant` (or of none).
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn event(&self, tenant: Option<&str>, id: &EventId) -> Result<Option<Event>, StoreError> {
        let key = event_key(tenant, id);
        if let Some(event) = self.ingest.recent.get(&key) {
            return Ok(Some(Event::clone(&event)));
        }
        if let Some(event) = self.stored_event(&key)? {
            return Ok(Some(event));
        }
        // Events stored before ids were scoped per tenant are keyed by the id alone.
        match tenant {
            Some(tenant) => Ok(self
                .stored_event(id.as_str())?
                .filter(|e| e.tenant.as_deref() == Some(tenant))),
            None => Ok(None),
        }
    }

    fn stored_event(&self, key: &str) -> Result<Option<Event>, StoreError> {
        self.ingest
            .events
            .get(key)?
            .map(|v| {
                codec::decode_event(&v).map_err(|source| StoreError::Corrupt {
                    tree: "events",
                    source,
                })
            })
            .transpose()
    }

    /// One delivery.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError> {
        if let Some(delivery) = self.ingest.recent_deliveries.get(id) {
            return Ok(Some(delivery));
        }
        self.ingest
            .deliveries
            .get(id.as_str())?
            .map(|v| decode("deliveries", &v))
            .transpose()
    }

    /// Walks deliveries in id (creation) order — newest first when `descending` — keeping
    /// those `keep` accepts, until `limit` are kept. A record that does not decode is logged,
    /// named in [`Scanned::unreadable`] and passed over: one bad record never hides the rest.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_deliveries(
        &self,
        descending: bool,
        mut keep: impl FnMut(&Delivery) -> bool,
        limit: usize,
    ) -> Result<Scanned, StoreError> {
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if descending {
            Box::new(self.ingest.deliveries.iter().rev())
        } else {
            Box::new(self.ingest.deliveries.iter())
        };
        let mut out = Scanned::default();
        for item in iter {
            let (key, value) = item?;
            let delivery: Delivery = match decode("deliveries", &value) {
                Ok(delivery) => delivery,
                Err(e) => {
                    let key = String::from_utf8_lossy(&key).into_owned();
                    tracing::error!(delivery = %key, "unreadable delivery record passed over: {e}");
                    if out.unreadable.len() < MAX_UNREADABLE_NAMED {
                        out.unreadable.push(key);
                    }
                    continue;
                }
            };
            if keep(&delivery) {
                out.deliveries.push(delivery);
                if out.deliveries.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Writes a delivery's new state and moves its queue entry from `old_due` to its
    /// `next_attempt_at` (removed when the delivery is final), in one transaction.
    ///
    /// # Errors
    /// On storage failure.
    pub fn update_delivery(
        &self,
        delivery: &Delivery,
        old_due: Option<Millis>,
    ) -> Result<(), StoreError> {
        let bytes = encode(delivery);
        let old_key = old_due.map(|due| queue_key(due, &delivery.id));
        let new_key = match (delivery.status.is_final(), delivery.next_attempt_at) {
            (false, Some(due)) => Some(queue_key(due, &delivery.id)),
            _ => None,
        };
        let finished_in_line = fifo_key(delivery).filter(|_| delivery.status.is_final());
        if finished_in_line.is_none() && delivery.entity.is_none() && delivery.batch_limit <= 1 {
            // No other record to keep in step, and nothing else writes this delivery (no
            // debounce or batch can replace its event): three plain writes, ordered so a crash
            // between any two leaves it scheduled. The new queue entry first, then the record,
            // then the old entry's removal: an entry whose due time the record does not name
            // is dropped as stale when the scheduler meets it.
            if let Some(key) = &new_key {
                self.ingest
                    .queue
                    .insert(key.as_slice(), delivery.webhook_id.as_str().as_bytes())?;
            }
            self.ingest
                .deliveries
                .insert(delivery.id.as_str().as_bytes(), bytes)?;
            self.ingest.recent_deliveries.forget([&delivery.id]);
            if let Some(key) = old_key.filter(|k| Some(k) != new_key.as_ref()) {
                self.ingest.queue.remove(key)?;
            }
            if let Some(due) = new_key.as_ref().and(delivery.next_attempt_at) {
                self.ingest.written.note(due);
            }
            return Ok(());
        }
        (
            &self.ingest.deliveries,
            &self.ingest.queue,
            &self.ingest.fifo,
        )
            .transaction(|(dtree, queue, fifo)| {
                dtree.insert(delivery.id.as_str().as_bytes(), bytes.as_slice())?;
                if let Some(line) = &finished_in_line {
                    fifo.remove(line.as_slice())?;
                }
                if let Some(key) = &old_key {
                    queue.remove(key.as_slice())?;
                }
                if let Some(key) = &new_key {
                    queue.insert(key.as_slice(), delivery.webhook_id.as_str().as_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        self.ingest.recent_deliveries.forget([&delivery.id]);
        if let Some(due) = new_key.as_ref().and(delivery.next_attempt_at) {
            self.ingest.written.note(due);
        }
        Ok(())
    }

    /// For an in-order delivery: the first unfinished delivery of its webhook and entity
    /// (itself when nothing earlier is unfinished).
    ///
    /// # Errors
    /// On storage failure.
    pub fn first_in_line(&self, delivery: &Delivery) -> Result<Option<DeliveryId>, StoreError> {
        let Some(entity) = delivery.entity.as_deref().filter(|_| delivery.in_order) else {
            return Ok(None);
        };
        let mut prefix = debounce_key(delivery, entity);
        prefix.push(0);
        let Some(first) = self.ingest.fifo.scan_prefix(&prefix).keys().next() else {
            return Ok(None);
        };
        let first = first?;
        Ok(std::str::from_utf8(&first[prefix.len()..])
            .ok()
            .and_then(|id| DeliveryId::parse(id).ok()))
    }

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

    /// Queue entries from `from` on, in due order, lazily: due time, delivery, the webhook
    /// (the entry's value, so the scheduler can apply per-endpoint limits without reading the
    /// delivery) and the key, so a sweep can continue where the last one stopped. Malformed
    /// keys are skipped.
    pub fn due_from(
        &self,
        from: std::ops::Bound<&[u8]>,
    ) -> impl Iterator<Item = Result<QueueEntry, StoreError>> + '_ {
        use std::ops::Bound;
        let start = match from {
            Bound::Included(key) => Bound::Included(sled::IVec::from(key)),
            Bound::Excluded(key) => Bound::Excluded(sled::IVec::from(key)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.ingest
            .queue
            .range::<sled::IVec, _>((start, Bound::Unbounded))
            .filter_map(|item| match item {
                Err(e) => Some(Err(StoreError::from(e))),
                Ok((key, value)) => {
                    let (due, id) = parse_queue_key(&key)?;
                    let webhook = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|w| WebhookId::parse(w).ok());
                    Some(Ok(QueueEntry {
                        due,
                        id,
                        webhook,
                        key: key.to_vec(),
                    }))
                }
            })
    }

    /// Whether the queue holds `key`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn queue_contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.ingest.queue.contains_key(key)?)
    }

    /// The earliest due time among queue entries written since the last call (`None`: none
    /// written). Each entry is noted after it is written, so a sweep of the queue from that
    /// due time on finds every one.
    pub fn take_written_due(&self) -> Option<Millis> {
        self.ingest.written.take()
    }

    /// Removes a queue entry (for deliveries that vanished).
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

    // ----- plugin state -----

    fn state_key(webhook: &WebhookId, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(webhook.as_str().len() + 1 + key.len());
        k.extend_from_slice(webhook.as_str().as_bytes());
        k.push(0);
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// A plugin state value of a webhook.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_get(&self, webhook: &WebhookId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .plugin_state
            .get(Self::state_key(webhook, key))?
            .map(|v| v.to_vec()))
    }

    /// Bytes (keys plus values) a webhook's plugin state holds.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_size(&self, webhook: &WebhookId) -> Result<usize, StoreError> {
        let mut prefix = webhook.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut total = 0;
        for item in self.plugin_state.scan_prefix(&prefix) {
            let (k, v) = item?;
            total += k.len() - prefix.len() + v.len();
        }
        Ok(total)
    }

    /// Applies an evaluation's state writes (a value, or `None` to remove) at once.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_apply(
        &self,
        webhook: &WebhookId,
        changes: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(value) => batch.insert(Self::state_key(webhook, key), value.as_slice()),
                None => batch.remove(Self::state_key(webhook, key)),
            }
        }
        self.plugin_state.apply_batch(batch)?;
        Ok(())
    }

    // ----- signing secrets -----

    /// A webhook's signing secrets.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn signing_keys(&self, id: &WebhookId) -> Result<Option<SigningKeys>, StoreError> {
        let key = id.as_str().as_bytes();
        self.signing
            .get(key)?
            .map(|v| self.decode_sealed("signing", key, &v))
            .transpose()
    }

    /// Stores a webhook's signing secrets.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_signing_keys(&self, id: &WebhookId, keys: &SigningKeys) -> Result<(), StoreError> {
        let key = id.as_str().as_bytes();
        let sealed = self.sealer.seal(&context("signing", key), &encode(keys));
        self.signing.insert(key, sealed)?;
        Ok(())
    }

    // ----- host secrets -----

    /// A random 32-byte secret of this host under `name`, made on first use and kept.
    ///
    /// # Errors
    /// On storage failure.
    pub fn host_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let fresh: [u8; 32] = rand::random();
        let stored =
            match self
                .meta
                .compare_and_swap(name, None as Option<&[u8]>, Some(&fresh[..]))?
            {
                Ok(()) => fresh.to_vec(),
                Err(existing) => existing.current.map(|v| v.to_vec()).unwrap_or_default(),
            };
        stored.try_into().map_err(|_| StoreError::Corrupt {
            tree: "meta",
            source: <serde_json::Error as serde::de::Error>::custom(format!(
                "secret {name} is not 32 bytes"
            )),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::DeliveryStatus;

    pub(super) fn test_sealer() -> Sealer {
        Sealer::new([7; 32])
    }

    /// Reopens the store in `dir` once the previous one's threads let go of the lock.
    pub(super) fn reopen(dir: &Path, sealer: Sealer) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Store::open(dir, sealer.clone()) {
                Err(StoreError::Sled(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    /// Opens the sled store for the storage conformance suite.
    struct SledOpener;

    impl crate::storage::conformance::Opener for SledOpener {
        type Opened = Store;
        fn open(&self, dir: &Path) -> Store {
            reopen(dir, test_sealer()).unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sled_store_keeps_the_storage_contract() {
        crate::storage::conformance::run(&SledOpener).await;
    }

    fn connection() -> Connection {
        Connection {
            id: ConnectionId::parse("con_01JB0000000000000000000000").unwrap(),
            name: "erp".into(),
            description: None,
            base_url: "https://erp.example/".into(),
            auth: crate::model::ConnectionAuth::Bearer {
                token: crate::model::Secret::new("tok-plain-to-find"),
            },
            headers: vec![],
            signing_secret: None,
            ca_certificate: None,
            tenants: Vec::new(),
            created_at: Millis(1),
            updated_at: Millis(1),
        }
    }

    /// Whether `needle` occurs in any file under `dir`.
    fn found_in_files(dir: &Path, needle: &[u8]) -> bool {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
        false
    }

    #[test]
    fn credentials_are_sealed_at_rest_and_clear_records_get_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let wid = WebhookId::parse("wh_01JB0000000000000000000000").unwrap();
        let keys = SigningKeys {
            current: crate::model::Secret::new("whsec-plain-to-find"),
            previous: None,
            previous_until: None,
        };
        {
            let store = Store::open(dir.path(), test_sealer()).unwrap();
            store.put_connection(&connection()).unwrap();
            store.put_signing_keys(&wid, &keys).unwrap();
            // A record an earlier version wrote in clear. (Its old bytes stay in sled's log
            // until sled reuses the segment; only new writes are guaranteed sealed.)
            let mut old = connection();
            old.id = ConnectionId::parse("con_01JB0000000000000000000001").unwrap();
            old.auth = crate::model::ConnectionAuth::Bearer {
                token: crate::model::Secret::new("legacy"),
            };
            store
                .connections
                .insert(old.id.as_str(), encode(&old))
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path(), test_sealer()).unwrap();
        let connections = store.connections().unwrap();
        assert_eq!(connections.len(), 2);
        assert_eq!(connections[0], connection());
        let legacy = store
            .connections
            .get("con_01JB0000000000000000000001")
            .unwrap();
        assert_eq!(legacy.unwrap()[0], 1, "the clear record was sealed");
        assert_eq!(store.signing_keys(&wid).unwrap(), Some(keys));
        store.flush().unwrap();
        drop(store);
        assert!(!found_in_files(dir.path(), b"tok-plain-to-find"));
        assert!(!found_in_files(dir.path(), b"whsec-plain-to-find"));

        // Another key cannot open them: the host refuses to start, naming the record.
        let err = reopen(dir.path(), Sealer::new([9; 32]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("record con_01JB0000000000000000000000 in connections: cannot decrypt"),
            "{err}"
        );
    }

    pub(super) fn event(id: &str) -> Event {
        Event {
            id: EventId::parse(id).unwrap(),
            kind: "order.created".into(),
            tenant: None,
            occurred_at: Millis(1),
            received_at: Millis(2),
            attributes: vec![],
            payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        }
    }

    /// A plain pending delivery of `event`, due at `due` (also used by the submodules' tests).
    pub(crate) fn delivery(event: &Event, due: i64) -> Delivery {
        Delivery {
            id: DeliveryId::generate(),
            webhook_id: WebhookId::generate(),
            event_id: event.id.clone(),
            tenant: None,
            event_tenant: None,
            status: DeliveryStatus::Pending,
            created_at: Millis(due),
            updated_at: Millis(due),
            next_attempt_at: Some(Millis(due)),
            requests: None,
            rounds: 0,
            attempts: vec![],
            logs: vec![],
            skip_reason: None,
            error: None,
            extracted_value: None,
            replay_of: None,
            entity: None,
            in_order: false,
            batch_events: Vec::new(),
            batch_limit: 0,
            replaced: 0,
            replaced_events: vec![],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_commits_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                // Calls 0 and 1 carry the same event id; call 2 carries two events.
                let name = if i == 1 {
                    "same-0".to_string()
                } else {
                    format!("same-{i}")
                };
                let mut items = vec![{
                    let e = event(&name);
                    let d = delivery(&e, 1000 + i);
                    (e, vec![d])
                }];
                if i == 2 {
                    let e = event("extra");
                    items.push((e, Vec::new()));
                }
                tokio::spawn(async move { (i, store.insert_and_commit(items).await.unwrap()) })
            })
            .collect();
        let mut answers = std::collections::BTreeMap::new();
        for call in calls {
            let (i, inserted) = call.await.unwrap();
            answers.insert(i, inserted);
        }
        let new = |r: &Inserted| matches!(r, Inserted::New(d) if d.len() == 1);
        // Of the two calls with one id, exactly one stored it.
        let pair = [&answers[&0][0], &answers[&1][0]];
        assert_eq!(pair.iter().filter(|r| new(r)).count(), 1, "{pair:?}");
        assert_eq!(
            pair.iter().filter(|r| **r == &Inserted::Duplicate).count(),
            1
        );
        assert_eq!(answers[&2].len(), 2);
        assert_eq!(answers[&2][1], Inserted::New(Vec::new()));
        for i in 2..40 {
            assert!(new(&answers[&i][0]), "call {i}: {:?}", answers[&i]);
        }
        assert!(store
            .event(None, &EventId::parse("extra").unwrap())
            .unwrap()
            .is_some());
        assert_eq!(store.due_entries(100).unwrap().len(), 39);
    }

    #[tokio::test]
    async fn events_dedupe_and_queue_orders_by_due_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let e = event("e1");
        let late = delivery(&e, 2000);
        let early = delivery(&e, 1000);
        assert_eq!(
            store
                .insert_event(&e, &[late.clone(), early.clone()])
                .unwrap(),
            Inserted::New(vec![late.id.clone(), early.id.clone()])
        );
        assert_eq!(
            store.insert_event(&e, &[delivery(&e, 5)]).unwrap(),
            Inserted::Duplicate
        );
        store.commit().await.unwrap();
        let due = store.due_entries(10).unwrap();
        assert_eq!(
            due,
            vec![
                (Millis(1000), early.id.clone()),
                (Millis(2000), late.id.clone())
            ]
        );

        let mut done = early.clone();
        done.status = DeliveryStatus::Delivered;
        done.next_attempt_at = None;
        store.update_delivery(&done, Some(Millis(1000))).unwrap();
        assert_eq!(
            store.due_entries(10).unwrap(),
            vec![(Millis(2000), late.id.clone())]
        );
        assert_eq!(
            store.delivery(&early.id).unwrap().unwrap().status,
            DeliveryStatus::Delivered
        );
    }

    #[test]
    fn a_newer_event_replaces_a_waiting_delivery_of_the_same_entity_until_it_is_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let webhook = WebhookId::generate();
        let for_entity = |e: &Event, due: i64, entity: &str| {
            let mut d = delivery(e, due);
            d.webhook_id = webhook.clone();
            d.entity = Some(entity.into());
            d
        };
        let (e1, e2, e3, e4) = (event("e1"), event("e2"), event("e3"), event("e4"));
        let first = for_entity(&e1, 1000, "sku-1");
        assert_eq!(
            store
                .insert_event(&e1, std::slice::from_ref(&first))
                .unwrap(),
            Inserted::New(vec![first.id.clone()])
        );
        // e2 for the same entity: carried by the first delivery, due later.
        let second = for_entity(&e2, 5000, "sku-1");
        assert_eq!(
            store.insert_event(&e2, &[second]).unwrap(),
            Inserted::New(vec![first.id.clone()])
        );
        let waiting = store.delivery(&first.id).unwrap().unwrap();
        assert_eq!(waiting.event_id, e2.id);
        assert_eq!(waiting.replaced, 1);
        assert_eq!(waiting.replaced_events, vec![e1.id.clone()]);
        assert_eq!(
            store.due_entries(10).unwrap(),
            vec![(Millis(5000), first.id.clone())]
        );
        // A worker that read the old state cannot claim it; one that read the new state can.
        assert!(!store.close_collecting(&first, Millis(1000)).unwrap());
        assert!(store.close_collecting(&waiting, Millis(5000)).unwrap());
        // Once claimed, a newer event gets a delivery of its own; other entities always do.
        let third = for_entity(&e3, 6000, "sku-1");
        let other = for_entity(&e4, 6000, "sku-2");
        assert_eq!(
            store
                .insert_event(&e3, std::slice::from_ref(&third))
                .unwrap(),
            Inserted::New(vec![third.id.clone()])
        );
        assert_eq!(
            store
                .insert_event(&e4, std::slice::from_ref(&other))
                .unwrap(),
            Inserted::New(vec![other.id.clone()])
        );
    }

    #[test]
    fn one_webhook_never_mixes_tenants_in_a_batch_or_a_debounced_entity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let webhook = WebhookId::generate();
        // A webhook without a tenant, taking two tenants' events with the same ids.
        let of = |tenant: &str, batch: bool, id: &str| {
            let mut e = event(id);
            e.tenant = Some(tenant.into());
            let mut d = delivery(&e, 1000);
            d.webhook_id = webhook.clone();
            d.event_tenant = Some(tenant.into());
            if batch {
                d.batch_limit = 10;
                d.batch_events = vec![e.id.clone()];
            } else {
                d.entity = Some("sku-1".into());
            }
            (e, d)
        };
        for batch in [true, false] {
            let id = if batch { "in-batch" } else { "debounced" };
            let (ea, da) = of("a", batch, id);
            let (eb, db) = of("b", batch, id);
            assert_eq!(
                store.insert_event(&ea, std::slice::from_ref(&da)).unwrap(),
                Inserted::New(vec![da.id.clone()])
            );
            // B's event starts its own batch / debounced delivery, never joins A's.
            assert_eq!(
                store.insert_event(&eb, std::slice::from_ref(&db)).unwrap(),
                Inserted::New(vec![db.id.clone()])
            );
            let a = store.delivery(&da.id).unwrap().unwrap();
            assert_eq!(a.event_id, ea.id);
            assert_eq!(a.replaced, 0);
            assert!(a.batch_events.len() <= 1);
            let found = store
                .event(a.events_tenant(), &a.event_id)
                .unwrap()
                .unwrap();
            assert_eq!(found.tenant.as_deref(), Some("a"));
        }
    }

    #[test]
    fn the_events_of_one_call_are_stored_together_and_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let webhook = WebhookId::generate();
        let (e1, e2, e3) = (event("c1"), event("c2"), event("c3"));
        let plain = delivery(&e1, 1000);
        let mut first = delivery(&e2, 2000);
        first.webhook_id = webhook.clone();
        first.entity = Some("sku-9".into());
        let mut second = delivery(&e3, 3000);
        second.webhook_id = webhook;
        second.entity = Some("sku-9".into());
        let again = delivery(&e1, 4000);
        let items: Vec<(&Event, &[Delivery])> = vec![
            (&e1, std::slice::from_ref(&plain)),
            (&e2, std::slice::from_ref(&first)),
            (&e3, std::slice::from_ref(&second)),
            // The same id twice in one call: the second is a duplicate.
            (&e1, std::slice::from_ref(&again)),
        ];
        let inserted = store.insert_events(&items).unwrap();
        assert_eq!(
            inserted,
            vec![
                Inserted::New(vec![plain.id.clone()]),
                Inserted::New(vec![first.id.clone()]),
                // Debounced onto the delivery the same call made for e2.
                Inserted::New(vec![first.id.clone()]),
                Inserted::Duplicate,
            ]
        );
        assert_eq!(store.delivery(&first.id).unwrap().unwrap().event_id, e3.id);
        assert!(store.delivery(&again.id).unwrap().is_none());
        assert_eq!(
            store.due_entries(10).unwrap(),
            vec![(Millis(1000), plain.id), (Millis(3000), first.id)]
        );
    }

    #[test]
    fn a_delivery_reads_as_last_written_whether_kept_in_memory_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let in_sled = |store: &Store, id: &DeliveryId| -> Option<Delivery> {
            let raw = store.ingest.deliveries.get(id.as_str()).unwrap()?;
            Some(decode("deliveries", &raw).unwrap())
        };
        let e = event("kept-1");
        let mut d = delivery(&e, 1000);
        store.insert_event(&e, std::slice::from_ref(&d)).unwrap();
        assert_eq!(store.delivery(&d.id).unwrap().as_ref(), Some(&d));
        assert_eq!(in_sled(&store, &d.id).as_ref(), Some(&d));

        // Written again: read back as written, not as first kept.
        d.status = DeliveryStatus::Failed;
        d.rounds = 1;
        d.next_attempt_at = Some(Millis(5000));
        store.update_delivery(&d, Some(Millis(1000))).unwrap();
        assert_eq!(store.delivery(&d.id).unwrap().as_ref(), Some(&d));
        d.status = DeliveryStatus::Delivered;
        d.next_attempt_at = None;
        store.update_delivery(&d, Some(Millis(5000))).unwrap();
        assert_eq!(store.delivery(&d.id).unwrap().as_ref(), Some(&d));

        // An event stored already: its new delivery is neither stored nor kept.
        let again = delivery(&e, 2000);
        assert_eq!(
            store
                .insert_event(&e, std::slice::from_ref(&again))
                .unwrap(),
            Inserted::Duplicate
        );
        assert!(store.delivery(&again.id).unwrap().is_none());

        assert_eq!(in_sled(&store, &d.id).as_ref(), Some(&d));
    }

    #[test]
    fn an_unreadable_delivery_is_named_and_passed_over_never_hiding_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let e = event("e-list");
        let good = delivery(&e, 5);
        store.insert_event(&e, std::slice::from_ref(&good)).unwrap();
        store
            .ingest
            .deliveries
            .insert("dlv_0000broken", &b"{\"id\": 12"[..])
            .unwrap();
        for descending in [true, false] {
            let scanned = store.scan_deliveries(descending, |_| true, 10).unwrap();
            assert_eq!(scanned.unreadable, vec!["dlv_0000broken".to_string()]);
            assert_eq!(scanned.deliveries.len(), 1);
            assert_eq!(scanned.deliveries[0].id, good.id);
        }
    }

    #[test]
    fn a_snapshot_left_half_written_by_a_failed_start_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let e = event("kept");
        store.insert_event(&e, &[]).unwrap();
        store.flush().unwrap();
        drop(store);
        // What a start on a full disk left: the snapshot it began and could not fill.
        std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFFF.generating"), b"").unwrap();
        let store = reopen(dir.path(), test_sealer()).unwrap();
        assert!(store.event(None, &e.id).unwrap().is_some());
    }

    #[test]
    fn event_ids_are_unique_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let mut a = event("order-1");
        a.tenant = Some("a".into());
        let mut b = event("order-1");
        b.tenant = Some("b".into());
        b.kind = "order.updated".into();
        for e in [&a, &b] {
            assert!(matches!(
                store.insert_event(e, &[]).unwrap(),
                Inserted::New(_)
            ));
        }
        assert_eq!(store.insert_event(&a, &[]).unwrap(), Inserted::Duplicate);
        let id = EventId::parse("order-1").unwrap();
        let check = |s: &Store| {
            assert_eq!(
                s.event(Some("a"), &id).unwrap().unwrap().kind,
                "order.created"
            );
            assert_eq!(
                s.event(Some("b"), &id).unwrap().unwrap().kind,
                "order.updated"
            );
            assert!(s.event(None, &id).unwrap().is_none());
            assert!(s.event(Some("c"), &id).unwrap().is_none());
        };
        check(&store);
        drop(store);
        check(&reopen(dir.path(), test_sealer()).unwrap());
    }

    #[test]
    fn plugin_state_is_scoped_per_webhook() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), test_sealer()).unwrap();
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        store
            .state_apply(&a, &[("k".into(), Some(b"1".to_vec()))])
            .unwrap();
        assert_eq!(store.state_get(&a, "k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.state_get(&b, "k").unwrap(), None);
        assert_eq!(store.state_size(&a).unwrap(), 2);
        store.state_apply(&a, &[("k".into(), None)]).unwrap();
        assert_eq!(store.state_get(&a, "k").unwrap(), None);
    }

    #[test]
    fn host_secrets_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = Store::open(dir.path(), test_sealer()).unwrap();
            let first = store.host_secret("artifact_key").unwrap();
            assert_eq!(store.host_secret("artifact_key").unwrap(), first);
            assert_ne!(store.host_secret("other").unwrap(), first);
            store.flush().unwrap();
            first
        };
        // The closed store's threads let go of the lock shortly after it is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let store = loop {
            match Store::open(dir.path(), test_sealer()) {
                Ok(store) => break store,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopening: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        assert_eq!(store.host_secret("artifact_key").unwrap(), first);
    }
}
