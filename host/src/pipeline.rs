//! The delivery pipeline: ingest → router → due queue → plugin evaluation → sender → outcome.
//!
//! [`Pipeline`] owns the flow: emitting events (`ingest`), the scheduler and its staging, one
//! delivery under its claim (`worker`), evaluation, sending, the outcome and what follows
//! from it, replays, and reading what happened. What operators define is the [`Catalog`]
//! beneath it, which the pipeline reads.

mod backup;
mod delivery_reads;
pub mod dry_run;
pub mod endpoints;
mod evaluation;
mod follow_ups;
mod gate;
mod ingest;
mod observe;
mod outcome;
mod replay;
pub mod retention;
pub mod retry;
mod scheduler;
mod send;
mod staging;
mod walks;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Config;
use crate::fair_share::{FairShare, Payer};
use crate::metrics::Metrics;
use crate::model::{
    Connection, ConnectionId, DeliveryId, Event, Millis, ModuleId, Webhook, WebhookId,
};
use crate::runtime::{
    wit, ArtifactCache, LoadedPlugin, PluginContext, PluginState, Runtime, RuntimeOptions,
};
use crate::sender::Sender;
use crate::storage::Storage;

pub use crate::catalog::{
    listing, request, CachedWebhook, Catalog, ConnectionInput, Error, KeyInput, ListQuery, Page,
    Principal, RotateInput, Rotated, StartError, WebhookInput,
};
pub use backup::{Backup, BackupInput};
pub use ingest::{EmitResult, EventInput, MAX_ATTRIBUTES};
pub use replay::{RecoverInput, Recovered};

/// Everything the pipeline works with.
pub struct Pipeline {
    config: Config,
    /// What operators defined, with its in-memory copies.
    catalog: Arc<Catalog>,
    store: Arc<dyn Storage>,
    runtime: Arc<Runtime>,
    /// Who evaluates next, and how much evaluation time each webhook and tenant may take.
    fair: Arc<FairShare>,
    sender: Sender,
    clock: Arc<dyn Clock>,
    /// Wakes the scheduler when work may be due (the catalog wakes it after a change).
    wake: Arc<Notify>,
    /// Per-endpoint concurrency and rate limits.
    endpoints: endpoints::Endpoints,
    /// The catalog's generation the endpoint limits were last made for.
    endpoints_generation: AtomicU64,
    /// Deliveries being worked on now, with the due time they were started for, so the
    /// scheduler does not start them twice.
    in_flight: Mutex<HashMap<DeliveryId, Millis>>,
    /// How many of them each tenant's webhooks have (see `delivery.tenant_share`).
    tenants_in_flight: Mutex<HashMap<String, usize>>,
    /// This pipeline's id as the holder of claims on deliveries (random per start).
    holder: u64,
    /// Due deliveries staged per endpoint, and the sweep of the queue.
    staging: Mutex<staging::Staging>,
    /// Walks of the delivery table under way (lists, recover).
    walks: walks::Walks,
    /// What `GET /metrics` shows.
    metrics: Arc<Metrics>,
    /// A backup is being written (one at a time).
    backing_up: AtomicBool,
    /// The queue's length as last counted, and when (see `queue_depth`).
    queue_count: tokio::sync::Mutex<Option<(std::time::Instant, usize)>>,
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
        let metrics = Arc::new(Metrics::new());
        store.time_calls(metrics.storage_calls());
        let guard = crate::sender::Guard::new(&config.delivery.allowed_destinations)
            .map_err(StartError::Destinations)?;
        let sender = Sender::new(
            config.delivery.timeout,
            config.delivery.response_body_limit,
            config.delivery.endpoint_concurrency.max(64),
            guard,
        )?;
        let wake = Arc::new(Notify::new());
        let fair = Arc::new(FairShare::new(
            runtime.slots(),
            config.plugin.fair_share.clone(),
            wake.clone(),
        ));
        let catalog = Arc::new(Catalog::open(
            config.clone(),
            store.clone(),
            runtime.clone(),
            sender.clone(),
            clock.clone(),
            wake.clone(),
        )?);
        let endpoints = endpoints::Endpoints::new(
            config.delivery.endpoint_concurrency,
            config.delivery.endpoint_rate,
            config.delivery.endpoint_burst,
        );
        Ok(Pipeline {
            config,
            catalog,
            store,
            runtime,
            fair,
            sender,
            clock,
            wake,
            endpoints,
            endpoints_generation: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::new()),
            tenants_in_flight: Mutex::new(HashMap::new()),
            holder: rand::random(),
            staging: Mutex::default(),
            walks: walks::Walks::default(),
            metrics,
            backing_up: AtomicBool::new(false),
            queue_count: tokio::sync::Mutex::new(None),
        })
    }

    /// What operators defined: modules, webhooks, connections, keys, signing secrets.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
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

    /// The hosts sharing the storage (and the endpoints' limits), as last seen.
    pub fn peers(&self) -> crate::storage::Peers {
        self.endpoints.peers()
    }

    /// The fair share of evaluation time: what each webhook uses, and who is throttled.
    pub fn fair_share(&self) -> &Arc<FairShare> {
        &self.fair
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

    fn plugin(&self, module: &ModuleId) -> Result<Arc<LoadedPlugin>, crate::runtime::LoadError> {
        self.catalog.plugin(module)
    }

    /// Who pays for a webhook's evaluations (`None`: the webhook is gone).
    fn payer(&self, id: &WebhookId) -> Option<Payer> {
        self.webhook_cached(id).map(|w| payer_of(&w))
    }

    fn webhook_cached(&self, id: &WebhookId) -> Option<Arc<CachedWebhook>> {
        self.catalog.webhook_cached(id)
    }

    fn connection_cached(&self, id: &ConnectionId) -> Option<Arc<Connection>> {
        self.catalog.connection_cached(id)
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

/// Who pays for `webhook`'s evaluations: the webhook, and its tenant.
fn payer_of(webhook: &Webhook) -> Payer {
    Payer {
        webhook: webhook.id.clone(),
        tenant: webhook.tenant.clone(),
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
