//! `erp-product` — an ERP's product feed: the product record shaped as `simple`,
//! `extended` or `extendedRelated`, chosen by the webhook's config.
//!
//! Config: `{"shape": "simple" | "extended" | "extendedRelated"}` (default `simple`).
//! Payload: `{"sku", "name", "price", "currency", "stock", "description", "attributes": {…},
//! "related": [{"sku", "name", …}]}`.
//!
//! - `simple`: `{"sku", "name", "price", "currency"}`
//! - `extended`: simple plus `stock`, `description`, `attributes`
//! - `extendedRelated`: extended plus `related` as `[{"sku", "name"}]`

use serde::{Deserialize, Serialize};
use wasmhooks_guest::{export_plugin, Decision, Error, Event, Plugin, Request, Result};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "camelCase")]
enum Shape {
    #[default]
    Simple,
    Extended,
    ExtendedRelated,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    shape: Shape,
}

#[derive(Deserialize)]
struct Product {
    sku: String,
    name: String,
    price: f64,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    stock: Option<f64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    related: Vec<Related>,
}

#[derive(Deserialize, Serialize)]
struct Related {
    sku: String,
    name: String,
}

#[derive(Serialize)]
struct Out<'a> {
    sku: &'a str,
    name: &'a str,
    price: f64,
    currency: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stock: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<&'a serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    related: Option<&'a [Related]>,
}

/// Sends the product in the configured shape.
pub struct ErpProduct;

impl Plugin for ErpProduct {
    fn on_event(event: Event) -> Result<Decision> {
        let config: Config = wasmhooks_guest::config().map_err(|e| {
            Error::new(format!(
                "erp-product {e} (shape is simple, extended or extendedRelated)"
            ))
        })?;
        let product: Product = event.payload_as()?;
        let extended = config.shape != Shape::Simple;
        let out = Out {
            sku: &product.sku,
            name: &product.name,
            price: product.price,
            currency: product.currency.as_deref().unwrap_or("EUR"),
            stock: product.stock.filter(|_| extended),
            description: product.description.as_deref().filter(|_| extended),
            attributes: extended.then_some(&product.attributes),
            related: (config.shape == Shape::ExtendedRelated).then_some(&product.related[..]),
        };
        Ok(Decision::send(Request::json(&out)?))
    }
}

export_plugin!(ErpProduct);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmhooks_guest::testing::{event, Harness};

    fn product() -> Event {
        event(
            "product.updated",
            json!({"sku": "P1", "name": "Mug", "price": 9.5, "stock": 3, "description": "Blue",
                   "attributes": {"color": "blue"}, "related": [{"sku": "P2", "name": "Saucer", "price": 4}]}),
        )
    }

    fn shaped(shape: &str) -> serde_json::Value {
        let mut host = Harness::new().config(json!({"shape": shape}));
        let decision = host.on_event::<ErpProduct>(product()).unwrap();
        decision.requests()[0].body_json().unwrap()
    }

    #[test]
    fn each_shape_carries_its_fields() {
        assert_eq!(
            shaped("simple"),
            json!({"sku": "P1", "name": "Mug", "price": 9.5, "currency": "EUR"})
        );
        assert_eq!(
            shaped("extended"),
            json!({"sku": "P1", "name": "Mug", "price": 9.5, "currency": "EUR", "stock": 3.0,
                   "description": "Blue", "attributes": {"color": "blue"}})
        );
        assert_eq!(
            shaped("extendedRelated")["related"],
            json!([{"sku": "P2", "name": "Saucer"}])
        );
        let mut host = Harness::new().config(json!({"shape": "huge"}));
        let err = host
            .on_event::<ErpProduct>(product())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shape is simple, extended or extendedRelated"),
            "{err}"
        );
    }
}
