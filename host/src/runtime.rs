//! The plugin sandbox: a narrow wrapper around wasmtime.
//!
//! One [`Engine`] for the process; a component is validated against the `webhook` world when
//! uploaded; an `InstancePre` is cached per module; every evaluation gets a fresh `Store`
//! (nothing leaks between events or webhooks). WASI is linked with nothing granted: no files,
//! no environment, no sockets; stdout and stderr go to the evaluation's log. An epoch deadline
//! bounds time and `StoreLimits` bound memory; hitting either is a [`PluginError`] naming the
//! limit, never a host failure.
//!
//! The runtime never touches storage: configuration and state reach the plugin through
//! [`PluginContext`], which the pipeline fills from the store.

mod host_impl;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::PluginLimits;
use crate::model::{LogLine, ModuleId};

pub use host_impl::PluginState;

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

/// Epoch ticks per second: the granularity of the time limit.
const EPOCH_TICK: Duration = Duration::from_millis(1);

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

/// Why an evaluation produced no decision. The text is recorded on the delivery.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PluginError {
    /// The time limit was hit.
    #[error("plugin exceeded its {0} ms time limit")]
    TimeLimit(u64),
    /// Memory growth beyond the limit.
    #[error("plugin exceeded its {0} MiB memory limit")]
    MemoryLimit(usize),
    /// Stack exhausted (unbounded recursion).
    #[error("plugin exceeded its stack limit")]
    StackLimit,
    /// The decision carried more bytes than allowed.
    #[error("plugin output of {size} bytes exceeds the {limit} byte limit")]
    OutputLimit {
        /// Bytes produced.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The decision asked for too many requests.
    #[error("plugin asked for {count} requests; the limit is {limit}")]
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

/// The outcome of one evaluation: the answer or the error, plus everything logged.
#[derive(Debug)]
pub struct Evaluation {
    /// The answer, or why there is none.
    pub result: Result<Answer, PluginError>,
    /// Log lines and printed output, bounded by the log limit.
    pub logs: Vec<LogLine>,
    /// Wall time of the whole evaluation (instantiation included).
    pub elapsed: Duration,
}

/// What a plugin may see of its webhook during one evaluation.
pub struct PluginContext {
    /// The webhook's configuration JSON.
    pub config: Arc<str>,
    /// The webhook's persistent state.
    pub state: Arc<dyn PluginState>,
}

/// A compiled module ready to instantiate.
pub struct LoadedPlugin {
    pre: WebhookPre<StoreData>,
    /// Features the plugin reported at load.
    pub features: Vec<String>,
    /// Names the component exports.
    pub exports: Vec<String>,
}

impl LoadedPlugin {
    /// Whether the plugin wants `on-response` calls.
    pub fn has_response_hook(&self) -> bool {
        self.features.iter().any(|f| f == "response-hook")
    }
}

/// Per-evaluation store data.
struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    host: host_impl::HostState,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The sandbox: engine, linker and the cache of loaded modules.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreData>,
    limits: PluginLimits,
    loaded: Mutex<HashMap<ModuleId, Arc<LoadedPlugin>>>,
    _ticker: EpochTicker,
}

/// Advances the engine's epoch on a fixed tick until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and linker.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration (unsupported CPU, for example).
    pub fn new(limits: PluginLimits) -> anyhow::Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 << 10);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<StoreData>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Webhook::add_to_linker::<StoreData, HasSelf<host_impl::HostState>>(&mut linker, |d| {
            &mut d.host
        })?;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("wasmhooks-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        Ok(Runtime {
            engine,
            linker,
            limits,
            loaded: Mutex::new(HashMap::new()),
            _ticker: EpochTicker { stop },
        })
    }

    /// The limits every evaluation runs under.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
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
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ValidationError::WrongWorld(format!("{e:#}")))?;
        let pre =
            WebhookPre::new(pre).map_err(|e| ValidationError::WrongWorld(format!("{e:#}")))?;
        let exports = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let mut plugin = LoadedPlugin {
            pre,
            features: Vec::new(),
            exports,
        };
        plugin.features = self
            .features(&plugin)
            .map_err(|e| ValidationError::Invalid(format!("calling `features` failed: {e}")))?;
        Ok(plugin)
    }

    /// The loaded plugin for a module, compiling `bytes` on first use.
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
        let bytes = bytes().ok_or_else(|| format!("module {id} is not stored"))?;
        let plugin = Arc::new(self.validate(&bytes).map_err(|e| e.to_string())?);
        self.loaded
            .lock()
            .unwrap()
            .insert(id.clone(), plugin.clone());
        Ok(plugin)
    }

    /// Keeps an already validated plugin in the cache (after upload).
    pub fn insert(&self, id: ModuleId, plugin: LoadedPlugin) -> Arc<LoadedPlugin> {
        let plugin = Arc::new(plugin);
        self.loaded.lock().unwrap().insert(id, plugin.clone());
        plugin
    }

    /// Drops a module from the cache (after it was deleted).
    pub fn forget(&self, id: &ModuleId) {
        self.loaded.lock().unwrap().remove(id);
    }

    fn features(&self, plugin: &LoadedPlugin) -> Result<Vec<String>, PluginError> {
        let ctx = PluginContext {
            config: Arc::from("{}"),
            state: Arc::new(host_impl::NoState),
        };
        let (mut store, _out) = self.new_store(ctx);
        let bindings = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        bindings
            .call_features(&mut store)
            .map_err(|e| self.classify(e))
    }

    fn new_store(&self, ctx: PluginContext) -> (Store<StoreData>, MemoryOutputPipe) {
        let output = MemoryOutputPipe::new(self.limits.max_log_bytes);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let data = StoreData {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            host: host_impl::HostState::new(
                ctx,
                self.limits.max_log_bytes,
                self.limits.max_state_bytes,
            ),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|d| &mut d.limits);
        let ticks =
            self.limits.time_limit.as_millis().max(1) as u64 / EPOCH_TICK.as_millis() as u64;
        store.set_epoch_deadline(ticks.max(1));
        (store, output)
    }

    /// Runs one call in a fresh instance of `plugin`.
    pub fn evaluate(&self, plugin: &LoadedPlugin, ctx: PluginContext, call: Call) -> Evaluation {
        let started = Instant::now();
        let (mut store, output) = self.new_store(ctx);
        let result = match plugin.pre.instantiate(&mut store) {
            Err(e) => Err(self.classify(e)),
            Ok(bindings) => match call {
                Call::Event(event) => bindings
                    .call_on_event(&mut store, &event)
                    .map_err(|e| self.classify(e))
                    .and_then(|r| r.map_err(PluginError::Returned))
                    .and_then(|d| self.check_decision(d)),
                Call::Batch(events) => bindings
                    .call_on_batch(&mut store, &events)
                    .map_err(|e| self.classify(e))
                    .and_then(|r| r.map_err(PluginError::Returned))
                    .and_then(|d| self.check_decision(d)),
                Call::Response(response) => bindings
                    .call_on_response(&mut store, &response)
                    .map(Answer::Verdict)
                    .map_err(|e| self.classify(e)),
            },
        };
        let mut logs = std::mem::take(&mut store.data_mut().host.logs);
        drop(store);
        let printed = output.contents();
        if !printed.is_empty() {
            for line in String::from_utf8_lossy(&printed).lines() {
                logs.push(LogLine {
                    level: "stdout".into(),
                    message: line.to_string(),
                });
            }
        }
        Evaluation {
            result,
            logs,
            elapsed: started.elapsed(),
        }
    }

    fn check_decision(&self, decision: wit::Decision) -> Result<Answer, PluginError> {
        if let wit::Decision::Send(requests) = &decision {
            if requests.len() > self.limits.max_requests {
                return Err(PluginError::RequestLimit {
                    count: requests.len(),
                    limit: self.limits.max_requests,
                });
            }
            let size: usize = requests
                .iter()
                .map(|r| {
                    r.body.as_ref().map_or(0, Vec::len)
                        + r.path.as_ref().map_or(0, String::len)
                        + r.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>()
                })
                .sum();
            if size > self.limits.max_output_bytes {
                return Err(PluginError::OutputLimit {
                    size,
                    limit: self.limits.max_output_bytes,
                });
            }
        }
        Ok(Answer::Decision(decision))
    }

    fn classify(&self, err: wasmtime::Error) -> PluginError {
        if let Some(trap) = err.downcast_ref::<Trap>() {
            return match trap {
                Trap::Interrupt => {
                    PluginError::TimeLimit(self.limits.time_limit.as_millis() as u64)
                }
                Trap::StackOverflow => PluginError::StackLimit,
                other => PluginError::Trap(other.to_string()),
            };
        }
        let text = format!("{err:#}");
        if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
            return PluginError::MemoryLimit(self.limits.memory_bytes >> 20);
        }
        PluginError::Trap(text)
    }
}
