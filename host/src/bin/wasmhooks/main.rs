//! The `wasmhooks` binary: parses arguments and calls the library.

use clap::Parser;

mod cli;
mod demo;
mod logging;

/// mimalloc instead of glibc's malloc: the host allocates per request and per delivery from
/// many threads, where glibc's arenas cost ~9% of its CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS at once instead of after mimalloc's 10 ms default: its
/// delayed purge runs only when the freeing thread allocates again, so memory freed by
/// threads that then go quiet (sled's IO threads, blocking threads) stayed resident. With
/// 1,000 webhooks that was 30 MiB of peak RSS, and no throughput difference was measured
/// (BENCHMARKS.md). `MIMALLOC_PURGE_DELAY` in the environment still decides when set.
fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's option values; any value is valid for this option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn main() -> std::process::ExitCode {
    return_freed_memory_promptly();
    let traces = logging::init();
    let cli = cli::Cli::parse();
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Sends the spans still buffered.
    if let Some(Err(e)) = traces.map(|t| t.shutdown()) {
        eprintln!("exporting the last traces: {e}");
    }
    code
}
