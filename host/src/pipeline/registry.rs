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

/// A webhook definition as the API and CLI take it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Human name.
    pub name: String,
    /// Whether it takes events (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Event kinds: exact, `prefix.*` or `*`.
    pub event_kinds: Vec<String>,
    /// The plugin module.
    pub module_id: String,
    /// Plugin configuration: a JSON object (default `{}`).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Destination URL.
    pub url: String,
    /// GET, POST (default), PUT, PATCH or DELETE.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
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
    /// [`Error::Invalid`] naming the first bad field, [`Error::NotFound`] for an unknown
    /// module, or a storage error. Nothing is stored on error.
    pub fn create_webhook(&self, input: WebhookInput) -> Result<Webhook, Error> {
        let api = &self.config.api;
        check_label("name", &input.name, api.max_name_len)?;
        if input.event_kinds.is_empty() {
            return Err(Error::invalid(
                "event_kinds",
                "at least one event kind is required",
            ));
        }
        for (i, kind) in input.event_kinds.iter().enumerate() {
            validate_kind(kind, true)
                .map_err(|m| Error::invalid(format!("event_kinds[{i}]"), m))?;
        }
        let module_id = ModuleId::parse(&input.module_id)
            .map_err(|e| Error::invalid("module_id", e.to_string()))?;
        if self.store.module_info(&module_id)?.is_none() {
            return Err(Error::NotFound {
                kind: "module",
                id: input.module_id,
            });
        }
        check_url(&input.url, api.max_url_len)?;
        let method = match &input.method {
            Some(m) => parse_method(m).map_err(|e| Error::invalid("method", e))?,
            None => Method::Post,
        };
        let config = input
            .config
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        if !config.is_object() {
            return Err(Error::invalid("config", "must be a JSON object"));
        }
        let mut headers = Vec::with_capacity(input.headers.len());
        for (name, value) in input.headers {
            check_header(&name, &value)
                .map_err(|e| Error::invalid(format!("headers.{name}"), e))?;
            headers.push((name, value));
        }
        let now = self.now();
        let webhook = Webhook {
            id: WebhookId::generate(),
            name: input.name,
            enabled: input.enabled.unwrap_or(true),
            event_kinds: input.event_kinds,
            module_id,
            config,
            url: input.url,
            method,
            headers,
            created_at: now,
            updated_at: now,
        };
        self.store.put_webhook(&webhook)?;
        self.webhooks
            .write()
            .unwrap()
            .insert(webhook.id.clone(), std::sync::Arc::new(webhook.clone()));
        Ok(webhook)
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
