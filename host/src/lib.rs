//! wasmhooks: a webhook delivery host whose per-webhook logic is a sandboxed WebAssembly
//! component.
//!
//! # Layout
//! Each layer imports only the layers below it:
//! - [`cli`], `main.rs`: parse arguments, call the library.
//! - [`api`]: REST routes and the one mapping from errors to JSON responses.
//! - [`pipeline`]: ingest → router → scheduler → evaluation → sender → outcome.
//! - [`runtime`] (the wasmtime sandbox), [`sender`] (HTTP), [`store`] (sled).
//! - [`model`], [`config`], [`clock`]: domain types, settings, time.
//!
//! [`Host`] ties them together for embedding: open a data dir, register modules and
//! webhooks, emit events, serve.

pub mod api;
pub mod clock;
pub mod config;
pub mod model;
pub mod pipeline;
pub mod runtime;
pub mod sender;
pub mod signature;
pub mod storage;
pub mod store;

mod host;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod layering;

pub use host::Host;

/// The example plugin components built from `plugins/` (see `build.rs`).
pub mod examples {
    include!(concat!(env!("OUT_DIR"), "/examples.rs"));
}
