//! `order-threshold` — K inventory style: fire only when an order's amount reaches a threshold
//! set in the webhook's config, with a body built from the event's variables.
//!
//! Config: `{"threshold": 100}` (default 100). Payload: `{"id": "…", "amount": 250.0,
//! "currency": "EUR", "customer": {"email": "…"}}`.

use serde::{Deserialize, Serialize};
use wasmhooks_guest::{export_plugin, info, Decision, Event, Plugin, Request, Result};

#[derive(Deserialize)]
struct Config {
    #[serde(default = "default_threshold")]
    threshold: f64,
}

fn default_threshold() -> f64 {
    100.0
}

#[derive(Deserialize)]
struct Order {
    id: String,
    amount: f64,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    customer: Option<Customer>,
}

#[derive(Deserialize)]
struct Customer {
    #[serde(default)]
    email: Option<String>,
}

/// The body the receiver gets.
#[derive(Serialize)]
struct Notice<'a> {
    event_id: &'a str,
    event: &'a str,
    order_id: &'a str,
    amount: f64,
    currency: &'a str,
    customer_email: Option<&'a str>,
    message: String,
}

/// Fires for orders whose amount is at least the configured threshold.
pub struct OrderThreshold;

impl Plugin for OrderThreshold {
    fn on_event(event: Event) -> Result<Decision> {
        let config: Config = wasmhooks_guest::config()?;
        let order: Order = event.payload_as()?;
        if order.amount < config.threshold {
            return Ok(Decision::skip(format!(
                "amount {} is below the threshold {}",
                order.amount, config.threshold
            )));
        }
        info!(
            "order {} amount {} reaches threshold {}",
            order.id, order.amount, config.threshold
        );
        let currency = order.currency.as_deref().unwrap_or("EUR");
        let notice = Notice {
            event_id: &event.id,
            event: &event.kind,
            order_id: &order.id,
            amount: order.amount,
            currency,
            customer_email: order.customer.as_ref().and_then(|c| c.email.as_deref()),
            message: format!(
                "Order {} for {} {} needs review",
                order.id, order.amount, currency
            ),
        };
        Ok(Decision::send(Request::json(&notice)?))
    }
}

export_plugin!(OrderThreshold);
