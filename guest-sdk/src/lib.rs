//! Write wasmhooks plugins in Rust.
//!
//! A plugin is a WebAssembly component that the wasmhooks host runs for every event matching a
//! webhook. It decides whether to fire and builds the HTTP request(s); the host schedules,
//! stores, signs, sends and retries. This crate gives plugin authors:
//!
//! - the bindings for the `wasmhooks:plugin/webhook` world, generated from the repository's
//!   `wit/` folder ([`bindings`]);
//! - the [`Plugin`] trait, whose optional methods have sensible defaults, and the
//!   [`export_plugin!`] macro that turns a type implementing it into the component's exports;
//! - helpers: typed payloads ([`Event::payload_as`]), request builders ([`Request::json`],
//!   [`Request::text`], and XML, form, CSV and multipart in [`body`]), templates with event
//!   variables escaped for URL paths, queries, JSON and XML ([`template`]), typed
//!   configuration ([`config`]), logging macros ([`info!`] and friends) and persistent
//!   per-webhook state ([`state`]);
//! - [`testing`]: a stand-in host so a plugin crate tests its logic natively with `cargo test`.
//!
//! # Example
//!
//! A complete plugin that fires only for large orders and posts a body built from the event:
//!
//! ```no_run
//! use serde::Deserialize;
//! use wasmhooks_guest::{export_plugin, info, Decision, Event, Plugin, Request, Result};
//!
//! #[derive(Deserialize)]
//! struct Order {
//!     id: String,
//!     amount: f64,
//! }
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     threshold: f64,
//! }
//!
//! struct BigOrders;
//!
//! impl Plugin for BigOrders {
//!     fn on_event(event: Event) -> Result<Decision> {
//!         let config: Config = wasmhooks_guest::config()?;
//!         let order: Order = event.payload_as()?;
//!         if order.amount < config.threshold {
//!             return Ok(Decision::skip(format!("amount {} is below {}", order.amount, config.threshold)));
//!         }
//!         info!("order {} qualifies", order.id);
//!         let body = serde_json::json!({ "order": order.id, "amount": order.amount });
//!         Ok(Decision::send(Request::json(&body)?))
//!     }
//! }
//!
//! export_plugin!(BigOrders);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is the component to upload (or to try locally with
//! `wasmhooks plugin run`).

#![deny(missing_docs)]

pub mod body;
mod helpers;
#[doc(hidden)]
pub mod sys;
pub mod template;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use helpers::{config, config_json, config_text, state, Error, Result};
pub use template::{render, render_url, Escape, Vars};

/// Bindings generated from the `wasmhooks:plugin` WIT package (`wit/` in the repository).
///
/// Most plugins never touch this module directly: the types they need are re-exported at the
/// crate root and [`export_plugin!`] wires the exports.
#[allow(missing_docs, clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "webhook",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "wasmhooks_guest::bindings",
        additional_derives: [PartialEq, Eq],
        generate_all,
    });
}

pub use bindings::wasmhooks::plugin::host::LogLevel;
pub use bindings::wasmhooks::plugin::types::{Decision, Event, Method, Request, Response, Verdict};

/// The feature name a plugin reports when it implements [`Plugin::on_response`].
pub const FEATURE_RESPONSE_HOOK: &str = "response-hook";

/// What a plugin implements. Only [`Plugin::on_event`] is required.
pub trait Plugin {
    /// Set to `true` when the plugin overrides [`Plugin::on_response`]; the host then calls it
    /// for every response (and skips the call, which costs an instantiation, otherwise).
    const INSPECTS_RESPONSES: bool = false;

    /// Decide what to do with one event: skip it (with a reason that is recorded) or send one
    /// or more requests.
    ///
    /// # Errors
    /// An error is recorded as a plugin error on the delivery; nothing is sent.
    fn on_event(event: Event) -> Result<Decision>;

    /// Decide what to do with a batch of events (webhooks that batch call this).
    ///
    /// The default calls [`Plugin::on_event`] for each event and sends every request they
    /// produce; it skips only when every event was skipped.
    ///
    /// # Errors
    /// The first error of any event.
    fn on_batch(events: Vec<Event>) -> Result<Decision> {
        let mut requests = Vec::new();
        let mut reasons = Vec::new();
        for event in events {
            match Self::on_event(event)? {
                Decision::Send(mut more) => requests.append(&mut more),
                Decision::Skip(reason) => reasons.push(reason),
            }
        }
        if requests.is_empty() {
            Ok(Decision::Skip(reasons.join("; ")))
        } else {
            Ok(Decision::Send(requests))
        }
    }

    /// Judge a receiver's response: success with an extracted value, retry, or fail. Called
    /// only when [`Plugin::INSPECTS_RESPONSES`] is `true`. The default leaves the judgement to
    /// the webhook's own success statuses.
    fn on_response(response: Response) -> Verdict {
        let _ = response;
        Verdict::UseDefault
    }
}

/// The features a plugin type reports to the host. Used by [`export_plugin!`].
#[doc(hidden)]
pub fn __features<P: Plugin>() -> Vec<String> {
    let mut features = Vec::new();
    if P::INSPECTS_RESPONSES {
        features.push(FEATURE_RESPONSE_HOOK.to_string());
    }
    features
}

/// Export a type implementing [`Plugin`] as the component's entry points.
///
/// Use it once per plugin crate, at the crate root: `export_plugin!(MyPlugin);`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __WasmhooksExports;

        impl $crate::bindings::Guest for __WasmhooksExports {
            fn features() -> ::std::vec::Vec<::std::string::String> {
                $crate::__features::<$plugin>()
            }

            fn on_event(
                event: $crate::Event,
            ) -> ::std::result::Result<$crate::Decision, ::std::string::String> {
                <$plugin as $crate::Plugin>::on_event(event).map_err(|e| e.to_string())
            }

            fn on_batch(
                events: ::std::vec::Vec<$crate::Event>,
            ) -> ::std::result::Result<$crate::Decision, ::std::string::String> {
                <$plugin as $crate::Plugin>::on_batch(events).map_err(|e| e.to_string())
            }

            fn on_response(response: $crate::Response) -> $crate::Verdict {
                <$plugin as $crate::Plugin>::on_response(response)
            }
        }

        $crate::bindings::export_raw!(__WasmhooksExports with_types_in $crate::bindings);
    };
}

/// Log at a given [`LogLevel`] with `format!` arguments; the line is kept on the delivery.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::sys::log($level, &::std::format!($($arg)+))
    };
}

/// Log at trace level with `format!` arguments.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::LogLevel::Trace, $($arg)+) };
}

/// Log at debug level with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::LogLevel::Debug, $($arg)+) };
}

/// Log at info level with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::LogLevel::Info, $($arg)+) };
}

/// Log at warn level with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::LogLevel::Warn, $($arg)+) };
}

/// Log at error level with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::LogLevel::Error, $($arg)+) };
}
