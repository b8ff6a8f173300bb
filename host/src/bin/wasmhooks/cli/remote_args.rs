//! The operator commands' arguments, and how they become request bodies.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

/// Where the API is and which key to use.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "WASMHOOKS_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// API key (admin, or emitter for `emit` and `event get`).
    #[arg(long, global = true, env = "WASMHOOKS_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

/// Paging and filtering of a list.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Filter as NAME=VALUE, e.g. `name_contains=erp` (repeatable).
    #[arg(long = "filter", value_name = "NAME=VALUE")]
    pub filters: Vec<String>,
    /// Page size (1 to 250).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Order field, e.g. created_at or name.
    #[arg(long)]
    pub order_by: Option<String>,
    /// asc or desc.
    #[arg(long)]
    pub direction: Option<String>,
    /// Continue after this cursor (from a previous page).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow cursors and show every page.
    #[arg(long)]
    pub all: bool,
    /// Print the JSON pages instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Module commands.
#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Upload a component (.wasm); uploading the same bytes again is a no-op.
    Upload {
        /// The component file.
        file: PathBuf,
        /// Module name.
        #[arg(long)]
        name: String,
        /// Module version.
        #[arg(long, default_value = "0.0.0")]
        version: String,
    },
    /// List modules (filters: name, name_contains, version).
    List(ListArgs),
    /// Show one module and the webhooks that use it.
    Get {
        /// Module id.
        id: String,
        /// Related objects to include: webhooks.
        #[arg(long)]
        expand: Option<String>,
    },
    /// Delete a module (refused while a webhook uses it).
    Delete {
        /// Module id.
        id: String,
    },
}

/// Connection fields as flags; they override `--data`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionFields {
    /// The whole definition as JSON, or @file.json.
    #[arg(long)]
    pub data: Option<String>,
    /// Name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Base URL.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Auth as JSON, e.g. '{"type":"bearer","token":"…"}'.
    #[arg(long)]
    pub auth: Option<String>,
    /// Default header as NAME=VALUE (repeatable; replaces the set).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Signing secret (whsec_…, or an Ed25519 private key whsk_…).
    #[arg(long)]
    pub signing_secret: Option<String>,
    /// A tenant whose keys may see and attach it (repeatable; replaces the list).
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
}

/// Connection commands.
#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Create a connection.
    Create(ConnectionFields),
    /// List connections (filters: name, name_contains, description_contains).
    List(ListArgs),
    /// Show one connection (secrets are never shown).
    Get {
        /// Connection id.
        id: String,
        /// Related objects to include: webhooks.
        #[arg(long)]
        expand: Option<String>,
    },
    /// Change a connection's given fields.
    Update {
        /// Connection id.
        id: String,
        /// The fields.
        #[command(flatten)]
        fields: ConnectionFields,
    },
    /// Delete a connection (refused while a webhook uses it).
    Delete {
        /// Connection id.
        id: String,
    },
}

/// Webhook fields as flags; they override `--data`.
#[derive(Debug, Clone, Args)]
pub struct WebhookFields {
    /// The whole definition as JSON, or @file.json.
    #[arg(long)]
    pub data: Option<String>,
    /// Name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Event kind or pattern such as order.* (repeatable; replaces the set).
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Module id.
    #[arg(long)]
    pub module: Option<String>,
    /// Plugin config as JSON, or @file.json.
    #[arg(long)]
    pub config: Option<String>,
    /// Connection id.
    #[arg(long)]
    pub connection: Option<String>,
    /// URL, or a path relative to the connection.
    #[arg(long)]
    pub url: Option<String>,
    /// Method: GET, POST, PUT, PATCH or DELETE.
    #[arg(long)]
    pub method: Option<String>,
    /// Header as NAME=VALUE (repeatable; replaces the set).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Scope as ATTRIBUTE=V1,V2 (repeatable; replaces the scope).
    #[arg(long = "scope", value_name = "ATTRIBUTE=VALUES")]
    pub scope: Vec<String>,
    /// A status that counts as success (repeatable; default any 2xx).
    #[arg(long = "success-status")]
    pub success_statuses: Vec<u16>,
    /// Request timeout such as 10s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Retry delays such as 10s,1m,1h.
    #[arg(long)]
    pub retry: Option<String>,
    /// How long delivered and skipped deliveries are kept, such as 1d, or forever (with
    /// --keep-failed, replaces the webhook's retention).
    #[arg(long, value_name = "DURATION")]
    pub keep_delivered: Option<String>,
    /// How long failed and dead deliveries are kept, such as 90d, or forever.
    #[arg(long, value_name = "DURATION")]
    pub keep_failed: Option<String>,
}

/// Webhook commands.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create a webhook.
    Create(WebhookFields),
    /// List webhooks (filters: name, name_contains, description_contains, enabled, tenant,
    /// module_id, connection_id, event_kind).
    List(ListArgs),
    /// Show one webhook.
    Get {
        /// Webhook id.
        id: String,
        /// Related objects to include: module, connection.
        #[arg(long)]
        expand: Option<String>,
    },
    /// Change a webhook's given fields.
    Update {
        /// Webhook id.
        id: String,
        /// The fields.
        #[command(flatten)]
        fields: WebhookFields,
    },
    /// Delete a webhook.
    Delete {
        /// Webhook id.
        id: String,
    },
    /// Resume taking events.
    Enable {
        /// Webhook id.
        id: String,
    },
    /// Pause: events are not routed to it and pending deliveries wait.
    Disable {
        /// Webhook id.
        id: String,
    },
    /// Dry run on a sample event: the decision, logs and exact requests; nothing is sent.
    Test {
        /// Webhook id.
        id: String,
        /// Event JSON file ({"kind": …, "payload": …}).
        #[arg(long)]
        event: PathBuf,
    },
    /// Replay every failed or dead delivery of the webhook in a time range.
    Recover {
        /// Webhook id.
        id: String,
        /// Start (RFC 3339).
        #[arg(long)]
        since: String,
        /// End (RFC 3339; now when absent).
        #[arg(long)]
        until: Option<String>,
    },
    /// Make a new signing secret current; the old one keeps signing for
    /// `delivery.signature_overlap`. Prints a generated secret once.
    RotateSecret {
        /// Webhook id.
        id: String,
        /// The new secret (`whsec_…` or `whsk_…`); generated when absent.
        #[arg(long, conflicts_with = "scheme")]
        secret: Option<String>,
        /// Scheme of a generated secret: v1 (HMAC) or v1a (Ed25519); default: the current's.
        #[arg(long, value_parser = ["v1", "v1a"])]
        scheme: Option<String>,
    },
}

/// Delivery commands.
#[derive(Debug, Subcommand)]
pub enum DeliveryCommand {
    /// List deliveries, newest first.
    List {
        /// Only this webhook's.
        #[arg(long)]
        webhook: Option<String>,
        /// Only this event's.
        #[arg(long)]
        event: Option<String>,
        /// Only in this status: pending, delivered, failed, dead, skipped.
        #[arg(long)]
        status: Option<String>,
        /// Only created at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only created before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Paging and other filters.
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one delivery: requests, attempts, logs.
    Get {
        /// Delivery id.
        id: String,
        /// Related objects to include: event, webhook.
        #[arg(long)]
        expand: Option<String>,
    },
}

/// API key commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its text is printed once.
    Create {
        /// Name.
        #[arg(long)]
        name: String,
        /// admin or emitter.
        #[arg(long)]
        role: String,
        /// Bind the key to a tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List keys (filters: name_contains, role, tenant, revoked).
    List(ListArgs),
    /// Show one key.
    Get {
        /// Key id.
        id: String,
    },
    /// Revoke a key.
    Revoke {
        /// Key id.
        id: String,
    },
}

/// Event commands.
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Show one stored event.
    Get {
        /// Event id.
        id: String,
        /// The tenant whose event it is (ids are unique per tenant); a tenant-bound key
        /// reads its own tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub(super) fn split_pair(text: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{flag} `{text}` must be NAME=VALUE"),
    }
}

/// JSON given inline or as `@file`.
pub(super) fn json_arg(text: &str, what: &str) -> anyhow::Result<Value> {
    let (source, content) = match text.strip_prefix('@') {
        Some(path) => (
            path.to_string(),
            std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        ),
        None => (what.to_string(), text.to_string()),
    };
    serde_json::from_str(&content).with_context(|| format!("{source} is not valid JSON"))
}

pub(super) fn base_object(data: Option<&str>) -> anyhow::Result<Map<String, Value>> {
    match data {
        None => Ok(Map::new()),
        Some(text) => match json_arg(text, "--data")? {
            Value::Object(map) => Ok(map),
            _ => bail!("--data must be a JSON object"),
        },
    }
}

pub(super) fn header_map(pairs: &[String]) -> anyhow::Result<Value> {
    let mut map = Map::new();
    for pair in pairs {
        let (k, v) = split_pair(pair, "--header")?;
        map.insert(k, v.into());
    }
    Ok(Value::Object(map))
}

impl ConnectionFields {
    pub(super) fn to_json(&self) -> anyhow::Result<Value> {
        let mut body = base_object(self.data.as_deref())?;
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                body.insert(k.to_string(), v);
            }
        };
        set("name", self.name.clone().map(Value::from));
        set("description", self.description.clone().map(Value::from));
        set("base_url", self.base_url.clone().map(Value::from));
        set(
            "auth",
            self.auth
                .as_deref()
                .map(|a| json_arg(a, "--auth"))
                .transpose()?,
        );
        set(
            "headers",
            (!self.headers.is_empty())
                .then(|| header_map(&self.headers))
                .transpose()?,
        );
        set(
            "signing_secret",
            self.signing_secret.clone().map(Value::from),
        );
        set(
            "tenants",
            (!self.tenants.is_empty()).then(|| json!(self.tenants)),
        );
        Ok(Value::Object(body))
    }
}

impl WebhookFields {
    pub(super) fn to_json(&self) -> anyhow::Result<Value> {
        let mut body = base_object(self.data.as_deref())?;
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                body.insert(k.to_string(), v);
            }
        };
        set("name", self.name.clone().map(Value::from));
        set("description", self.description.clone().map(Value::from));
        set(
            "event_kinds",
            (!self.kinds.is_empty()).then(|| json!(self.kinds)),
        );
        set("module_id", self.module.clone().map(Value::from));
        set(
            "config",
            self.config
                .as_deref()
                .map(|c| json_arg(c, "--config"))
                .transpose()?,
        );
        set("connection_id", self.connection.clone().map(Value::from));
        set("url", self.url.clone().map(Value::from));
        set("method", self.method.clone().map(Value::from));
        set(
            "headers",
            (!self.headers.is_empty())
                .then(|| header_map(&self.headers))
                .transpose()?,
        );
        set("tenant", self.tenant.clone().map(Value::from));
        if !self.scope.is_empty() {
            let mut scope = BTreeMap::new();
            for pair in &self.scope {
                let (k, v) = split_pair(pair, "--scope")?;
                scope.insert(k, v.split(',').map(str::to_string).collect::<Vec<_>>());
            }
            set("scope", Some(json!(scope)));
        }
        set(
            "success_statuses",
            (!self.success_statuses.is_empty()).then(|| json!(self.success_statuses)),
        );
        set("timeout", self.timeout.clone().map(Value::from));
        set(
            "retry_schedule",
            self.retry
                .as_ref()
                .map(|r| json!(r.split(',').map(str::trim).collect::<Vec<_>>())),
        );
        if self.keep_delivered.is_some() || self.keep_failed.is_some() {
            let mut retention = serde_json::Map::new();
            for (key, given) in [
                ("delivered", &self.keep_delivered),
                ("failed", &self.keep_failed),
            ] {
                if let Some(text) = given {
                    retention.insert(key.to_string(), Value::from(text.clone()));
                }
            }
            set("retention", Some(Value::Object(retention)));
        }
        Ok(Value::Object(body))
    }
}
