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
mod examples;
mod guests;
mod isolation;
mod limits;
mod lists;
mod operator;
mod plugin_run;
mod response_values;
mod retries;
mod sandbox;
mod secrets;
mod signing;
mod ssrf;
mod standard_webhooks;
mod support;
mod timing;
mod tls;
mod verify;
