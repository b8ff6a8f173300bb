//! The raw limit: what a plain keep-alive client gets through the same kind of receiver.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::receiver::{receiver, Tally};

/// The raw limit: a plain keep-alive client posting the same bodies to the same kind of
/// receiver with `concurrency` requests in flight.
pub(crate) async fn raw(total: usize, concurrency: usize) -> f64 {
    let tally = Tally::new(0);
    let url = receiver(Some(tally.clone()), Duration::ZERO).await;
    let body = serde_json::to_vec(&json!({
        "event_id": "raw", "event": "order.created", "order_id": "ORD-00000001",
        "amount": 250.0, "currency": "EUR", "customer_email": "anna.kowalska@example.com",
        "message": "Order ORD-00000001 for 250 EUR needs review"
    }))
    .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, body) = (client.clone(), url.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let _ = response.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}
