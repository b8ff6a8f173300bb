//! The host imports a plugin sees: bounded logging, the webhook's config, and scoped state.

use std::sync::Arc;

use super::wasmhooks::plugin::host::{self, LogLevel};
use super::PluginContext;
use crate::model::LogLine;

/// Persistent key-value state of one webhook's plugin, provided by the pipeline.
pub trait PluginState: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Total bytes (keys plus values) stored.
    fn size(&self) -> usize;
    /// Stores `value` under `key`.
    ///
    /// # Errors
    /// A message when the write fails.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key`.
    fn remove(&self, key: &str);
}

/// State for evaluations with no webhook (feature probing).
pub(super) struct NoState;

impl PluginState for NoState {
    fn get(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn size(&self) -> usize {
        0
    }
    fn set(&self, _: &str, _: &[u8]) -> Result<(), String> {
        Err("no state is available here".into())
    }
    fn remove(&self, _: &str) {}
}

/// What host imports work with during one evaluation.
pub(super) struct HostState {
    config: Arc<str>,
    state: Arc<dyn PluginState>,
    pub(super) logs: Vec<LogLine>,
    log_bytes: usize,
    max_log_bytes: usize,
    max_state_bytes: usize,
    truncated: bool,
}

impl HostState {
    pub(super) fn new(ctx: PluginContext, max_log_bytes: usize, max_state_bytes: usize) -> Self {
        HostState {
            config: ctx.config,
            state: ctx.state,
            logs: Vec::new(),
            log_bytes: 0,
            max_log_bytes,
            max_state_bytes,
            truncated: false,
        }
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        if self.truncated {
            return;
        }
        if self.log_bytes + message.len() > self.max_log_bytes {
            self.truncated = true;
            self.logs.push(LogLine {
                level: "warn".into(),
                message: format!(
                    "log limit of {} bytes reached; later lines dropped",
                    self.max_log_bytes
                ),
            });
            return;
        }
        self.log_bytes += message.len();
        self.logs.push(LogLine {
            level: level_name(level).into(),
            message,
        });
    }

    fn config(&mut self) -> String {
        self.config.to_string()
    }

    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state.get(&key)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let existing = self.state.get(&key).map_or(0, |v| key.len() + v.len());
        let after = self.state.size() - existing + key.len() + value.len();
        if after > self.max_state_bytes {
            return Err(format!(
                "plugin state limit of {} bytes would be exceeded ({after} bytes)",
                self.max_state_bytes
            ));
        }
        self.state.set(&key, &value)
    }

    fn state_remove(&mut self, key: String) {
        self.state.remove(&key)
    }
}

impl super::wasmhooks::plugin::types::Host for HostState {}
