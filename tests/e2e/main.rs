//! End-to-end tests: the real `wasmhooks` binary, a real HTTP receiver, the real plugins
//! built from `plugins/`.

mod auth;
mod bad_input;
mod batching;
mod cli;
mod connections;
mod crash;
mod debounce;
mod definitions;
mod delivery;
mod demo;
mod disk_faults;
mod examples;
mod fair_share;
mod guests;
mod hardening;
mod isolation;
mod limits;
mod listener;
mod lists;
mod operator;
mod plugin_run;
mod response_values;
mod retries;
mod sandbox;
mod secrets;
mod shutdown;
mod signing;
mod ssrf;
mod standard_webhooks;
mod support;
mod tenancy;
mod timing;
mod tls;
mod verify;
mod withdrawn;
