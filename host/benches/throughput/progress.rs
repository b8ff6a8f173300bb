//! The progress bar on stderr while events are emitted and delivered.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Draws a progress bar on stderr until `done` says stop.
pub(crate) fn progress_bar(
    label: &'static str,
    emitted: Arc<AtomicUsize>,
    emit_total: usize,
    delivered: Arc<dyn Fn() -> usize + Send + Sync>,
    deliver_total: usize,
) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    std::thread::spawn(move || {
        let mut ticks = 0u32;
        while !flag.load(Ordering::Relaxed) {
            ticks += 1;
            std::thread::sleep(Duration::from_millis(250));
            if !terminal && ticks % 8 != 0 {
                continue;
            }
            let d = delivered();
            let filled = (d * 30).checked_div(deliver_total).unwrap_or(0);
            eprint!(
                "{}  {label}: [{}{}] emitted {}/{emit_total}, delivered {d}/{deliver_total}   {}",
                if terminal { "\r" } else { "" },
                "#".repeat(filled.min(30)),
                " ".repeat(30 - filled.min(30)),
                emitted.load(Ordering::Relaxed),
                if terminal { "" } else { "\n" }
            );
            let _ = std::io::stderr().flush();
        }
        if terminal {
            eprintln!();
        }
    });
    stop
}
