//! End-to-end tests: the real `wasmhooks` binary, a real HTTP receiver, the real plugins
//! built from `plugins/`.

mod bad_input;
mod crash;
mod delivery;
mod operator;
mod plugin_run;
mod sandbox;
mod support;
