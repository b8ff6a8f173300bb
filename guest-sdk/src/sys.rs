//! The host calls every helper goes through. Inside the component they are the WIT imports;
//! compiled natively (a plugin crate's own `cargo test`) they are served by the
//! [`crate::testing`] harness, so plugin logic can be tested without a host.

use crate::LogLevel;

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::wasmhooks::plugin::host;
    use crate::LogLevel;

    pub fn log(level: LogLevel, message: &str) {
        host::log(level, message);
    }

    pub fn config() -> String {
        host::config()
    }

    pub fn state_get(key: &str) -> Option<Vec<u8>> {
        host::state_get(key)
    }

    pub fn state_set(key: &str, value: &[u8]) -> Result<(), String> {
        host::state_set(key, value)
    }

    pub fn state_remove(key: &str) {
        host::state_remove(key);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use crate::testing::with_host;
    use crate::LogLevel;

    pub fn log(level: LogLevel, message: &str) {
        with_host(|h| h.logs.push((level, message.to_string())));
    }

    pub fn config() -> String {
        with_host(|h| h.config.clone())
    }

    pub fn state_get(key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.state.get(key).cloned())
    }

    pub fn state_set(key: &str, value: &[u8]) -> Result<(), String> {
        with_host(|h| h.set_state(key, value))
    }

    pub fn state_remove(key: &str) {
        with_host(|h| {
            h.state.remove(key);
        });
    }
}

/// Appends a line to the delivery's plugin log.
pub fn log(level: LogLevel, message: &str) {
    imp::log(level, message);
}

/// The webhook's configuration, JSON text.
pub fn config() -> String {
    imp::config()
}

/// A value of the webhook's plugin state.
pub fn state_get(key: &str) -> Option<Vec<u8>> {
    imp::state_get(key)
}

/// Writes a value of the webhook's plugin state.
pub fn state_set(key: &str, value: &[u8]) -> Result<(), String> {
    imp::state_set(key, value)
}

/// Removes a value of the webhook's plugin state.
pub fn state_remove(key: &str) {
    imp::state_remove(key);
}
