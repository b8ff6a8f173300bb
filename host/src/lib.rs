//! wasmhooks: a webhook delivery host whose per-webhook logic is a sandboxed WebAssembly
//! component.
//!
//! # Layout
//! Each layer names only the layers below it (`layering.rs` checks every `crate::` path):
//! - `host` ([`Host`]): opens the sled store and wires it under the pipeline; the
//!   `wasmhooks` binary (`src/bin/wasmhooks`: the CLI, the demo, `plugin run`) uses only the
//!   library's public API.
//! - [`api`]: REST routes, the listener, and the one mapping from errors to JSON responses.
//! - [`pipeline`]: the flow — ingest → scheduling (`staging`) → one delivery under its claim
//!   → evaluation → sending → outcome (`outcome`: pure functions).
//! - [`catalog`]: what operators define (webhooks, modules, connections, keys, signing
//!   secrets), read by the flow; beside it [`store`], the sled implementation of the storage
//!   traits, and [`postgres`], the PostgreSQL one for several hosts; neither the catalog nor
//!   the pipeline names them.
//! - [`runtime`] (the wasmtime sandbox), [`fair_share`] (who evaluates next, budgets,
//!   back-off), [`sender`] (HTTP, the SSRF guard), [`storage`] (the storage traits, their
//!   contract and its conformance suite).
//! - [`config`], [`clock`], [`metrics`]: settings, time, what `GET /metrics` shows.
//! - [`model`]: domain types; [`signature`]: Standard Webhooks signing.
//!
//! [`Host`] ties them together for embedding: open a data dir, register modules and
//! webhooks, emit events, serve.

pub mod api;
pub mod catalog;
pub mod client;
pub mod clock;
pub mod config;
pub mod fair_share;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod postgres;
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

pub use host::{Host, OpenError, ShutdownError};

/// The example plugin components built from `plugins/` (see `build.rs`).
pub mod examples {
    include!(concat!(env!("OUT_DIR"), "/examples.rs"));
}
