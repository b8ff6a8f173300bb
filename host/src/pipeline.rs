//! The delivery pipeline: ingest → router → due queue → plugin evaluation → sender → outcome.
//!
//! [`Pipeline`] owns the store, the sandbox, the HTTP sender and the clock. Operations that
//! change what exists (modules, webhooks) live in `registry`; emitting events in `ingest`;
//! the scheduler and the state machine of a delivery in `worker`.

mod checks;
mod connections;
mod delivery_reads;
pub mod dry_run;
pub mod endpoints;
mod error;
mod evaluation;
mod follow_ups;
mod ingest;
mod keys;
pub mod listing;
mod modules;
mod outcome;
mod replay;
pub mod request;
pub mod retry;
mod scheduler;
mod send;
mod signing;
mod staging;
mod webhook_input;
mod webhooks;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Config;
use crate::model::{
    Connection, ConnectionId, DeliveryId, Event, Millis, ModuleId, Webhook, WebhookId,
};
use crate::runtime::{
    wit, ArtifactCache, Evaluation, LoadedPlugin, PluginContext, PluginState, Runtime,
    RuntimeOptions,
};
use crate::sender::Sender;
use crate::storage::Storage;

pub use connections::ConnectionInput;
pub use delivery_reads::DeliveryFilter;
pub use error::{Error, StartError};
pub use ingest::{EmitResult, EventInput, MAX_ATTRIBUTES};
pub use keys::{KeyInput, Principal};
pub use listing::{ListQuery, Page};
pub use replay::{RecoverInput, Recovered};
pub use signing::{RotateInput, Rotated};
pub use webhook_input::WebhookInput;

/// Everything the pipeline works with.
pub struct Pipeline {
    config: Config,
    store: Arc<dyn Storage>,
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
    /// Deliveries being worked on now, with the due time they were started for, so the
    /// scheduler does not start them twice.
    in_flight: Mutex<HashMap<DeliveryId, Millis>>,
    /// This pipeline's id as the holder of claims on deliveries (random per start).
    holder: u64,
    /// Due deliveries staged per endpoint, and the sweep of the queue.
    staging: Mutex<staging::Staging>,
    /// Webhooks' signers, unsealed and parsed once (see `signing.rs`).
    signers: RwLock<HashMap<WebhookId, Arc<signing::CachedSigners>>>,
}

impl Pipeline {
    /// Opens the pipeline over `store`.
    ///
    /// # Errors
    /// When the sandbox or the HTTP client cannot be built, or stored webhooks cannot be read.
    pub fn new(
        config: Config,
        store: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
    ) -> Result<Pipeline, StartError> {
        let mut options = RuntimeOptions::new(&config.plugin);
        if config.plugin.precompiled_cache {
            let dir = config.data_dir.join("precompiled");
            let key = store.host_secret("artifact_key")?;
            let cache = ArtifactCache::new(&dir, key)
                .map_err(|source| StartError::ArtifactCache { dir, source })?;
            options.cache = Some(cache);
        }
        let runtime = Arc::new(Runtime::new(options)?);
        let guard = crate::sender::Guard::new(&config.delivery.allowed_destinations)
            .map_err(StartError::Destinations)?;
        let sender = Sender::new(
            config.delivery.timeout,
            config.delivery.response_body_limit,
            config.delivery.endpoint_concurrency.max(64),
            guard,
        )?;
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
            in_flight: Mutex::new(HashMap::new()),
            holder: rand::random(),
            signers: RwLock::default(),
            staging: Mutex::default(),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
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

    /// What `webhook`'s plugin sees: its config, its stored state, its limits.
    fn plugin_context(&self, webhook: &Webhook) -> PluginContext {
        PluginContext {
            config: Arc::from(webhook.config.to_string()),
            state: Arc::new(StoredState {
                store: self.store.clone(),
                webhook: webhook.id.clone(),
            }),
            limits: self.config.plugin.limits.with(&webhook.limits),
        }
    }

    /// The loaded plugin of a module, compiled (or read from its artifact) on first use.
    fn plugin(&self, module: &ModuleId) -> Result<Arc<LoadedPlugin>, String> {
        self.runtime.load(module, || {
            self.store
                .module_bytes(module)
                .ok()
                .flatten()
                .map(|b| b.to_vec())
        })
    }

    /// Keeps an evaluation's state writes when it produced an answer; a failed evaluation's
    /// writes are dropped.
    fn keep_state(&self, webhook: &Webhook, evaluation: &Evaluation) {
        if evaluation.result.is_err() || evaluation.state_changes.is_empty() {
            return;
        }
        if let Err(e) = self
            .store
            .state_apply(&webhook.id, &evaluation.state_changes)
        {
            tracing::error!(webhook = %webhook.id, "writing plugin state: {e}");
        }
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
    store: Arc<dyn Storage>,
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
}
