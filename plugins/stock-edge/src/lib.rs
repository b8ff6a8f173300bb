//! `stock-edge` — fire on edges, not levels: plugin state remembers each SKU's last stock, and
//! the webhook fires only when stock crosses zero (`out_of_stock` when it falls to zero or
//! below, `back_in_stock` when it rises above). The first sighting of a SKU only records it.
//!
//! Payload: `{"sku": "…", "stock": 3}`. Body: `{"sku", "stock", "previous", "change"}`.

use serde::{Deserialize, Serialize};
use wasmhooks_guest::{export_plugin, info, state, Decision, Event, Plugin, Request, Result};

#[derive(Deserialize)]
struct Level {
    sku: String,
    stock: f64,
}

#[derive(Serialize)]
struct Edge<'a> {
    sku: &'a str,
    stock: f64,
    previous: f64,
    change: &'static str,
}

/// Fires when a SKU's stock crosses zero.
pub struct StockEdge;

impl Plugin for StockEdge {
    fn on_event(event: Event) -> Result<Decision> {
        let level: Level = event.payload_as()?;
        let key = format!("stock:{}", level.sku);
        let previous: Option<f64> = state::get_json(&key)?;
        state::set_json(&key, &level.stock)?;
        let Some(previous) = previous else {
            return Ok(Decision::skip(format!(
                "first sight of {} (stock {})",
                level.sku, level.stock
            )));
        };
        let change = match (previous > 0.0, level.stock > 0.0) {
            (true, false) => "out_of_stock",
            (false, true) => "back_in_stock",
            _ => {
                return Ok(Decision::skip(format!(
                    "{} stock {} → {}: no zero crossing",
                    level.sku, previous, level.stock
                )))
            }
        };
        info!("{} {change} ({previous} → {})", level.sku, level.stock);
        Ok(Decision::send(Request::json(&Edge {
            sku: &level.sku,
            stock: level.stock,
            previous,
            change,
        })?))
    }
}

export_plugin!(StockEdge);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmhooks_guest::testing::{event, Harness};

    #[test]
    fn fires_only_when_stock_crosses_zero() {
        let mut host = Harness::new();
        let mut changes = Vec::new();
        for stock in [5, 3, 0, 0, -1, 2, 7] {
            let level = event("stock.changed", json!({"sku": "S1", "stock": stock}));
            let decision = host.on_event::<StockEdge>(level).unwrap();
            if let Some(request) = decision.requests().first() {
                changes.push(request.body_json().unwrap()["change"].clone());
            }
        }
        assert_eq!(changes, [json!("out_of_stock"), json!("back_in_stock")]);
        assert_eq!(host.state_json::<f64>("stock:S1"), Some(7.0));
    }

    #[test]
    fn the_first_sighting_only_records_the_level() {
        let mut host = Harness::new().with_state("stock:OTHER", &1.0);
        let first = event("stock.changed", json!({"sku": "S1", "stock": 0}));
        let decision = host.on_event::<StockEdge>(first).unwrap();
        assert_eq!(decision.skip_reason(), Some("first sight of S1 (stock 0)"));
        assert_eq!(host.state_json::<f64>("stock:S1"), Some(0.0));
        assert_eq!(host.state_json::<f64>("stock:OTHER"), Some(1.0));
    }
}
