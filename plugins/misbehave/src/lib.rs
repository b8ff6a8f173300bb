//! `misbehave` — a test plugin that misbehaves on purpose, chosen by config `{"mode": …}`:
//! `loop` (never returns), `memory` (allocates without end), `panic`, `recurse` (unbounded
//! recursion), `print` (writes to stdout and stderr, then forwards), `error` (returns an error).
//! The host must stop each one, record why on the delivery, and keep serving.

use serde::Deserialize;
use wasmhooks_guest::{export_plugin, Decision, Error, Event, Plugin, Request, Result};

#[derive(Deserialize)]
struct Config {
    mode: String,
}

/// Misbehaves as configured.
pub struct Misbehave;

// Recursion on wasm's own call stack (scalars only), which the host bounds with its
// stack limit. A frame holding an array would live on Rust's shadow stack in linear
// memory instead and end as an out-of-bounds trap, a different failure.
#[allow(unconditional_recursion, clippy::only_used_in_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(depth + 1)) + 1
}

impl Plugin for Misbehave {
    fn on_event(event: Event) -> Result<Decision> {
        let config: Config = wasmhooks_guest::config()?;
        match config.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("misbehave was told to panic on {}", event.id),
            "recurse" => Ok(Decision::skip(recurse(0).to_string())),
            "print" => {
                println!("printed to stdout for {}", event.id);
                eprintln!("printed to stderr");
                Ok(Decision::send(Request::bytes(
                    event.payload.into_bytes(),
                    "application/json",
                )))
            }
            "error" => Err(Error::new("misbehave returned an error")),
            other => Err(Error::new(format!("unknown mode {other}"))),
        }
    }
}

export_plugin!(Misbehave);
