//! The delivery pipeline: ingest → router → due queue → plugin evaluation → sender → outcome.
//!
//! [`Pipeline`] owns the store, the sandbox, the HTTP sender and the clock. Operations that
//! change what exists (modules, webhooks) live in `registry`; emitting events in `ingest`;
//! the scheduler and the state machine of a delivery in `worker`.

mod connections;
pub mod dry_run;
pub mod endpoints;
mod error;
mod ingest;
mod keys;
pub mod listing;
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
use crate::model::{Connection, ConnectionId, DeliveryId, Event, Millis, Webhook, WebhookId};
use crate::runtime::{wit, PluginState, Runtime};
use crate::sender::Sender;
use crate::store::Store;

pub use connections::ConnectionInput;
pub use error::Error;
pub use ingest::{EmitResult, EventInput};
pub use keys::{KeyInput, Principal};
pub use listing::{ListQuery, Page};
pub use registry::{DeliveryFilter, WebhookInput};
pub use replay::{RecoverInput, Recovered};

/// Everything the pipeline works with.
pub struct Pipeline {
    config: Config,
    store: Store,
    runtime: Arc<Runtime>,
    sender: Sender,
    clock: Arc<dyn Clock>,
    /// Webhooks by id, kept in memory for routing (the store is the truth).
    webhooks: RwLock<HashMap<WebhookId, Arc<Webhook>>>,
    /// Connections by id, kept in memory for sending (the store is the truth).
    connections: RwLock<HashMap<ConnectionId, Arc<Connection>>>,
    /// Wakes the scheduler when work may be due.
    wake: Notify,
    /// Held while a webhook is read, changed and written (API updates and host changes).
    webhook_writes: Mutex<()>,
    /// Per-endpoint concurrency and rate limits.
    endpoints: endpoints::Endpoints,
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
        let connections = store
            .connections()?
            .into_iter()
            .map(|c| (c.id.clone(), Arc::new(c)))
            .collect();
        let endpoints = endpoints::Endpoints::new(
            config.delivery.endpoint_concurrency,
            config.delivery.endpoint_rate,
            config.delivery.endpoint_burst,
        );
        Ok(Pipeline {
            config,
            store,
            runtime,
            sender,
            clock,
            webhooks: RwLock::new(webhooks),
            connections: RwLock::new(connections),
            wake: Notify::new(),
            webhook_writes: Mutex::new(()),
            endpoints,
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

    fn connection_cached(&self, id: &ConnectionId) -> Option<Arc<Connection>> {
        self.connections.read().unwrap().get(id).cloned()
    }

    /// Where `webhook`'s requests go now, through its connection.
    ///
    /// # Errors
    /// When its connection is gone or the URL does not resolve.
    pub fn target(&self, webhook: &Webhook) -> Result<request::Target, String> {
        let connection = webhook
            .connection_id
            .as_ref()
            .and_then(|id| self.connection_cached(id));
        request::Target::resolve(webhook, connection.as_deref())
    }

    /// The endpoint (origin) `webhook`'s requests go to — only the URL is resolved, for the
    /// scheduler's per-endpoint limits.
    fn endpoint(&self, webhook: &Webhook) -> Option<String> {
        let base = webhook
            .connection_id
            .as_ref()
            .and_then(|id| self.connection_cached(id));
        let url = request::destination(
            webhook.url.as_deref(),
            base.as_ref().map(|c| c.base_url.as_str()),
        )
        .ok()?;
        endpoints::endpoint_of(&url)
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
