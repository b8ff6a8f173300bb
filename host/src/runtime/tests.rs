//! Tests of the sandbox.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::examples::FORWARD;

fn options(cache: Option<ArtifactCache>) -> RuntimeOptions {
    let mut options = RuntimeOptions::new(&PluginConfig::default());
    options.cache = cache;
    options
}

fn event(payload: &str) -> wit::Event {
    wit::Event {
        id: "e1".into(),
        kind: "a".into(),
        occurred_at: 0,
        tenant: None,
        attributes: Vec::new(),
        payload: payload.into(),
    }
}

fn cache(dir: &std::path::Path, key: u8) -> ArtifactCache {
    ArtifactCache::new(&dir.join("precompiled"), [key; 32]).unwrap()
}

/// Loads `id`, counting how often the module's bytes were needed (a compile).
fn load_counting(runtime: &Runtime, id: &ModuleId, compiles: &AtomicUsize) {
    runtime
        .load(id, || {
            compiles.fetch_add(1, Ordering::SeqCst);
            Some(FORWARD.to_vec())
        })
        .unwrap();
}

#[test]
fn uploads_that_are_not_components_of_the_world_are_refused_by_kind() {
    let runtime = Runtime::new(options(None)).unwrap();
    assert_eq!(
        runtime.validate(b"hello").err(),
        Some(ValidationError::NotWasm)
    );
    let core = wat::parse_str("(module)").unwrap();
    assert_eq!(
        runtime.validate(&core).err(),
        Some(ValidationError::CoreModule)
    );
    let other = wat::parse_str("(component)").unwrap();
    assert!(matches!(
        runtime.validate(&other),
        Err(ValidationError::WrongWorld(_))
    ));
    let plugin = runtime.validate(FORWARD).unwrap();
    assert!(plugin.exports.iter().any(|e| e.contains("on-event")));
}

#[test]
fn artifacts_are_reused_across_restarts_and_never_trusted_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let id = ModuleId::for_bytes(FORWARD);
    let compiles = AtomicUsize::new(0);

    // First start: compiled at upload, artifact written.
    let first = Runtime::new(options(Some(cache(dir.path(), 1)))).unwrap();
    let plugin = first.validate(FORWARD).unwrap();
    first.insert(id.clone(), plugin);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("precompiled"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with(&format!("{id}-")), "{files:?}");
    drop(first);

    // A restart loads the artifact without the module's bytes.
    let second = Runtime::new(options(Some(cache(dir.path(), 1)))).unwrap();
    load_counting(&second, &id, &compiles);
    assert_eq!(
        compiles.load(Ordering::SeqCst),
        0,
        "deserialized, not compiled"
    );
    drop(second);

    // A host with another key (the file came from elsewhere) recompiles and replaces it.
    let stranger = Runtime::new(options(Some(cache(dir.path(), 2)))).unwrap();
    load_counting(&stranger, &id, &compiles);
    assert_eq!(compiles.load(Ordering::SeqCst), 1);
    drop(stranger);

    // A damaged artifact is recompiled, never deserialized.
    let path = std::fs::read_dir(dir.path().join("precompiled"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let damaged = Runtime::new(options(Some(cache(dir.path(), 2)))).unwrap();
    load_counting(&damaged, &id, &compiles);
    assert_eq!(compiles.load(Ordering::SeqCst), 2);
    // (The running host maps its artifacts: they are only ever replaced, not cut short.)
    drop(damaged);
    std::fs::write(&path, &bytes[..10]).unwrap();
    let truncated = Runtime::new(options(Some(cache(dir.path(), 2)))).unwrap();
    load_counting(&truncated, &id, &compiles);
    assert_eq!(compiles.load(Ordering::SeqCst), 3);

    // An engine with other settings has another compatibility hash: its own artifact.
    let mut other = options(Some(cache(dir.path(), 2)));
    other.epoch = false;
    let other = Runtime::new(other).unwrap();
    assert_ne!(other.compat, truncated.compat);
    load_counting(&other, &id, &compiles);
    assert_eq!(compiles.load(Ordering::SeqCst), 4);
    let count = std::fs::read_dir(dir.path().join("precompiled"))
        .unwrap()
        .count();
    assert_eq!(count, 2, "one artifact per engine compatibility");

    // Deleting the module deletes its artifacts.
    other.forget(&id);
    let count = std::fs::read_dir(dir.path().join("precompiled"))
        .unwrap()
        .count();
    assert_eq!(count, 0);
}

#[test]
fn evaluations_report_their_cost() {
    let mut opts = options(None);
    opts.fuel = true;
    let runtime = Runtime::new(opts).unwrap();
    assert_eq!(runtime.allocator(), Allocator::Pooling);
    let plugin = runtime.validate(FORWARD).unwrap();
    let ctx = PluginContext {
        config: Arc::from("{}"),
        state: Arc::new(NoState),
        limits: PluginLimits::default(),
    };
    let evaluation = runtime.evaluate(&plugin, ctx, Call::Event(event("{\"n\":1}")));
    assert!(evaluation.result.is_ok(), "{:?}", evaluation.result);
    let cost = &evaluation.cost;
    assert!(cost.fuel.unwrap() > 0);
    assert!(cost.peak_memory_bytes >= 64 << 10);
    assert_eq!(
        cost.output_bytes,
        "{\"n\":1}".len() + "application/json".len()
    );
    assert_eq!(cost.wall_us, cost.instantiate_us + cost.call_us);
}

#[test]
fn time_limits_end_evaluations_after_the_limit_never_before() {
    let wasm = std::fs::read(concat!(env!("PLUGIN_WASM_DIR"), "/misbehave.wasm")).unwrap();
    let runtime = Runtime::new(options(None)).unwrap();
    let plugin = runtime.validate(&wasm).unwrap();
    let evaluate = |mode: &str, ms: u64| {
        let ctx = PluginContext {
            config: Arc::from(format!("{{\"mode\":\"{mode}\"}}")),
            state: Arc::new(NoState),
            limits: PluginLimits {
                cpu_time: Duration::from_millis(ms),
                ..PluginLimits::default()
            },
        };
        let started = Instant::now();
        let result = runtime
            .evaluate(&plugin, ctx, Call::Event(event("{}")))
            .result;
        (result, started.elapsed())
    };
    // Two loops at once with different limits: each ends at its own, not the other's.
    std::thread::scope(|s| {
        let long = s.spawn(|| evaluate("loop", 400));
        let (result, took) = evaluate("loop", 20);
        assert_eq!(result.unwrap_err(), PluginError::CpuLimit(20));
        assert!(took >= Duration::from_millis(20), "{took:?}");
        let (result, took) = long.join().unwrap();
        assert_eq!(result.unwrap_err(), PluginError::CpuLimit(400));
        assert!(took >= Duration::from_millis(400), "{took:?}");
    });
    // A well-behaved evaluation afterwards is not cut short by their old deadlines.
    let (result, _) = evaluate("print", 1000);
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn only_plugins_quick_many_times_in_a_row_run_on_the_callers_thread() {
    let runtime = Runtime::new(options(None)).unwrap();
    let plugin = runtime.validate(FORWARD).unwrap();
    // A plugin just loaded has no streak yet.
    assert!(runtime.quick_slot(&plugin).is_none());
    for _ in 0..QUICK_STREAK {
        plugin.record(Duration::from_micros(30));
    }
    assert!(runtime.quick_slot(&plugin).is_some());
    // One slow evaluation, and it goes back to the blocking threads...
    plugin.record(QUICK_EVALUATION);
    assert!(runtime.quick_slot(&plugin).is_none());
    // ...until it is quick a whole streak again.
    for _ in 0..QUICK_STREAK - 1 {
        plugin.record(Duration::from_micros(30));
    }
    assert!(runtime.quick_slot(&plugin).is_none());
    plugin.record(Duration::from_micros(30));
    // At most one quick slot per core is out at once.
    let taken: Vec<_> = std::iter::from_fn(|| runtime.quick_slot(&plugin)).collect();
    assert_eq!(taken.len(), inline_slot_count());
    drop(taken);
    assert!(runtime.quick_slot(&plugin).is_some());
}

#[test]
fn sizes_read_like_people_write_them() {
    assert_eq!(size_text(512), "512 bytes");
    assert_eq!(size_text(16 << 10), "16 KiB");
    assert_eq!(size_text(32 << 20), "32 MiB");
    assert_eq!(size_text(3 << 19), "1.5 MiB");
}
