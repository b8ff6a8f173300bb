//! Sandbox benchmarks: what one plugin evaluation costs, against plain native Rust.
//!
//! `cargo bench -p wasmhooks --bench sandbox` (add `-- --quick` for a short run; `-- --profile
//! a` or `b` runs only that evaluation for 5 s, for `perf record`). Prints a Markdown table for
//! BENCHMARKS.md. Scenarios:
//!
//! - (a) a fresh-store evaluation of a small plugin (`forward`: payload in, one request out);
//! - (b) a realistic plugin (`order-threshold`): parse a 2 KB order, check conditions, build a
//!   templated JSON body;
//! - (c) the same logic as (b) as plain native Rust (the very same function), so the sandbox
//!   overhead is a ratio measured in the same run;
//! - (d) evaluations per second of (b) with every core busy;
//! - and what the time limit's epoch checks and the pooling allocator change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmhooks::config::{PluginConfig, PluginLimits};
use wasmhooks::examples::{FORWARD, ORDER_THRESHOLD};
use wasmhooks::runtime::{
    wit, Call, LoadedPlugin, NoState, PluginContext, Runtime, RuntimeOptions,
};

/// A 2 KB order like a shop would emit: line items, addresses, totals.
fn order_payload() -> String {
    let items: Vec<serde_json::Value> = (0..15)
        .map(|i| {
            serde_json::json!({
                "sku": format!("SKU-{i:05}"), "name": format!("Product number {i}"),
                "quantity": i + 1, "unit_price": 12.5 + i as f64, "tax_rate": 0.23
            })
        })
        .collect();
    let order = serde_json::json!({
        "id": "ORD-2026-000123", "amount": 250.0, "currency": "EUR", "status": "paid",
        "customer": {"id": "C-77", "email": "anna.kowalska@example.com", "name": "Anna Kowalska",
                     "phone": "+48 600 000 000"},
        "shipping_address": {"street": "ul. Długa 1", "city": "Gdańsk", "zip": "80-001",
                             "country": "PL"},
        "billing_address": {"street": "ul. Długa 1", "city": "Gdańsk", "zip": "80-001",
                            "country": "PL"},
        "items": items,
        "notes": "Leave at the reception desk, please.",
        "created_at": "2026-11-23T10:00:00Z"
    });
    let text = order.to_string();
    assert!((1800..2600).contains(&text.len()), "{} bytes", text.len());
    text
}

fn event(payload: &str) -> wit::Event {
    wit::Event {
        id: "evt_01bench".into(),
        kind: "order.created".into(),
        tenant: None,
        occurred_at: 1_795_000_000_000,
        attributes: vec![("store_id".into(), "12".into())],
        payload: payload.into(),
    }
}

fn context(config: &str) -> PluginContext {
    PluginContext {
        config: Arc::from(config),
        state: Arc::new(NoState),
        limits: PluginLimits::default(),
    }
}

fn runtime(pooling: bool, epoch: bool) -> Runtime {
    let mut options = RuntimeOptions::new(&PluginConfig::default());
    options.pooling = pooling;
    options.epoch = epoch;
    Runtime::new(options).expect("runtime")
}

/// Times of `samples` runs of `f`, after `warmup` untimed ones.
fn sample(warmup: usize, samples: usize, mut f: impl FnMut() -> Duration) -> Stats {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..samples).map(|_| f()).collect();
    times.sort();
    Stats { times }
}

struct Stats {
    times: Vec<Duration>,
}

impl Stats {
    fn at(&self, q: f64) -> Duration {
        let i = ((self.times.len() - 1) as f64 * q).round() as usize;
        self.times[i]
    }
    fn median(&self) -> Duration {
        self.at(0.5)
    }
    fn row(&self, name: &str, note: &str) -> String {
        format!(
            "| {name} | {} | {} | {} | {note} |",
            us(self.median()),
            us(self.at(0.9)),
            us(self.at(0.99)),
        )
    }
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_nanos() as f64 / 1000.0)
}

/// One evaluation, timed from the outside; checks it answered.
fn evaluate(runtime: &Runtime, plugin: &LoadedPlugin, config: &str, payload: &str) -> Duration {
    let call = Call::Event(event(payload));
    let started = Instant::now();
    let evaluation = runtime.evaluate(plugin, context(config), call);
    let took = started.elapsed();
    assert!(evaluation.result.is_ok(), "{:?}", evaluation.result);
    took
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (warmup, samples) = if quick { (200, 2_000) } else { (2_000, 20_000) };
    let payload = order_payload();
    let small_payload = r#"{"id":"o1","amount":10}"#;
    let config = r#"{"threshold":100}"#;

    let served = runtime(true, true);
    let forward = served.validate(FORWARD).expect("forward");
    let order = served.validate(ORDER_THRESHOLD).expect("order-threshold");

    // `--profile a|b`: only that evaluation, in a loop for 5 s, for a profiler to watch.
    if let Some(which) = std::env::args().skip_while(|a| a != "--profile").nth(1) {
        let (plugin, config, payload) = match which.as_str() {
            "a" => (&forward, "{}", small_payload),
            _ => (&order, config, payload.as_str()),
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            evaluate(&served, plugin, config, payload);
        }
        return;
    }

    let mut rows = Vec::new();
    let a = sample(warmup, samples, || {
        evaluate(&served, &forward, "{}", small_payload)
    });
    rows.push(a.row(
        "(a) small plugin, fresh store",
        "forward: payload → one request",
    ));
    let b = sample(warmup, samples, || {
        evaluate(&served, &order, config, &payload)
    });
    rows.push(b.row(
        "(b) realistic plugin, fresh store",
        "order-threshold on a 2 KB order",
    ));
    let c = sample(warmup, samples, || {
        let started = Instant::now();
        let outcome = order_threshold::decide(config, "evt_01bench", "order.created", &payload);
        let took = started.elapsed();
        assert!(matches!(outcome, Ok(order_threshold::Outcome::Send { .. })));
        took
    });
    rows.push(c.row(
        "(c) the same logic, native Rust",
        "same function, no sandbox",
    ));

    // Where the time of (a) and (b) goes, from the runtime's own split.
    let split = |plugin: &LoadedPlugin, config: &str, payload: &str| {
        let mut instantiate = Vec::new();
        let mut call = Vec::new();
        for _ in 0..samples / 4 {
            let e = served.evaluate(plugin, context(config), Call::Event(event(payload)));
            instantiate.push(e.cost.instantiate_ns);
            call.push(e.cost.call_ns);
        }
        instantiate.sort();
        call.sort();
        (instantiate[instantiate.len() / 2], call[call.len() / 2])
    };
    let (a_inst, a_call) = split(&forward, "{}", small_payload);
    let (b_inst, b_call) = split(&order, config, &payload);

    // The time limit's epoch checks: the same evaluations on an engine without them.
    let unchecked = runtime(true, false);
    let forward_unchecked = unchecked.validate(FORWARD).unwrap();
    let order_unchecked = unchecked.validate(ORDER_THRESHOLD).unwrap();
    let a_free = sample(warmup, samples, || {
        evaluate(&unchecked, &forward_unchecked, "{}", small_payload)
    });
    let b_free = sample(warmup, samples, || {
        evaluate(&unchecked, &order_unchecked, config, &payload)
    });
    rows.push(a_free.row("(a) without epoch checks", "time limit off"));
    rows.push(b_free.row("(b) without epoch checks", "time limit off"));

    // What the pooling allocator brings.
    let on_demand = runtime(false, true);
    let order_on_demand = on_demand.validate(ORDER_THRESHOLD).unwrap();
    let b_demand = sample(warmup, samples, || {
        evaluate(&on_demand, &order_on_demand, config, &payload)
    });
    rows.push(b_demand.row("(b) on-demand allocation", "pooling off"));

    // (d) every core evaluating (b).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let window = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let served = Arc::new(served);
    let order = Arc::new(order);
    let started = Instant::now();
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (served, order, payload) = (served.clone(), order.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while started.elapsed() < window {
                    evaluate(&served, &order, config, &payload);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let per_second = total as f64 / started.elapsed().as_secs_f64();

    let ratio = b.median().as_nanos() as f64 / c.median().as_nanos() as f64;
    let epoch_a = a.median().as_nanos() as f64 / a_free.median().as_nanos() as f64 - 1.0;
    let epoch_b = b.median().as_nanos() as f64 / b_free.median().as_nanos() as f64 - 1.0;

    println!("| scenario | median | p90 | p99 | what |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!(
        "- (b) / (c) sandbox overhead: **{ratio:.1}×** ((b) {} vs native {})",
        us(b.median()),
        us(c.median())
    );
    println!(
        "- epoch checks and limits add **{:+.1}%** to (a) and **{:+.1}%** to (b)",
        epoch_a * 100.0,
        epoch_b * 100.0
    );
    println!(
        "- where (a) goes: instantiate {:.2} µs + call {:.2} µs; (b): instantiate {:.2} µs + call {:.2} µs (medians)",
        a_inst as f64 / 1000.0,
        a_call as f64 / 1000.0,
        b_inst as f64 / 1000.0,
        b_call as f64 / 1000.0
    );
    println!(
        "- (d) all {cores} cores on (b): **{per_second:.0} evaluations/s** ({total} in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
