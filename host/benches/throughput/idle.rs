//! The `idle` scenario: stored history, a clean stop and a restart, and the idle host's
//! memory and data dir afterwards.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{call, client, upload, webhook};
use crate::args::Args;
use crate::emitter::emit;
use crate::host::Host;
use crate::progress::progress_bar;
use crate::receiver::{receiver, Tally};

/// The files of `dir` (recursively) with their allocated sizes in bytes, largest first.
fn files_on_disk(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                let name = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string();
                out.push((name, meta.blocks() * 512));
            }
        }
    }
    out.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    out
}

/// `--stored N` events delivered, a clean stop and a start on the same data: the idle
/// host's memory then, which should not grow with the history it stores.
pub(crate) async fn idle(args: &Args) {
    let tmp = tempfile::tempdir().unwrap();
    let data = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    let host = Host::start(&data);
    let client = client();
    if args.stored > 0 {
        let module = upload(
            &client,
            &host.url,
            wasmhooks::examples::ORDER_THRESHOLD.to_vec(),
            "bench",
        )
        .await;
        let tally = Tally::new(args.stored);
        let url = receiver(Some(tally.clone()), Duration::ZERO).await;
        webhook(
            &client,
            &host.url,
            json!({"name": "stored", "event_kinds": ["order.created"], "module_id": module,
                   "url": url, "config": {"threshold": 100}}),
        )
        .await;
        let emitted = Arc::new(AtomicUsize::new(0));
        let t = tally.clone();
        let bar = progress_bar(
            "storing",
            emitted.clone(),
            args.stored,
            Arc::new(move || t.received.load(Ordering::Relaxed)),
            args.stored,
        );
        let started = Instant::now();
        let emit_args = Args {
            batch: args.batch.max(1000),
            concurrency: 4,
            rate: args.rate,
            ..args.clone()
        };
        emit(
            &client,
            std::slice::from_ref(&host.url),
            &tally,
            0..args.stored,
            &emit_args,
            0,
            &emitted,
        )
        .await;
        // Every delivery ends delivered, unless its plugin run failed (a CPU limit hit
        // while the machine is busy): done when nothing has arrived for a while and none is
        // pending.
        let mut last = (0, Instant::now());
        while tally.received.load(Ordering::Relaxed) < args.stored {
            let now = tally.received.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
            if last.1.elapsed() > Duration::from_secs(10) {
                let pending = call(
                    &client,
                    client.get(format!("{}/v1/deliveries?status=pending&limit=1", host.url)),
                )
                .await;
                if pending["data"].as_array().is_some_and(Vec::is_empty) {
                    break;
                }
                assert!(
                    last.1.elapsed() < Duration::from_secs(60),
                    "deliveries stalled at {now}/{}",
                    args.stored
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bar.store(true, Ordering::Relaxed);
        let (rss_now, rss_peak) = host.rss_mib();
        println!(
            "- stored {} events in {:.1} s, {} delivered (the rest failed); host RSS {rss_now:.0} MiB now, {rss_peak:.0} MiB peak",
            args.stored,
            started.elapsed().as_secs_f64(),
            tally.received.load(Ordering::Relaxed)
        );
    }
    let stopped_in = host.terminate();
    println!(
        "- SIGTERM: the host exited in {:.2} s",
        stopped_in.as_secs_f64()
    );

    let host = Host::start(&data);
    println!(
        "- restarted: answering after {:.2} s",
        host.ready_after.as_secs_f64()
    );
    for settle in [5, 15] {
        let at = host.started + host.ready_after + Duration::from_secs(settle);
        tokio::time::sleep_until(at.into()).await;
        let (rss, _) = host.rss_mib();
        let (anon, file) = host.rss_split_mib();
        println!(
            "- idle {settle} s after it answered: **RSS {rss:.1} MiB** (anonymous {anon:.1} MiB, file-backed {file:.1} MiB)"
        );
    }
    let files = files_on_disk(&data);
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let largest: Vec<String> = files
        .iter()
        .take(4)
        .map(|(name, size)| format!("{name} {:.1} MiB", *size as f64 / 1048576.0))
        .collect();
    println!(
        "- data dir: {:.1} MiB on disk ({})",
        total as f64 / 1048576.0,
        largest.join(", ")
    );
    host.terminate();
}
