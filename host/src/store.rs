//! Durable storage in sled: the implementation of the [`crate::storage`] traits.
//!
//! Files: `catalog` (definitions), `ingest` (how events and their deliveries are written,
//! with the routing indexes), `round` (the intent log that makes a plain ingest round
//! all-or-nothing), `commit` (group commit on one thread), `recent` (the hot cache of
//! records just written), `deliveries` (events and deliveries), `queue` (the due queue and
//! claims taken from it), `claims`
//! (claims on deliveries, in memory), `state` (plugin state, the host's secrets),
//! `retention` (pruning by age, and the indexes it walks), [`seal`] (credentials encrypted
//! at rest), `codec` (event records), [`space`] (the free-space guard), `backup` (a copy
//! taken while the host runs) and `storage_impl` (the traits on [`Store`]).
//!
//! Values are JSON; records holding credentials (connections, signing secrets) are sealed
//! with the host's secrets key ([`seal`]). The queue tree is keyed by `due time (u64
//! big-endian ms) ++ delivery id` (its value: the webhook), so iterating it walks deliveries
//! in due order and a million pending deliveries cost disk, not memory. Event records are LZ4-compressed (`codec`).
//!
//! Changes that must be atomic with an index (an event whose deliveries are debounced, in
//! order or batched; a collecting or in-order delivery's new state) are sled transactions.
//! sled makes every operation on every tree wait while one runs, so the hot paths avoid
//! them: plain events are stored with ordered writes made all-or-nothing by an intent record
//! (`round`), and a plain delivery's new state is three ordered writes (see
//! [`Store::update_delivery`]); both rely on sled recovering a prefix of its log. Ingest
//! runs many API calls at once on the commit thread ([`Store::insert_and_commit`]), which
//! then flushes once for all of them (group commit). [`Store::commit`] makes everything
//! written so far durable, sharing that flush.

mod backup;
mod catalog;
mod changes;
mod claims;
mod codec;
mod commit;
mod deliveries;
#[cfg(test)]
mod engine_faults;
#[cfg(test)]
mod engine_order;
mod ingest;
mod queue;
mod recent;
mod retention;
mod round;
pub use crate::storage::seal;
pub mod space;
mod state;
mod storage_impl;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

pub use seal::Sealer;

use crate::storage::{Inserted, QueueEntry, Scanned};

pub use queue::{parse_queue_key, queue_due_prefix, queue_key};

pub use ingest::event_key;
use ingest::{
    abort, debounce_key, fifo_key, parse_queue_value, partition_key, queue_value, EncodedEvent,
    EventTrees,
};

use crate::model::{
    ApiKey, ApiKeyId, Connection, ConnectionId, Delivery, DeliveryId, Event, EventId, Millis,
    ModuleId, ModuleInfo, SigningKeys, Webhook, WebhookId,
};

// The store needs the vendored sled's full-disk fixes (vendor/sled/PATCHED.md): sled from
// crates.io loses data on a full disk. A crate embedding wasmhooks must carry the same
// `[patch.crates-io]` section as this workspace's Cargo.toml.
const _: () = assert!(
    sled::WASMHOOKS_PATCH_LEVEL >= 6,
    "wasmhooks needs its vendored sled: copy [patch.crates-io] from its Cargo.toml"
);

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
    /// A conditional write was refused; nothing was written.
    #[error(transparent)]
    Conflict(#[from] crate::storage::Conflict),
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
    /// The change feed of definitions (see `changes.rs`).
    changes: sled::Tree,
    /// Held while a webhook or connection is compared with the version read and written.
    definition_writes: Arc<std::sync::Mutex<()>>,
    /// Held while a change-feed position is taken and its entry committed.
    feed_writes: Arc<std::sync::Mutex<()>>,
    sealer: Sealer,
    /// The free-space guard over the data directory.
    space: Arc<space::SpaceGuard>,
    committer: commit::Committer,
    /// The event, delivery and queue trees and their indexes.
    ingest: EventTrees,
    /// Claims on deliveries: in memory, since only this process opens the files.
    claims: Arc<claims::Claims>,
    /// Held while a replay pins a stored event, and while the pruner checks an event's pins
    /// and removes it.
    pinning: Arc<std::sync::Mutex<()>>,
    /// Deliveries generated before this time (ms, wall clock) are handed over to retention:
    /// each writes its own `finished` entry when it finishes (see `retention/hand_over.rs`).
    handed_over: Arc<std::sync::atomic::AtomicU64>,
    /// When this store was opened (wall clock): what was received since has its entries.
    opened_at: Millis,
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
        let meta = db.open_tree("meta")?;
        let line_base = ingest::parse_line_base(meta.get(ingest::LINE_BASE)?.as_deref());
        let ingest = EventTrees {
            events: db.open_tree("events")?,
            deliveries: db.open_tree("deliveries")?,
            queue: db.open_tree("queue")?,
            debounce: db.open_tree("debounce")?,
            fifo: db.open_tree("fifo")?,
            batches: db.open_tree("batches")?,
            intents: db.open_tree("ingest_intents")?,
            finished: db.open_tree("finished")?,
            received: db.open_tree("received")?,
            pins: db.open_tree("pins")?,
            line_base,
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
            changes: db.open_tree("definition_changes")?,
            definition_writes: Arc::default(),
            feed_writes: Arc::default(),
            sealer,
            space,
            committer: commit::Committer::start(db.clone(), ingest.clone()),
            ingest,
            claims: Arc::default(),
            pinning: Arc::default(),
            handed_over: Arc::new(retention::handed_over_before(&meta)?.into()),
            opened_at: Millis(jiff::Timestamp::now().as_millisecond()),
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
        // A new store has nothing written without its index entries: no walk to prepare.
        if store.ingest.deliveries.is_empty() && store.ingest.events.is_empty() {
            store.meta.insert(retention::INDEXED, &[1u8])?;
        }
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
}

#[cfg(test)]
pub(crate) mod tests;
