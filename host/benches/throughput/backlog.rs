//! The `backlog` scenario: a million delayed deliveries queued, the host's memory meanwhile,
//! then a restart and how long until a new delivery arrives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{call, client, upload, webhook};
use crate::args::Args;
use crate::emitter::{emit, order};
use crate::host::Host;
use crate::progress::progress_bar;
use crate::receiver::{receiver, Tally};

pub(crate) async fn backlog(args: &Args) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let host = Host::start(&data);
    let client = client();
    let module = upload(
        &client,
        &host.url,
        wasmhooks::examples::ORDER_THRESHOLD.to_vec(),
        "bench",
    )
    .await;
    webhook(
        &client,
        &host.url,
        json!({"name": "later", "event_kinds": ["order.created"], "module_id": module,
               "url": "http://127.0.0.1:9/never", "delay": "1h", "config": {"threshold": 100}}),
    )
    .await;
    let tally = Tally::new(args.pending);
    let emitted = Arc::new(AtomicUsize::new(0));
    let e = emitted.clone();
    let bar = progress_bar(
        "queueing",
        emitted.clone(),
        args.pending,
        Arc::new(move || e.load(Ordering::Relaxed)),
        args.pending,
    );
    let started = Instant::now();
    let emit_args = Args {
        batch: args.batch.max(1000),
        concurrency: 4,
        rate: None,
        ..args.clone()
    };
    emit(
        &client,
        std::slice::from_ref(&host.url),
        &tally,
        0..args.pending,
        &emit_args,
        0,
        &emitted,
    )
    .await;
    bar.store(true, Ordering::Relaxed);
    let queued_in = started.elapsed().as_secs_f64();
    let (rss_now, rss_peak) = host.rss_mib();
    println!(
        "- queued {} delayed deliveries in {queued_in:.1} s ({:.0} events/s, batches of {}); host RSS {rss_now:.0} MiB now, {rss_peak:.0} MiB peak",
        args.pending,
        args.pending as f64 / queued_in,
        emit_args.batch
    );
    host.stop();

    // Restart on the same data: time to answer, then to deliver a new event.
    let host = Host::start(&data);
    let answered = host.ready_after;
    let tally = Tally::new(1);
    let url = receiver(Some(tally.clone()), Duration::ZERO).await;
    webhook(
        &client,
        &host.url,
        json!({"name": "now", "event_kinds": ["order.now"], "module_id": module,
               "url": url, "config": {"threshold": 100}}),
    )
    .await;
    let mut event = order(0, 1);
    event["kind"] = json!("order.now");
    event["id"] = json!("after-restart");
    call(
        &client,
        client.post(format!("{}/v1/events", host.url)).json(&event),
    )
    .await;
    while tally.received.load(Ordering::Relaxed) == 0 {
        assert!(
            host.started.elapsed() < Duration::from_secs(120),
            "no delivery after restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = host.started.elapsed();
    let (rss_now, _) = host.rss_mib();
    println!(
        "- restart with {} pending: answering after {:.2} s, first new delivery after {:.2} s; host RSS {rss_now:.0} MiB",
        args.pending,
        answered.as_secs_f64(),
        delivered.as_secs_f64()
    );
    host.stop();
}
