//! Ingest and routing: validate an event, match it to webhooks, store it with one delivery per
//! matching webhook, and acknowledge only once that is durable.

use std::cell::OnceCell;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Error, Pipeline};
use crate::model::{validate_kind, Delivery, DeliveryId, EntityMode, Event, EventId, Millis};
use crate::storage::{Inserted, StorageError};

/// An event as emitters send it (API body, CLI, `plugin run` event files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// The emitter's id; generated when absent. Re-sending an id is a no-op.
    #[serde(default)]
    pub id: Option<String>,
    /// Dotted kind such as `order.created`.
    pub kind: String,
    /// Tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// When it happened (RFC 3339 or epoch milliseconds); receipt time when absent.
    #[serde(default)]
    pub occurred_at: Option<Millis>,
    /// Routing attributes: an object of strings.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The payload: any JSON.
    pub payload: Box<RawValue>,
}

/// What happened to one emitted event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EmitResult {
    /// The event's id.
    pub id: EventId,
    /// Whether an event with this id was already stored (nothing new was queued).
    pub duplicate: bool,
    /// Deliveries created for it.
    pub deliveries: Vec<DeliveryId>,
}

impl EventInput {
    /// Checks every field and builds the stored event; `index` names the event in a batch.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and the rule.
    pub fn into_event(self, now: Millis, index: Option<usize>) -> Result<Event, Error> {
        let field = |name: &str| match index {
            Some(i) => format!("events[{i}].{name}"),
            None => name.to_string(),
        };
        let id = match &self.id {
            Some(id) => EventId::parse(id).map_err(|m| Error::invalid(field("id"), m))?,
            None => EventId::generate(),
        };
        validate_kind(&self.kind, false).map_err(|m| Error::invalid(field("kind"), m))?;
        if let Some(tenant) = &self.tenant {
            crate::catalog::check_tenant(&field("tenant"), tenant)?;
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(Error::invalid(
                field("attributes"),
                format!(
                    "has {} entries; the limit is {MAX_ATTRIBUTES}",
                    self.attributes.len()
                ),
            ));
        }
        let mut attributes = Vec::with_capacity(self.attributes.len());
        for (key, value) in self.attributes {
            if key.is_empty() || key.len() > MAX_ATTRIBUTE_NAME {
                return Err(Error::invalid(
                    field("attributes"),
                    format!("name `{key}` must be 1 to {MAX_ATTRIBUTE_NAME} bytes"),
                ));
            }
            match value {
                serde_json::Value::String(s) if s.len() > MAX_ATTRIBUTE_VALUE => {
                    return Err(Error::invalid(
                        field(&format!("attributes.{key}")),
                        format!("is {} bytes; the limit is {MAX_ATTRIBUTE_VALUE}", s.len()),
                    ))
                }
                serde_json::Value::String(s) => attributes.push((key, s)),
                other => {
                    return Err(Error::invalid(
                        field(&format!("attributes.{key}")),
                        format!("must be a string, got {other}"),
                    ))
                }
            }
        }
        let occurred_at = match self.occurred_at {
            Some(at) => at
                .check_range()
                .map_err(|m| Error::invalid(field("occurred_at"), m))?,
            None => now,
        };
        Ok(Event {
            id,
            kind: self.kind,
            tenant: self.tenant,
            occurred_at,
            received_at: now,
            attributes,
            payload: self.payload,
        })
    }
}

/// Event kinds only the host emits (`webhook.disabled`, `webhook.response`): subscribers
/// can trust that an event of these kinds came from the host.
pub const RESERVED_KIND_PREFIX: &str = "webhook.";
/// Event ids only the host gives (`evt_response_<delivery>`): an emitter claiming one first
/// would cut a response chain.
pub const RESERVED_ID_PREFIX: &str = "evt_response_";

/// Who emits: an application (through the API or the library), or the host itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// An emitter: the host's own kinds and id prefixes are refused.
    Emitter,
    /// The host (`webhook.*` events).
    Host,
}

pub use crate::model::{MAX_ATTRIBUTES, MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTE_VALUE};

impl Pipeline {
    /// Builds a stored event from an input within the configured size (`api.max_event_bytes`:
    /// payload and attributes together).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad field, [`Error::TooLarge`] for a large event.
    pub fn event_from(
        &self,
        input: EventInput,
        now: Millis,
        index: Option<usize>,
    ) -> Result<Event, Error> {
        let event = input.into_event(now, index)?;
        let size = event.payload.get().len()
            + event
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let limit = self.config.api.max_event_bytes;
        if size > limit {
            return Err(Error::TooLarge {
                what: match index {
                    Some(i) => format!("events[{i}] (payload and attributes)"),
                    None => "the event (payload and attributes)".into(),
                },
                size,
                unit: "bytes",
                limit,
            });
        }
        Ok(event)
    }

    /// Emits events: each is validated (all before any is stored), routed, stored with its
    /// deliveries, and made durable before this returns.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad event (then nothing is stored), [`Error::TooLarge`] for too
    /// many events, or a storage error.
    pub async fn emit(&self, inputs: Vec<EventInput>) -> Result<Vec<EmitResult>, Error> {
        self.emit_from(inputs, Origin::Emitter).await
    }

    /// [`Pipeline::emit`] for `origin`: only the host may use its own kinds and id prefixes.
    pub(super) async fn emit_from(
        &self,
        inputs: Vec<EventInput>,
        origin: Origin,
    ) -> Result<Vec<EmitResult>, Error> {
        let limit = self.config.api.max_batch_events;
        if inputs.len() > limit {
            return Err(Error::TooLarge {
                what: "the event batch".into(),
                unit: "events",
                size: inputs.len(),
                limit,
            });
        }
        if inputs.is_empty() {
            return Err(Error::invalid("events", "at least one event is required"));
        }
        // The host's own events (webhook.*) are part of finishing pending work: they go on.
        if origin == Origin::Emitter {
            self.store.admit()?;
        }
        let now = self.now();
        let batch = inputs.len() > 1;
        let events = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| {
                let index = batch.then_some(i);
                if origin == Origin::Emitter {
                    check_not_reserved(&input, index)?;
                }
                self.event_from(input, now, index)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let ids: Vec<EventId> = events.iter().map(|e| e.id.clone()).collect();
        let items: Vec<(Event, Vec<Delivery>)> = events
            .into_iter()
            .map(|e| {
                let deliveries = self.route(&e, now);
                (e, deliveries)
            })
            .collect();
        // Stored once handed to storage, whether or not the caller waits for the answer: what
        // follows a commit (counting, waking the scheduler) runs even when the call is
        // dropped meanwhile (a client that hung up).
        let (store, metrics, wake) = (self.store.clone(), self.metrics.clone(), self.wake.clone());
        let inserted = tokio::spawn(async move {
            let inserted = store.insert_and_commit(items).await?;
            if inserted
                .iter()
                .any(|i| matches!(i, Inserted::New(d) if !d.is_empty()))
            {
                wake.notify_one();
            }
            metrics.events_accepted(
                inserted
                    .iter()
                    .filter(|i| **i != Inserted::Duplicate)
                    .count(),
            );
            Ok::<_, StorageError>(inserted)
        })
        .await
        .map_err(|e| StorageError::Record {
            source: format!("storing events stopped: {e}").into(),
        })??;
        let results: Vec<EmitResult> = ids
            .into_iter()
            .zip(inserted)
            .map(|(id, inserted)| EmitResult {
                duplicate: inserted == Inserted::Duplicate,
                deliveries: match inserted {
                    Inserted::New(carried) => carried,
                    Inserted::Duplicate => Vec::new(),
                },
                id,
            })
            .collect();
        Ok(results)
    }

    /// One pending delivery for every enabled webhook that takes this event.
    fn route(&self, event: &Event, now: Millis) -> Vec<Delivery> {
        // Parsed at most once, however many of the tenant's webhooks name an entity in it.
        let payload = OnceCell::new();
        self.catalog
            .takers(event)
            .into_iter()
            .map(|w| {
                // A delay counts from when the event happened, never into the past.
                let due = match (w.delay, w.batch) {
                    (Some(delay), _) => event.occurred_at.saturating_add(delay).max(now),
                    // A new batch collects for its window (a batch of one is due at once).
                    (None, Some(batch)) if batch.max_size > 1 => now.saturating_add(batch.window),
                    _ => now,
                };
                (w, due)
            })
            .map(|(w, due)| {
                let entity = w.entity_key.as_deref().and_then(|pointer| {
                    let payload = payload.get_or_init(|| parse_payload(event));
                    entity_at(payload.as_ref()?, pointer)
                });
                (w, due, entity)
            })
            .map(|(w, due, entity)| Delivery {
                in_order: entity.is_some() && w.entity_mode == EntityMode::InOrder,
                batch_events: if w.batch.is_some() {
                    vec![event.id.clone()]
                } else {
                    Vec::new()
                },
                batch_limit: w.batch.map_or(0, |b| b.max_size),
                entity,
                ..Delivery::pending(&w, event, due, now)
            })
            .collect()
    }
}

/// Refuses an emitter's event of the host's own kinds or id prefixes, in any case: a
/// receiver or plugin comparing without case must not take `Webhook.disabled` for the host's.
fn check_not_reserved(input: &EventInput, index: Option<usize>) -> Result<(), Error> {
    let field = |name: &str| match index {
        Some(i) => format!("events[{i}].{name}"),
        None => name.to_string(),
    };
    if starts_without_case(&input.kind, RESERVED_KIND_PREFIX) {
        return Err(Error::invalid(
            field("kind"),
            format!(
                "`{}`: kinds starting with `{RESERVED_KIND_PREFIX}` (in any case) are emitted only by the host",
                input.kind
            ),
        ));
    }
    if let Some(id) = input
        .id
        .as_deref()
        .filter(|id| starts_without_case(id, RESERVED_ID_PREFIX))
    {
        return Err(Error::invalid(
            field("id"),
            format!(
                "`{id}`: ids starting with `{RESERVED_ID_PREFIX}` (in any case) are given only by the host"
            ),
        ));
    }
    Ok(())
}

/// Whether `text` starts with `prefix`, ASCII case ignored.
fn starts_without_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// An event's payload as JSON, for finding entities in it.
fn parse_payload(event: &Event) -> Option<serde_json::Value> {
    serde_json::from_str(event.payload.get()).ok()
}

/// The entity an event is about: the value at the JSON `pointer` in its parsed `payload`, as
/// text (strings as they are, numbers and booleans as JSON). `None` when absent, null, or
/// not a scalar.
pub fn entity_at(payload: &serde_json::Value, pointer: &str) -> Option<String> {
    match payload.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(id: Option<&str>, kind: &str) -> EventInput {
        EventInput {
            id: id.map(String::from),
            kind: kind.into(),
            tenant: None,
            occurred_at: None,
            attributes: Default::default(),
            payload: RawValue::from_string("{}".into()).unwrap(),
        }
    }

    fn refused_field(id: Option<&str>, kind: &str) -> Option<String> {
        match check_not_reserved(&input(id, kind), None) {
            Ok(()) => None,
            Err(Error::Invalid { field, .. }) => Some(field),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn reserved_kinds_and_ids_are_refused_in_any_case() {
        for kind in ["webhook.disabled", "Webhook.disabled", "WEBHOOK.RESPONSE"] {
            assert_eq!(refused_field(None, kind).as_deref(), Some("kind"), "{kind}");
        }
        for id in ["evt_response_x", "EVT_RESPONSE_x", "Evt_Response_dlv_1"] {
            assert_eq!(
                refused_field(Some(id), "order.created").as_deref(),
                Some("id"),
                "{id}"
            );
        }
        for (id, kind) in [
            (Some("evt_respons"), "webhooks.disabled"),
            (Some("my_evt_response_1"), "order.webhook"),
            (None, "webhook"),
        ] {
            assert_eq!(refused_field(id, kind), None, "{id:?} {kind}");
        }
    }
}
