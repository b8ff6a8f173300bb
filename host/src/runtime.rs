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
mod engine;
mod evaluation;
mod host_impl;
mod output;
mod slots;
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

pub use cache::{compatibility, ArtifactCache, ArtifactRejected};
use engine::{build_engine, thread_cpu_time, Limiter, StoreData};
pub use engine::{Allocator, RuntimeOptions};
pub use evaluation::{
    size_text, Answer, Call, Cost, Evaluation, LoadError, PluginContext, PluginError, SandboxError,
    ValidationError,
};
pub use host_impl::{NoState, PluginState, StateChange};
pub use slots::QuickSlot;
use slots::{inline_slot_count, Slot, Slots};

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

impl Runtime {
    /// Builds the engine and linker.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration (unsupported CPU, for example).
    pub fn new(options: RuntimeOptions) -> Result<Runtime, SandboxError> {
        let (engine, allocator) = build_engine(&options)?;
        let mut linker = Linker::<StoreData>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(SandboxError::of)?;
        Webhook::add_to_linker::<StoreData, HasSelf<host_impl::HostState>>(&mut linker, |d| {
            &mut d.host
        })
        .map_err(SandboxError::of)?;
        let watchdog = if options.epoch {
            Some(watchdog::Watchdog::start(&engine).map_err(SandboxError::of)?)
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
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        if let Some(plugin) = self.loaded.lock().unwrap().get(id) {
            return Ok(plugin.clone());
        }
        if let Some(plugin) = self.load_artifact(id) {
            return Ok(self.remember(id.clone(), plugin));
        }
        let bytes = bytes().ok_or_else(|| LoadError::Missing(id.clone()))?;
        let plugin = self.validate(&bytes)?;
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
mod tests;
