//! The load generator: the bench's order events, rendered from a template, and the emitters
//! that POST them to the hosts and stamp each event's emit time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::args::Args;
use crate::receiver::Tally;

/// A small order for the backlog (a million of them must fit the disk).
fn small_order(n: usize) -> Value {
    json!({"id": format!("bench-{n}"), "kind": "order.created",
           "payload": {"id": format!("ORD-{n:08}"), "amount": 250.0}})
}

/// A realistic order (about 2 KB) for event number `n`.
pub(crate) fn order(n: usize, shops: usize) -> Value {
    let items: Vec<Value> = (0..15)
        .map(|i| {
            json!({"sku": format!("SKU-{i:05}"), "name": format!("Product number {i}"),
                   "quantity": i + 1, "unit_price": 12.5 + i as f64, "tax_rate": 0.23})
        })
        .collect();
    json!({
        "id": format!("bench-{n}"), "kind": "order.created",
        "attributes": {"shop": (n % shops.max(1)).to_string()},
        "payload": {
            "id": format!("ORD-{n:08}"), "amount": 250.0, "currency": "EUR", "status": "paid",
            "customer": {"id": "C-77", "email": "anna.kowalska@example.com", "name": "Anna Kowalska"},
            "shipping_address": {"street": "ul. Długa 1", "city": "Gdańsk", "zip": "80-001", "country": "PL"},
            "items": items,
            "created_at": "2026-11-23T10:00:00Z"
        }
    })
}

/// An event's JSON text with its number (and shop) left open: the emitters render each
/// event by filling them in instead of building and serialising a JSON value, so the load
/// generator takes little of the cores the host is measured on.
struct EventTemplate {
    parts: Vec<String>,
}

const NUMBER_MARK: usize = 7_777_777;
const SHOP_MARK: &str = "shop-mark";

impl EventTemplate {
    fn new(shops: usize) -> EventTemplate {
        let text = if shops == 0 {
            small_order(NUMBER_MARK)
        } else {
            let mut event = order(NUMBER_MARK, shops);
            event["attributes"]["shop"] = json!(SHOP_MARK);
            event
        }
        .to_string();
        // Split around every mark: the number (as itself and zero-padded) and the shop.
        let padded = format!("{NUMBER_MARK:08}");
        let plain = NUMBER_MARK.to_string();
        let mut parts = vec![String::new()];
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let next = [
                (padded.as_str(), "\u{1}"),
                (plain.as_str(), "\u{2}"),
                (SHOP_MARK, "\u{3}"),
            ]
            .into_iter()
            .filter_map(|(mark, tag)| rest.find(mark).map(|at| (at, mark, tag)))
            .min_by_key(|(at, mark, _)| (*at, std::cmp::Reverse(mark.len())));
            match next {
                Some((at, mark, tag)) => {
                    parts.last_mut().unwrap().push_str(&rest[..at]);
                    parts.push(tag.to_string());
                    parts.push(String::new());
                    rest = &rest[at + mark.len()..];
                }
                None => {
                    parts.last_mut().unwrap().push_str(rest);
                    rest = "";
                }
            }
        }
        let template = EventTemplate { parts };
        // The rendered text is the very event the JSON builders make.
        for n in [0, 42, 123_456] {
            let expected = if shops == 0 {
                small_order(n)
            } else {
                order(n, shops)
            };
            let rendered: Value = serde_json::from_str(&template.render(n, shops)).unwrap();
            assert_eq!(rendered, expected, "event template for {n}");
        }
        template
    }

    fn render(&self, n: usize, shops: usize) -> String {
        let mut out = String::with_capacity(2300);
        for part in &self.parts {
            match part.as_str() {
                "\u{1}" => out.push_str(&format!("{n:08}")),
                "\u{2}" => out.push_str(&n.to_string()),
                "\u{3}" => out.push_str(&(n % shops.max(1)).to_string()),
                text => out.push_str(text),
            }
        }
        out
    }
}

/// Emits events `range` with `concurrency` connections (at `rate` events/s if given), in
/// POSTs of `batch` that take turns among `hosts`, stamping each event's emit time.
pub(crate) async fn emit(
    client: &reqwest::Client,
    hosts: &[String],
    tally: &Arc<Tally>,
    range: std::ops::Range<usize>,
    args: &Args,
    shops: usize,
    progress: &Arc<AtomicUsize>,
) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let template = Arc::new(EventTemplate::new(shops));
    let hosts: Arc<[String]> = hosts.into();
    let begun = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, hosts, tally, next, progress) = (
            client.clone(),
            hosts.clone(),
            tally.clone(),
            next.clone(),
            progress.clone(),
        );
        let (batch, rate) = (args.batch.max(1), args.rate);
        let template = template.clone();
        let first = range.start;
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= end {
                    break;
                }
                let to = (from + batch).min(end);
                if let Some(rate) = rate {
                    let due = begun + Duration::from_secs_f64((from - first) as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let texts: Vec<String> = (from..to).map(|n| template.render(n, shops)).collect();
                let body = if texts.len() == 1 {
                    texts.into_iter().next().unwrap()
                } else {
                    format!("[{}]", texts.join(","))
                };
                let now = tally.now_us();
                for n in from..to {
                    if let Some(slot) = tally.emitted_at.get(n) {
                        slot.store(now, Ordering::Relaxed);
                    }
                }
                let host = &hosts[(from - first) / batch % hosts.len()];
                let response = client
                    .post(format!("{host}/v1/events"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("emit");
                assert_eq!(response.status().as_u16(), 202, "emit refused");
                progress.fetch_add(to - from, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
