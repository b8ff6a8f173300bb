//! Graceful shutdown: SIGTERM under load stops accepting, gives deliveries in flight
//! `delivery.shutdown_grace`, hands back the rest and exits 0; a restart delivers every
//! acknowledged event, and nothing recorded as delivered is sent again.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{data_dir, eventually, Receiver, Server};

/// Ids of the deliveries recorded as delivered.
async fn delivered(server: &Server) -> HashSet<String> {
    let (_, page) = server
        .get("/v1/deliveries?status=delivered&limit=100")
        .await;
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn sigterm_under_load_exits_0_in_the_grace_period_and_a_restart_finishes_the_work() {
    let (_tmp, dir) = data_dir();
    let hung = Receiver::start().await;
    let healthy = Receiver::start().await;
    // A hung receiver whose requests would time out only after ten minutes: only the grace
    // period lets the host stop in time.
    let settings = [
        ("WASMHOOKS_DELIVERY__TIMEOUT", "10m"),
        ("WASMHOOKS_DELIVERY__SHUTDOWN_GRACE", "2s"),
    ];
    let server = Server::start(&dir, &settings).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    for (name, kind, url) in [
        ("hung", "slow.*", &hung.url),
        ("healthy", "fast.*", &healthy.url),
    ] {
        server
            .create_webhook(
                json!({ "name": name, "event_kinds": [kind], "module_id": module, "url": url }),
            )
            .await;
    }
    hung.hold();
    let mut acknowledged: Vec<String> = Vec::new();
    let emit = |events: Vec<Value>| {
        let server = &server;
        async move {
            let ack = server.emit(json!(events)).await;
            ack["data"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r["deliveries"].as_array().unwrap().clone())
                .map(|d| d.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let slow = (0..5).map(|i| json!({ "kind": "slow.created", "payload": { "i": i } }));
    acknowledged.extend(emit(slow.collect()).await);
    let fast = |from: u32| {
        (from..from + 40).map(|i| json!({ "kind": "fast.created", "payload": { "i": i } }))
    };
    acknowledged.extend(emit(fast(0).collect()).await);
    eventually("the hung receiver to hold requests", || async {
        (hung.waiting() >= 1).then_some(())
    })
    .await;
    healthy.wait_for(10).await;
    // More work arrives right before the stop.
    acknowledged.extend(emit(fast(40).collect()).await);
    let recorded = delivered(&server).await;
    assert!(!recorded.is_empty());

    let stopping = Instant::now();
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(40),
        "stopped after {:?}, far past the 2 s grace",
        stopping.elapsed()
    );

    // A restart on the same data delivers every acknowledged event.
    hung.release();
    let server = Server::start(&dir, &settings).await;
    assert_eq!(acknowledged.len(), 85);
    for id in &acknowledged {
        let done = server.final_delivery(id).await;
        assert_eq!(done["status"], "delivered", "{done}");
    }
    // What was recorded as delivered before the stop went exactly once.
    let sent: Vec<String> = healthy
        .received()
        .iter()
        .chain(hung.received().iter())
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    for id in &recorded {
        let times = sent.iter().filter(|s| *s == id).count();
        assert_eq!(
            times, 1,
            "{id} was recorded as delivered and sent {times} times"
        );
    }
}
