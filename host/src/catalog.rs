//! The catalog: what operators define — plugin modules, webhooks, connections, API keys and
//! webhooks' signing secrets — with the in-memory copies the flow reads (webhooks and
//! connections by id, parsed signers) and the lock that orders changes to a webhook.
//!
//! The flow (the `pipeline` module) reads the catalog and never writes it except through its
//! methods (a webhook's failure streak, auto-disable). The catalog tells the flow about
//! changes by a generation number ([`Catalog::generation`]) and a wake-up: the scheduler
//! forgets its per-endpoint limits when the generation moved.

mod cached_webhook;
mod checks;
mod connections;
mod error;
mod follow;
mod keys;
pub mod listing;
mod modules;
pub mod request;
mod signing;
mod webhook_input;
mod webhook_rules;
mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Config;
use crate::model::{
    Connection, ConnectionId, Event, Invalid, Millis, ModuleId, Webhook, WebhookId,
};
use crate::runtime::{LoadError, LoadedPlugin, Runtime};
use crate::sender::Sender;
use crate::storage::{Storage, StorageError};

pub use cached_webhook::CachedWebhook;
pub use checks::check_tenant;
pub use connections::{ConnectionInput, Withdrawn};
pub use error::{Error, StartError};
pub use keys::{KeyInput, Principal};
pub use listing::{ListQuery, Page};
pub use signing::{RotateInput, Rotated};
pub use webhook_input::WebhookInput;

/// The definitions, with their in-memory copies.
pub struct Catalog {
    config: Config,
    store: Arc<dyn Storage>,
    runtime: Arc<Runtime>,
    sender: Sender,
    clock: Arc<dyn Clock>,
    /// Webhooks by id, kept in memory for routing and sending with their compiled schedules
    /// (the store is the truth).
    webhooks: RwLock<HashMap<WebhookId, Arc<CachedWebhook>>>,
    /// Connections by id, kept in memory for sending (the store is the truth).
    connections: RwLock<HashMap<ConnectionId, Arc<Connection>>>,
    /// Held while a webhook is read, changed and written (API updates and host changes).
    webhook_writes: Mutex<()>,
    /// Written while a webhook moves to another tenant (its plugin state is cleared), read
    /// while an evaluation's state is kept (see [`Catalog::keep_state`]). Taken before
    /// `webhook_writes`.
    tenant_moves: RwLock<()>,
    /// Webhooks' signers, unsealed and parsed once (see `signing.rs`).
    signers: RwLock<HashMap<WebhookId, Arc<signing::CachedSigners>>>,
    /// Counts changes that can move a delivery's endpoint or limits.
    generation: AtomicU64,
    /// How far the definitions' change feed has been followed (see [`Catalog::follow`]).
    followed: Mutex<u64>,
    /// Wakes the scheduler after a change.
    wake: Arc<Notify>,
}

impl Catalog {
    /// The catalog over `store`, with the stored webhooks and connections read into memory.
    ///
    /// # Errors
    /// When they cannot be read.
    pub fn open(
        config: Config,
        store: Arc<dyn Storage>,
        runtime: Arc<Runtime>,
        sender: Sender,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
    ) -> Result<Catalog, StorageError> {
        // Before reading: whatever changes after this is in the feed.
        let followed = store.definition_feed_head()?;
        let webhooks = store
            .webhooks()?
            .into_iter()
            .map(|w| (w.id.clone(), Arc::new(CachedWebhook::new(w))))
            .collect();
        let connections = store
            .connections()?
            .into_iter()
            .map(|c| (c.id.clone(), Arc::new(c)))
            .collect();
        let catalog = Catalog {
            config,
            store,
            runtime,
            sender,
            clock,
            webhooks: RwLock::new(webhooks),
            connections: RwLock::new(connections),
            webhook_writes: Mutex::new(()),
            tenant_moves: RwLock::new(()),
            signers: RwLock::default(),
            generation: AtomicU64::new(0),
            followed: Mutex::new(followed),
            wake,
        };
        // Saved before a tenant's webhook had to use a connection shared with its tenant, or
        // withdrawn since: say so at start, since such a webhook sends nothing.
        for webhook in catalog.webhooks.read().unwrap().values() {
            if let Err(withdrawn) = catalog.usable_connection(webhook) {
                tracing::warn!(webhook = %webhook.id, "its deliveries wait: {withdrawn}");
            }
        }
        Ok(catalog)
    }

    /// Now, by the host's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// A webhook as kept in memory, with its compiled schedule.
    pub fn webhook_cached(&self, id: &WebhookId) -> Option<Arc<CachedWebhook>> {
        self.webhooks.read().unwrap().get(id).cloned()
    }

    /// Every webhook as kept in memory.
    pub fn webhooks_cached(&self) -> Vec<Arc<CachedWebhook>> {
        self.webhooks.read().unwrap().values().cloned().collect()
    }

    /// A webhook as kept in memory, or as stored when memory has none (kept from then on):
    /// a webhook missing from memory is not taken for deleted before storage says so.
    ///
    /// # Errors
    /// When storage cannot be read.
    pub fn webhook_read_through(
        &self,
        id: &WebhookId,
    ) -> Result<Option<Arc<CachedWebhook>>, StorageError> {
        if let Some(webhook) = self.webhook_cached(id) {
            return Ok(Some(webhook));
        }
        // Read while the copies are locked: no delete, this host's or one followed from the
        // change feed, can slip between the read and the keeping.
        let _writing = self.webhook_writes.lock().unwrap();
        let mut webhooks = self.webhooks.write().unwrap();
        let Some(stored) = self.store.webhook(id)? else {
            return Ok(None);
        };
        let cached = Arc::new(CachedWebhook::new(stored));
        Ok(Some(webhooks.entry(id.clone()).or_insert(cached).clone()))
    }

    /// A connection as kept in memory.
    pub fn connection_cached(&self, id: &ConnectionId) -> Option<Arc<Connection>> {
        self.connections.read().unwrap().get(id).cloned()
    }

    /// The webhooks that take `event`, in id order.
    pub fn takers(&self, event: &Event) -> Vec<Arc<CachedWebhook>> {
        let webhooks = self.webhooks.read().unwrap();
        let mut matching: Vec<Arc<CachedWebhook>> = webhooks
            .values()
            .filter(|w| w.takes(event))
            .cloned()
            .collect();
        matching.sort_by(|a, b| a.id.cmp(&b.id));
        matching
    }

    /// The loaded plugin of a module, compiled (or read from its artifact) on first use.
    ///
    /// # Errors
    /// When the module is gone or does not load.
    pub fn plugin(&self, module: &ModuleId) -> Result<Arc<LoadedPlugin>, LoadError> {
        self.runtime.load(module, || {
            self.store
                .module_bytes(module)
                .ok()
                .flatten()
                .map(|b| b.to_vec())
        })
    }

    /// Where `webhook`'s requests go now, through its connection.
    ///
    /// # Errors
    /// When its connection is gone or withdrawn from its tenant, or the URL does not resolve.
    pub fn target(&self, webhook: &Webhook) -> Result<request::Target, Invalid> {
        let connection = self
            .usable_connection(webhook)
            .map_err(|e| Invalid(format!("not sent: {e}")))?;
        request::Target::resolve(webhook, connection.as_deref())
    }

    /// How many changes that can move a delivery's endpoint or limits there have been.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Notes a change for the flow, and wakes the scheduler.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }
}
