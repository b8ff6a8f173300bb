//! `order-threshold` — K inventory style: fire only when an order's amount reaches a threshold
//! set in the webhook's config, with a body built from the event's variables.
//!
//! Config: `{"threshold": 100}` (default 100). Payload: `{"id": "…", "amount": 250.0,
//! "currency": "EUR", "customer": {"email": "…"}}`.

use serde::{Deserialize, Serialize};
use wasmhooks_guest::{export_plugin, info, Decision, Error, Event, Plugin, Request, Result};

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

/// What the plugin decided about one order, before it becomes a WIT decision.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Below the threshold: the reason.
    Skip(String),
    /// At or above it: the JSON body to send, and a line for the log.
    Send {
        /// The notice, as JSON.
        body: Vec<u8>,
        /// What to log.
        log: String,
    },
}

/// The whole decision as a plain function of the config, the event and its payload, so the
/// same logic runs natively (tests, the sandbox-overhead benchmark) and inside the plugin.
///
/// # Errors
/// When the config or the payload do not parse.
pub fn decide(config: &str, event_id: &str, kind: &str, payload: &str) -> Result<Outcome> {
    let config: Config =
        serde_json::from_str(config).map_err(|e| Error::new(format!("bad config: {e}")))?;
    let order: Order =
        serde_json::from_str(payload).map_err(|e| Error::new(format!("bad payload: {e}")))?;
    if order.amount < config.threshold {
        return Ok(Outcome::Skip(format!(
            "amount {} is below the threshold {}",
            order.amount, config.threshold
        )));
    }
    let currency = order.currency.as_deref().unwrap_or("EUR");
    let notice = Notice {
        event_id,
        event: kind,
        order_id: &order.id,
        amount: order.amount,
        currency,
        customer_email: order.customer.as_ref().and_then(|c| c.email.as_deref()),
        message: format!(
            "Order {} for {} {} needs review",
            order.id, order.amount, currency
        ),
    };
    let body = serde_json::to_vec(&notice).map_err(|e| Error::new(e.to_string()))?;
    Ok(Outcome::Send {
        body,
        log: format!(
            "order {} amount {} reaches threshold {}",
            order.id, order.amount, config.threshold
        ),
    })
}

/// Fires for orders whose amount is at least the configured threshold.
pub struct OrderThreshold;

impl Plugin for OrderThreshold {
    fn on_event(event: Event) -> Result<Decision> {
        let config = wasmhooks_guest::config_text();
        match decide(&config, &event.id, &event.kind, &event.payload)? {
            Outcome::Skip(reason) => Ok(Decision::skip(reason)),
            Outcome::Send { body, log } => {
                info!("{log}");
                Ok(Decision::send(Request::bytes(body, "application/json")))
            }
        }
    }
}

export_plugin!(OrderThreshold);
