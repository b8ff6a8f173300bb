//! `__NAME__`: a wasmhooks plugin. It fires for orders whose amount reaches the webhook's
//! `min_amount` and posts a JSON body built from the event's variables.
//!
//! Config: `{"min_amount": 100}`. Payload: `{"id": "…", "amount": 120, "customer": {"email": "…"}}`.

use serde::Deserialize;
use wasmhooks_guest::{
    export_plugin, info, render, Decision, Escape, Event, Plugin, Request, Result, Vars,
};

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    min_amount: f64,
}

#[derive(Deserialize)]
struct Order {
    amount: f64,
}

/// The body, with variables from the event (escaped for JSON strings).
const BODY: &str = r#"{"order": "{id}", "amount": {amount}, "email": "{payload.customer.email}"}"#;

/// The plugin.
pub struct __TYPE__;

impl Plugin for __TYPE__ {
    fn on_event(event: Event) -> Result<Decision> {
        let config: Config = wasmhooks_guest::config()?;
        let order: Order = event.payload_as()?;
        if order.amount < config.min_amount {
            return Ok(Decision::skip(format!(
                "amount {} is below {}",
                order.amount, config.min_amount
            )));
        }
        info!("order {} qualifies", event.id);
        let body = render(BODY, &Vars::of(&event)?, Escape::Json)?;
        Ok(Decision::send(Request::bytes(body, "application/json")))
    }
}

export_plugin!(__TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmhooks_guest::testing::{event, Harness};

    #[test]
    fn fires_at_the_minimum_with_the_templated_body() {
        let mut host = Harness::new().config(json!({"min_amount": 100}));
        let order = event(
            "order.created",
            json!({"id": "A-1", "amount": 120, "customer": {"email": "a@example.com"}}),
        );
        let decision = host.on_event::<__TYPE__>(order).unwrap();
        let body = decision.requests()[0].body_json().unwrap();
        assert_eq!(body, json!({"order": "A-1", "amount": 120, "email": "a@example.com"}));
        assert_eq!(host.logs(), ["info: order evt_test_1 qualifies"]);
    }

    #[test]
    fn skips_below_the_minimum() {
        let mut host = Harness::new().config(json!({"min_amount": 100}));
        let order = event("order.created", json!({"id": "A-2", "amount": 20}));
        let decision = host.on_event::<__TYPE__>(order).unwrap();
        assert_eq!(decision.skip_reason(), Some("amount 20 is below 100"));
    }
}
