//! The delivery pipeline: ingest → router → due queue → plugin evaluation → sender → outcome.
//!
//! [`Pipeline`] owns the store, the sandbox, the HTTP sender and the clock. Operations that
//! change what exists (modules, webhooks) live in `registry`; emitting events in `ingest`;
//! the scheduler and the state machine of a delivery in `worker`.

pub mod dry_run;
mod error;
mod ingest;
mod registry;
mod replay;
pub mod request;
pub mod retry;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Config;
use crate::model::{DeliveryId, Event, Millis, Webhook, WebhookId};
use crate::runtime::{wit, PluginState, Runtime};
use crate::sender::Sender;
use crate::store::Store;

pub use error::Error;
pub use ingest::{EmitResult, EventInput};
pub use registry::{DeliveryFilter, WebhookInput};

/// Everything the pipeline works with.
pub struct Pipeline {
    config: Config,
    store: Store,
    runtime: Arc<Runtime>,
    sender: Sender,
    clock: Arc<dyn Clock>,
    /// Webhooks by id, kept in memory for routing (the store is the truth).
    webhooks: RwLock<HashMap<WebhookId, Arc<Webhook>>>,
    /// Wakes the scheduler when work may be due.
    wake: Notify,
    /// Deliveries being worked on now, so the scheduler does not start them twice.
    in_flight: Mutex<HashSet<DeliveryId>>,
}

impl Pipeline {
    /// Opens the pipeline over `store`.
    ///
    /// # Errors
    /// When the sandbox or the HTTP client cannot be built, or stored webhooks cannot be read.
    pub fn new(config: Config, store: Store, clock: Arc<dyn Clock>) -> anyhow::Result<Pipeline> {
        let runtime = Arc::new(Runtime::new(config.plugin.clone())?);
        let sender = Sender::new(config.delivery.timeout, config.delivery.response_body_limit)?;
        let webhooks = store
            .webhooks()?
            .into_iter()
            .map(|w| (w.id.clone(), Arc::new(w)))
            .collect();
        Ok(Pipeline {
            config,
            store,
            runtime,
            sender,
            clock,
            webhooks: RwLock::new(webhooks),
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The sandbox.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Now, by the pipeline's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    fn stored_state(&self, webhook: &Webhook) -> Arc<dyn PluginState> {
        Arc::new(StoredState {
            store: self.store.clone(),
            webhook: webhook.id.clone(),
        })
    }

    fn webhook_cached(&self, id: &WebhookId) -> Option<Arc<Webhook>> {
        self.webhooks.read().unwrap().get(id).cloned()
    }
}

/// The WIT view of a stored event.
pub fn to_wit_event(event: &Event) -> wit::Event {
    wit::Event {
        id: event.id.to_string(),
        kind: event.kind.clone(),
        tenant: event.tenant.clone(),
        occurred_at: event.occurred_at.as_i64(),
        attributes: event.attributes.clone(),
        payload: event.payload.get().to_string(),
    }
}

/// Plugin state of one webhook, backed by the store.
struct StoredState {
    store: Store,
    webhook: WebhookId,
}

impl PluginState for StoredState {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.store
            .state_get(&self.webhook, key)
            .inspect_err(|e| tracing::error!(webhook = %self.webhook, "state read: {e}"))
            .ok()
            .flatten()
    }

    fn size(&self) -> usize {
        self.store.state_size(&self.webhook).unwrap_or(0)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.store
            .state_set(&self.webhook, key, value)
            .map_err(|e| e.to_string())
    }

    fn remove(&self, key: &str) {
        if let Err(e) = self.store.state_remove(&self.webhook, key) {
            tracing::error!(webhook = %self.webhook, "state remove: {e}");
        }
    }
}
