//! `shipstation-notify` — ShipStation style: instead of the data, a thin notification
//! `{"resource_url": …, "resource_type": …}` the receiver follows (with an emitter key) to
//! fetch the event(s) from this host. Batched webhooks send one notification per batch, whose
//! URL names every event (`GET /v1/events?ids=…`). Event ids are unique per tenant, so the
//! URL of a tenant's event names the tenant too (`?tenant=…`; a batch never mixes tenants).
//!
//! Config: `{"base_url": "https://hooks.example"}` (this host, as receivers reach it) and an
//! optional `"resource_type"`; otherwise it follows the event kind: `order.*` →
//! `ORDER_NOTIFY`, `shipment.*` → `SHIP_NOTIFY`, `item.order.*` → `ITEM_ORDER_NOTIFY`,
//! `item.shipment.*` → `ITEM_SHIP_NOTIFY`.

use serde::{Deserialize, Serialize};
use wasmhooks_guest::{export_plugin, Decision, Error, Event, Plugin, Request, Result};

#[derive(Deserialize)]
struct Config {
    base_url: String,
    #[serde(default)]
    resource_type: Option<String>,
}

#[derive(Serialize)]
struct Notification {
    resource_url: String,
    resource_type: String,
}

fn resource_type(kind: &str) -> Result<&'static str> {
    let kinds = [
        ("item.order.", "ITEM_ORDER_NOTIFY"),
        ("item.shipment.", "ITEM_SHIP_NOTIFY"),
        ("order.", "ORDER_NOTIFY"),
        ("shipment.", "SHIP_NOTIFY"),
    ];
    kinds
        .iter()
        .find(|(prefix, _)| kind.starts_with(prefix))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            Error::new(format!(
                "no ShipStation resource type for event kind `{kind}`; set `resource_type` in the config"
            ))
        })
}

fn notify(events: &[Event]) -> Result<Decision> {
    let config: Config = wasmhooks_guest::config()?;
    let base = config.base_url.trim_end_matches('/');
    let first = events.first().ok_or_else(|| Error::new("an empty batch"))?;
    let resource_type = match config.resource_type {
        Some(t) => t,
        None => resource_type(&first.kind)?.to_string(),
    };
    let tenant = first
        .tenant
        .as_deref()
        .map(wasmhooks_guest::template::percent_encode);
    let resource_url = match (events, tenant) {
        ([one], None) => format!("{base}/v1/events/{}", one.id),
        ([one], Some(tenant)) => format!("{base}/v1/events/{}?tenant={tenant}", one.id),
        (many, tenant) => {
            let ids: Vec<&str> = many.iter().map(|e| e.id.as_str()).collect();
            let tenant = tenant.map_or(String::new(), |t| format!("&tenant={t}"));
            format!("{base}/v1/events?ids={}{tenant}", ids.join(","))
        }
    };
    Ok(Decision::send(Request::json(&Notification {
        resource_url,
        resource_type,
    })?))
}

/// Sends thin notifications pointing back at the host.
pub struct ShipStationNotify;

impl Plugin for ShipStationNotify {
    fn on_event(event: Event) -> Result<Decision> {
        notify(std::slice::from_ref(&event))
    }

    fn on_batch(events: Vec<Event>) -> Result<Decision> {
        notify(&events)
    }
}

export_plugin!(ShipStationNotify);
