//! What operators register and look at: modules, webhooks, events and deliveries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::checks::{
    check_headers, check_label, check_tenant, check_text, check_url, check_url_characters,
    refuse_nulls,
};
use super::listing::{contains, ListQuery, Listed, Page, SortValue};
use super::request::{destination, is_absolute};
use super::{Error, Pipeline};
use crate::model::parse_duration;
use crate::model::{
    kind_matches, validate_kind, BatchConfig, ConnectionId, Delivery, DeliveryId, DeliveryStatus,
    EntityMode, Event, EventId, LimitOverrides, Method, Millis, ModuleId, ModuleInfo, Schedule,
    Webhook, WebhookId,
};
use crate::model::{ResponsePath, ResponseValue, Secret, SigningKeys};
use crate::runtime::WORLD;

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
pub const MAX_SCOPE_VALUE: usize = super::ingest::MAX_ATTRIBUTE_VALUE;
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

/// Filters for listing deliveries.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    /// Only this webhook's.
    pub webhook_id: Option<WebhookId>,
    /// Only this event's.
    pub event_id: Option<EventId>,
    /// Only in this status.
    pub status: Option<DeliveryStatus>,
    /// Only created at or after this time.
    pub created_after: Option<Millis>,
    /// Only created before this time.
    pub created_before: Option<Millis>,
    /// Only of webhooks of this tenant (tenant-bound keys).
    pub tenant: Option<String>,
}

impl DeliveryFilter {
    /// Whether `d` passes.
    pub fn keeps(&self, d: &Delivery) -> bool {
        self.webhook_id.as_ref().is_none_or(|w| &d.webhook_id == w)
            && self.event_id.as_ref().is_none_or(|e| &d.event_id == e)
            && self.status.is_none_or(|s| d.status == s)
            && self.created_after.is_none_or(|t| d.created_at >= t)
            && self.created_before.is_none_or(|t| d.created_at < t)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| d.tenant.as_ref() == Some(t))
    }
}

/// Parses a method name, any case.
///
/// # Errors
/// A message listing the supported methods.
pub fn parse_method(text: &str) -> Result<Method, String> {
    match text.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::Get),
        "POST" => Ok(Method::Post),
        "PUT" => Ok(Method::Put),
        "PATCH" => Ok(Method::Patch),
        "DELETE" => Ok(Method::Delete),
        _ => Err(format!(
            "`{text}` is not supported; use GET, POST, PUT, PATCH or DELETE"
        )),
    }
}

impl Listed for ModuleInfo {
    fn list_id(&self) -> &str {
        self.id.as_str()
    }

    fn sort_value(&self, field: &str) -> SortValue {
        match field {
            "name" => SortValue::Text(self.name.to_lowercase()),
            "size" => SortValue::Int(self.size as i64),
            _ => SortValue::Int(self.created_at.as_i64()),
        }
    }
}

impl Listed for Webhook {
    fn list_id(&self) -> &str {
        self.id.as_str()
    }

    fn sort_value(&self, field: &str) -> SortValue {
        match field {
            "name" => SortValue::Text(self.name.to_lowercase()),
            "updated_at" => SortValue::Int(self.updated_at.as_i64()),
            _ => SortValue::Int(self.created_at.as_i64()),
        }
    }
}

impl Pipeline {
    /// Stores a plugin module after validating it against the world. Uploading the same
    /// bytes again returns the stored module (`false`: not newly created).
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::Invalid`] for a bad name or version, [`Error::Module`] for
    /// bytes that are not a component of the world, or a storage error.
    pub fn upload_module(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
    ) -> Result<(ModuleInfo, bool), Error> {
        let limit = self.config.api.max_module_bytes;
        if bytes.len() > limit {
            return Err(Error::TooLarge {
                what: "the module".into(),
                unit: "bytes",
                size: bytes.len(),
                limit,
            });
        }
        check_label("name", name, self.config.api.max_name_len)?;
        check_label("version", version, 64)?;
        let id = ModuleId::for_bytes(bytes);
        if let Some(existing) = self.store.module_info(&id)? {
            return Ok((existing, false));
        }
        self.store.admit()?;
        let plugin = self.runtime.validate(bytes)?;
        let info = ModuleInfo {
            id: id.clone(),
            name: name.to_string(),
            version: version.to_string(),
            size: bytes.len() as u64,
            world: WORLD.to_string(),
            features: plugin.features.clone(),
            exports: plugin.exports.clone(),
            created_at: self.now(),
        };
        self.store.put_module(&info, bytes)?;
        self.runtime.insert(id, plugin);
        Ok((info, true))
    }

    /// One module's description.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn module(&self, id: &str) -> Result<ModuleInfo, Error> {
        let not_found = || Error::NotFound {
            kind: "module",
            id: id.to_string(),
        };
        let id = ModuleId::parse(id).map_err(|_| not_found())?;
        self.store.module_info(&id)?.ok_or_else(not_found)
    }

    /// The webhooks that use a module, oldest first.
    pub fn module_users(&self, id: &ModuleId) -> Vec<WebhookId> {
        let mut users: Vec<WebhookId> = self
            .webhooks
            .read()
            .unwrap()
            .values()
            .filter(|w| &w.module_id == id)
            .map(|w| w.id.clone())
            .collect();
        users.sort();
        users
    }

    /// Deletes a module, refused while a webhook uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] naming the webhooks that use it, or a storage
    /// error.
    pub fn delete_module(&self, id: &str) -> Result<ModuleInfo, Error> {
        let info = self.module(id)?;
        let users = self.module_users(&info.id);
        if !users.is_empty() {
            let users: Vec<String> = users.iter().map(ToString::to_string).collect();
            return Err(Error::Conflict(format!(
                "module {} is used by webhook(s) {}; point them at another module first",
                info.id,
                users.join(", ")
            )));
        }
        self.store.delete_module(&info.id)?;
        self.runtime.forget(&info.id);
        Ok(info)
    }

    /// Modules matching the query's filters (`name`, `name_contains`, `version`), ordered
    /// by `created_at`, `name` or `size`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter, or a storage error.
    pub fn list_modules(&self, mut query: ListQuery) -> Result<Page<ModuleInfo>, Error> {
        let name = query.take("name");
        let name_contains = query.take("name_contains");
        let version = query.take("version");
        query.finish()?;
        let items = self
            .store
            .modules()?
            .into_iter()
            .filter(|m| {
                name.as_ref().is_none_or(|n| &m.name == n)
                    && name_contains.as_ref().is_none_or(|n| contains(&m.name, n))
                    && version.as_ref().is_none_or(|v| &m.version == v)
            })
            .collect();
        Ok(query.page(items))
    }

    /// Every module, oldest first.
    ///
    /// # Errors
    /// On storage failure.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>, Error> {
        Ok(self.store.modules()?)
    }

    /// Creates a webhook after checking every field.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first bad or missing field, [`Error::NotFound`] for an
    /// unknown module or connection, or a storage error. Nothing is stored on error.
    pub fn create_webhook(&self, input: WebhookInput) -> Result<Webhook, Error> {
        self.create_webhook_signed(input)
            .map(|(webhook, _)| webhook)
    }

    /// Creates a webhook and its signing secret: the one given (checked), or a new one of
    /// the requested scheme; returns what to tell the caller about it (a generated symmetric
    /// secret, shown once, or a key pair's public key).
    ///
    /// # Errors
    /// As [`Pipeline::create_webhook`], and [`Error::Invalid`] for a bad `signing_secret`.
    pub fn create_webhook_signed(
        &self,
        mut input: WebhookInput,
    ) -> Result<(Webhook, super::signing::Issued), Error> {
        self.store.admit()?;
        let given = input.signing_secret.take();
        let scheme = input.signature_scheme.take();
        let (current, issued) = super::signing::issue(given, scheme, "signing_secret")?;
        let webhook = self.merge_webhook(None, input)?;
        self.put_signing_keys(
            &webhook.id,
            &SigningKeys {
                current,
                previous: None,
                previous_until: None,
            },
        )?;
        Ok((self.save_webhook(webhook)?, issued))
    }

    /// Changes the fields given in `input`; the result is checked like a new webhook. Takes
    /// effect on the next evaluation (module and config included), no restart.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown webhook, module or connection, [`Error::Invalid`]
    /// naming the first bad field, or a storage error. Nothing changes on error.
    pub fn update_webhook(&self, id: &str, input: WebhookInput) -> Result<Webhook, Error> {
        if input.signature_scheme.is_some() {
            return Err(Error::invalid(
                "signature_scheme",
                "is chosen when the webhook is created, or with POST /v1/webhooks/{id}/rotate-secret",
            ));
        }
        if input.signing_secret.is_some() {
            return Err(Error::invalid(
                "signing_secret",
                "is set when the webhook is created, or changed with POST /v1/webhooks/{id}/rotate-secret (which keeps the old one valid for a while)",
            ));
        }
        let _writing = self.webhook_writes.lock().unwrap();
        let existing = self.webhook(id)?;
        let webhook = self.merge_webhook(Some(&existing), input)?;
        self.save_webhook(webhook)
    }

    /// Deletes a webhook. Its pending deliveries end as failed ("the webhook was deleted");
    /// its history stays readable.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn delete_webhook(&self, id: &str) -> Result<Webhook, Error> {
        let _writing = self.webhook_writes.lock().unwrap();
        let existing = self.webhook(id)?;
        self.store.delete_webhook(&existing.id)?;
        self.signers.write().unwrap().remove(&existing.id);
        self.webhooks.write().unwrap().remove(&existing.id);
        self.forget_endpoints();
        self.wake.notify_one();
        Ok(existing)
    }

    /// Changes a stored webhook from inside the host (failure streaks, auto-disable), under
    /// the same lock as API updates so neither overwrites the other. Returns the new webhook,
    /// or `None` when it no longer exists or `change` left it as it was.
    pub(super) fn change_webhook(
        &self,
        id: &WebhookId,
        change: impl FnOnce(&mut Webhook),
    ) -> Result<Option<Webhook>, Error> {
        let _writing = self.webhook_writes.lock().unwrap();
        let Some(current) = self.webhook_cached(id) else {
            return Ok(None);
        };
        let mut changed = (*current).clone();
        change(&mut changed);
        if changed == *current {
            return Ok(None);
        }
        changed.updated_at = self.now();
        self.save_webhook(changed).map(Some)
    }

    fn save_webhook(&self, webhook: Webhook) -> Result<Webhook, Error> {
        self.store.put_webhook(&webhook)?;
        self.webhooks
            .write()
            .unwrap()
            .insert(webhook.id.clone(), Arc::new(webhook.clone()));
        self.forget_endpoints();
        Ok(webhook)
    }

    /// Applies `input` over `existing` (or over nothing, for a create) and checks the result.
    fn merge_webhook(
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
            response_value,
            failing_since,
            disabled_reason,
            created_at: existing.map_or(now, |w| w.created_at),
            updated_at: now,
        })
    }

    /// One webhook.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn webhook(&self, id: &str) -> Result<Webhook, Error> {
        WebhookId::parse(id)
            .ok()
            .and_then(|id| self.webhook_cached(&id))
            .map(|w| (*w).clone())
            .ok_or_else(|| Error::NotFound {
                kind: "webhook",
                id: id.to_string(),
            })
    }

    /// Every webhook, oldest first.
    pub fn webhooks(&self) -> Vec<Webhook> {
        let mut all: Vec<Webhook> = self
            .webhooks
            .read()
            .unwrap()
            .values()
            .map(|w| (**w).clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Webhooks matching the query's filters (`name`, `name_contains`,
    /// `description_contains`, `enabled`, `tenant`, `module_id`, `connection_id`,
    /// `event_kind`: takes this kind), ordered by `created_at`, `updated_at` or `name`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter.
    pub fn list_webhooks(&self, mut query: ListQuery) -> Result<Page<Webhook>, Error> {
        let name = query.take("name");
        let name_contains = query.take("name_contains");
        let description_contains = query.take("description_contains");
        let enabled = query.take_bool("enabled")?;
        let tenant = query.take("tenant");
        let module_id = query.take("module_id");
        let connection_id = query.take("connection_id");
        let event_kind = query.take("event_kind");
        query.finish()?;
        let items = self
            .webhooks()
            .into_iter()
            .filter(|w| {
                name.as_ref().is_none_or(|n| &w.name == n)
                    && name_contains.as_ref().is_none_or(|n| contains(&w.name, n))
                    && description_contains
                        .as_ref()
                        .is_none_or(|n| w.description.as_ref().is_some_and(|d| contains(d, n)))
                    && enabled.is_none_or(|e| w.enabled == e)
                    && tenant.as_ref().is_none_or(|t| w.tenant.as_ref() == Some(t))
                    && module_id.as_ref().is_none_or(|m| w.module_id.as_str() == m)
                    && connection_id
                        .as_ref()
                        .is_none_or(|c| w.connection_id.as_ref().is_some_and(|id| id.as_str() == c))
                    && event_kind
                        .as_ref()
                        .is_none_or(|k| w.event_kinds.iter().any(|p| kind_matches(p, k)))
            })
            .collect();
        Ok(query.page(items))
    }

    /// One event of `tenant` (event ids are unique per tenant; `None`: an event without a
    /// tenant).
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn event(&self, tenant: Option<&str>, id: &str) -> Result<Event, Error> {
        let not_found = || Error::NotFound {
            kind: "event",
            id: id.to_string(),
        };
        let id = EventId::parse(id).map_err(|_| not_found())?;
        self.store.event(tenant, &id)?.ok_or_else(not_found)
    }

    /// One delivery.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn delivery(&self, id: &str) -> Result<Delivery, Error> {
        let not_found = || Error::NotFound {
            kind: "delivery",
            id: id.to_string(),
        };
        let id = DeliveryId::parse(id).map_err(|_| not_found())?;
        self.store.delivery(&id)?.ok_or_else(not_found)
    }

    /// Deliveries matching the query's filters (`webhook_id`, `event_id`, `status`,
    /// `created_after`, `created_before` as RFC 3339), ordered by `created_at` (newest first
    /// by default). `tenant` restricts to one tenant's webhooks (tenant-bound keys).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter, or a storage error.
    pub fn list_deliveries(
        &self,
        mut query: ListQuery,
        tenant: Option<&str>,
    ) -> Result<Page<Delivery>, Error> {
        let filter = DeliveryFilter {
            webhook_id: query.take_parsed("webhook_id", |t| {
                WebhookId::parse(t).map_err(|e| e.to_string())
            })?,
            event_id: query.take_parsed("event_id", EventId::parse)?,
            status: query.take_parsed("status", DeliveryStatus::parse)?,
            created_after: query.take_parsed("created_after", Millis::parse)?,
            created_before: query.take_parsed("created_before", Millis::parse)?,
            tenant: tenant.map(str::to_string),
        };
        query.finish()?;
        // Ids sort by creation time, so creation order is id order: the tree is walked in that
        // order and stops at a full page (plus one, to know whether there is a next page).
        let limit = query.limit;
        let position = |d: &Delivery| SortValue::Text(d.id.to_string());
        let scanned = self.store.scan_deliveries(
            query.descending,
            &mut |d: &Delivery| {
                filter.keeps(d) && query.is_after_cursor(&position(d), d.id.as_str())
            },
            limit + 1,
        )?;
        let mut data = scanned.deliveries;
        let more = data.len() > limit;
        data.truncate(limit);
        let next_cursor = more
            .then(|| data.last())
            .flatten()
            .map(|d| query.cursor_for(&position(d), d.id.as_str()));
        Ok(Page {
            data,
            next_cursor,
            unreadable: scanned.unreadable,
        })
    }
}
