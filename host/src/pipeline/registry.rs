//! What operators register and look at: modules, webhooks, events and deliveries.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::request::check_header;
use super::{Error, Pipeline};
use crate::model::{
    validate_kind, Delivery, DeliveryId, DeliveryStatus, Event, EventId, Method, ModuleId,
    ModuleInfo, Webhook, WebhookId,
};
use crate::runtime::WORLD;

/// A webhook definition as the API and CLI take it: the whole definition on create, only
/// the fields to change on update (`PATCH`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Human name (required on create).
    #[serde(default)]
    pub name: Option<String>,
    /// Whether it takes events (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Event kinds: exact, `prefix.*` or `*` (required on create).
    #[serde(default)]
    pub event_kinds: Option<Vec<String>>,
    /// The plugin module (required on create).
    #[serde(default)]
    pub module_id: Option<String>,
    /// Plugin configuration: a JSON object (default `{}`).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Destination URL (required on create).
    #[serde(default)]
    pub url: Option<String>,
    /// GET, POST (default), PUT, PATCH or DELETE.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra headers (replace the existing set on update).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
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
    /// Cursor: only deliveries older than this one.
    pub before: Option<DeliveryId>,
    /// Page size.
    pub limit: usize,
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
                what: "the module",
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
        let plugin = self.runtime.validate(bytes)?;
        let info = ModuleInfo {
            id: id.clone(),
            name: name.to_string(),
            version: version.to_string(),
            size: bytes.len() as u64,
            world: WORLD.to_string(),
            features: plugin.features.clone(),
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

    /// Deletes a module, refused while a webhook uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] naming the webhooks that use it, or a storage
    /// error.
    pub fn delete_module(&self, id: &str) -> Result<ModuleInfo, Error> {
        let info = self.module(id)?;
        let users: Vec<String> = self
            .webhooks()
            .into_iter()
            .filter(|w| w.module_id == info.id)
            .map(|w| w.id.to_string())
            .collect();
        if !users.is_empty() {
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

    /// Every module.
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
    /// unknown module, or a storage error. Nothing is stored on error.
    pub fn create_webhook(&self, input: WebhookInput) -> Result<Webhook, Error> {
        let webhook = self.merge_webhook(None, input)?;
        self.save_webhook(webhook)
    }

    /// Changes the fields given in `input`; the result is checked like a new webhook. Takes
    /// effect on the next evaluation (module and config included), no restart.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown webhook or module, [`Error::Invalid`] naming the
    /// first bad field, or a storage error. Nothing changes on error.
    pub fn update_webhook(&self, id: &str, input: WebhookInput) -> Result<Webhook, Error> {
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
        let existing = self.webhook(id)?;
        self.store.delete_webhook(&existing.id)?;
        self.webhooks.write().unwrap().remove(&existing.id);
        self.wake.notify_one();
        Ok(existing)
    }

    fn save_webhook(&self, webhook: Webhook) -> Result<Webhook, Error> {
        self.store.put_webhook(&webhook)?;
        self.webhooks
            .write()
            .unwrap()
            .insert(webhook.id.clone(), std::sync::Arc::new(webhook.clone()));
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
        let name = match (input.name, existing) {
            (Some(name), _) => name,
            (None, Some(w)) => w.name.clone(),
            (None, None) => return Err(required("name")),
        };
        check_label("name", &name, api.max_name_len)?;
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
        for (i, kind) in event_kinds.iter().enumerate() {
            validate_kind(kind, true)
                .map_err(|m| Error::invalid(format!("event_kinds[{i}]"), m))?;
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
        let url = match (input.url, existing) {
            (Some(url), _) => url,
            (None, Some(w)) => w.url.clone(),
            (None, None) => return Err(required("url")),
        };
        check_url(&url, api.max_url_len)?;
        let method = match (&input.method, existing) {
            (Some(m), _) => parse_method(m).map_err(|e| Error::invalid("method", e))?,
            (None, Some(w)) => w.method,
            (None, None) => Method::Post,
        };
        let config = match (input.config, existing) {
            (Some(config), _) => config,
            (None, Some(w)) => w.config.clone(),
            (None, None) => serde_json::Value::Object(Default::default()),
        };
        if !config.is_object() {
            return Err(Error::invalid("config", "must be a JSON object"));
        }
        let headers = match (input.headers, existing) {
            (Some(map), _) => {
                let mut headers = Vec::with_capacity(map.len());
                for (name, value) in map {
                    check_header(&name, &value)
                        .map_err(|e| Error::invalid(format!("headers.{name}"), e))?;
                    headers.push((name, value));
                }
                headers
            }
            (None, Some(w)) => w.headers.clone(),
            (None, None) => Vec::new(),
        };
        let now = self.now();
        Ok(Webhook {
            id: existing.map_or_else(WebhookId::generate, |w| w.id.clone()),
            name,
            enabled: input
                .enabled
                .or(existing.map(|w| w.enabled))
                .unwrap_or(true),
            event_kinds,
            module_id,
            config,
            url,
            method,
            headers,
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

    /// One event.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn event(&self, id: &str) -> Result<Event, Error> {
        let not_found = || Error::NotFound {
            kind: "event",
            id: id.to_string(),
        };
        let id = EventId::parse(id).map_err(|_| not_found())?;
        self.store.event(&id)?.ok_or_else(not_found)
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

    /// Deliveries matching `filter`, newest first.
    ///
    /// # Errors
    /// On storage failure.
    pub fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, Error> {
        Ok(self
            .store
            .deliveries(filter.before.as_ref(), filter.limit, |d| {
                filter
                    .webhook_id
                    .as_ref()
                    .is_none_or(|w| &d.webhook_id == w)
                    && filter.event_id.as_ref().is_none_or(|e| &d.event_id == e)
                    && filter.status.is_none_or(|s| d.status == s)
            })?)
    }
}

fn check_label(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let len = value.chars().count();
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if len > max {
        return Err(Error::invalid(
            field,
            format!("is {len} characters; the limit is {max}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks a destination URL: absolute http or https with a host, within the length limit.
///
/// # Errors
/// [`Error::Invalid`] on `url` saying what is wrong.
pub fn check_url(url: &str, max_len: usize) -> Result<(), Error> {
    if url.len() > max_len {
        return Err(Error::invalid(
            "url",
            format!("is {} bytes; the limit is {max_len}", url.len()),
        ));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid("url", format!("`{url}` is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "url",
            format!(
                "scheme `{}` is not allowed; use http or https",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("url", "must have a host"));
    }
    Ok(())
}
