//! Domain types: events, webhooks, modules, deliveries and their attempts.
//!
//! These are what the store persists (as JSON) and what the API shows.

mod connection;
pub mod duration;
mod ids;
mod key;
mod response_value;
mod schedule;
mod time;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use connection::{within_base, Connection, ConnectionAuth, Secret, SigningKeys};
pub use duration::{format_duration, parse_duration};
pub use ids::{ApiKeyId, ConnectionId, DeliveryId, EventId, IdError, ModuleId, WebhookId};
pub use key::{constant_time_eq, generate_key, hash_key, key_id_of, ApiKey, Role};
pub use response_value::{ResponsePath, ResponseValue};
pub use schedule::{CheckedSchedule, Schedule, Window};
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
    /// The connection whose authentication is added when sending (never stored here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<ConnectionId>,
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

/// How a delivery is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode<'a> {
    /// One event, delivered on its own.
    Plain,
    /// Waiting deliveries of one entity take a newer event instead of a new delivery, until
    /// evaluated.
    Debounced {
        /// The entity.
        entity: &'a str,
    },
    /// One entity's deliveries go one at a time, in the order they were made.
    InOrder {
        /// The entity.
        entity: &'a str,
    },
    /// Events join an open batch until it is evaluated or holds `limit`.
    Batched {
        /// The most events a batch holds.
        limit: u32,
    },
}

impl DeliveryMode<'_> {
    /// Whether the delivery may still change with newer events (debounced, or a batch), so
    /// it must be closed to them before it is evaluated.
    pub fn collects(&self) -> bool {
        matches!(
            self,
            DeliveryMode::Debounced { .. } | DeliveryMode::Batched { .. }
        )
    }
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
    /// The webhook's tenant when the delivery was created (tenant-bound keys see only theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tenant of its events, when the webhook has none (a tenant's webhook takes only
    /// that tenant's events). Event ids are unique per tenant, so this finds them; and one
    /// tenant's events never join another's batch or replace another's debounced event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_tenant: Option<String>,
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
    /// Value extracted from the response (the webhook's response path, or the response
    /// hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted_value: Option<String>,
    /// The delivery this one replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<DeliveryId>,
    /// The entity this delivery stands for (the webhook's `entity_key` read from the
    /// payload): a newer event for the same entity replaces its event while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// Every event of a batched delivery, in arrival order (`event_id` is the first); empty
    /// for a delivery of one event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_events: Vec<EventId>,
    /// The batch's size limit while it collects (0: not batched).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_limit: u32,
    /// Sent only after every earlier delivery of the same webhook and entity has finished.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_order: bool,
    /// How many events a newer one replaced while this delivery waited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replaced: u32,
    /// The most recent replaced events, oldest first (at most [`Delivery::REPLACED_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_events: Vec<EventId>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Delivery {
    /// How many replaced event ids a delivery keeps.
    pub const REPLACED_KEPT: usize = 20;

    /// A new pending delivery of `event` for `webhook`, due at `due`: no requests, attempts
    /// or logs yet, not batched, debounced or in order (the router sets those).
    pub fn pending(webhook: &Webhook, event: &Event, due: Millis, now: Millis) -> Delivery {
        Delivery {
            id: DeliveryId::generate(),
            webhook_id: webhook.id.clone(),
            event_id: event.id.clone(),
            tenant: webhook.tenant.clone(),
            event_tenant: event.tenant.clone().filter(|_| webhook.tenant.is_none()),
            status: DeliveryStatus::Pending,
            created_at: now,
            updated_at: now,
            next_attempt_at: Some(due),
            requests: None,
            rounds: 0,
            attempts: Vec::new(),
            logs: Vec::new(),
            skip_reason: None,
            error: None,
            extracted_value: None,
            replay_of: None,
            entity: None,
            in_order: false,
            batch_events: Vec::new(),
            batch_limit: 0,
            replaced: 0,
            replaced_events: Vec::new(),
        }
    }

    /// The tenant its events belong to.
    pub fn events_tenant(&self) -> Option<&str> {
        self.event_tenant.as_deref().or(self.tenant.as_deref())
    }

    /// How the delivery is routed, as its webhook decided when it was made.
    pub fn mode(&self) -> DeliveryMode<'_> {
        if self.batch_limit > 1 {
            return DeliveryMode::Batched {
                limit: self.batch_limit,
            };
        }
        match (self.entity.as_deref(), self.in_order) {
            (None, _) => DeliveryMode::Plain,
            (Some(entity), true) => DeliveryMode::InOrder { entity },
            (Some(entity), false) => DeliveryMode::Debounced { entity },
        }
    }

    /// Whether a newer event may still replace this delivery's event: pending and not yet
    /// evaluated.
    pub fn replaceable(&self) -> bool {
        self.status == DeliveryStatus::Pending && self.requests.is_none()
    }

    /// Makes `event` the one this delivery will evaluate, due at `due`.
    pub fn replace_event(&mut self, event: EventId, due: Millis, now: Millis) {
        let old = std::mem::replace(&mut self.event_id, event);
        self.replaced += 1;
        self.replaced_events.push(old);
        if self.replaced_events.len() > Self::REPLACED_KEPT {
            self.replaced_events.remove(0);
        }
        self.next_attempt_at = Some(due);
        self.updated_at = now;
    }

    /// The delivery as lists show it: where it stands, without requests, attempts and logs
    /// (the detail endpoint has those).
    pub fn summary(&self) -> serde_json::Value {
        let mut view = serde_json::json!({
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "rounds": self.rounds,
            "attempt_count": self.attempts.len(),
        });
        let optional = [
            ("tenant", self.tenant.as_ref().map(|t| serde_json::json!(t))),
            (
                "event_tenant",
                self.event_tenant.as_ref().map(|t| serde_json::json!(t)),
            ),
            (
                "next_attempt_at",
                self.next_attempt_at.map(|t| serde_json::json!(t)),
            ),
            (
                "last_status",
                self.attempts
                    .last()
                    .and_then(|a| a.status)
                    .map(|s| serde_json::json!(s)),
            ),
            (
                "skip_reason",
                self.skip_reason.as_ref().map(|r| serde_json::json!(r)),
            ),
            ("error", self.error.as_ref().map(|e| serde_json::json!(e))),
            (
                "extracted_value",
                self.extracted_value.as_ref().map(|v| serde_json::json!(v)),
            ),
            (
                "replay_of",
                self.replay_of.as_ref().map(|r| serde_json::json!(r)),
            ),
            ("entity", self.entity.as_ref().map(|e| serde_json::json!(e))),
            (
                "batch_size",
                (!self.batch_events.is_empty()).then(|| serde_json::json!(self.batch_events.len())),
            ),
            (
                "replaced",
                (self.replaced > 0).then(|| serde_json::json!(self.replaced)),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                view[key] = value;
            }
        }
        view
    }
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
            connection_id: None,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("base64"));
        assert_eq!(serde_json::from_str::<OutboundRequest>(&json).unwrap(), req);
    }
}
