//! The host imports a plugin sees: bounded logging, the webhook's config, and scoped state.
//!
//! State writes are kept in an overlay during the evaluation and handed back with its result;
//! the pipeline commits them only when the evaluation produced an answer, so a plugin that
//! traps half-way leaves its state as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::output::LogSink;
use super::wasmhooks::plugin::host::{self, LogLevel};
use super::{size_text, PluginContext};

/// Longest state key.
const MAX_STATE_KEY: usize = 256;

/// One webhook's persistent plugin state as it was before the evaluation, provided by the
/// pipeline. Writes come back as [`StateChange`]s.
pub trait PluginState: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Total bytes (keys plus values) stored.
    fn size(&self) -> usize;
}

/// A write to plugin state: a key and its new value, or `None` for removed.
pub type StateChange = (String, Option<Vec<u8>>);

/// State for evaluations with no webhook (feature probing, local runs).
pub struct NoState;

impl PluginState for NoState {
    fn get(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn size(&self) -> usize {
        0
    }
}

/// What host imports work with during one evaluation.
pub(super) struct HostState {
    config: Arc<str>,
    state: Arc<dyn PluginState>,
    /// Writes so far, by key.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Bytes the state holds with the writes applied; read from the base on first write.
    size: Option<usize>,
    max_state_bytes: usize,
    state_refused: bool,
    pub(super) log: LogSink,
}

impl HostState {
    pub(super) fn new(ctx: &PluginContext, log: LogSink) -> Self {
        HostState {
            config: ctx.config.clone(),
            state: ctx.state.clone(),
            writes: BTreeMap::new(),
            size: None,
            max_state_bytes: ctx.limits.state_bytes,
            state_refused: false,
            log,
        }
    }

    /// The writes, in key order.
    pub(super) fn take_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.writes).into_iter().collect()
    }

    fn current(&self, key: &str) -> Option<Vec<u8>> {
        match self.writes.get(key) {
            Some(value) => value.clone(),
            None => self.state.get(key),
        }
    }

    fn entry_size(&self, key: &str) -> usize {
        self.current(key).map_or(0, |v| key.len() + v.len())
    }

    fn size(&mut self) -> usize {
        match self.size {
            Some(size) => size,
            None => {
                let size = self.state.size();
                self.size = Some(size);
                size
            }
        }
    }

    fn refuse(&mut self, message: String) -> Result<(), String> {
        // Logged once, so a plugin that ignores the error still shows why on its delivery.
        if !self.state_refused {
            self.state_refused = true;
            self.log.note(crate::model::LogLevel::Warn, message.clone());
        }
        Err(message)
    }
}

fn level_of(level: LogLevel) -> crate::model::LogLevel {
    match level {
        LogLevel::Trace => crate::model::LogLevel::Trace,
        LogLevel::Debug => crate::model::LogLevel::Debug,
        LogLevel::Info => crate::model::LogLevel::Info,
        LogLevel::Warn => crate::model::LogLevel::Warn,
        LogLevel::Error => crate::model::LogLevel::Error,
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log.log(level_of(level), message);
    }

    fn config(&mut self) -> String {
        self.config.to_string()
    }

    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.current(&key)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_STATE_KEY {
            return Err(format!(
                "state keys are 1 to {MAX_STATE_KEY} bytes; this one is {}",
                key.len()
            ));
        }
        let after = self.size() - self.entry_size(&key) + key.len() + value.len();
        if after > self.max_state_bytes {
            return self.refuse(format!(
                "plugin exceeded {} state limit: writing `{key}` would make it {after} bytes",
                size_text(self.max_state_bytes)
            ));
        }
        self.size = Some(after);
        self.writes.insert(key, Some(value));
        Ok(())
    }

    fn state_remove(&mut self, key: String) {
        let size = self.size() - self.entry_size(&key);
        self.size = Some(size);
        self.writes.insert(key, None);
    }
}

impl super::wasmhooks::plugin::types::Host for HostState {}
