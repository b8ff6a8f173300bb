//! What an evaluation is called with and gives back: the call, the answer, its cost, and
//! the errors that name the limit hit.

use super::*;

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

/// Why the sandbox could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the plugin sandbox: {0}")]
pub struct SandboxError(pub String);

impl SandboxError {
    /// From an engine error, with its whole chain of causes.
    pub(super) fn of(error: impl std::fmt::Display) -> SandboxError {
        SandboxError(format!("{error:#}"))
    }
}

/// Why a stored module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No module is stored under the id.
    #[error("module {0} is not stored")]
    Missing(ModuleId),
    /// The stored bytes no longer validate (they did at upload: a corrupt store).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}
