//! One measured run of flat, rate, slow or scale: fresh hosts and webhooks, the events
//! emitted, and the wait until every delivery arrived.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{call, client, module_variant, upload, webhook};
use crate::args::Args;
use crate::emitter::emit;
use crate::host::Host;
use crate::postgres::Postgres;
use crate::progress::progress_bar;
use crate::receiver::{all_delivered, receiver, Tally};
use crate::report::{percentile, Run};

/// A webhook beside the measured ones, on a receiver of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extra {
    None,
    /// Answers at once (the baseline for `Slow`: the same work per event).
    Fast,
    /// Answers after 2 s.
    Slow,
}

/// One measured run: fresh hosts (`--hosts`, on a fresh database with `--postgres`),
/// `webhooks` fast webhooks (plus an extra one if asked) made through the first, the events
/// spread over the hosts, until every delivery of the fast webhooks arrived.
pub(crate) async fn run(
    args: &Args,
    postgres: Option<&Postgres>,
    extra: Extra,
    shops: usize,
    modules: usize,
) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let (database, settings) = match postgres {
        Some(postgres) => {
            let (name, settings) = postgres.database();
            (Some(name), settings)
        }
        None => (None, Vec::new()),
    };
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hosts: Vec<Host> = (0..args.hosts)
        .map(|i| Host::start_with(&tmp.path().join(format!("data-{i}")), &settings))
        .collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let host = &urls[0];
    let tally = Tally::new(args.events);
    let fast = receiver(Some(tally.clone()), Duration::ZERO).await;
    let extra_url = match extra {
        Extra::Slow => receiver(None, Duration::from_secs(2)).await,
        Extra::None | Extra::Fast => receiver(None, Duration::ZERO).await,
    };
    let client = client();
    let plugin = wasmhooks::examples::ORDER_THRESHOLD;
    let mut module_ids = Vec::new();
    for m in 0..modules.max(1) {
        let bytes = if modules > 1 {
            module_variant(plugin, m as u32)
        } else {
            plugin.to_vec()
        };
        module_ids.push(upload(&client, host, bytes, &format!("bench-{m}")).await);
    }
    for w in 0..args.webhooks {
        let mut definition = json!({
            "name": format!("bench-{w}"), "event_kinds": ["order.created"],
            "module_id": module_ids[w % module_ids.len()], "url": format!("{fast}/hook/{w}"),
            "config": {"threshold": 100}
        });
        if shops > 1 {
            definition["scope"] = json!({"shop": [w.to_string()]});
        }
        webhook(&client, host, definition).await;
    }
    if extra != Extra::None {
        webhook(
            &client,
            host,
            json!({"name": "extra", "event_kinds": ["order.created"], "module_id": module_ids[0],
                   "url": extra_url, "config": {"threshold": 100}, "timeout": "10s"}),
        )
        .await;
    }
    if urls.len() > 1 {
        let webhooks = args.webhooks + usize::from(extra != Extra::None);
        wait_until_routed(&client, &urls, webhooks).await;
    }
    let expected = if shops > 1 {
        args.events
    } else {
        args.events * args.webhooks
    };
    let emitted = Arc::new(AtomicUsize::new(0));
    let t = tally.clone();
    let bar = progress_bar(
        match extra {
            Extra::None => "run",
            Extra::Fast => "with a second fast receiver",
            Extra::Slow => "with a slow receiver",
        },
        emitted.clone(),
        args.events,
        Arc::new(move || t.received.load(Ordering::Relaxed)),
        expected,
    );
    let counted = match (postgres, &database) {
        (Some(postgres), Some(database)) => Some(postgres.begin_count(database)),
        _ => None,
    };
    let cpu_before: Vec<f64> = hosts.iter().map(Host::cpu_seconds).collect();
    let first_emit_us = tally.now_us();
    emit(
        &client,
        &urls,
        &tally,
        0..args.events,
        args,
        shops,
        &emitted,
    )
    .await;
    all_delivered(&tally, expected).await;
    bar.store(true, Ordering::Relaxed);
    let seconds =
        (tally.last_receipt_us.load(Ordering::Relaxed) - first_emit_us) as f64 / 1_000_000.0;
    let database_cpu = postgres.map(Postgres::cpu_seconds);
    let hosts_used: Vec<(f64, f64)> = hosts
        .iter()
        .zip(cpu_before)
        .map(|(host, before)| (host.cpu_seconds() - before, host.rss_mib().1))
        .collect();
    let mut latencies = tally.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    std::thread::sleep(Duration::from_millis(300));
    // Once every delivery's outcome is written (so that its work is all counted), what
    // PostgreSQL was sent.
    let ended = match (postgres, database_cpu) {
        (Some(postgres), Some(cpu)) => {
            no_pending(&client, host).await;
            Some((cpu, postgres.requests()))
        }
        _ => None,
    };
    for host in hosts {
        host.stop();
    }
    let database = match (postgres, database, counted, ended) {
        (Some(postgres), Some(name), Some(begun), Some((cpu, requests))) => {
            Some(postgres.work(&name, begun, cpu, requests))
        }
        _ => None,
    };
    Run {
        deliveries: expected,
        seconds,
        p50: percentile(&latencies, 0.5),
        p90: percentile(&latencies, 0.9),
        p99: percentile(&latencies, 0.99),
        max: percentile(&latencies, 1.0),
        hosts: hosts_used,
        database,
    }
}

/// Waits until every host routes events to the `webhooks` webhooks made through the first
/// (another host learns of them within about a second): emits a probe event to each host
/// until that host makes a delivery of it for each webhook, then waits until those are
/// evaluated (by a host that compiles the plugin first if it has not yet). A probe's amount is
/// below the plugin's threshold, so its deliveries are skipped, never sent.
async fn wait_until_routed(client: &reqwest::Client, hosts: &[String], webhooks: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = webhooks.clamp(1, 250);
    for (h, host) in hosts.iter().enumerate() {
        let mut attempt = 0;
        loop {
            let id = format!("probe-{h}-{attempt}");
            attempt += 1;
            call(
                client,
                client.post(format!("{host}/v1/events")).json(&json!({
                    "id": id, "kind": "order.created", "attributes": {"shop": "0"},
                    "payload": {"id": "PROBE", "amount": 0.0}
                })),
            )
            .await;
            let listing = format!("{host}/v1/deliveries?event_id={id}&limit={expected}");
            let (routed, evaluated) = loop {
                let listed = call(client, client.get(&listing)).await;
                let deliveries = listed["data"].as_array().cloned().unwrap_or_default();
                let evaluated = deliveries.iter().all(|d| d["status"] != "pending");
                if deliveries.len() < expected || evaluated || Instant::now() > deadline {
                    break (deliveries.len(), evaluated);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if routed >= expected && evaluated {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after 60 s, host {} routes events to {routed} of the {expected} webhooks{}",
                h + 1,
                if evaluated { "" } else { ", not all evaluated" }
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits (up to 10 s) until `host` lists no pending delivery.
async fn no_pending(client: &reqwest::Client, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pending = call(
            client,
            client.get(format!("{host}/v1/deliveries?status=pending&limit=1")),
        )
        .await;
        if pending["data"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
