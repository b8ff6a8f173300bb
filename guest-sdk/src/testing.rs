//! Test a plugin natively with `cargo test`, no host needed: a stand-in host that serves
//! config, state and logs the way the real one does, and builders for events and responses.
//!
//! ```
//! use wasmhooks_guest::testing::{event, Harness};
//! use wasmhooks_guest::{Decision, Event, Plugin, Request, Result};
//!
//! struct Echo;
//! impl Plugin for Echo {
//!     fn on_event(event: Event) -> Result<Decision> {
//!         wasmhooks_guest::info!("echo {}", event.id);
//!         Ok(Decision::send(Request::text(event.payload)))
//!     }
//! }
//!
//! let mut host = Harness::new().config(serde_json::json!({"verbose": true}));
//! let decision = host.on_event::<Echo>(event("order.created", serde_json::json!({"id": 7}))).unwrap();
//! assert_eq!(decision.requests()[0].body_text(), Some(r#"{"id":7}"#));
//! assert_eq!(host.logs(), ["info: echo evt_test_1"]);
//! ```
//!
//! Like the host, the harness keeps state written by an evaluation only when it succeeds, and
//! refuses writes past the state limit (64 KiB unless [`Harness::state_limit`] says otherwise).

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Decision, Event, LogLevel, Plugin, Response, Result, Verdict};

/// The stand-in host's state while a harness runs.
#[derive(Debug, Clone)]
pub(crate) struct TestHost {
    pub(crate) config: String,
    pub(crate) state: BTreeMap<String, Vec<u8>>,
    pub(crate) logs: Vec<(LogLevel, String)>,
    state_limit: usize,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost {
            config: "{}".into(),
            state: BTreeMap::new(),
            logs: Vec::new(),
            state_limit: 64 << 10,
        }
    }
}

impl TestHost {
    pub(crate) fn set_state(&mut self, key: &str, value: &[u8]) -> std::result::Result<(), String> {
        let others: usize = self
            .state
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        let total = others + key.len() + value.len();
        if total > self.state_limit {
            return Err(format!(
                "plugin exceeded {} bytes state limit (it would hold {total})",
                self.state_limit
            ));
        }
        self.state.insert(key.to_string(), value.to_vec());
        Ok(())
    }
}

thread_local! {
    static HOST: RefCell<TestHost> = RefCell::new(TestHost::default());
}

pub(crate) fn with_host<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    HOST.with(|host| f(&mut host.borrow_mut()))
}

/// A stand-in host for one plugin under test.
#[derive(Debug, Clone, Default)]
pub struct Harness {
    host: TestHost,
}

impl Harness {
    /// A host with config `{}`, empty state and no logs.
    pub fn new() -> Harness {
        Harness::default()
    }

    /// The webhook config the plugin reads.
    pub fn config(mut self, config: serde_json::Value) -> Harness {
        self.host.config = config.to_string();
        self
    }

    /// State present before the plugin runs, as JSON under `key`.
    pub fn with_state<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Harness {
        let bytes = serde_json::to_vec(value).expect("state serialises");
        self.host.state.insert(key.to_string(), bytes);
        self
    }

    /// The state limit, in bytes (keys and values together).
    pub fn state_limit(mut self, bytes: usize) -> Harness {
        self.host.state_limit = bytes;
        self
    }

    /// Runs `f` against this host. State written is kept only when `keep(result)` holds.
    fn run<R>(&mut self, f: impl FnOnce() -> R, keep: impl FnOnce(&R) -> bool) -> R {
        let before = self.host.state.clone();
        with_host(|h| *h = self.host.clone());
        let result = f();
        self.host = with_host(std::mem::take);
        if !keep(&result) {
            self.host.state = before;
        }
        result
    }

    /// Calls the plugin's `on_event`.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn on_event<P: Plugin>(&mut self, event: Event) -> Result<Decision> {
        self.run(|| P::on_event(event), Result::is_ok)
    }

    /// Calls the plugin's `on_batch`.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn on_batch<P: Plugin>(&mut self, events: Vec<Event>) -> Result<Decision> {
        self.run(|| P::on_batch(events), Result::is_ok)
    }

    /// Calls the plugin's `on_response`.
    pub fn on_response<P: Plugin>(&mut self, response: Response) -> Verdict {
        self.run(|| P::on_response(response), |_| true)
    }

    /// The log lines so far, as `level: message`.
    pub fn logs(&self) -> Vec<String> {
        self.host
            .logs
            .iter()
            .map(|(level, message)| format!("{}: {message}", level_name(*level)))
            .collect()
    }

    /// The state bytes under `key`.
    pub fn state(&self, key: &str) -> Option<&[u8]> {
        self.host.state.get(key).map(Vec::as_slice)
    }

    /// The state under `key`, parsed from JSON.
    pub fn state_json<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state(key)
            .map(|bytes| serde_json::from_slice(bytes).expect("state is JSON"))
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

/// An event of `kind` with this payload: id `evt_test_1`, no tenant, no attributes,
/// occurred at 2026-01-01T00:00:00Z. Change fields with the `with_*` methods.
pub fn event(kind: &str, payload: serde_json::Value) -> Event {
    Event {
        id: "evt_test_1".into(),
        kind: kind.into(),
        tenant: None,
        occurred_at: 1_767_225_600_000,
        attributes: Vec::new(),
        payload: payload.to_string(),
    }
}

impl Event {
    /// This event with another id.
    pub fn with_id(mut self, id: &str) -> Event {
        self.id = id.into();
        self
    }

    /// This event with a routing attribute added.
    pub fn with_attribute(mut self, name: &str, value: &str) -> Event {
        self.attributes.push((name.into(), value.into()));
        self
    }

    /// This event in a tenant.
    pub fn with_tenant(mut self, tenant: &str) -> Event {
        self.tenant = Some(tenant.into());
        self
    }
}

/// A receiver's response to request 0: `status` with this body (no headers).
pub fn response(status: u16, body: &str) -> Response {
    Response {
        request_index: 0,
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{state, Request};

    struct WritesThenFails;
    impl Plugin for WritesThenFails {
        fn on_event(event: Event) -> Result<Decision> {
            state::set("seen", event.id.as_bytes())?;
            if event.kind == "bad" {
                return Err("refused".into());
            }
            Ok(Decision::send(Request::empty()))
        }
    }

    #[test]
    fn state_is_kept_only_when_the_evaluation_succeeds_and_within_the_limit() {
        let mut host = Harness::new();
        host.on_event::<WritesThenFails>(event("good", serde_json::json!({})))
            .unwrap();
        assert_eq!(host.state("seen"), Some(&b"evt_test_1"[..]));
        let bad = event("bad", serde_json::json!({})).with_id("evt_2");
        assert!(host.on_event::<WritesThenFails>(bad).is_err());
        assert_eq!(host.state("seen"), Some(&b"evt_test_1"[..]));

        let mut tight = Harness::new().state_limit(8);
        let err = tight
            .on_event::<WritesThenFails>(event("good", serde_json::json!({})))
            .unwrap_err();
        assert!(err.to_string().contains("state limit"), "{err}");
    }
}
