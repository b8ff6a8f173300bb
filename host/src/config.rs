//! Settings: embedded defaults, then an optional TOML file, then `WASMHOOKS_*` environment
//! variables, then [`Config::validate`]. Unknown keys are rejected at every layer.
//!
//! Environment variables name a key path with `__` between levels:
//! `WASMHOOKS_LISTEN=127.0.0.1:9000`, `WASMHOOKS_DELIVERY__RETRY_SCHEDULE='["1s","10s"]'`.
//! A value is read as TOML when it parses as one, and as a plain string otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::duration::{duration_list, duration_text};
use crate::model::Keep;

mod load;

pub use load::{parse_network, parse_secrets_key, ConfigError};

/// Everything the host can be configured with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where sled keeps its files.
    pub data_dir: PathBuf,
    /// The storage engine.
    pub storage: Engine,
    /// Address the API listens on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Delivery behaviour.
    pub delivery: DeliveryConfig,
    /// The plugin sandbox: limits and runtime settings.
    pub plugin: PluginConfig,
    /// Input limits of the API.
    pub api: ApiConfig,
    /// The key credentials are sealed with at rest.
    pub secrets: SecretsConfig,
    /// Storage (sled) settings.
    pub store: StoreConfig,
    /// The PostgreSQL database (`storage = "postgres"`).
    pub postgres: PostgresConfig,
    /// How long finished deliveries and events are kept.
    pub retention: RetentionConfig,
}

/// The storage engine the host keeps its definitions, events and deliveries in.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// sled, embedded in `data_dir`: one host owns the files.
    #[default]
    Sled,
    /// PostgreSQL (`[postgres]`): any number of hosts share one database.
    Postgres,
}

/// The PostgreSQL database several hosts share (`storage = "postgres"`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Where: `postgres://user:password@host:port/database` (`WASMHOOKS_POSTGRES__URL`).
    /// Required with `storage = "postgres"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<crate::model::Secret>,
    /// The schema the host's tables live in, made at the first start. Hosts that share a
    /// schema share their work.
    pub schema: String,
    /// Most connections this host opens.
    pub pool_size: usize,
    /// Longest a statement may run before the database cancels it.
    #[serde(with = "duration_text")]
    pub statement_timeout: Duration,
    /// Longest a call waits for a free connection, or for a new one to open.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
}

/// Whether `name` can name the PostgreSQL schema: a plain lower-case identifier (it stands
/// unquoted in statements).
///
/// # Errors
/// A message saying what a name may hold.
pub fn check_schema_name(name: &str) -> Result<(), crate::model::Invalid> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_well = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if starts_well && rest_well && name.len() <= 63 {
        Ok(())
    } else {
        Err(crate::model::Invalid(format!(
            "`{name}` is not a schema name this host uses: lower-case letters, digits and `_`, \
             starting with a letter or `_`, at most 63 characters"
        )))
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            schema: "wasmhooks".into(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// How long finished work is kept, and how the pruner that removes it runs. A duration such
/// as `7d`, or `forever`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delivered and skipped deliveries, with their attempts and plugin logs, after they
    /// finish (a webhook may set its own).
    pub delivered: Keep,
    /// Failed and dead deliveries, after they finish (a webhook may set its own).
    pub failed: Keep,
    /// Events, after they are received, once no pending delivery needs them. An event's id
    /// is refused as a duplicate for this long, and no longer.
    pub events: Keep,
    /// How often the pruner looks for what has expired. Short: a pass removes what expired
    /// since the last one, and at thousands of events a second a minute's worth in one pass
    /// held deliveries back for seconds (BENCHMARKS.md, the soak).
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Records the pruner handles in one step; the host's other work goes on between steps.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let days = |n: u64| Keep::For(Duration::from_secs(n * 86_400));
        RetentionConfig {
            delivered: days(7),
            failed: days(30),
            events: days(30),
            interval: Duration::from_secs(10),
            batch: 1000,
        }
    }
}

/// Storage settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Memory sled may use to cache pages, in bytes: what bounds the host's memory when
    /// millions of deliveries are stored.
    pub cache_bytes: usize,
    /// Free space the data directory's filesystem keeps: below it (or below
    /// `min_free_percent`, whichever is larger) new events and new definitions are refused
    /// with 507 while pending deliveries go on. 0 with a 0 percentage turns the guard off.
    pub min_free_bytes: u64,
    /// The same floor as a percentage of the filesystem's size.
    pub min_free_percent: f64,
    /// A file of this size kept in the data directory and deleted when the disk runs low
    /// (at start, or when the floor is crossed), so the store can always open and finish
    /// its pending work; made again once there is room. 0: none.
    pub ballast_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_bytes: 16 << 20,
            min_free_bytes: 256 << 20,
            min_free_percent: 1.0,
            ballast_bytes: 64 << 20,
        }
    }
}

/// Where the key that seals stored credentials (connection auth, signing secrets) comes from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The key itself: base64 of 32 random bytes (`WASMHOOKS_SECRETS__KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::model::Secret>,
    /// A file holding the key; `<data_dir>/secrets.key` when unset. Generated (mode 0600) on
    /// first start when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl SecretsConfig {
    /// The key file to read or create.
    pub fn key_file(&self, data_dir: &Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("secrets.key"))
    }
}

/// How deliveries are sent and retried.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Waits between attempts: one entry per retry, so `n` entries mean `n + 1` attempts.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// Random spread applied to each wait, as a fraction (0.2 = ±20%).
    pub jitter: f64,
    /// Timeout of one HTTP request, connection included.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Deliveries worked on at once.
    pub max_in_flight: usize,
    /// How much of a response body is kept on the attempt log.
    pub response_body_limit: usize,
    /// Deliveries in flight at once to one endpoint (scheme, host and port).
    pub endpoint_concurrency: usize,
    /// Requests per second to one endpoint; 0 means no rate limit.
    pub endpoint_rate: f64,
    /// Requests one endpoint may get in a burst when `endpoint_rate` is set.
    pub endpoint_burst: u32,
    /// The longest `Retry-After` honoured; a receiver asking for more waits this long.
    #[serde(with = "duration_text")]
    pub max_retry_after: Duration,
    /// The least wait after a receiver says to slow down (429, 502, 503, 504) or times out.
    #[serde(with = "duration_text")]
    pub slow_down_wait: Duration,
    /// After a webhook's signing secret is rotated, the old one keeps signing (beside the
    /// new) for this long, so receivers can switch without missing a delivery.
    #[serde(with = "duration_text")]
    pub signature_overlap: Duration,
    /// A webhook whose deliveries have failed without a single success for this long is
    /// disabled when another delivery dies (a `webhook.disabled` event is emitted).
    #[serde(with = "duration_text")]
    pub auto_disable_after: Duration,
    /// The share of `max_in_flight` one tenant's webhooks may hold at once (0.5: half), so
    /// one tenant's receivers that hang cannot take the slots every tenant shares; 1.0: no
    /// cap. Webhooks without a tenant (the operator's) are not counted.
    pub tenant_share: f64,
    /// On shutdown (SIGTERM, Ctrl-C), how long deliveries in flight get to finish their
    /// step; those still going are handed back (due again at the next start).
    #[serde(with = "duration_text")]
    pub shutdown_grace: Duration,
    /// Networks deliveries may reach although they are loopback, private, link-local,
    /// multicast or metadata addresses (`["10.0.0.0/8", "127.0.0.1"]`). Empty: public
    /// addresses only.
    pub allowed_destinations: Vec<String>,
}

/// The plugin sandbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    /// Limits of every evaluation, unless a webhook sets its own.
    pub limits: PluginLimits,
    /// The most a webhook may set for each limit.
    pub max_limits: PluginLimits,
    /// Native stack wasm code may use, in bytes (64 KiB to 1 MiB). Host-wide: wasmtime sets
    /// it per engine, so webhooks cannot override it.
    pub stack_bytes: usize,
    /// Evaluations running at once; 0 means one per CPU core. Evaluations beyond this wait
    /// for a slot before their clock starts, so a busy host never turns into cpu-limit errors.
    pub concurrency: usize,
    /// Preallocate instance slots (wasmtime's pooling allocator) for fast instantiation. When
    /// the address space is too small the host logs it and allocates on demand.
    pub pooling: bool,
    /// Keep compiled plugins under `<data_dir>/precompiled` so a restart does not recompile.
    pub precompiled_cache: bool,
    /// How evaluation time is shared between webhooks and tenants.
    pub fair_share: FairShareConfig,
}

/// How evaluation time is shared: who goes first when evaluations wait for a slot, how much
/// time a webhook or tenant may take, and what happens to a webhook whose evaluations keep
/// hitting a sandbox limit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FairShareConfig {
    /// Evaluation time one webhook may use per second, with one second's worth as a burst;
    /// over it, its evaluations wait even when slots are free. `0s`: no budget.
    #[serde(with = "duration_text")]
    pub webhook_cpu_per_second: Duration,
    /// The same for all of one tenant's webhooks together. `0s`: no budget.
    #[serde(with = "duration_text")]
    pub tenant_cpu_per_second: Duration,
    /// Evaluations in a row hitting a sandbox limit (cpu, memory, stack, output, requests)
    /// after which the webhook waits before each next one, twice as long each time. 0: never.
    pub backoff_after_limit_hits: u32,
    /// Evaluations in a row hitting a limit after which the webhook is disabled (with
    /// `disabled_reason` and a `webhook.disabled` event). 0: never.
    pub disable_after_limit_hits: u32,
}

impl Default for FairShareConfig {
    fn default() -> Self {
        FairShareConfig {
            webhook_cpu_per_second: Duration::from_secs(1),
            tenant_cpu_per_second: Duration::ZERO,
            backoff_after_limit_hits: 3,
            disable_after_limit_hits: 50,
        }
    }
}

/// Limits applied to one plugin evaluation. Hitting one is recorded on the delivery by name
/// (`plugin exceeded 50 ms cpu limit`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Time an evaluation (instantiation and call) may run before it is interrupted.
    #[serde(with = "duration_text")]
    pub cpu_time: Duration,
    /// Linear memory (all of the plugin's memories together), in bytes.
    pub memory_bytes: usize,
    /// Bytes of one answer: request bodies, paths and headers, or an extracted value.
    pub output_bytes: usize,
    /// Requests one decision may ask for.
    pub requests: usize,
    /// Log bytes kept per evaluation (logs and printed output together); more is dropped.
    pub log_bytes: usize,
    /// State bytes (keys and values) one webhook's plugin may keep.
    pub state_bytes: usize,
}

/// Limits of the REST API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Longest name (webhooks, connections, modules, keys), in characters.
    pub max_name_len: usize,
    /// Longest description, in characters.
    pub max_description_len: usize,
    /// Longest URL, in bytes.
    pub max_url_len: usize,
    /// Largest request body (event batches, webhooks), in bytes.
    pub max_body_bytes: usize,
    /// Largest event: its payload and attributes, in bytes.
    pub max_event_bytes: usize,
    /// Largest module upload, in bytes.
    pub max_module_bytes: usize,
    /// Most events in one `POST /v1/events`.
    pub max_batch_events: usize,
    /// An admin key that is always valid (at least 16 characters). When absent, the first
    /// start generates an admin key, stores its hash and prints it once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<crate::model::Secret>,
    /// A token (at least 16 characters) that lets a monitoring system read `GET /metrics`
    /// and nothing else; admin keys without a tenant may read it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<crate::model::Secret>,
    /// Most client connections open at once. Never more than three quarters of the
    /// open-file limit, so the store keeps descriptors. When they are all open, a new client
    /// takes the slot of the connection whose client has been silent the longest among those
    /// idle or waiting for a request body; it waits in the listen backlog only while the host
    /// is working on every open connection.
    pub max_connections: usize,
    /// Most connections one client holds: one IPv4 address, or one IPv6 /64. When it opens
    /// another, its own connection idle the longest is closed; when none of them is idle,
    /// the new one is refused (429).
    pub max_connections_per_address: usize,
    /// Addresses or networks (`["10.0.0.5", "10.1.0.0/16"]`) exempt from
    /// `max_connections_per_address`: proxies and load balancers carrying many clients.
    pub trusted_proxies: Vec<String>,
    /// Requests one connection carries; the answer to the last says `Connection: close`.
    pub max_requests_per_connection: usize,
    /// Longest wait for a request's headers, from the connection's start or from the first
    /// byte of a request on a kept-alive connection.
    #[serde(with = "duration_text")]
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body once its headers came (408 after it).
    #[serde(with = "duration_text")]
    pub body_timeout: Duration,
    /// How long a connection may sit with no request in progress before it is closed.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("wasmhooks-data"),
            listen: "127.0.0.1:8080".parse().unwrap(),
            storage: Engine::Sled,
            delivery: DeliveryConfig::default(),
            plugin: PluginConfig::default(),
            api: ApiConfig::default(),
            secrets: SecretsConfig::default(),
            store: StoreConfig::default(),
            postgres: PostgresConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let secs = Duration::from_secs;
        DeliveryConfig {
            // Close to Svix's: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
            retry_schedule: vec![
                secs(5),
                secs(300),
                secs(1800),
                secs(7200),
                secs(18000),
                secs(36000),
                secs(36000),
            ],
            jitter: 0.2,
            timeout: secs(30),
            max_in_flight: 256,
            response_body_limit: 20_000,
            endpoint_concurrency: 32,
            endpoint_rate: 0.0,
            endpoint_burst: 10,
            max_retry_after: secs(3600),
            slow_down_wait: secs(60),
            signature_overlap: secs(86_400),
            auto_disable_after: secs(5 * 86_400),
            shutdown_grace: secs(30),
            tenant_share: 0.5,
            allowed_destinations: Vec::new(),
        }
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            limits: PluginLimits::default(),
            max_limits: PluginLimits {
                cpu_time: Duration::from_secs(1),
                memory_bytes: 256 << 20,
                output_bytes: 16 << 20,
                requests: 256,
                log_bytes: 1 << 20,
                state_bytes: 16 << 20,
            },
            stack_bytes: 512 << 10,
            concurrency: 0,
            pooling: true,
            precompiled_cache: true,
            fair_share: FairShareConfig::default(),
        }
    }
}

impl PluginConfig {
    /// Evaluations that may run at once.
    pub fn concurrency(&self) -> usize {
        match self.concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            cpu_time: Duration::from_millis(50),
            memory_bytes: 32 << 20,
            output_bytes: 1 << 20,
            requests: 16,
            log_bytes: 16 << 10,
            state_bytes: 64 << 10,
        }
    }
}

impl PluginLimits {
    /// These limits with a webhook's overrides applied.
    pub fn with(&self, overrides: &crate::model::LimitOverrides) -> PluginLimits {
        PluginLimits {
            cpu_time: overrides.cpu_time.unwrap_or(self.cpu_time),
            memory_bytes: overrides.memory_bytes.unwrap_or(self.memory_bytes),
            output_bytes: overrides.output_bytes.unwrap_or(self.output_bytes),
            requests: overrides.requests.unwrap_or(self.requests),
            log_bytes: overrides.log_bytes.unwrap_or(self.log_bytes),
            state_bytes: overrides.state_bytes.unwrap_or(self.state_bytes),
        }
    }

    /// The first limit that is below its floor or above `ceiling`, by name, with the rule.
    pub fn check(&self, ceiling: &PluginLimits) -> Result<(), (&'static str, String)> {
        let ms = |d: Duration| d.as_millis();
        if self.cpu_time < Duration::from_millis(1) || self.cpu_time > ceiling.cpu_time {
            return Err((
                "cpu_time",
                format!("must be 1ms to {}ms", ms(ceiling.cpu_time)),
            ));
        }
        let sizes = [
            (
                "memory_bytes",
                self.memory_bytes,
                ceiling.memory_bytes,
                1 << 20,
            ),
            (
                "output_bytes",
                self.output_bytes,
                ceiling.output_bytes,
                1024,
            ),
            ("requests", self.requests, ceiling.requests, 1),
            ("log_bytes", self.log_bytes, ceiling.log_bytes, 256),
            ("state_bytes", self.state_bytes, ceiling.state_bytes, 0),
        ];
        for (name, value, max, min) in sizes {
            if value < min || value > max {
                return Err((name, format!("must be {min} to {max}")));
            }
        }
        Ok(())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_name_len: 100,
            max_description_len: 1000,
            max_url_len: 2048,
            max_body_bytes: 8 << 20,
            max_event_bytes: 1 << 20,
            max_module_bytes: 64 << 20,
            max_batch_events: 1000,
            admin_key: None,
            metrics_token: None,
            max_connections: 1024,
            max_connections_per_address: 64,
            trusted_proxies: Vec::new(),
            max_requests_per_connection: 1000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}
