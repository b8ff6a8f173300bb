//! Domain types: events, webhooks, modules, deliveries and their attempts.
//!
//! These are what the store persists (as JSON) and what the API shows.

mod connection;
mod delivery;
pub mod duration;
mod ids;
mod key;
mod response_value;
mod retention;
mod schedule;
mod time;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use connection::{
    check_path_segments, credentials_may_go, within_base, Connection, ConnectionAuth,
    ConnectionBase, Secret, SigningKeys,
};
pub use delivery::{
    Attempt, AttemptOutcome, Delivery, DeliveryMode, DeliveryStatus, LogLevel, LogLine,
    OutboundRequest,
};
pub use duration::{format_duration, parse_duration};
pub use ids::{ApiKeyId, ConnectionId, DeliveryId, EventId, IdError, ModuleId, WebhookId};
pub use key::{constant_time_eq, generate_key, hash_key, key_id_of, ApiKey, Role};
pub use response_value::{ResponsePath, ResponseValue};
pub use retention::{Keep, RetentionOverrides};
pub use schedule::{CheckedSchedule, Schedule, Window};
pub use time::Millis;

/// A value that breaks a rule; the message says which (and, where it helps, what to write
/// instead). Callers add the field's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid(message.to_string())
    }
}

impl From<Invalid> for String {
    fn from(invalid: Invalid) -> Self {
        invalid.0
    }
}

impl std::ops::Deref for Invalid {
    type Target = str;

    /// The message.
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Invalid {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Most routing attributes an event may carry.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute name, in bytes.
pub const MAX_ATTRIBUTE_NAME: usize = 128;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;

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
    #[serde(default, with = "string_map")]
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
    /// How many times it was written: storage writes a change only over the version it was
    /// read at, so two writers never undo each other's change unseen.
    #[serde(default)]
    pub version: u64,
    /// Human name (≤ 100 characters by default).
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Paused webhooks keep their deliveries pending.
    pub enabled: bool,
    /// When set, only this tenant's events reach the webhook; otherwise every tenant's do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Event kinds it takes: exact (`order.created`), prefix wildcards (`order.*`) or `*`.
    pub event_kinds: Vec<String>,
    /// Scope on event attributes: the event must carry each named attribute with one of the
    /// listed values (e.g. `{"store_id": ["12"]}`: one store). Empty: every event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scope: BTreeMap<String, Vec<String>>,
    /// The plugin module that decides and builds requests.
    pub module_id: ModuleId,
    /// Configuration handed to the plugin (a JSON object).
    pub config: serde_json::Value,
    /// The connection requests go through (base URL, auth, headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<ConnectionId>,
    /// Destination: an absolute http(s) URL, or, with a connection, a path relative to the
    /// connection's base URL. Absent: the connection's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Default method.
    pub method: Method,
    /// Headers sent with every request, after the connection's and before the plugin's.
    #[serde(with = "string_map")]
    pub headers: Vec<(String, String)>,
    /// Response statuses that count as success; empty means any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success_statuses: Vec<u16>,
    /// Request timeout; the host's default when absent.
    #[serde(
        default,
        with = "crate::model::duration::opt_duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Retry delays after each failed attempt; the host's schedule when absent.
    #[serde(
        default,
        with = "crate::model::duration::opt_duration_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_schedule: Option<Vec<Duration>>,
    /// Wait this long after the event before the delivery is due.
    #[serde(
        default,
        with = "crate::model::duration::opt_duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// JSON pointer into the payload naming the entity (e.g. `/sku`): while a delivery for
    /// an entity waits, a newer event for it replaces the waiting one's event and restarts
    /// the delay (debounce), so the plugin decides on the latest state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_key: Option<String>,
    /// What the entity key does: `latest` (debounce, the default) or `in_order` (every
    /// event is delivered, one entity's deliveries strictly one after another).
    #[serde(default, skip_serializing_if = "EntityMode::is_default")]
    pub entity_mode: EntityMode,
    /// Batching: matched events are collected into one delivery for up to `window`, or
    /// until `max_size` events, and the plugin's batch entry point gets them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// Operating windows: deliveries due outside them wait for the next opening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Sandbox limits of this webhook's evaluations; unset ones take the host's defaults.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
    /// How long its finished deliveries are kept, where not the host's `retention`.
    #[serde(default, skip_serializing_if = "RetentionOverrides::is_empty")]
    pub retention: RetentionOverrides,
    /// The value to keep from the receiver's JSON answer, and whether to emit it as a
    /// `webhook.response` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_value: Option<ResponseValue>,
    /// Since when every attempt has failed (cleared by any success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Millis>,
    /// Why the host disabled it (410 Gone, or failing too long); cleared when re-enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

impl Webhook {
    /// Whether this webhook takes `event`: enabled, the kind matches, the tenant fits and the
    /// attributes are in scope.
    pub fn takes(&self, event: &Event) -> bool {
        self.enabled
            && self
                .event_kinds
                .iter()
                .any(|p| kind_matches(p, &event.kind))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| event.tenant.as_ref() == Some(t))
            && self.scope.iter().all(|(name, allowed)| {
                event
                    .attributes
                    .iter()
                    .any(|(k, v)| k == name && allowed.contains(v))
            })
    }

    /// Whether `status` counts as success for this webhook.
    pub fn is_success(&self, status: u16) -> bool {
        if self.success_statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.success_statuses.contains(&status)
        }
    }
}

/// A webhook's own sandbox limits; each unset one is the host's default
/// (`plugin.limits`), and none may exceed the host's ceiling (`plugin.max_limits`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Time an evaluation may run, such as `100ms`.
    #[serde(
        default,
        with = "crate::model::duration::opt_duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_time: Option<Duration>,
    /// Linear memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<usize>,
    /// Bytes of one answer (bodies, paths, headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<usize>,
    /// Requests one decision may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<usize>,
    /// Log bytes kept per evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<usize>,
    /// Plugin state bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_bytes: Option<usize>,
}

impl LimitOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self == &LimitOverrides::default()
    }
}

/// How a webhook batches events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// How long a batch collects events after its first one.
    #[serde(with = "crate::model::duration::duration_text")]
    pub window: Duration,
    /// Most events in one batch; a full batch is due at once.
    pub max_size: u32,
}

/// What a webhook's entity key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityMode {
    /// A newer event replaces a waiting delivery's event (debounce).
    #[default]
    Latest,
    /// Every event is delivered; one entity's deliveries go strictly in order (FIFO).
    InOrder,
}

impl EntityMode {
    fn is_default(&self) -> bool {
        *self == EntityMode::Latest
    }
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
    /// The functions the component exports.
    #[serde(default)]
    pub exports: Vec<String>,
    /// Upload time.
    pub created_at: Millis,
}

/// Lists of string pairs (headers, attributes) shown as JSON objects (`{"x-shop": "7"}`), in
/// their order.
pub mod string_map {
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    #[allow(missing_docs)]
    pub fn serialize<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(pairs.len()))?;
        for (k, v) in pairs {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }

    struct PairsVisitor;

    impl<'de> Visitor<'de> for PairsVisitor {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of header names to values")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                pairs.push((k, v));
            }
            Ok(pairs)
        }
    }

    #[allow(missing_docs)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        d.deserialize_map(PairsVisitor)
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
pub fn validate_kind(kind: &str, pattern: bool) -> Result<(), Invalid> {
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
        Err(Invalid::from(format!(
            "event kind pattern `{kind}` is invalid: use dot-separated names like `order.created`, a wildcard like `order.*`, or `*`"
        )))
    } else {
        Err(Invalid::from(format!(
            "event kind `{kind}` is invalid: use dot-separated names of letters, digits, `_` and `-`, like `order.created`"
        )))
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
            connection_id: None,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("base64"));
        assert_eq!(serde_json::from_str::<OutboundRequest>(&json).unwrap(), req);
    }
}
