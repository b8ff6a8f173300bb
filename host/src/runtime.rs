//! The plugin sandbox: a narrow wrapper around wasmtime, set up per wasmtime's
//! fast-instantiation guidance.
//!
//! One [`Engine`] for the process, with the pooling allocator (instance slots reserved up
//! front and kept warm; falls back to on-demand allocation, with a log line, when the address
//! space is too small). A component is validated against the `webhook` world when uploaded,
//! compiled once, and its artifact kept on disk ([`ArtifactCache`]); an `InstancePre` is cached
//! per module; every evaluation gets a fresh `Store` (nothing leaks between events or
//! webhooks). WASI is linked with nothing granted: no files, no environment, no sockets;
//! stdout and stderr go to the evaluation's bounded log.
//!
//! Each evaluation runs under its webhook's [`PluginLimits`]: an epoch deadline for time
//! (kept by the `watchdog` thread, which wakes only when a running evaluation reaches its
//! limit), a resource limiter for memory, the engine's stack limit, and checks on the
//! answer's size and request count. Hitting one is a [`PluginError`] naming the limit, never a host failure.
//! Evaluations take one of a fixed number of slots (one per core by default), so a flood of
//! events queues for the CPU instead of turning into time-limit errors.
//!
//! The runtime never touches storage: configuration and state reach the plugin through
//! [`PluginContext`], and state writes come back on the [`Evaluation`].

mod cache;
mod host_impl;
mod output;
mod watchdog;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::{PluginConfig, PluginLimits};
use crate::model::{LogLine, ModuleId};

pub use cache::{compatibility, ArtifactCache};
pub use host_impl::{NoState, PluginState, StateChange};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "webhook",
});

/// Types of the WIT contract, as the host sees them.
pub mod wit {
    pub use super::wasmhooks::plugin::host::LogLevel;
    pub use super::wasmhooks::plugin::types::{
        Decision, Event, Method, Request, Response, Verdict,
    };
}

/// The world every plugin implements, as named in the WIT package.
pub const WORLD: &str = "wasmhooks:plugin/webhook@0.1.0";

/// Fuel an evaluation starts with when fuel is counted: more than any evaluation can use.
const FUEL: u64 = 1 << 62;

/// Most table elements a plugin may grow its tables to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Memory the pooling allocator keeps resident per slot between evaluations, reset with
/// `memset` instead of being unmapped and faulted in again by the next evaluation. With the
/// kernel's PAGEMAP_SCAN (Linux 6.7+) only touched pages are reset; measured here, this halves
/// an evaluation (BENCHMARKS.md); without it (older kernels) the reset falls back to `madvise`
/// beyond what is memset.
const KEEP_RESIDENT: usize = 2 << 20;

/// A byte count as people write it: `512 bytes`, `16 KiB`, `32 MiB`, `1.5 MiB`.
pub fn size_text(bytes: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            return if bytes % unit == 0 {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly component: the bytes do not start with the wasm magic number")]
    NotWasm,
    /// A core module rather than a component.
    #[error("this is a core WebAssembly module, not a component: build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)")]
    CoreModule,
    /// Wasm that does not compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A component of another world.
    #[error("component does not implement the {WORLD} world: {0}")]
    WrongWorld(String),
}

/// Why an evaluation produced no answer. The text is recorded on the delivery; each limit is
/// named the same way: `plugin exceeded <limit> <name> limit`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PluginError {
    /// The time limit was hit.
    #[error("plugin exceeded {0} ms cpu limit")]
    CpuLimit(u64),
    /// Memory growth beyond the limit.
    #[error("plugin exceeded {} memory limit", size_text(*.0))]
    MemoryLimit(usize),
    /// Stack exhausted (unbounded recursion).
    #[error("plugin exceeded {} stack limit", size_text(*.0))]
    StackLimit(usize),
    /// The answer carried more bytes than allowed.
    #[error("plugin exceeded {} output limit (its answer was {size} bytes)", size_text(*.limit))]
    OutputLimit {
        /// Bytes produced.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The decision asked for too many requests.
    #[error("plugin exceeded {limit} requests limit (it asked for {count})")]
    RequestLimit {
        /// Requests asked for.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Any other trap (a panic compiles to `unreachable`).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin returned an error.
    #[error("plugin error: {0}")]
    Returned(String),
    /// Instantiation failed.
    #[error("plugin could not start: {0}")]
    Instantiate(String),
}

impl PluginError {
    /// The name of the limit this error is about, if any: `cpu`, `memory`, `stack`, `output`
    /// or `requests`.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            PluginError::CpuLimit(_) => Some("cpu"),
            PluginError::MemoryLimit(_) => Some("memory"),
            PluginError::StackLimit(_) => Some("stack"),
            PluginError::OutputLimit { .. } => Some("output"),
            PluginError::RequestLimit { .. } => Some("requests"),
            _ => None,
        }
    }
}

/// What the plugin is called with.
pub enum Call {
    /// One event.
    Event(wit::Event),
    /// A batch of events.
    Batch(Vec<wit::Event>),
    /// A response to judge.
    Response(wit::Response),
}

/// What the plugin answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A decision (for events and batches).
    Decision(wit::Decision),
    /// A verdict (for responses).
    Verdict(wit::Verdict),
}

/// What one evaluation cost, against its limits.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Cost {
    /// Creating the instance, in microseconds.
    pub instantiate_us: u64,
    /// The call into it, in microseconds.
    pub call_us: u64,
    /// Both, which is what the cpu limit bounds.
    pub wall_us: u64,
    /// Fuel consumed (roughly wasm instructions), when the runtime counts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// The most linear memory the plugin had at once, in bytes.
    pub peak_memory_bytes: usize,
    /// Bytes of the answer, as counted by the output limit.
    pub output_bytes: usize,
    /// Log bytes kept.
    pub log_bytes: usize,
    /// Log bytes dropped by the log limit.
    pub log_dropped_bytes: usize,
    /// Instantiation, in nanoseconds (for benchmarks).
    #[serde(skip)]
    pub instantiate_ns: u64,
    /// The call, in nanoseconds (for benchmarks).
    #[serde(skip)]
    pub call_ns: u64,
}

/// The outcome of one evaluation: the answer or the error, plus everything logged.
#[derive(Debug)]
pub struct Evaluation {
    /// The answer, or why there is none.
    pub result: Result<Answer, PluginError>,
    /// Log lines and printed output, bounded by the log limit.
    pub logs: Vec<LogLine>,
    /// State writes, to commit when there is an answer.
    pub state_changes: Vec<StateChange>,
    /// What it cost.
    pub cost: Cost,
}

/// What a plugin may see of its webhook during one evaluation, and its limits.
#[derive(Clone)]
pub struct PluginContext {
    /// The webhook's configuration JSON.
    pub config: Arc<str>,
    /// The webhook's persistent state, as it was.
    pub state: Arc<dyn PluginState>,
    /// The limits this evaluation runs under.
    pub limits: PluginLimits,
}

/// A compiled module ready to instantiate.
pub struct LoadedPlugin {
    component: Component,
    pre: WebhookPre<StoreData>,
    /// Features the plugin reported at load.
    pub features: Vec<String>,
    /// Names the component exports.
    pub exports: Vec<String>,
    /// How many evaluations in a row used less than [`QUICK_EVALUATION`] of CPU.
    quick_streak: std::sync::atomic::AtomicU32,
}

/// An evaluation this short may run on the caller's (async) thread. Judged by the CPU time
/// the evaluating thread used, not wall time: on a busy machine a thread is sometimes
/// descheduled mid-evaluation, and that says nothing about the plugin.
pub const QUICK_EVALUATION: Duration = Duration::from_millis(1);
/// How many quick evaluations in a row make a plugin run on the caller's thread.
pub const QUICK_STREAK: u32 = 32;

impl LoadedPlugin {
    /// Whether the plugin's last [`QUICK_STREAK`] evaluations each used less than
    /// [`QUICK_EVALUATION`] of CPU, so the next one may run where it is asked for.
    pub fn is_quick(&self) -> bool {
        self.quick_streak.load(std::sync::atomic::Ordering::Relaxed) >= QUICK_STREAK
    }

    /// Counts an evaluation's CPU time towards (or against) the quick streak.
    fn record(&self, cpu: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        if cpu < QUICK_EVALUATION {
            let _ = self
                .quick_streak
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(1)));
        } else {
            self.quick_streak.store(0, Relaxed);
        }
    }

    /// Whether the plugin wants `on-response` calls.
    pub fn has_response_hook(&self) -> bool {
        self.features.iter().any(|f| f == "response-hook")
    }
}

/// Per-evaluation store data.
struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    host: host_impl::HostState,
    /// The cpu limit, for the error that names it.
    cpu_ms: u64,
    /// The time limit's watch, ended with the store.
    _deadline: Option<watchdog::Armed>,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Bounds the memory of all of a plugin's memories together, and remembers the peak.
struct Limiter {
    limit: usize,
    total: usize,
    peak: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.limit {
            // Trapping (rather than failing the grow) ends a memory bomb at once, with a
            // named error instead of whatever the guest's allocator does on failure.
            self.hit = true;
            return Err(wasmtime::Error::msg("memory limit"));
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// wasmtime's pooling allocator.
    Pooling,
    /// Allocated on demand (the address space was too small for the pool, or it was off).
    OnDemand,
}

/// How to build a [`Runtime`].
pub struct RuntimeOptions {
    /// Limits for evaluations that have no webhook (probing a module at load).
    pub limits: PluginLimits,
    /// The most memory any evaluation may have: the size of a pool slot.
    pub max_memory_bytes: usize,
    /// The engine's wasm stack limit.
    pub stack_bytes: usize,
    /// Evaluations at once.
    pub concurrency: usize,
    /// Try the pooling allocator.
    pub pooling: bool,
    /// Where compiled artifacts are kept.
    pub cache: Option<ArtifactCache>,
    /// Count fuel (for `plugin run`'s cost report; costs time, so off for serving).
    pub fuel: bool,
    /// Interrupt evaluations at their time limit. Off only in benchmarks that measure what
    /// it costs.
    pub epoch: bool,
}

impl RuntimeOptions {
    /// Options from the host's settings, without an artifact cache.
    pub fn new(config: &PluginConfig) -> RuntimeOptions {
        RuntimeOptions {
            limits: config.limits.clone(),
            max_memory_bytes: config.max_limits.memory_bytes,
            stack_bytes: config.stack_bytes,
            concurrency: config.concurrency(),
            pooling: config.pooling,
            cache: None,
            fuel: false,
            epoch: true,
        }
    }
}

/// A counting semaphore for evaluations (they run on blocking threads).
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

/// A slot for a quick evaluation on an async thread ([`Runtime::quick_slot`]).
pub struct QuickSlot<'a>(Slot<'a>);

impl Slots {
    fn try_take(&self) -> Option<Slot<'_>> {
        let mut free = self.free.lock().unwrap();
        if *free == 0 {
            return None;
        }
        *free -= 1;
        Some(Slot(self))
    }

    fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.freed.notify_one();
    }
}

/// The sandbox: engine, linker and the cache of loaded modules.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreData>,
    limits: PluginLimits,
    allocator: Allocator,
    compat: String,
    cache: Option<ArtifactCache>,
    fuel: bool,
    stack_bytes: usize,
    slots: Slots,
    slot_count: usize,
    /// Slots for quick evaluations on async threads ([`Runtime::evaluate_quick`]): one
    /// per core, the most such threads there are, beside `slots` so a full `slots` never
    /// sends quick calls back to the blocking pool.
    inline: Slots,
    loaded: Mutex<HashMap<ModuleId, Arc<LoadedPlugin>>>,
    /// Ends evaluations past their time limit (when epoch interruption is on).
    watchdog: Option<watchdog::Watchdog>,
}

/// The CPU time the calling thread has used, where the platform tells.
fn thread_cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        (rc == 0).then(|| {
            Duration::new(
                u64::try_from(now.tv_sec).unwrap_or(0),
                u32::try_from(now.tv_nsec).unwrap_or(0),
            )
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Slots for evaluations on async threads: one per core (the async runtime's thread count).
fn inline_slot_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn engine_config(options: &RuntimeOptions) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(options.epoch);
    config.consume_fuel(options.fuel);
    config.max_wasm_stack(options.stack_bytes);
    config
}

/// The engine: pooled when asked and possible, otherwise on demand with memories reserved
/// only as large as the memory ceiling (bounds-checked, so a small address space suffices).
fn build_engine(options: &RuntimeOptions) -> anyhow::Result<(Engine, Allocator)> {
    if options.pooling {
        let slots =
            u32::try_from(options.concurrency + inline_slot_count() + 2).unwrap_or(u32::MAX);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 32)
            .total_memories(slots * 4)
            .total_tables(slots * 16)
            .total_stacks(0)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(options.max_memory_bytes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = engine_config(options);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, Allocator::Pooling)),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "the pooling allocator is unavailable (is the address space limited?); \
                 allocating plugin instances on demand"
            ),
        }
    }
    let mut config = engine_config(options);
    let reservation = options.max_memory_bytes.next_multiple_of(64 << 10) as u64;
    config
        .memory_reservation(reservation)
        .memory_reservation_for_growth(0)
        .memory_guard_size(64 << 10);
    Ok((Engine::new(&config)?, Allocator::OnDemand))
}

impl Runtime {
    /// Builds the engine and linker.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration (unsupported CPU, for example).
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Runtime> {
        let (engine, allocator) = build_engine(&options)?;
        let mut linker = Linker::<StoreData>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Webhook::add_to_linker::<StoreData, HasSelf<host_impl::HostState>>(&mut linker, |d| {
            &mut d.host
        })?;
        let watchdog = if options.epoch {
            Some(watchdog::Watchdog::start(&engine)?)
        } else {
            None
        };
        let compat = compatibility(&engine);
        Ok(Runtime {
            engine,
            linker,
            limits: options.limits,
            allocator,
            compat,
            cache: options.cache,
            fuel: options.fuel,
            stack_bytes: options.stack_bytes,
            slots: Slots {
                free: Mutex::new(options.concurrency.max(1)),
                freed: Condvar::new(),
            },
            slot_count: options.concurrency.max(1),
            inline: Slots {
                free: Mutex::new(inline_slot_count()),
                freed: Condvar::new(),
            },
            loaded: Mutex::new(HashMap::new()),
            watchdog,
        })
    }

    /// The default limits.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// How instances are allocated.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// Evaluations that may run at once.
    pub fn slots(&self) -> usize {
        self.slot_count
    }

    /// Compiles and checks a component against the world, and asks it for its features.
    ///
    /// # Errors
    /// [`ValidationError`] saying whether the bytes are not wasm, a core module, invalid, or a
    /// component of another world.
    pub fn validate(&self, bytes: &[u8]) -> Result<LoadedPlugin, ValidationError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(ValidationError::NotWasm);
        }
        // Core modules have version 1; components have layer 1 in bytes 6..8.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(ValidationError::CoreModule);
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| ValidationError::Invalid(format!("{e:#}")))?;
        self.prepare(component)
    }

    /// Links a compiled component against the host's imports and the world's exports.
    fn link(&self, component: &Component) -> Result<WebhookPre<StoreData>, ValidationError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| ValidationError::WrongWorld(format!("{e:#}")))?;
        WebhookPre::new(pre).map_err(|e| ValidationError::WrongWorld(format!("{e:#}")))
    }

    /// Links a compiled component and probes its features.
    fn prepare(&self, component: Component) -> Result<LoadedPlugin, ValidationError> {
        let pre = self.link(&component)?;
        let exports = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let mut plugin = LoadedPlugin {
            component,
            pre,
            features: Vec::new(),
            exports,
            quick_streak: Default::default(),
        };
        plugin.features = self
            .features(&plugin)
            .map_err(|e| ValidationError::Invalid(format!("calling `features` failed: {e}")))?;
        Ok(plugin)
    }

    /// The loaded plugin for a module: from memory, else from its artifact on disk, else
    /// compiled from `bytes` (and the artifact written).
    ///
    /// # Errors
    /// When the bytes no longer validate (they did at upload, so this means a corrupt store).
    pub fn load(
        &self,
        id: &ModuleId,
        bytes: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<Arc<LoadedPlugin>, String> {
        if let Some(plugin) = self.loaded.lock().unwrap().get(id) {
            return Ok(plugin.clone());
        }
        if let Some(plugin) = self.load_artifact(id) {
            return Ok(self.remember(id.clone(), plugin));
        }
        let bytes = bytes().ok_or_else(|| format!("module {id} is not stored"))?;
        let plugin = self.validate(&bytes).map_err(|e| e.to_string())?;
        Ok(self.insert(id.clone(), plugin))
    }

    fn load_artifact(&self, id: &ModuleId) -> Option<LoadedPlugin> {
        let component = self.map_artifact(id)?;
        match self.prepare(component) {
            Ok(plugin) => Some(plugin),
            Err(e) => {
                tracing::warn!(module = %id, error = %e, "compiled artifact unusable; recompiling");
                None
            }
        }
    }

    /// The module's compiled artifact, mapped from its file (see [`ArtifactCache`]) when this
    /// host wrote one for this engine.
    fn map_artifact(&self, id: &ModuleId) -> Option<Component> {
        let cache = self.cache.as_ref()?;
        let path = match cache.verified(id, &self.compat) {
            Ok(found) => found?,
            Err(why) => {
                tracing::warn!(module = %id, "ignoring a compiled artifact: {why}; recompiling");
                return None;
            }
        };
        // SAFETY: the file was authenticated as written by this host, from a component this
        // engine's settings compiled, and is only ever replaced by rename, never modified in
        // place; wasmtime checks the engine compatibility again.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(module = %id, error = format!("{e:#}"), "compiled artifact unusable; recompiling");
                None
            }
        }
    }

    fn remember(&self, id: ModuleId, plugin: LoadedPlugin) -> Arc<LoadedPlugin> {
        let plugin = Arc::new(plugin);
        self.loaded.lock().unwrap().insert(id, plugin.clone());
        plugin
    }

    /// Keeps a validated plugin in memory and its artifact on disk (after upload). Once the
    /// artifact is written, the plugin runs from its mapped file instead of the freshly
    /// compiled copy, as it will after a restart: only the code it runs stays resident.
    pub fn insert(&self, id: ModuleId, mut plugin: LoadedPlugin) -> Arc<LoadedPlugin> {
        if let Some(cache) = &self.cache {
            let written = plugin
                .component
                .serialize()
                .map_err(|e| format!("{e:#}"))
                .and_then(|artifact| {
                    cache
                        .write(&id, &self.compat, &artifact)
                        .map_err(|e| e.to_string())
                });
            match written {
                Ok(()) => {
                    let mapped = self.map_artifact(&id).and_then(|component| {
                        let pre = self.link(&component).ok()?;
                        Some((component, pre))
                    });
                    if let Some((component, pre)) = mapped {
                        plugin.component = component;
                        plugin.pre = pre;
                    }
                }
                Err(e) => {
                    tracing::warn!(module = %id, error = %e, "could not keep the compiled artifact; it will be compiled again after a restart")
                }
            }
        }
        self.remember(id, plugin)
    }

    /// Drops a module from memory and disk (after it was deleted).
    pub fn forget(&self, id: &ModuleId) {
        self.loaded.lock().unwrap().remove(id);
        if let Some(cache) = &self.cache {
            cache.remove(id);
        }
    }

    fn features(&self, plugin: &LoadedPlugin) -> Result<Vec<String>, PluginError> {
        let ctx = PluginContext {
            config: Arc::from("{}"),
            state: Arc::new(NoState),
            limits: self.limits.clone(),
        };
        let _slot = self.slots.take();
        let mut store = self.new_store(&ctx);
        let bindings = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(e, &store))?;
        bindings
            .call_features(&mut store)
            .map_err(|e| self.classify(e, &store))
    }

    fn new_store(&self, ctx: &PluginContext) -> Store<StoreData> {
        let log = output::LogSink::new(ctx.limits.log_bytes);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(log.pipe(output::Stream::Stdout))
            .stderr(log.pipe(output::Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let data = StoreData {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                limit: ctx.limits.memory_bytes,
                total: 0,
                peak: 0,
                hit: false,
            },
            host: host_impl::HostState::new(ctx, log),
            cpu_ms: ctx.limits.cpu_time.as_millis() as u64,
            _deadline: None,
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|d| &mut d.limiter);
        if let Some(watchdog) = &self.watchdog {
            let deadline = Instant::now() + ctx.limits.cpu_time;
            store.data_mut()._deadline = Some(watchdog.guard(&mut store, deadline));
        }
        if self.fuel {
            store.set_fuel(FUEL).expect("fuel is enabled");
        }
        store
    }

    /// Runs one call in a fresh instance of `plugin`, waiting for a free slot first.
    pub fn evaluate(&self, plugin: &LoadedPlugin, ctx: PluginContext, call: Call) -> Evaluation {
        let slot = self.slots.take();
        self.evaluate_in(slot, plugin, ctx, call)
    }

    /// A slot for running `plugin` now, on this (async) thread, with
    /// [`Runtime::evaluate_quick`]: given when the plugin has proven quick (see
    /// [`LoadedPlugin::is_quick`]) and one of the per-core quick slots is free. Otherwise the
    /// call belongs on a thread that may block ([`Runtime::evaluate`]).
    ///
    /// This saves an async caller the hand-over to a blocking thread and back, which costs
    /// more than a quick evaluation itself. A plugin that turns slow holds its caller's
    /// thread once, for at most its time limit, and then runs on blocking threads again
    /// until it is quick [`QUICK_STREAK`] times in a row.
    pub fn quick_slot(&self, plugin: &LoadedPlugin) -> Option<QuickSlot<'_>> {
        if !plugin.is_quick() {
            return None;
        }
        self.inline.try_take().map(QuickSlot)
    }

    /// Runs one call in a fresh instance of `plugin` in a slot from [`Runtime::quick_slot`].
    pub fn evaluate_quick(
        &self,
        slot: QuickSlot<'_>,
        plugin: &LoadedPlugin,
        ctx: PluginContext,
        call: Call,
    ) -> Evaluation {
        self.evaluate_in(slot.0, plugin, ctx, call)
    }

    fn evaluate_in(
        &self,
        _slot: Slot<'_>,
        plugin: &LoadedPlugin,
        ctx: PluginContext,
        call: Call,
    ) -> Evaluation {
        let started = Instant::now();
        let cpu_started = thread_cpu_time();
        let mut store = self.new_store(&ctx);
        let mut cost = Cost::default();
        let result = match plugin.pre.instantiate(&mut store) {
            Err(e) => Err(self.classify(e, &store)),
            Ok(bindings) => {
                cost.instantiate_ns = started.elapsed().as_nanos() as u64;
                match call {
                    Call::Event(event) => bindings
                        .call_on_event(&mut store, &event)
                        .map_err(|e| self.classify(e, &store))
                        .and_then(|r| r.map_err(PluginError::Returned))
                        .and_then(|d| self.check_decision(d, &ctx.limits, &mut cost)),
                    Call::Batch(events) => bindings
                        .call_on_batch(&mut store, &events)
                        .map_err(|e| self.classify(e, &store))
                        .and_then(|r| r.map_err(PluginError::Returned))
                        .and_then(|d| self.check_decision(d, &ctx.limits, &mut cost)),
                    Call::Response(response) => bindings
                        .call_on_response(&mut store, &response)
                        .map_err(|e| self.classify(e, &store))
                        .and_then(|v| self.check_verdict(v, &ctx.limits, &mut cost)),
                }
            }
        };
        let elapsed = started.elapsed();
        plugin.record(match (cpu_started, thread_cpu_time()) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => elapsed,
        });
        let wall = elapsed.as_nanos() as u64;
        cost.call_ns = wall.saturating_sub(cost.instantiate_ns);
        cost.instantiate_us = cost.instantiate_ns / 1000;
        cost.call_us = cost.call_ns / 1000;
        cost.wall_us = cost.instantiate_us + cost.call_us;
        // Fuel is counted in registers and written back at calls and returns, so after an
        // interrupt the count is short; only a finished evaluation reports it.
        if self.fuel && !matches!(result, Err(PluginError::CpuLimit(_))) {
            cost.fuel = store.get_fuel().ok().map(|left| FUEL - left);
        }
        let data = store.data_mut();
        cost.peak_memory_bytes = data.limiter.peak;
        let state_changes = data.host.take_changes();
        let log = data.host.log.finish();
        cost.log_bytes = log.used;
        cost.log_dropped_bytes = log.dropped;
        drop(store);
        Evaluation {
            result,
            logs: log.lines,
            state_changes,
            cost,
        }
    }

    fn check_decision(
        &self,
        decision: wit::Decision,
        limits: &PluginLimits,
        cost: &mut Cost,
    ) -> Result<Answer, PluginError> {
        if let wit::Decision::Send(requests) = &decision {
            if requests.len() > limits.requests {
                return Err(PluginError::RequestLimit {
                    count: requests.len(),
                    limit: limits.requests,
                });
            }
            cost.output_bytes = requests
                .iter()
                .map(|r| {
                    r.body.as_ref().map_or(0, Vec::len)
                        + r.path.as_ref().map_or(0, String::len)
                        + r.content_type.as_ref().map_or(0, String::len)
                        + r.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>()
                })
                .sum();
        } else if let wit::Decision::Skip(reason) = &decision {
            cost.output_bytes = reason.len();
        }
        if cost.output_bytes > limits.output_bytes {
            return Err(PluginError::OutputLimit {
                size: cost.output_bytes,
                limit: limits.output_bytes,
            });
        }
        Ok(Answer::Decision(decision))
    }

    fn check_verdict(
        &self,
        verdict: wit::Verdict,
        limits: &PluginLimits,
        cost: &mut Cost,
    ) -> Result<Answer, PluginError> {
        cost.output_bytes = match &verdict {
            wit::Verdict::Success(value) => value.as_ref().map_or(0, String::len),
            wit::Verdict::Retry(why) | wit::Verdict::Fail(why) => why.len(),
            wit::Verdict::UseDefault => 0,
        };
        if cost.output_bytes > limits.output_bytes {
            return Err(PluginError::OutputLimit {
                size: cost.output_bytes,
                limit: limits.output_bytes,
            });
        }
        Ok(Answer::Verdict(verdict))
    }

    fn classify(&self, err: wasmtime::Error, store: &Store<StoreData>) -> PluginError {
        let data = store.data();
        if data.limiter.hit {
            return PluginError::MemoryLimit(data.limiter.limit);
        }
        if let Some(trap) = err.downcast_ref::<Trap>() {
            return match trap {
                Trap::Interrupt => PluginError::CpuLimit(data.cpu_ms),
                Trap::StackOverflow => PluginError::StackLimit(self.stack_bytes),
                other => PluginError::Trap(other.to_string()),
            };
        }
        PluginError::Trap(format!("{err:#}"))
    }
}

#[cfg(test)]
mod tests {
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
}
