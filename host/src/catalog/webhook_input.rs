//! A webhook definition as the API and CLI take it, and how it is checked and merged onto
//! the stored webhook (or onto nothing, for a create).

use crate::model::Invalid;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::checks::{
    check_headers, check_label, check_tenant, check_text, check_url, check_url_characters,
    refuse_nulls,
};
use super::request::{destination, is_absolute};
use super::webhook_rules as rules;
use super::{Catalog, Error};
use crate::model::parse_duration;
use crate::model::{
    BatchConfig, ConnectionId, EntityMode, Keep, LimitOverrides, Method, ModuleId,
    RetentionOverrides, Schedule, Webhook, WebhookId,
};
use crate::model::{ResponseValue, Secret};

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
        let name = given_or_kept("name", input.name, existing.map(|w| &w.name))?;
        check_label("name", &name, api.max_name_len)?;
        let description = pick(input.description, existing.map(|w| &w.description), None);
        if let Some(text) = &description {
            check_text("description", text, api.max_description_len)?;
        }
        let tenant = pick(input.tenant, existing.map(|w| &w.tenant), None);
        if let Some(tenant) = &tenant {
            check_tenant("tenant", tenant)?;
        }
        let kinds = existing.map(|w| &w.event_kinds);
        let event_kinds = given_or_kept("event_kinds", input.event_kinds, kinds)?;
        rules::check_event_kinds(&event_kinds)?;
        let scope = pick(input.scope, existing.map(|w| &w.scope), BTreeMap::new());
        rules::check_scope(&scope)?;
        let module_id = self.merged_module(input.module_id, existing)?;
        let empty = serde_json::Value::Object(Default::default());
        let config = pick(input.config, existing.map(|w| &w.config), empty);
        rules::check_config(&config)?;
        let (connection_id, url) =
            self.merged_destination(input.connection_id, input.url, existing, tenant.as_deref())?;
        let method = match &input.method {
            Some(m) => parse_method(m).map_err(|e| Error::invalid("method", e))?,
            None => existing.map_or(Method::Post, |w| w.method),
        };
        let headers = match input.headers {
            Some(map) => check_headers("headers", map)?,
            None => existing.map(|w| w.headers.clone()).unwrap_or_default(),
        };
        let statuses = existing.map(|w| &w.success_statuses);
        let success_statuses = pick(input.success_statuses, statuses, Vec::new());
        rules::check_success_statuses(&success_statuses)?;
        let kept = existing.and_then(|w| w.timeout);
        let timeout = merged(input.timeout, kept, rules::timeout)?;
        let retries = existing.and_then(|w| w.retry_schedule.clone());
        let retry_schedule = merged(input.retry_schedule, retries, rules::retry_schedule)?;
        let delay = merged(input.delay, existing.and_then(|w| w.delay), rules::delay)?;
        let entity_key = pick(input.entity_key, existing.map(|w| &w.entity_key), None);
        rules::check_entity_key(entity_key.as_deref())?;
        let mode = existing.map(|w| &w.entity_mode);
        let entity_mode = pick(input.entity_mode, mode, EntityMode::Latest);
        let batch = pick(input.batch, existing.map(|w| &w.batch), None);
        rules::check_batch(batch.as_ref(), entity_key.is_some() || delay.is_some())?;
        let schedule = pick(input.schedule, existing.map(|w| &w.schedule), None);
        rules::check_schedule(schedule.as_ref())?;
        let limits = self.merged_limits(input.limits, existing)?;
        let retention = self.merged_retention(input.retention, existing, tenant.as_deref())?;
        let kept = existing.map(|w| &w.response_value);
        let response_value = pick(input.response_value, kept, None);
        rules::check_response_value(response_value.as_ref())?;
        let standing = Standing::merged(input.enabled, existing);
        let now = self.now();
        Ok(Webhook {
            id: existing.map_or_else(WebhookId::generate, |w| w.id.clone()),
            version: existing.map_or(0, |w| w.version),
            name,
            description,
            enabled: standing.enabled,
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
            failing_since: standing.failing_since,
            disabled_reason: standing.disabled_reason,
            created_at: existing.map_or(now, |w| w.created_at),
            updated_at: now,
        })
    }

    /// The module: a given one must be stored.
    fn merged_module(
        &self,
        given: Option<String>,
        existing: Option<&Webhook>,
    ) -> Result<ModuleId, Error> {
        let Some(raw) = given else {
            return given_or_kept("module_id", None, existing.map(|w| &w.module_id));
        };
        let id = ModuleId::parse(&raw).map_err(|e| Error::invalid("module_id", e.to_string()))?;
        if self.store.module_info(&id)?.is_none() {
            return Err(Error::NotFound {
                kind: "module",
                id: raw,
            });
        }
        Ok(id)
    }

    /// Where requests go: the connection (which must exist and be shared with the webhook's
    /// tenant) and the URL, resolved against the connection's base, allowed as a
    /// destination, and under that base when there is one.
    fn merged_destination(
        &self,
        connection_id: Option<Option<String>>,
        url: Option<Option<String>>,
        existing: Option<&Webhook>,
        tenant: Option<&str>,
    ) -> Result<(Option<ConnectionId>, Option<String>), Error> {
        let api = &self.config.api;
        let connection_id = match connection_id {
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
        let url = pick(url, existing.map(|w| &w.url), None);
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
            if !connection.shared_with(tenant) {
                return Err(Error::invalid(
                    "connection_id",
                    format!(
                        "connection {} is not shared with tenant `{}`; detach it \
                         (\"connection_id\": null) or have the operator add the tenant to the \
                         connection's `tenants`",
                        connection.id,
                        tenant.unwrap_or_default()
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

        Ok((connection_id, url))
    }

    /// The sandbox limits: within the host's ceilings once added to its defaults.
    fn merged_limits(
        &self,
        given: Option<Option<LimitsInput>>,
        existing: Option<&Webhook>,
    ) -> Result<LimitOverrides, Error> {
        let limits = match given {
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

        Ok(limits)
    }

    /// How long its deliveries are kept. Checked when given: a stored one the host's setting
    /// has since come under is clamped when pruning, and does not stop other changes.
    fn merged_retention(
        &self,
        given: Option<Option<RetentionInput>>,
        existing: Option<&Webhook>,
        tenant: Option<&str>,
    ) -> Result<RetentionOverrides, Error> {
        Ok(match given {
            Some(Some(given)) => {
                let retention = given.parse()?;
                self.check_retention(&retention, tenant)?;
                retention
            }
            Some(None) => RetentionOverrides::default(),
            None => existing.map(|w| w.retention.clone()).unwrap_or_default(),
        })
    }
}

/// `Some(x)` in the input wins; otherwise the existing value; otherwise the default.
fn pick<T: Clone>(given: Option<T>, existing: Option<&T>, default: T) -> T {
    given.unwrap_or_else(|| existing.cloned().unwrap_or(default))
}

/// A field a new webhook must have: the given value, else the existing one.
fn given_or_kept<T: Clone>(
    field: &str,
    given: Option<T>,
    existing: Option<&T>,
) -> Result<T, Error> {
    given
        .or_else(|| existing.cloned())
        .ok_or_else(|| Error::invalid(field, "is required"))
}

/// A field that may be cleared (`null`): the given text parsed by `parse`, nothing, or the
/// existing value when not given.
fn merged<T, U>(
    given: Option<Option<T>>,
    existing: Option<U>,
    parse: impl FnOnce(T) -> Result<U, Error>,
) -> Result<Option<U>, Error> {
    match given {
        Some(Some(given)) => parse(given).map(Some),
        Some(None) => Ok(None),
        None => Ok(existing),
    }
}

/// Whether a webhook is enabled, with its failure streak: enabling it again starts afresh.
struct Standing {
    enabled: bool,
    failing_since: Option<crate::model::Millis>,
    disabled_reason: Option<String>,
}

impl Standing {
    fn merged(enabled: Option<bool>, existing: Option<&Webhook>) -> Standing {
        let (failing_since, disabled_reason) = match existing {
            Some(w) if enabled != Some(true) || w.enabled => {
                (w.failing_since, w.disabled_reason.clone())
            }
            _ => (None, None),
        };
        Standing {
            enabled: enabled.or(existing.map(|w| w.enabled)).unwrap_or(true),
            failing_since,
            disabled_reason,
        }
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
