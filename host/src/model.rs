//! Domain types: events, webhooks, modules, deliveries and their attempts.
//!
//! These are what the store persists (as JSON) and what the API shows.

mod ids;
mod time;

use serde::{Deserialize, Serialize};

pub use ids::{DeliveryId, EventId, IdError, ModuleId, WebhookId};
pub use time::Millis;

/// One event emitted by a host application, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Unique id; the host dedupes on it.
    pub id: EventId,
    /// Dotted kind such as `order.created`.
    pub kind: String,
    /// Tenant the event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When it happened (the emitter's time, or receipt time).
    pub occurred_at: Millis,
    /// When the host acknowledged it.
    pub received_at: Millis,
    /// Routing keys such as `store_id`.
    #[serde(default)]
    pub attributes: Vec<(String, String)>,
    /// The payload as JSON text.
    pub payload: Box<serde_json::value::RawValue>,
}

/// HTTP methods a webhook may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET
    Get,
    /// POST (the default)
    #[default]
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A webhook: which events it takes, which plugin decides, where requests go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// Id (`wh_…`).
    pub id: WebhookId,
    /// Human name (≤ 100 characters by default).
    pub name: String,
    /// Paused webhooks keep their deliveries pending.
    pub enabled: bool,
    /// Event kinds it takes: exact (`order.created`), prefix wildcards (`order.*`) or `*`.
    pub event_kinds: Vec<String>,
    /// The plugin module that decides and builds requests.
    pub module_id: ModuleId,
    /// Configuration handed to the plugin (a JSON object).
    pub config: serde_json::Value,
    /// Destination URL (http or https).
    pub url: String,
    /// Default method.
    pub method: Method,
    /// Extra headers sent with every request, before the plugin's own.
    pub headers: Vec<(String, String)>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// A stored plugin module's description (the bytes are stored beside it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Content-hash id (`mod_…`).
    pub id: ModuleId,
    /// Name the operator gave.
    pub name: String,
    /// Version the operator gave.
    pub version: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// The WIT world it implements.
    pub world: String,
    /// Optional features the plugin reported (e.g. `response-hook`).
    pub features: Vec<String>,
    /// Upload time.
    pub created_at: Millis,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or for a scheduled retry.
    Pending,
    /// Every request was accepted by the receiver.
    Delivered,
    /// Ended without success for a reason retrying cannot fix (plugin error, a `fail`
    /// verdict, a request the host refused to build).
    Failed,
    /// Every scheduled attempt failed.
    Dead,
    /// The plugin decided not to send.
    Skipped,
}

impl DeliveryStatus {
    /// Whether no further work will happen on its own.
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Pending)
    }

    /// Parses the lower-case name used by the API.
    ///
    /// # Errors
    /// On an unknown name; the message lists the known ones.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
            format!("unknown status `{text}`; use pending, delivered, failed, dead or skipped")
        })
    }
}

/// One request built from the plugin's decision, stored so that every retry sends the same
/// bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboundRequest {
    /// Method.
    pub method: Method,
    /// Full URL.
    pub url: String,
    /// Headers in sending order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    #[serde(with = "body_serde")]
    pub body: Vec<u8>,
    /// Whether the receiver already accepted it (later rounds skip it).
    pub delivered: bool,
}

/// What one attempt concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// Accepted.
    Success,
    /// Failed; another attempt may follow.
    Retry,
    /// Failed for good.
    Fail,
}

/// One HTTP attempt of one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Round number, from 1.
    pub number: u32,
    /// Which request of the delivery.
    pub request_index: u32,
    /// When it started.
    pub started_at: Millis,
    /// How long until the response (or the error).
    pub duration_ms: u64,
    /// Response status, when one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Transport error (connect refused, timeout), when no response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Response headers.
    #[serde(default)]
    pub response_headers: Vec<(String, String)>,
    /// Response body, cut to the configured size, lossy UTF-8.
    #[serde(default)]
    pub response_body: String,
    /// What the host concluded.
    pub outcome: AttemptOutcome,
}

/// A line the plugin logged (or printed) during evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// `trace`…`error`, or `stdout` / `stderr` for printed output.
    pub level: String,
    /// The text.
    pub message: String,
}

/// One (webhook, event) pair moving towards the receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Id (`dlv_…`); also the `webhook-id` header, stable across retries.
    pub id: DeliveryId,
    /// The webhook.
    pub webhook_id: WebhookId,
    /// The event.
    pub event_id: EventId,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// When the next step is due (pending deliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    /// The requests built by the plugin (absent until evaluated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<OutboundRequest>>,
    /// Send rounds made so far.
    pub rounds: u32,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// What the plugin logged.
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// Why the plugin skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Why it failed (plugin error or last failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Value extracted from the response (response hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted_value: Option<String>,
    /// The delivery this one replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<DeliveryId>,
}

/// Bodies are kept as text when they are UTF-8 (readable in the API) and as base64 otherwise.
mod body_serde {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Body {
        Text(String),
        Base64(String),
    }

    pub fn serialize<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(body) {
            Ok(text) => Body::Text(text.to_string()),
            Err(_) => Body::Base64(base64::engine::general_purpose::STANDARD.encode(body)),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Body::deserialize(d)? {
            Body::Text(text) => Ok(text.into_bytes()),
            Body::Base64(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Whether a webhook's event-kind pattern takes this kind: exact, `prefix.*` (any kind under
/// the prefix, at any depth) or `*` (everything).
pub fn kind_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => kind
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        None => pattern == kind,
    }
}

/// Checks an event kind or kind pattern: dot-separated segments of letters, digits, `_` and
/// `-`; a pattern may end in `.*` or be `*`.
///
/// # Errors
/// A message naming the bad kind and the rule.
pub fn validate_kind(kind: &str, pattern: bool) -> Result<(), String> {
    if pattern && kind == "*" {
        return Ok(());
    }
    let body = if pattern {
        kind.strip_suffix(".*").unwrap_or(kind)
    } else {
        kind
    };
    let ok = !kind.is_empty()
        && kind.len() <= 200
        && body.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else if pattern {
        Err(format!(
            "event kind pattern `{kind}` is invalid: use dot-separated names like `order.created`, a wildcard like `order.*`, or `*`"
        ))
    } else {
        Err(format!(
            "event kind `{kind}` is invalid: use dot-separated names of letters, digits, `_` and `-`, like `order.created`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_patterns_match_exact_prefix_and_all() {
        assert!(kind_matches("order.created", "order.created"));
        assert!(!kind_matches("order.created", "order.updated"));
        assert!(kind_matches("order.*", "order.created"));
        assert!(kind_matches("order.*", "order.item.added"));
        assert!(!kind_matches("order.*", "order"));
        assert!(!kind_matches("order.*", "orders.created"));
        assert!(kind_matches("*", "anything.at.all"));
    }

    #[test]
    fn kind_validation_names_the_problem() {
        assert!(validate_kind("order.created", false).is_ok());
        assert!(validate_kind("order.*", true).is_ok());
        assert!(validate_kind("order.*", false).is_err());
        assert!(validate_kind("*", true).is_ok());
        assert!(validate_kind("order..x", true).is_err());
        assert!(validate_kind("or*der", true)
            .unwrap_err()
            .contains("or*der"));
        assert!(validate_kind("", false).is_err());
    }

    #[test]
    fn binary_bodies_survive_storage() {
        let req = OutboundRequest {
            method: Method::Post,
            url: "http://x/".into(),
            headers: vec![],
            body: vec![0xff, 0x00, 0x10],
            delivered: false,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("base64"));
        assert_eq!(serde_json::from_str::<OutboundRequest>(&json).unwrap(), req);
    }
}
