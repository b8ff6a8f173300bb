//! Deliveries: where each stands, the requests a plugin built, the attempts made and the
//! logs kept, and how a delivery is routed.

use serde::{Deserialize, Serialize};

use super::*;

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
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
            Invalid(format!(
                "unknown status `{text}`; use pending, delivered, failed, dead or skipped"
            ))
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
    /// The headers its plugin set (and `webhook-id`), in sending order; the connection's
    /// and the webhook's own headers go before them, added when sending.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    #[serde(with = "body_serde")]
    pub body: Vec<u8>,
    /// Whether the receiver already accepted it (later rounds skip it).
    pub delivered: bool,
    /// The connection it was built for. It is sent only while its webhook still sends
    /// through that connection, whose auth, headers and signing secret are added then, as
    /// they are then; a replay under another builds it anew.
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
    /// How important, or which stream it was printed to.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// A log line's level: the plugin's `log` levels, or the stream it printed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
    /// Printed to standard output.
    Stdout,
    /// Printed to standard error.
    Stderr,
}

impl LogLevel {
    /// The level's name, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Stdout => "stdout",
            LogLevel::Stderr => "stderr",
        }
    }
}

/// One (webhook, event) pair moving towards the receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// How many times the stored record was written over: storage writes a new state only
    /// over the version it was read at, and counts it up (see `storage::Deliveries::finish`).
    /// First in the record, where storage reads it without decoding the rest.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub version: u64,
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
    /// An in-order delivery's position in its entity's line, given by the storage when it
    /// was stored: the line goes by it, not by the id (whose clock is one host's). A delivery
    /// stored without one goes before those with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_position: Option<u64>,
    /// How many events a newer one replaced while this delivery waited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replaced: u32,
    /// The most recent replaced events, oldest first (at most [`Delivery::REPLACED_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_events: Vec<EventId>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
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
            version: 0,
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
            line_position: None,
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
