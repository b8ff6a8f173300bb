//! `k-inventory` — K inventory style: conditions on the sale decide whether to fire; method,
//! path, headers and body come from the webhook's config with variables from the event; the
//! receiver's answer yields a return value kept on the delivery.
//!
//! Config:
//!
//! ```json
//! {
//!   "conditions": {"min_amount": 100, "statuses": ["paid"], "payment_methods": ["card"]},
//!   "method": "PUT",
//!   "path": "/api/entries/{id}",
//!   "headers": {"x-shop": "{attributes.store_id}"},
//!   "body": "{\"Order\": \"{id}\", \"Total\": {amount}, \"Email\": \"{payload.customer.email}\"}",
//!   "return_value": "entries.0.values.Request ID"
//! }
//! ```
//!
//! Every condition is optional; `body` is a JSON template (values escaped for JSON strings),
//! `path` a URL template (path and query escaping by position). Payload:
//! `{"id", "amount", "status", "payment_method", "customer": {"email"}}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmhooks_guest::template::{self, render, render_url, Escape, Vars};
use wasmhooks_guest::{
    export_plugin, info, Decision, Error, Event, Method, Plugin, Request, Response, Result, Verdict,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Conditions {
    #[serde(default)]
    min_amount: Option<f64>,
    #[serde(default)]
    statuses: Option<Vec<String>>,
    #[serde(default)]
    payment_methods: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    conditions: Conditions,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: String,
    #[serde(default)]
    return_value: Option<String>,
}

#[derive(Deserialize)]
struct Sale {
    #[serde(default)]
    amount: Option<f64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    payment_method: Option<String>,
}

fn config() -> Result<Config> {
    wasmhooks_guest::config().map_err(|e| Error::new(format!("k-inventory {e}")))
}

/// Why the sale does not qualify, if it does not.
fn unmet(conditions: &Conditions, sale: &Sale) -> Option<String> {
    if let Some(min) = conditions.min_amount {
        let amount = sale.amount.unwrap_or(0.0);
        if amount < min {
            return Some(format!("amount {amount} is below {min}"));
        }
    }
    let one_of = |name: &str, value: &Option<String>, allowed: &Option<Vec<String>>| {
        let allowed = allowed.as_ref()?;
        let value = value.as_deref().unwrap_or("");
        (!allowed.iter().any(|a| a == value))
            .then(|| format!("{name} `{value}` is not one of {}", allowed.join(", ")))
    };
    one_of("status", &sale.status, &conditions.statuses).or_else(|| {
        one_of(
            "payment method",
            &sale.payment_method,
            &conditions.payment_methods,
        )
    })
}

/// Fires for qualifying sales with a request built from the config's templates.
pub struct KInventory;

impl Plugin for KInventory {
    const INSPECTS_RESPONSES: bool = true;

    fn on_event(event: Event) -> Result<Decision> {
        let config = config()?;
        let sale: Sale = event.payload_as()?;
        if let Some(why) = unmet(&config.conditions, &sale) {
            return Ok(Decision::skip(why));
        }
        let vars = Vars::of(&event)?;
        let body = render(&config.body, &vars, Escape::Json)?;
        let mut request = Request::bytes(body, "application/json");
        if let Some(name) = &config.method {
            let method =
                Method::parse(name).map_err(|e| Error::new(format!("k-inventory config: {e}")))?;
            request = request.with_method(method);
        }
        if let Some(path) = &config.path {
            request = request.with_path(render_url(path, &vars)?);
        }
        for (name, value) in &config.headers {
            request = request.with_header(name, render(value, &vars, Escape::None)?);
        }
        info!("sale {} qualifies", event.id);
        Ok(Decision::send(request))
    }

    fn on_response(response: Response) -> Verdict {
        let Ok(Config {
            return_value: Some(path),
            ..
        }) = config()
        else {
            return Verdict::UseDefault;
        };
        if !(200..300).contains(&response.status) {
            return Verdict::UseDefault;
        }
        let value = response
            .body_json()
            .ok()
            .and_then(|json| template::path(&json, &path).cloned());
        match value {
            Some(serde_json::Value::String(s)) => Verdict::Success(Some(s)),
            Some(serde_json::Value::Null) | None => {
                wasmhooks_guest::warn!("return value `{path}` is not in the response");
                Verdict::Success(None)
            }
            Some(other) => Verdict::Success(Some(other.to_string())),
        }
    }
}

export_plugin!(KInventory);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmhooks_guest::testing::{event, response, Harness};

    fn host() -> Harness {
        Harness::new().config(json!({
            "conditions": {"min_amount": 100, "statuses": ["paid"]},
            "method": "PUT",
            "path": "/entries/{id}",
            "headers": {"x-shop": "{attributes.store_id}"},
            "body": "{\"Order\": \"{id}\", \"Total\": {amount}, \"Email\": \"{payload.customer.email}\"}",
            "return_value": "entries.0.values.Request ID"
        }))
    }

    #[test]
    fn a_qualifying_sale_becomes_the_configured_request() {
        let sale = event(
            "sale.created",
            json!({"id": "S 1/2", "amount": 150, "status": "paid", "customer": {"email": "\"a\"@x.pl"}}),
        )
        .with_attribute("store_id", "7");
        let decision = host().on_event::<KInventory>(sale).unwrap();
        let request = &decision.requests()[0];
        assert_eq!(request.method, Some(Method::Put));
        assert_eq!(request.path.as_deref(), Some("/entries/S%201%2F2"));
        assert_eq!(request.header("x-shop"), Some("7"));
        assert_eq!(
            request.body_json().unwrap(),
            json!({"Order": "S 1/2", "Total": 150, "Email": "\"a\"@x.pl"})
        );
    }

    #[test]
    fn conditions_skip_with_the_reason() {
        let mut host = host();
        let low = event(
            "sale.created",
            json!({"id": "1", "amount": 20, "status": "paid"}),
        );
        let decision = host.on_event::<KInventory>(low).unwrap();
        assert_eq!(decision.skip_reason(), Some("amount 20 is below 100"));
        let unpaid = event(
            "sale.created",
            json!({"id": "1", "amount": 200, "status": "new"}),
        );
        let decision = host.on_event::<KInventory>(unpaid).unwrap();
        assert_eq!(
            decision.skip_reason(),
            Some("status `new` is not one of paid")
        );
    }

    #[test]
    fn the_return_value_comes_from_the_response() {
        let mut host = host();
        let answer = response(201, r#"{"entries": [{"values": {"Request ID": "R-9"}}]}"#);
        assert_eq!(
            host.on_response::<KInventory>(answer),
            Verdict::Success(Some("R-9".into()))
        );
        assert_eq!(
            host.on_response::<KInventory>(response(500, "")),
            Verdict::UseDefault
        );
        assert_eq!(
            host.on_response::<KInventory>(response(200, "{}")),
            Verdict::Success(None)
        );
        assert_eq!(
            host.logs(),
            ["warn: return value `entries.0.values.Request ID` is not in the response"]
        );
    }
}
