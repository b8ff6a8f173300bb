//! The host under measurement: the release binary started as its own process, its CPU time
//! and memory from /proc, and its stop.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ADMIN_KEY;

pub(crate) struct Host {
    child: Child,
    pub(crate) url: String,
    pub(crate) started: Instant,
    pub(crate) ready_after: Duration,
}

impl Host {
    pub(crate) fn start(data_dir: &Path) -> Host {
        Host::start_with(data_dir, &[])
    }

    /// The host with settings of its own (`WASMHOOKS_…` variables) besides the bench's.
    pub(crate) fn start_with(data_dir: &Path, settings: &[(&str, &str)]) -> Host {
        let started = Instant::now();
        // THROUGHPUT_HOST_BINARY runs another build (an earlier commit's) for a before/after
        // comparison on the same machine.
        let binary = std::env::var_os("THROUGHPUT_HOST_BINARY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_wasmhooks").into());
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "error")
            .env("WASMHOOKS_API__ADMIN_KEY", ADMIN_KEY)
            .env(
                "WASMHOOKS_DELIVERY__ALLOWED_DESTINATIONS",
                r#"["127.0.0.1"]"#,
            )
            .env("WASMHOOKS_API__MAX_BATCH_EVENTS", "10000")
            .env("WASMHOOKS_API__MAX_BODY_BYTES", "67108864")
            .envs(settings.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the host");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a line").expect("stdout");
        let url = first
            .strip_prefix("wasmhooks listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first}"))
            .to_string();
        let ready_after = started.elapsed();
        std::thread::spawn(move || for _ in lines {});
        Host {
            child,
            url,
            started,
            ready_after,
        }
    }

    /// CPU seconds (user + system) the host has used.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&format!("/proc/{}", self.child.id()), false)
    }

    /// Resident memory now and at its peak, in MiB.
    pub(crate) fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    /// The kernel's split of resident memory (`/proc/<pid>/smaps_rollup`), in MiB: anonymous
    /// (heap, stacks) and the rest (mapped files: the binary, libraries).
    pub(crate) fn rss_split_mib(&self) -> (f64, f64) {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.child.id()))
            .unwrap_or_default();
        let kib = |key: &str| {
            rollup
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (rss, anon) = (kib("Rss:"), kib("Anonymous:"));
        (anon / 1024.0, (rss - anon) / 1024.0)
    }

    pub(crate) fn stop(self) {
        // Dropping it kills it.
    }

    /// Stops the host the way an operator does (SIGTERM: it drains and flushes) and waits
    /// for it to exit; returns how long that took.
    pub(crate) fn terminate(mut self) -> Duration {
        let asked = Instant::now();
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: sends a signal to the child this harness started and has not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the host");
        assert!(status.success(), "the host exited with {status} on SIGTERM");
        asked.elapsed()
    }
}

/// CPU seconds (user + system) the process at `/proc/<pid>` has used, with those of its
/// children that it waited for if `children`.
pub(crate) fn process_cpu_seconds(proc_dir: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the
    // 13th, cutime and cstime the 14th and 15th; clock ticks are 100 per second on Linux.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let own = ticks(11) + ticks(12);
    let waited = if children { ticks(13) + ticks(14) } else { 0.0 };
    (own + waited) / 100.0
}

impl Drop for Host {
    /// Kills the host unless it exited already, also when the bench panics (a host left
    /// running would go on polling a database that is gone).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
