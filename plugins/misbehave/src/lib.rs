//! `misbehave` — a hostile test plugin, misbehaving as its config `{"mode": …}` says:
//!
//! - `loop`: never returns; `recurse`: unbounded recursion; `memory`: allocates without end;
//! - `output`: a 2 MiB body; `requests`: asks for 100 requests; `panic`; `error`;
//! - `log-flood` / `print-flood`: 64 MiB of log lines / printed lines, then forwards;
//! - `state-flood`: writes 1 KiB values until the host refuses, then skips with the refusal;
//! - `escape`: tries to read and write files, read the environment and arguments, open TCP
//!   and UDP sockets and resolve a name, and skips with a JSON report of what happened;
//! - `print`: writes to stdout and stderr, then forwards;
//! - `counter`: counts its evaluations in plugin state and skips with `count=N`; with
//!   `"panic": true` it writes the new count and then panics.
//!
//! The host must stop or refuse each one with its named error, record it on the delivery, and
//! keep serving.

use serde::Deserialize;
use wasmhooks_guest::{export_plugin, Decision, Error, Event, Plugin, Request, Result};

#[derive(Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    panic: bool,
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

/// Tries every way out of the sandbox and reports what each attempt got.
fn escape() -> serde_json::Value {
    use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
    fn outcome<T>(result: std::io::Result<T>) -> String {
        match result {
            Ok(_) => "allowed".into(),
            Err(e) => format!("refused: {e}"),
        }
    }
    serde_json::json!({
        "read_file": outcome(std::fs::read("/etc/passwd")),
        "read_dir": outcome(std::fs::read_dir("/")),
        "write_file": outcome(std::fs::write("/tmp/wasmhooks-escape", b"x")),
        "env_vars": std::env::vars().count(),
        "env_home": std::env::var("HOME").is_ok(),
        "args": std::env::args().count(),
        "tcp_connect": outcome(TcpStream::connect("127.0.0.1:1")),
        "udp_bind": outcome(UdpSocket::bind("127.0.0.1:0")),
        "resolve": outcome("localhost:80".to_socket_addrs()),
    })
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
            "output" => Ok(Decision::send(Request::bytes(
                vec![b'x'; 2 << 20],
                "text/plain",
            ))),
            "requests" => Ok(Decision::Send(
                (0..100).map(|i| Request::text(i.to_string())).collect(),
            )),
            "log-flood" => {
                let line = "l".repeat(1024);
                for _ in 0..(64 << 10) {
                    wasmhooks_guest::info!("{line}");
                }
                Ok(Decision::send(Request::text("after the log flood")))
            }
            "print-flood" => {
                let line = "p".repeat(1023);
                for _ in 0..(64 << 10) {
                    println!("{line}");
                }
                Ok(Decision::send(Request::text("after the print flood")))
            }
            "state-flood" => {
                let value = [7u8; 1024];
                for i in 0.. {
                    if let Err(e) = wasmhooks_guest::state::set(&format!("key-{i}"), &value) {
                        return Ok(Decision::skip(format!("after {i} writes: {e}")));
                    }
                }
                unreachable!()
            }
            "escape" => Ok(Decision::skip(escape().to_string())),
            "counter" => {
                let count: u64 = wasmhooks_guest::state::get_json("count")?.unwrap_or(0) + 1;
                wasmhooks_guest::state::set_json("count", &count)?;
                if config.panic {
                    panic!("panicking after writing count={count}");
                }
                Ok(Decision::skip(format!("count={count}")))
            }
            other => Err(Error::new(format!("unknown mode {other}"))),
        }
    }
}

export_plugin!(Misbehave);
