//! The `soak` scenario: a steady rate for minutes with short retention, and every 30 s the
//! host's memory, its data dir on disk and what the pruner removed.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{client, upload, webhook};
use crate::args::Args;
use crate::emitter::emit;
use crate::host::Host;
use crate::receiver::{all_delivered, receiver, Tally};
use crate::report::percentile;

/// Bytes the files under `dir` take on disk (allocated blocks, as `du` counts them).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `wasmhooks_pruned_total` by kind (deliveries, events) from the host's `/metrics`.
async fn pruned(client: &reqwest::Client, host: &str) -> (u64, u64) {
    let text = match client.get(format!("{host}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let count = |kind: &str| {
        let name = format!("wasmhooks_pruned_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    (count("deliveries"), count("events"))
}

/// The soak: a steady rate to one webhook for minutes with short (or no) retention; every 30 s
/// what the host holds, to see whether memory and disk level off once pruning keeps pace.
pub(crate) async fn soak(args: &Args) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keep = args.keep.as_str();
    let host = Host::start_with(
        &data,
        &[
            ("WASMHOOKS_RETENTION__DELIVERED", keep),
            ("WASMHOOKS_RETENTION__FAILED", keep),
            ("WASMHOOKS_RETENTION__EVENTS", keep),
        ],
    );
    let tally = Tally::new(args.events);
    let url = receiver(Some(tally.clone()), Duration::ZERO).await;
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
        json!({"name": "soak", "event_kinds": ["order.created"], "module_id": module,
               "url": format!("{url}/hook/0"), "config": {"threshold": 100}}),
    )
    .await;
    println!(
        "retention {keep} (delivered, failed, events), interval {}\n",
        std::env::var("WASMHOOKS_RETENTION__INTERVAL").unwrap_or_else(|_| "10s (default)".into())
    );
    println!("| elapsed | delivered | deliveries/s | p99 ms | host CPU | host RSS | data dir on disk | pruned deliveries | pruned events |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let emitted = Arc::new(AtomicUsize::new(0));
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let first_emit_us = tally.now_us();
    let emitting = async {
        emit(
            &client,
            std::slice::from_ref(&host.url),
            &tally,
            0..args.events,
            args,
            1,
            &emitted,
        )
        .await;
        let emitted_in = started.elapsed();
        all_delivered(&tally, args.events).await;
        done.store(true, Ordering::Relaxed);
        emitted_in
    };
    // Every 30 s (and at the end): the window's deliveries, their p99 and the host's CPU, then
    // what the host holds.
    let sampling = async {
        let (mut seen, mut cpu, mut at) = (0, host.cpu_seconds(), started);
        let mut next = 30;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let finished = done.load(Ordering::Relaxed);
            if started.elapsed() < Duration::from_secs(next) && !finished {
                continue;
            }
            next += 30;
            let window = {
                let latencies = tally.latencies_us.lock().unwrap();
                let mut window = latencies[seen..].to_vec();
                seen = latencies.len();
                window.sort_unstable();
                window
            };
            let (cpu_now, seconds) = (host.cpu_seconds(), at.elapsed().as_secs_f64());
            let (deliveries, events) = pruned(&client, &host.url).await;
            println!(
                "| {:.0} s | {} | {:.0}/s | {:.1} | {:.0}% | {:.0} MiB | {:.0} MiB | {deliveries} | {events} |",
                started.elapsed().as_secs_f64(),
                tally.received.load(Ordering::Relaxed),
                window.len() as f64 / seconds,
                percentile(&window, 0.99),
                (cpu_now - cpu) / seconds * 100.0,
                host.rss_mib().0,
                disk_usage(&data) as f64 / (1u64 << 20) as f64,
            );
            (cpu, at) = (cpu_now, Instant::now());
            if finished {
                break;
            }
        }
    };
    let (emitted_in, ()) = tokio::join!(emitting, sampling);
    let planned = args.events as f64 / args.rate.unwrap();
    let last_us = tally.last_receipt_us.load(Ordering::Relaxed);
    let seconds = (last_us - first_emit_us) as f64 / 1_000_000.0;
    let mut latencies = tally.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    let (_, rss_peak) = host.rss_mib();
    // Kept up: the emitters (each POST waits for its 202) stayed on schedule, and the
    // deliveries ended within a second of the last emit.
    let lag = emitted_in.as_secs_f64() - planned;
    let drained = seconds - planned;
    println!(
        "\n- {} events in {:.1} s (planned {planned:.0} s): **{:.0} deliveries/s**; p50 **{:.1} ms**, p90 {:.1} ms, p99 **{:.1} ms**, max {:.1} ms; host peak RSS {rss_peak:.0} MiB",
        args.events,
        seconds,
        args.events as f64 / seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!(
        "- kept up: **{}** (emitters {lag:+.1} s against the schedule, last delivery {drained:+.1} s after the planned end)",
        if lag < 1.0 && drained < 1.0 { "yes" } else { "no" }
    );
    host.stop();
}
