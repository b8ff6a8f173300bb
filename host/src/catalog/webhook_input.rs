//! A webhook definition as the API and CLI take it, and how it is checked and merged onto
//! the stored webhook (or onto nothing, for a create).

use crate::model::Invalid;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::checks::{
    check_headers, check_label, check_tenant, check_text, check_url, check_url_characters,
    refuse_nulls,
};
use super::request::{destination, is_absolute};
use super::{Catalog, Error};
use crate::model::parse_duration;
use crate::model::{
    validate_kind, BatchConfig, ConnectionId, EntityMode, Keep, LimitOverrides, Method, ModuleId,
    RetentionOverrides, Schedule, Webhook, WebhookId,
};
use crate::model::{ResponsePath, ResponseValue, Secret};

/// A webhook definition as the API and CLI take it: the whole definition on create, only
/// the fields to change on update (`PATCH`; `null` clears an optional field).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Human name (required on create).
    #[serde(default)]
    pub name: Option<String>,
    /// What it is for.
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    /// Whether it takes events (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Only this tenant's events.
    #[serde(default, deserialize_with = "nullable")]
    pub tenant: Option<Option<String>>,
    /// Event kinds: exact, `prefix.*` or `*` (required on create).
    #[serde(default)]
    pub event_kinds: Option<Vec<String>>,
    /// Attribute scope: attribute name → accepted values.
    #[serde(default)]
    pub scope: Option<BTreeMap<String, Vec<String>>>,
    /// The plugin module (required on create).
    #[serde(default)]
    pub module_id: Option<String>,
    /// Plugin configuration: a JSON object (default `{}`).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// The connection requests go through.
    #[serde(default, deserialize_with = "nullable")]
    pub connection_id: Option<Option<String>>,
    /// Destination URL, or a path relative to the connection (one of the two is required).
    #[serde(default, deserialize_with = "nullable")]
    pub url: Option<Option<String>>,
    /// GET, POST (default), PUT, PATCH or DELETE.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra headers (replace the existing set on update).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Statuses that count as success (empty: any 2xx).
    #[serde(default)]
    pub success_statuses: Option<Vec<u16>>,
    /// Request timeout such as `10s`.
    #[serde(default, deserialize_with = "nullable")]
    pub timeout: Option<Option<String>>,
    /// Retry delays such as `["10s", "1m", "1h"]`.
    #[serde(default, deserialize_with = "nullable")]
    pub retry_schedule: Option<Option<Vec<String>>>,
    /// Delay after the event such as `5m`.
    #[serde(default, deserialize_with = "nullable")]
    pub delay: Option<Option<String>>,
    /// Operating windows.
    #[serde(default, deserialize_with = "nullable")]
    pub schedule: Option<Option<Schedule>>,
    /// JSON pointer to the entity in the payload (debounce), such as `/sku`.
    #[serde(default, deserialize_with = "nullable")]
    pub entity_key: Option<Option<String>>,
    /// `latest` (debounce) or `in_order` (FIFO per entity).
    #[serde(default)]
    pub entity_mode: Option<EntityMode>,
    /// Batching: `{"window": "10s", "max_size": 50}`.
    #[serde(default, deserialize_with = "nullable")]
    pub batch: Option<Option<BatchConfig>>,
    /// Sandbox limits such as `{"cpu_time": "100ms", "memory_bytes": 67108864}` (replace
    /// the existing set on update; `null` returns to the host's defaults).
    #[serde(default, deserialize_with = "nullable")]
    pub limits: Option<Option<LimitsInput>>,
    /// How long its finished deliveries are kept: `{"delivered": "1d", "failed": "90d"}`
    /// (`forever` keeps them; replace the existing set on update; `null` returns to the
    /// host's `retention`).
    #[serde(default, deserialize_with = "nullable")]
    pub retention: Option<Option<RetentionInput>>,
    /// `{"path": "entries.0.values.Request ID", "emit_event": true}`: the value kept from
    /// the receiver's JSON answer, and whether it is emitted as `webhook.response`.
    #[serde(default, deserialize_with = "nullable")]
    pub response_value: Option<Option<ResponseValue>>,
    /// The Standard Webhooks signing secret (`whsec_…`, or an Ed25519 private key `whsk_…`),
    /// on create only; the host generates one when absent. Write-only.
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    /// The scheme of a generated secret, on create only: `v1` (HMAC, the default) or `v1a`
    /// (Ed25519; the webhook then shows its public key).
    #[serde(default)]
    pub signature_scheme: Option<super::signing::Scheme>,
}

/// A webhook's sandbox limits as given: each unset one is the host's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    /// Time an evaluation may run, such as `100ms`.
    #[serde(default)]
    pub cpu_time: Option<String>,
    /// Linear memory, in bytes.
    #[serde(default)]
    pub memory_bytes: Option<usize>,
    /// Bytes of one answer.
    #[serde(default)]
    pub output_bytes: Option<usize>,
    /// Requests one decision may ask for.
    #[serde(default)]
    pub requests: Option<usize>,
    /// Log bytes kept per evaluation.
    #[serde(default)]
    pub log_bytes: Option<usize>,
    /// Plugin state bytes.
    #[serde(default)]
    pub state_bytes: Option<usize>,
}

impl LimitsInput {
    fn parse(self) -> Result<LimitOverrides, Error> {
        let cpu_time = match self.cpu_time {
            Some(text) => {
                Some(parse_duration(&text).map_err(|m| Error::invalid("limits.cpu_time", m))?)
            }
            None => None,
        };
        Ok(LimitOverrides {
            cpu_time,
            memory_bytes: self.memory_bytes,
            output_bytes: self.output_bytes,
            requests: self.requests,
            log_bytes: self.log_bytes,
            state_bytes: self.state_bytes,
        })
    }
}

/// A webhook's retention as given: `7d`, `forever`; each unset one is the host's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionInput {
    /// Delivered and skipped deliveries.
    #[serde(default)]
    pub delivered: Option<String>,
    /// Failed and dead deliveries.
    #[serde(default)]
    pub failed: Option<String>,
}

impl RetentionInput {
    fn parse(self) -> Result<RetentionOverrides, Error> {
        let keep = |field: &str, text: Option<String>| {
            text.map(|t| Keep::parse(&t).map_err(|m| Error::invalid(field, m)))
                .transpose()
        };
        Ok(RetentionOverrides {
            delivered: keep("retention.delivered", self.delivered)?,
            failed: keep("retention.failed", self.failed)?,
        })
    }
}

/// Deserialises a field that may be absent (outer `None`), `null` (`Some(None)`) or a value.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Longest request timeout a webhook may set.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest delay a webhook may set.
const MAX_DELAY: Duration = Duration::from_secs(30 * 86_400);
/// Most events in one batch.
const MAX_BATCH: u32 = 1000;
/// Longest batch window.
const MAX_BATCH_WINDOW: Duration = Duration::from_secs(3600);
/// Most retry steps a webhook may set.
const MAX_RETRY_STEPS: usize = 50;
/// Longest single retry delay.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);
/// Shortest single retry delay.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Most event kinds one webhook takes.
pub const MAX_EVENT_KINDS: usize = 64;
/// Most attributes one scope names.
pub const MAX_SCOPE_ATTRIBUTES: usize = 64;
/// Most accepted values of one scope attribute.
pub const MAX_SCOPE_VALUES: usize = 256;
/// Longest accepted scope value, in bytes (as long as an event attribute's value).
pub const MAX_SCOPE_VALUE: usize = crate::model::MAX_ATTRIBUTE_VALUE;
/// Most bytes of a whole scope (attribute names and values): every event of the webhook's
/// tenant is matched against it, on the API's threads.
pub const MAX_SCOPE_BYTES: usize = 64 * 1024;
/// Largest plugin config, in bytes of JSON.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// Fields of a webhook that are never absent: `null` for them is refused rather than read as
/// "leave unchanged".
const WEBHOOK_NOT_NULL: &[&str] = &[
    "name",
    "enabled",
    "event_kinds",
    "scope",
    "module_id",
    "config",
    "method",
    "headers",
    "success_statuses",
    "entity_mode",
    "signing_secret",
    "signature_scheme",
];

impl WebhookInput {
    /// Parses a webhook definition, refusing `null` where a field cannot be cleared.
    ///
    /// # Errors
    /// [`Error::Json`] for a body that is not a definition, [`Error::Invalid`] for a `null`.
    pub fn from_json(body: &[u8]) -> Result<WebhookInput, Error> {
        refuse_nulls(body, WEBHOOK_NOT_NULL)?;
        serde_json::from_slice(body).map_err(|e| Error::Json(e.to_string()))
    }
}

/// Parses a method name, any case.
///
/// # Errors
/// A message listing the supported methods.
pub fn parse_method(text: &str) -> Result<Method, Invalid> {
    match text.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::Get),
        "POST" => Ok(Method::Post),
        "PUT" => Ok(Method::Put),
        "PATCH" => Ok(Method::Patch),
        "DELETE" => Ok(Method::Delete),
        _ => Err(Invalid::from(format!(
            "`{text}` is not supported; use GET, POST, PUT, PATCH or DELETE"
        ))),
    }
}

impl Catalog {
    /// Applies `input` over `existing` (or over nothing, for a create) and checks the result.
    pub(super) fn merge_webhook(
        &self,
        existing: Option<&Webhook>,
        input: WebhookInput,
    ) -> Result<Webhook, Error> {
        let api = &self.config.api;
        let required = |field: &str| Error::invalid(field, "is required");
        // `Some(x)` in the input wins; otherwise the existing value; otherwise the default.
        fn pick<T: Clone>(given: Option<T>, existing: Option<&T>, default: T) -> T {
            given.unwrap_or_else(|| existing.cloned().unwrap_or(default))
        }

        let name = match (input.name, existing) {
            (Some(name), _) => name,
            (None, Some(w)) => w.name.clone(),
            (None, None) => return Err(required("name")),
        };
        check_label("name", &name, api.max_name_len)?;
        let description = pick(input.description, existing.map(|w| &w.description), None);
        if let Some(text) = &description {
            check_text("description", text, api.max_description_len)?;
        }
        let tenant = pick(input.tenant, existing.map(|w| &w.tenant), None);
        if let Some(tenant) = &tenant {
            check_tenant("tenant", tenant)?;
        }

        let event_kinds = match (input.event_kinds, existing) {
            (Some(kinds), _) => kinds,
            (None, Some(w)) => w.event_kinds.clone(),
            (None, None) => return Err(required("event_kinds")),
        };
        if event_kinds.is_empty() {
            return Err(Error::invalid(
                "event_kinds",
                "at least one event kind is required",
            ));
        }
        if event_kinds.len() > MAX_EVENT_KINDS {
            return Err(Error::invalid(
                "event_kinds",
                format!(
                    "has {} kinds; the limit is {MAX_EVENT_KINDS}",
                    event_kinds.len()
                ),
            ));
        }
        for (i, kind) in event_kinds.iter().enumerate() {
            validate_kind(kind, true)
                .map_err(|m| Error::invalid(format!("event_kinds[{i}]"), m))?;
        }
        let scope = pick(input.scope, existing.map(|w| &w.scope), BTreeMap::new());
        if scope.len() > MAX_SCOPE_ATTRIBUTES {
            return Err(Error::invalid(
                "scope",
                format!(
                    "names {} attributes; the limit is {MAX_SCOPE_ATTRIBUTES}",
                    scope.len()
                ),
            ));
        }
        let scope_bytes: usize = scope
            .iter()
            .map(|(attribute, values)| {
                attribute.len() + values.iter().map(String::len).sum::<usize>()
            })
            .sum();
        if scope_bytes > MAX_SCOPE_BYTES {
            return Err(Error::invalid(
                "scope",
                format!(
                    "is {scope_bytes} bytes of names and values; the limit is {MAX_SCOPE_BYTES}"
                ),
            ));
        }
        for (attribute, values) in &scope {
            if values.len() > MAX_SCOPE_VALUES {
                return Err(Error::invalid(
                    format!("scope.{attribute}"),
                    format!(
                        "lists {} values; the limit is {MAX_SCOPE_VALUES}",
                        values.len()
                    ),
                ));
            }
            if let Some(long) = values.iter().find(|v| v.len() > MAX_SCOPE_VALUE) {
                return Err(Error::invalid(
                    format!("scope.{attribute}"),
                    format!(
                        "a value is {} bytes; the limit is {MAX_SCOPE_VALUE}",
                        long.len()
                    ),
                ));
            }
            if attribute.is_empty() || attribute.len() > 128 {
                return Err(Error::invalid(
                    "scope",
                    format!("attribute name `{attribute}` must be 1 to 128 characters"),
                ));
            }
            if values.is_empty() {
                return Err(Error::invalid(
                    format!("scope.{attribute}"),
                    "list at least one accepted value (leave the attribute out for all values)",
                ));
            }
        }

        let module_id = match (input.module_id, existing) {
            (Some(raw), _) => {
                let id = ModuleId::parse(&raw)
                    .map_err(|e| Error::invalid("module_id", e.to_string()))?;
                if self.store.module_info(&id)?.is_none() {
                    return Err(Error::NotFound {
                        kind: "module",
                        id: raw,
                    });
                }
                id
            }
            (None, Some(w)) => w.module_id.clone(),
            (None, None) => return Err(required("module_id")),
        };
        let config = pick(
            input.config,
            existing.map(|w| &w.config),
            serde_json::Value::Object(Default::default()),
        );
        if !config.is_object() {
            return Err(Error::invalid("config", "must be a JSON object"));
        }
        let config_bytes = config.to_string().len();
        if config_bytes > MAX_CONFIG_BYTES {
            return Err(Error::invalid(
                "config",
                format!("is {config_bytes} bytes of JSON; the limit is {MAX_CONFIG_BYTES}"),
            ));
        }

        let connection_id = match input.connection_id {
            Some(Some(raw)) => {
                let id = ConnectionId::parse(&raw)
                    .map_err(|e| Error::invalid("connection_id", e.to_string()))?;
                if self.connection_cached(&id).is_none() {
                    return Err(Error::NotFound {
                        kind: "connection",
                        id: raw,
                    });
                }
                Some(id)
            }
            Some(None) => None,
            None => existing.and_then(|w| w.connection_id.clone()),
        };
        let url = pick(input.url, existing.map(|w| &w.url), None);
        if let Some(url) = &url {
            if url.len() > api.max_url_len {
                return Err(Error::invalid(
                    "url",
                    format!("is {} bytes; the limit is {}", url.len(), api.max_url_len),
                ));
            }
            check_url_characters(url)?;
            if is_absolute(url) {
                check_url(url, api.max_url_len)?;
            } else if url.contains("://") || url.starts_with("//") {
                return Err(Error::invalid("url", format!("`{url}` is not a valid URL")));
            }
        }
        let connection = connection_id
            .as_ref()
            .and_then(|id| self.connection_cached(id));
        if let Some(connection) = &connection {
            // A tenant's webhook sends only through connections shared with that tenant: once
            // the operator withdraws one, the webhook can be changed only to detach it.
            if !connection.shared_with(tenant.as_deref()) {
                return Err(Error::invalid(
                    "connection_id",
                    format!(
                        "connection {} is not shared with tenant `{}`; detach it \
                         (\"connection_id\": null) or have the operator add the tenant to the \
                         connection's `tenants`",
                        connection.id,
                        tenant.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        let base = connection.as_ref().map(|c| c.base_url.as_str());
        let resolved = destination(url.as_deref(), base).map_err(|m| Error::invalid("url", m))?;
        check_url(&resolved, api.max_url_len)?;
        self.check_destination("url", &resolved)?;
        if let Some(connection) = &connection {
            connection.covers(&resolved).map_err(|m| {
                Error::invalid(
                    "url",
                    format!(
                        "{m}; a connection's credentials go only to its own base URL: give a \
                         path under it, or no connection"
                    ),
                )
            })?;
        }

        let method = match (&input.method, existing) {
            (Some(m), _) => parse_method(m).map_err(|e| Error::invalid("method", e))?,
            (None, Some(w)) => w.method,
            (None, None) => Method::Post,
        };
        let headers = match (input.headers, existing) {
            (Some(map), _) => check_headers("headers", map)?,
            (None, Some(w)) => w.headers.clone(),
            (None, None) => Vec::new(),
        };
        let success_statuses = pick(
            input.success_statuses,
            existing.map(|w| &w.success_statuses),
            Vec::new(),
        );
        for (i, status) in success_statuses.iter().enumerate() {
            if !(100..=599).contains(status) {
                return Err(Error::invalid(
                    format!("success_statuses[{i}]"),
                    format!("{status} is not an HTTP status (100 to 599)"),
                ));
            }
        }
        let timeout = match input.timeout {
            Some(Some(text)) => {
                let d = parse_duration(&text).map_err(|m| Error::invalid("timeout", m))?;
                if d.is_zero() || d > MAX_TIMEOUT {
                    return Err(Error::invalid(
                        "timeout",
                        format!("must be more than 0 and at most {}s", MAX_TIMEOUT.as_secs()),
                    ));
                }
                Some(d)
            }
            Some(None) => None,
            None => existing.and_then(|w| w.timeout),
        };
        let retry_schedule = match input.retry_schedule {
            Some(Some(list)) => {
                if list.len() > MAX_RETRY_STEPS {
                    return Err(Error::invalid(
                        "retry_schedule",
                        format!("has {} steps; the limit is {MAX_RETRY_STEPS}", list.len()),
                    ));
                }
                let mut schedule = Vec::with_capacity(list.len());
                for (i, text) in list.iter().enumerate() {
                    let field = format!("retry_schedule[{i}]");
                    let d = parse_duration(text).map_err(|m| Error::invalid(&field, m))?;
                    if d > MAX_RETRY_DELAY {
                        return Err(Error::invalid(field, "must be at most 7d"));
                    }
                    if d < MIN_RETRY_DELAY {
                        return Err(Error::invalid(field, "must be at least 100ms"));
                    }
                    schedule.push(d);
                }
                Some(schedule)
            }
            Some(None) => None,
            None => existing.and_then(|w| w.retry_schedule.clone()),
        };

        let delay = match input.delay {
            Some(Some(text)) => {
                let d = parse_duration(&text).map_err(|m| Error::invalid("delay", m))?;
                if d > MAX_DELAY {
                    return Err(Error::invalid("delay", "must be at most 30d"));
                }
                Some(d)
            }
            Some(None) => None,
            None => existing.and_then(|w| w.delay),
        };
        let entity_key = pick(input.entity_key, existing.map(|w| &w.entity_key), None);
        if let Some(pointer) = &entity_key {
            if !pointer.starts_with('/') || pointer.len() > 256 {
                return Err(Error::invalid(
                    "entity_key",
                    format!("`{pointer}` is not a JSON pointer like /sku or /order/id (1 to 256 characters, starting with /)"),
                ));
            }
        }
        let entity_mode = pick(
            input.entity_mode,
            existing.map(|w| &w.entity_mode),
            EntityMode::Latest,
        );
        let batch = pick(input.batch, existing.map(|w| &w.batch), None);
        if let Some(batch) = &batch {
            if batch.max_size == 0 || batch.max_size > MAX_BATCH {
                return Err(Error::invalid(
                    "batch.max_size",
                    format!("must be 1 to {MAX_BATCH}"),
                ));
            }
            if batch.window.is_zero() || batch.window > MAX_BATCH_WINDOW {
                return Err(Error::invalid(
                    "batch.window",
                    "must be more than 0 and at most 1h",
                ));
            }
            if entity_key.is_some() || delay.is_some() {
                return Err(Error::invalid(
                    "batch",
                    "cannot be combined with entity_key or delay; a batch collects for its window",
                ));
            }
        }
        let schedule = pick(input.schedule, existing.map(|w| &w.schedule), None);
        if let Some(schedule) = &schedule {
            schedule
                .check()
                .map_err(|(field, message)| Error::invalid(field, message))?;
        }

        let limits = match input.limits {
            Some(Some(given)) => given.parse()?,
            Some(None) => LimitOverrides::default(),
            None => existing.map(|w| w.limits.clone()).unwrap_or_default(),
        };
        let plugin = &self.config.plugin;
        plugin
            .limits
            .with(&limits)
            .check(&plugin.max_limits)
            .map_err(|(name, message)| Error::invalid(format!("limits.{name}"), message))?;

        // Checked when given: a stored one the host's setting has since come under is
        // clamped when pruning, and does not stop other changes.
        let retention = match input.retention {
            Some(Some(given)) => {
                let retention = given.parse()?;
                self.check_retention(&retention, tenant.as_deref())?;
                retention
            }
            Some(None) => RetentionOverrides::default(),
            None => existing.map(|w| w.retention.clone()).unwrap_or_default(),
        };

        let response_value = pick(
            input.response_value,
            existing.map(|w| &w.response_value),
            None,
        );
        if let Some(path) = response_value.as_ref().and_then(|r| r.path.as_deref()) {
            ResponsePath::parse(path).map_err(|m| Error::invalid("response_value.path", m))?;
        }

        let now = self.now();
        let enabled = input
            .enabled
            .or(existing.map(|w| w.enabled))
            .unwrap_or(true);
        // Enabling again starts a fresh failure streak.
        let (failing_since, disabled_reason) = match existing {
            Some(w) if input.enabled != Some(true) || w.enabled => {
                (w.failing_since, w.disabled_reason.clone())
            }
            _ => (None, None),
        };
        Ok(Webhook {
            id: existing.map_or_else(WebhookId::generate, |w| w.id.clone()),
            name,
            description,
            enabled,
            tenant,
            event_kinds,
            scope,
            module_id,
            config,
            connection_id,
            url,
            method,
            headers,
            success_statuses,
            timeout,
            retry_schedule,
            delay,
            entity_key,
            entity_mode,
            batch,
            schedule,
            limits,
            retention,
            response_value,
            failing_since,
            disabled_reason,
            created_at: existing.map_or(now, |w| w.created_at),
            updated_at: now,
        })
    }
}

impl Catalog {
    /// A tenant's webhook may keep its deliveries for less than the host's `retention`, never
    /// longer: the operator decides how much of a tenant's history the host holds.
    fn check_retention(
        &self,
        retention: &RetentionOverrides,
        tenant: Option<&str>,
    ) -> Result<(), Error> {
        let host = &self.config.retention;
        for (field, given, limit) in [
            ("retention.delivered", retention.delivered, host.delivered),
            ("retention.failed", retention.failed, host.failed),
        ] {
            if let Some(keep) = given.filter(|keep| tenant.is_some() && *keep > limit) {
                return Err(Error::invalid(
                    field,
                    format!(
                        "a tenant's webhook keeps its deliveries at most as long as the host \
                         does ({field} = {limit}); {keep} is longer"
                    ),
                ));
            }
        }
        Ok(())
    }
}
