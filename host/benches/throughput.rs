//! End-to-end throughput and latency of the real host, against the raw HTTP limit of the same
//! machine measured in the same run.
//!
//! `cargo bench -p wasmhooks --bench throughput -- <scenario> [options]`
//!
//! Scenarios:
//! - `flat` (default): E events flat out through the API to W webhooks on one fast receiver;
//!   then a plain keep-alive client posts the same bodies to the same receiver with the same
//!   concurrency (the raw limit), and the ratio is printed.
//! - `rate`: the same at a fixed `--rate` events/s (latency under a steady load).
//! - `slow`: the same events to W fast webhooks plus one more webhook, twice: first on a
//!   second fast receiver (the baseline: same work per event), then on a receiver that
//!   answers after 2 s; prints what the slow receiver cost the fast ones.
//! - `scale`: 1,000 webhooks over 100 distinct modules, each event matching one of them.
//! - `backlog`: 1,000,000 deliveries waiting (a 1 h delay), the host's memory meanwhile, then a
//!   restart: how long until it answers and until a new delivery arrives.
//! - `idle`: `--stored N` small events delivered (so the store holds N finished deliveries),
//!   a clean stop (SIGTERM), a start on the same data, and the idle host's memory a few
//!   seconds after it answers: what stored history costs in RSS (issue 25). `--data-dir DIR`
//!   fills and keeps DIR instead of a temporary dir (with `--stored 0`, it only restarts
//!   on what DIR already holds). Without `--rate`, events are emitted faster than they are
//!   delivered: the queue's peak is then part of what the store keeps (sled keeps its
//!   freed pages in memory too); `--rate` below the delivery rate measures history alone.
//! - `soak`: `--rate` events/s (3,000 by default, POSTs of 50) to one webhook for `--minutes`,
//!   with every kind of retention set to `--keep` (1m by default, or `forever`): every 30 s the
//!   host's RSS, the data dir's size on disk and what the pruner removed, to see whether they
//!   level off; at the end the latency and whether the host kept up.
//!
//! Options: `--events N`, `--webhooks W`, `--concurrency C` (emitting connections), `--rate R`,
//! `--batch B` (events per POST), `--pending N` (backlog), `--stored N` and `--data-dir DIR`
//! (idle), `--minutes M` and `--keep D` (soak). The host is the release binary, started as
//! its own process on a temporary data dir with default settings (durable acks: every 202
//! waits for the group commit; `WASMHOOKS_*` variables of the bench's environment reach it,
//! e.g. `WASMHOOKS_RETENTION__INTERVAL`), and its CPU time and RSS come from /proc.
//! `THROUGHPUT_HOST_BINARY` runs another build.
//!
//! `--postgres` (flat, rate, slow, scale) runs the hosts on PostgreSQL instead of sled: the
//! bench starts a server of its own for the run (`postgres::throwaway`, with durable
//! settings: fsync, synchronous_commit and full_page_writes on, so a 202 waits for a flushed
//! commit as it would in production), a fresh database for every measured run, and one
//! random secrets key the hosts share. `--hosts N` (flat, rate; with `--postgres` only) runs
//! N hosts on that database: the webhooks are made through the first, the bench waits until
//! every host routes events to them, and the POSTs take turns among the hosts; CPU time and
//! RSS are summed in the table and given per host below it. A `--postgres` run also reports
//! what the database did per delivery: the server's CPU (all its processes); the requests the
//! hosts sent it (TCP segments with data, from `ss`: a round trip is one, and so is each
//! statement close that tokio-postgres sends without waiting after running a statement given
//! as text); transactions (`pg_stat_database`: a statement given as text is prepared first,
//! and the prepare's round trip counts as a transaction of its own outside BEGIN…COMMIT); and,
//! when the `pg_stat_statements` extension is installed (it is then loaded), the statements
//! executed, most executed first.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef";

#[derive(Debug, Clone)]
struct Args {
    scenario: String,
    events: usize,
    webhooks: usize,
    concurrency: usize,
    rate: Option<f64>,
    batch: usize,
    pending: usize,
    stored: usize,
    data_dir: Option<std::path::PathBuf>,
    minutes: f64,
    keep: String,
    postgres: bool,
    hosts: usize,
}

const SCENARIOS: [&str; 7] = ["flat", "rate", "slow", "scale", "backlog", "idle", "soak"];

const USAGE: &str = "usage: cargo bench -p wasmhooks --bench throughput -- \
[flat|rate|slow|scale|backlog|idle|soak] [--events N] [--webhooks W] [--concurrency C] \
[--rate R] [--batch B] [--pending N] [--stored N] [--data-dir DIR] [--minutes M] \
[--keep 1m|forever] [--postgres] [--hosts N]";

/// The command line, or what is wrong with it.
fn args() -> Result<Args, String> {
    let mut args = Args {
        scenario: "flat".into(),
        events: 20_000,
        webhooks: 1,
        concurrency: 32,
        rate: None,
        batch: 1,
        pending: 1_000_000,
        stored: 1_000_000,
        data_dir: None,
        minutes: 10.0,
        keep: "1m".into(),
        postgres: false,
        hosts: 1,
    };
    // The soak's own defaults, unless given: POSTs of 50 on 8 connections.
    let (mut batch_given, mut concurrency_given) = (false, false);
    fn number<T: std::str::FromStr>(arg: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or_else(|| format!("{arg} needs a value"))?;
        value
            .replace('_', "")
            .parse()
            .ok()
            .filter(|_| !value.starts_with('-'))
            .ok_or_else(|| format!("{arg}: `{value}` is not a positive number"))
    }
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => args.events = number(&arg, it.next())?,
            "--webhooks" => args.webhooks = number(&arg, it.next())?,
            "--concurrency" => {
                args.concurrency = number(&arg, it.next())?;
                concurrency_given = true;
            }
            "--rate" => args.rate = Some(number(&arg, it.next())?),
            "--batch" => {
                args.batch = number(&arg, it.next())?;
                batch_given = true;
            }
            "--pending" => args.pending = number(&arg, it.next())?,
            "--stored" => args.stored = number(&arg, it.next())?,
            "--data-dir" => {
                let dir = it.next().ok_or("--data-dir needs a value")?;
                args.data_dir = Some(dir.into());
            }
            "--minutes" => args.minutes = number(&arg, it.next())?,
            "--keep" => args.keep = it.next().ok_or("--keep needs a value")?,
            "--postgres" => args.postgres = true,
            "--hosts" => args.hosts = number(&arg, it.next())?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if SCENARIOS.contains(&s) => args.scenario = s.to_string(),
            other => return Err(format!("unknown scenario or option `{other}`")),
        }
    }
    if args.events == 0 || args.concurrency == 0 || args.batch == 0 || args.hosts == 0 {
        return Err("--events, --concurrency, --batch and --hosts must be at least 1".into());
    }
    if args.postgres && !["flat", "rate", "slow", "scale"].contains(&args.scenario.as_str()) {
        return Err(format!(
            "--postgres is for flat, rate, slow and scale; `{}` measures a data dir",
            args.scenario
        ));
    }
    if args.hosts > 1 && !args.postgres {
        return Err(format!(
            "--hosts {} needs --postgres: hosts share their work only through a PostgreSQL \
             database (a sled data dir belongs to one host)",
            args.hosts
        ));
    }
    if args.hosts > 1 && !["flat", "rate"].contains(&args.scenario.as_str()) {
        return Err("--hosts is for flat and rate".into());
    }
    if args.rate.is_some_and(|r: f64| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be more than 0 events/s".into());
    }
    if args.scenario == "rate" && args.rate.is_none() {
        args.rate = Some(1000.0);
    }
    if args.scenario == "soak" {
        args.rate = args.rate.or(Some(3000.0));
        if !batch_given {
            args.batch = 50;
        }
        if !concurrency_given {
            args.concurrency = 8;
        }
        args.events = (args.rate.unwrap() * args.minutes * 60.0).round() as usize;
        if args.events == 0 {
            return Err("--minutes must be more than 0".into());
        }
    }
    Ok(args)
}

// ----- the receiver -----

/// What the receivers saw: per event number, when it was emitted (µs since the bench
/// started); per delivery, the latency.
struct Tally {
    start: Instant,
    emitted_at: Vec<AtomicU64>,
    received: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
    last_receipt_us: AtomicU64,
}

impl Tally {
    fn new(events: usize) -> Arc<Tally> {
        Arc::new(Tally {
            start: Instant::now(),
            emitted_at: (0..events).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicUsize::new(0),
            latencies_us: Mutex::new(Vec::with_capacity(events)),
            last_receipt_us: AtomicU64::new(0),
        })
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn receipt(&self, body: &[u8]) {
        let now = self.now_us();
        if let Some(n) = event_number(body) {
            let sent = self.emitted_at[n].load(Ordering::Relaxed);
            self.latencies_us
                .lock()
                .unwrap()
                .push(now.saturating_sub(sent));
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_receipt_us.fetch_max(now, Ordering::Relaxed);
    }
}

/// The number of the event a delivered body is for (`"event_id":"bench-N"`), found by a scan
/// rather than a JSON parse: the receiver shares the cores with the host it measures.
fn event_number(body: &[u8]) -> Option<usize> {
    const MARK: &[u8] = b"\"event_id\":\"bench-";
    let at = body.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// A keep-alive HTTP receiver on 127.0.0.1 that answers 200 after `delay`.
async fn receiver(tally: Option<Arc<Tally>>, delay: Duration) -> String {
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let tally = tally.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(t) = tally {
                t.receipt(&body);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

// ----- the host -----

struct Host {
    child: Child,
    url: String,
    started: Instant,
    ready_after: Duration,
}

impl Host {
    fn start(data_dir: &Path) -> Host {
        Host::start_with(data_dir, &[])
    }

    /// The host with settings of its own (`WASMHOOKS_…` variables) besides the bench's.
    fn start_with(data_dir: &Path, settings: &[(&str, &str)]) -> Host {
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
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&format!("/proc/{}", self.child.id()), false)
    }

    /// Resident memory now and at its peak, in MiB.
    fn rss_mib(&self) -> (f64, f64) {
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
    fn rss_split_mib(&self) -> (f64, f64) {
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

    fn stop(self) {
        // Dropping it kills it.
    }

    /// Stops the host the way an operator does (SIGTERM: it drains and flushes) and waits
    /// for it to exit; returns how long that took.
    fn terminate(mut self) -> Duration {
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
fn process_cpu_seconds(proc_dir: &str, children: bool) -> f64 {
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

// ----- PostgreSQL -----

/// The server's counters as a measured phase begins.
#[derive(Clone, Copy)]
struct Counters {
    /// CPU seconds of its processes.
    cpu: f64,
    /// TCP segments with data received on its open connections.
    requests: Option<u64>,
    /// Transactions in the run's database.
    transactions: u64,
}

/// The PostgreSQL server of a `--postgres` bench, with durable settings, and a fresh
/// database for every run on it.
struct Postgres {
    server: wasmhooks::postgres::throwaway::Server,
    /// The name its processes carry in their titles (`cluster_name`).
    cluster: String,
    /// The key every host of the bench shares (base64 of 32 random bytes).
    secrets_key: String,
    /// Whether `pg_stat_statements` is loaded, so statements can be counted.
    counts_statements: bool,
    /// Databases made so far.
    databases: AtomicUsize,
}

/// What PostgreSQL did for one database during a measured phase.
struct DatabaseWork {
    /// CPU seconds of the server's processes (all of them: the hosts' sessions, the WAL
    /// writer, the checkpointer).
    cpu: f64,
    /// Requests the hosts sent it: TCP segments with data on its connections, when `ss`
    /// can tell. Each round trip is one, and so is a message sent without waiting for its
    /// answer (tokio-postgres closes a statement it prepared from text that way); a message
    /// over 64 KiB takes more.
    requests: Option<u64>,
    /// Transactions committed or rolled back in the database (`pg_stat_database`).
    transactions: u64,
    /// Executed statements by calls, most first, with their normalised text
    /// (`pg_stat_statements`), when it is loaded.
    statements: Option<Vec<(u64, String)>>,
}

impl Postgres {
    /// Starts the server (durable: fsync, synchronous_commit and full_page_writes on) with
    /// `pg_stat_statements` loaded when it is installed.
    fn start() -> Postgres {
        use base64::Engine as _;
        let server = wasmhooks::postgres::throwaway::Server::start_durable()
            .unwrap_or_else(|e| panic!("could not start PostgreSQL: {e}"));
        let available = server
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'",
            )
            .expect("list PostgreSQL's extensions")
            == "1";
        if available {
            server
                .psql(
                    "postgres",
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
                )
                .expect("preload pg_stat_statements");
            server
                .restart()
                .unwrap_or_else(|e| panic!("could not restart PostgreSQL: {e}"));
            server
                .psql("postgres", "CREATE EXTENSION pg_stat_statements")
                .expect("create the pg_stat_statements extension");
        }
        let cluster = server
            .psql("postgres", "SHOW cluster_name")
            .expect("PostgreSQL's cluster name");
        Postgres {
            server,
            cluster,
            secrets_key: base64::engine::general_purpose::STANDARD
                .encode(rand::random::<[u8; 32]>()),
            counts_statements: available,
            databases: AtomicUsize::new(0),
        }
    }

    /// The server's version and durability settings, for the report.
    fn describe(&self) -> String {
        let settings = self
            .psql(
                "SELECT current_setting('server_version') || ', fsync ' || current_setting('fsync') \
                 || ', synchronous_commit ' || current_setting('synchronous_commit') \
                 || ', full_page_writes ' || current_setting('full_page_writes')",
            )
            .unwrap_or_else(|e| format!("settings unknown: {e}"));
        format!("PostgreSQL {settings}")
    }

    /// A new, empty database for a run, and the settings that put a host on it.
    fn database(&self) -> (String, Vec<(&'static str, String)>) {
        let name = format!(
            "bench_{}",
            self.databases.fetch_add(1, Ordering::Relaxed) + 1
        );
        tokio::task::block_in_place(|| self.server.create_database(&name))
            .unwrap_or_else(|e| panic!("could not create the database {name}: {e}"));
        let settings = vec![
            ("WASMHOOKS_STORAGE", "postgres".to_string()),
            ("WASMHOOKS_POSTGRES__URL", self.server.url(&name)),
            ("WASMHOOKS_SECRETS__KEY", self.secrets_key.clone()),
        ];
        (name, settings)
    }

    /// Runs `sql` on the `postgres` database (so the bench's own queries stay out of the
    /// counts of the run's database).
    fn psql(&self, sql: &str) -> Result<String, String> {
        tokio::task::block_in_place(|| self.server.psql("postgres", sql)).map_err(|e| e.0)
    }

    /// CPU seconds the server's processes have used: the running ones' own, and through the
    /// postmaster's count of its children it waited for, those of sessions that ended.
    fn cpu_seconds(&self) -> f64 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        let mark = self.cluster.as_bytes();
        entries
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter(|entry| {
                std::fs::read(entry.path().join("cmdline"))
                    .is_ok_and(|cmdline| cmdline.windows(mark.len()).any(|w| w == mark))
            })
            .map(|entry| process_cpu_seconds(&entry.path().to_string_lossy(), true))
            .sum()
    }

    /// The counters [`Postgres::work`] starts from, read as a measured phase begins; forgets
    /// the statements counted so far.
    fn begin_count(&self, database: &str) -> Counters {
        if self.counts_statements {
            self.psql("SELECT pg_stat_statements_reset()")
                .expect("reset pg_stat_statements");
        }
        Counters {
            cpu: self.cpu_seconds(),
            requests: self.requests(),
            transactions: self.transactions(database),
        }
    }

    /// TCP segments with data that clients sent on the server's open connections, from
    /// `ss`; `None` when it cannot be run.
    fn requests(&self) -> Option<u64> {
        let port = self.server.port();
        let output = Command::new("ss")
            .args(["-tinH", "state", "established"])
            .arg(format!("( sport = :{port} )"))
            .output()
            .ok()
            .filter(|output| output.status.success())?;
        let text = String::from_utf8_lossy(&output.stdout);
        Some(
            text.split_whitespace()
                .filter_map(|field| field.strip_prefix("data_segs_in:"))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum(),
        )
    }

    /// What the database did since `begun`, given the server's CPU seconds and requests read
    /// while the hosts still ran; read once the hosts' sessions are over, since a session
    /// reports its transactions when it ends (and only now and then while it runs).
    fn work(
        &self,
        database: &str,
        begun: Counters,
        cpu: f64,
        requests: Option<u64>,
    ) -> DatabaseWork {
        let sessions =
            format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.psql(&sessions).as_deref() != Ok("0") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let statements = self.counts_statements.then(|| {
            let rows = self
                .psql(&format!(
                    "SELECT calls, regexp_replace(left(query, 200), '\\s+', ' ', 'g') \
                     FROM pg_stat_statements \
                     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '{database}') \
                     ORDER BY calls DESC"
                ))
                .expect("read pg_stat_statements");
            rows.lines()
                .filter_map(|row| {
                    let (calls, query) = row.split_once('|')?;
                    Some((calls.parse().ok()?, query.to_string()))
                })
                .collect()
        });
        DatabaseWork {
            cpu: cpu - begun.cpu,
            requests: requests
                .zip(begun.requests)
                .map(|(end, start)| end.saturating_sub(start)),
            transactions: self
                .transactions(database)
                .saturating_sub(begun.transactions),
            statements,
        }
    }

    /// Transactions committed or rolled back in `database` so far.
    fn transactions(&self, database: &str) -> u64 {
        self.psql(&format!(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{database}'"
        ))
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
    }
}

fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

async fn call(client: &reqwest::Client, request: reqwest::RequestBuilder) -> Value {
    let _ = client;
    let response = request.send().await.expect("request to the host");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// The same component with a custom section naming `variant`: another module id, same code.
fn module_variant(bytes: &[u8], variant: u32) -> Vec<u8> {
    let name = b"wasmhooks-bench";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(&variant.to_le_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

async fn upload(client: &reqwest::Client, host: &str, bytes: Vec<u8>, name: &str) -> String {
    let body = call(
        client,
        client
            .post(format!("{host}/v1/modules?name={name}&version=1.0.0"))
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await;
    body["id"].as_str().unwrap().to_string()
}

async fn webhook(client: &reqwest::Client, host: &str, definition: Value) -> String {
    let body = call(
        client,
        client.post(format!("{host}/v1/webhooks")).json(&definition),
    )
    .await;
    body["id"].as_str().unwrap().to_string()
}

/// A small order for the backlog (a million of them must fit the disk).
fn small_order(n: usize) -> Value {
    json!({"id": format!("bench-{n}"), "kind": "order.created",
           "payload": {"id": format!("ORD-{n:08}"), "amount": 250.0}})
}

/// A realistic order (about 2 KB) for event number `n`.
fn order(n: usize, shops: usize) -> Value {
    let items: Vec<Value> = (0..15)
        .map(|i| {
            json!({"sku": format!("SKU-{i:05}"), "name": format!("Product number {i}"),
                   "quantity": i + 1, "unit_price": 12.5 + i as f64, "tax_rate": 0.23})
        })
        .collect();
    json!({
        "id": format!("bench-{n}"), "kind": "order.created",
        "attributes": {"shop": (n % shops.max(1)).to_string()},
        "payload": {
            "id": format!("ORD-{n:08}"), "amount": 250.0, "currency": "EUR", "status": "paid",
            "customer": {"id": "C-77", "email": "anna.kowalska@example.com", "name": "Anna Kowalska"},
            "shipping_address": {"street": "ul. Długa 1", "city": "Gdańsk", "zip": "80-001", "country": "PL"},
            "items": items,
            "created_at": "2026-11-23T10:00:00Z"
        }
    })
}

/// An event's JSON text with its number (and shop) left open: the emitters render each
/// event by filling them in instead of building and serialising a JSON value, so the load
/// generator takes little of the cores the host is measured on.
struct EventTemplate {
    parts: Vec<String>,
}

const NUMBER_MARK: usize = 7_777_777;
const SHOP_MARK: &str = "shop-mark";

impl EventTemplate {
    fn new(shops: usize) -> EventTemplate {
        let text = if shops == 0 {
            small_order(NUMBER_MARK)
        } else {
            let mut event = order(NUMBER_MARK, shops);
            event["attributes"]["shop"] = json!(SHOP_MARK);
            event
        }
        .to_string();
        // Split around every mark: the number (as itself and zero-padded) and the shop.
        let padded = format!("{NUMBER_MARK:08}");
        let plain = NUMBER_MARK.to_string();
        let mut parts = vec![String::new()];
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let next = [
                (padded.as_str(), "\u{1}"),
                (plain.as_str(), "\u{2}"),
                (SHOP_MARK, "\u{3}"),
            ]
            .into_iter()
            .filter_map(|(mark, tag)| rest.find(mark).map(|at| (at, mark, tag)))
            .min_by_key(|(at, mark, _)| (*at, std::cmp::Reverse(mark.len())));
            match next {
                Some((at, mark, tag)) => {
                    parts.last_mut().unwrap().push_str(&rest[..at]);
                    parts.push(tag.to_string());
                    parts.push(String::new());
                    rest = &rest[at + mark.len()..];
                }
                None => {
                    parts.last_mut().unwrap().push_str(rest);
                    rest = "";
                }
            }
        }
        let template = EventTemplate { parts };
        // The rendered text is the very event the JSON builders make.
        for n in [0, 42, 123_456] {
            let expected = if shops == 0 {
                small_order(n)
            } else {
                order(n, shops)
            };
            let rendered: Value = serde_json::from_str(&template.render(n, shops)).unwrap();
            assert_eq!(rendered, expected, "event template for {n}");
        }
        template
    }

    fn render(&self, n: usize, shops: usize) -> String {
        let mut out = String::with_capacity(2300);
        for part in &self.parts {
            match part.as_str() {
                "\u{1}" => out.push_str(&format!("{n:08}")),
                "\u{2}" => out.push_str(&n.to_string()),
                "\u{3}" => out.push_str(&(n % shops.max(1)).to_string()),
                text => out.push_str(text),
            }
        }
        out
    }
}

/// Emits events `range` with `concurrency` connections (at `rate` events/s if given), in
/// POSTs of `batch` that take turns among `hosts`, stamping each event's emit time.
async fn emit(
    client: &reqwest::Client,
    hosts: &[String],
    tally: &Arc<Tally>,
    range: std::ops::Range<usize>,
    args: &Args,
    shops: usize,
    progress: &Arc<AtomicUsize>,
) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let template = Arc::new(EventTemplate::new(shops));
    let hosts: Arc<[String]> = hosts.into();
    let begun = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, hosts, tally, next, progress) = (
            client.clone(),
            hosts.clone(),
            tally.clone(),
            next.clone(),
            progress.clone(),
        );
        let (batch, rate) = (args.batch.max(1), args.rate);
        let template = template.clone();
        let first = range.start;
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= end {
                    break;
                }
                let to = (from + batch).min(end);
                if let Some(rate) = rate {
                    let due = begun + Duration::from_secs_f64((from - first) as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let texts: Vec<String> = (from..to).map(|n| template.render(n, shops)).collect();
                let body = if texts.len() == 1 {
                    texts.into_iter().next().unwrap()
                } else {
                    format!("[{}]", texts.join(","))
                };
                let now = tally.now_us();
                for n in from..to {
                    if let Some(slot) = tally.emitted_at.get(n) {
                        slot.store(now, Ordering::Relaxed);
                    }
                }
                let host = &hosts[(from - first) / batch % hosts.len()];
                let response = client
                    .post(format!("{host}/v1/events"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("emit");
                assert_eq!(response.status().as_u16(), 202, "emit refused");
                progress.fetch_add(to - from, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Draws a progress bar on stderr until `done` says stop.
fn progress_bar(
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Run {
    deliveries: usize,
    seconds: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    /// Per host: CPU seconds during the measured phase and peak RSS in MiB.
    hosts: Vec<(f64, f64)>,
    /// What PostgreSQL did, on `--postgres`.
    database: Option<DatabaseWork>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.deliveries as f64 / self.seconds
    }

    /// Its row of the table: the hosts' CPU and peak RSS summed.
    fn print(&self, what: &str) {
        let cpu: f64 = self.hosts.iter().map(|(cpu, _)| cpu).sum();
        let rss_peak: f64 = self.hosts.iter().map(|(_, rss)| rss).sum();
        println!(
            "| {what} | {} | {:.1} s | **{:.0}/s** | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.0} MiB |",
            self.deliveries,
            self.seconds,
            self.rate(),
            self.p50,
            self.p90,
            self.p99,
            self.max,
            cpu / self.seconds * 100.0,
            rss_peak
        );
    }

    /// What the table's row sums up: each host's share, and PostgreSQL's work per delivery.
    fn print_details(&self, what: &str) {
        if self.hosts.len() > 1 {
            let hosts: Vec<String> = self
                .hosts
                .iter()
                .enumerate()
                .map(|(i, (cpu, rss))| {
                    format!(
                        "host {} CPU {:.0}%, peak RSS {rss:.0} MiB",
                        i + 1,
                        cpu / self.seconds * 100.0
                    )
                })
                .collect();
            println!("- {what}, per host: {}", hosts.join("; "));
        }
        let Some(database) = &self.database else {
            return;
        };
        let deliveries = self.deliveries as f64;
        let requests = database
            .requests
            .map_or("not counted (`ss` did not run)".into(), |n| {
                format!(
                    "**{:.2}** ({n} in all; TCP segments from the hosts: every round trip, \
                     and every statement close sent without waiting)",
                    n as f64 / deliveries
                )
            });
        println!(
            "- {what}, PostgreSQL: CPU **{:.0}%**; per delivery: requests {requests}, \
             transactions **{:.2}** ({} in all)",
            database.cpu / self.seconds * 100.0,
            database.transactions as f64 / deliveries,
            database.transactions
        );
        let Some(statements) = &database.statements else {
            println!(
                "- {what}, statements per delivery: not counted (pg_stat_statements is not installed)"
            );
            return;
        };
        let total: u64 = statements.iter().map(|(calls, _)| calls).sum();
        let control: u64 = statements
            .iter()
            .filter(|(_, query)| {
                let word = query.split_whitespace().next().unwrap_or("");
                ["BEGIN", "COMMIT", "ROLLBACK", "START"]
                    .iter()
                    .any(|w| word.eq_ignore_ascii_case(w))
            })
            .map(|(calls, _)| calls)
            .sum();
        println!(
            "- {what}, statements executed per delivery: **{:.2}** ({total} in all, {:.2} per \
             delivery of them BEGIN/COMMIT/ROLLBACK; a statement sent as text is prepared first, \
             one more round trip that is not counted here), the most executed:",
            total as f64 / deliveries,
            control as f64 / deliveries
        );
        for (calls, query) in statements.iter().take(12) {
            println!(
                "  - {:.3} per delivery ({calls}): `{query}`",
                *calls as f64 / deliveries
            );
        }
    }
}

/// A webhook beside the measured ones, on a receiver of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    /// Answers at once (the baseline for `Slow`: the same work per event).
    Fast,
    /// Answers after 2 s.
    Slow,
}

/// One measured run: fresh hosts (`--hosts`, on a fresh database with `--postgres`),
/// `webhooks` fast webhooks (plus an extra one if asked) made through the first, the events
/// spread over the hosts, until every delivery of the fast webhooks arrived.
async fn run(
    args: &Args,
    postgres: Option<&Postgres>,
    extra: Extra,
    shops: usize,
    modules: usize,
) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let (database, settings) = match postgres {
        Some(postgres) => {
            let (name, settings) = postgres.database();
            (Some(name), settings)
        }
        None => (None, Vec::new()),
    };
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hosts: Vec<Host> = (0..args.hosts)
        .map(|i| Host::start_with(&tmp.path().join(format!("data-{i}")), &settings))
        .collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let host = &urls[0];
    let tally = Tally::new(args.events);
    let fast = receiver(Some(tally.clone()), Duration::ZERO).await;
    let extra_url = match extra {
        Extra::Slow => receiver(None, Duration::from_secs(2)).await,
        Extra::None | Extra::Fast => receiver(None, Duration::ZERO).await,
    };
    let client = client();
    let plugin = wasmhooks::examples::ORDER_THRESHOLD;
    let mut module_ids = Vec::new();
    for m in 0..modules.max(1) {
        let bytes = if modules > 1 {
            module_variant(plugin, m as u32)
        } else {
            plugin.to_vec()
        };
        module_ids.push(upload(&client, host, bytes, &format!("bench-{m}")).await);
    }
    for w in 0..args.webhooks {
        let mut definition = json!({
            "name": format!("bench-{w}"), "event_kinds": ["order.created"],
            "module_id": module_ids[w % module_ids.len()], "url": format!("{fast}/hook/{w}"),
            "config": {"threshold": 100}
        });
        if shops > 1 {
            definition["scope"] = json!({"shop": [w.to_string()]});
        }
        webhook(&client, host, definition).await;
    }
    if extra != Extra::None {
        webhook(
            &client,
            host,
            json!({"name": "extra", "event_kinds": ["order.created"], "module_id": module_ids[0],
                   "url": extra_url, "config": {"threshold": 100}, "timeout": "10s"}),
        )
        .await;
    }
    if urls.len() > 1 {
        let webhooks = args.webhooks + usize::from(extra != Extra::None);
        wait_until_routed(&client, &urls, webhooks).await;
    }
    let expected = if shops > 1 {
        args.events
    } else {
        args.events * args.webhooks
    };
    let emitted = Arc::new(AtomicUsize::new(0));
    let t = tally.clone();
    let bar = progress_bar(
        match extra {
            Extra::None => "run",
            Extra::Fast => "with a second fast receiver",
            Extra::Slow => "with a slow receiver",
        },
        emitted.clone(),
        args.events,
        Arc::new(move || t.received.load(Ordering::Relaxed)),
        expected,
    );
    let counted = match (postgres, &database) {
        (Some(postgres), Some(database)) => Some(postgres.begin_count(database)),
        _ => None,
    };
    let cpu_before: Vec<f64> = hosts.iter().map(Host::cpu_seconds).collect();
    let first_emit_us = tally.now_us();
    emit(
        &client,
        &urls,
        &tally,
        0..args.events,
        args,
        shops,
        &emitted,
    )
    .await;
    all_delivered(&tally, expected).await;
    bar.store(true, Ordering::Relaxed);
    let seconds =
        (tally.last_receipt_us.load(Ordering::Relaxed) - first_emit_us) as f64 / 1_000_000.0;
    let database_cpu = postgres.map(Postgres::cpu_seconds);
    let hosts_used: Vec<(f64, f64)> = hosts
        .iter()
        .zip(cpu_before)
        .map(|(host, before)| (host.cpu_seconds() - before, host.rss_mib().1))
        .collect();
    let mut latencies = tally.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    std::thread::sleep(Duration::from_millis(300));
    // Once every delivery's outcome is written (so that its work is all counted), what
    // PostgreSQL was sent.
    let ended = match (postgres, database_cpu) {
        (Some(postgres), Some(cpu)) => {
            no_pending(&client, host).await;
            Some((cpu, postgres.requests()))
        }
        _ => None,
    };
    for host in hosts {
        host.stop();
    }
    let database = match (postgres, database, counted, ended) {
        (Some(postgres), Some(name), Some(begun), Some((cpu, requests))) => {
            Some(postgres.work(&name, begun, cpu, requests))
        }
        _ => None,
    };
    Run {
        deliveries: expected,
        seconds,
        p50: percentile(&latencies, 0.5),
        p90: percentile(&latencies, 0.9),
        p99: percentile(&latencies, 0.99),
        max: percentile(&latencies, 1.0),
        hosts: hosts_used,
        database,
    }
}

/// Waits until every host routes events to the `webhooks` webhooks made through the first
/// (another host learns of them within about a second): emits a probe event to each host
/// until that host makes a delivery of it for each webhook, then waits until those are
/// evaluated (by a host that compiles the plugin first if it has not yet). A probe's amount is
/// below the plugin's threshold, so its deliveries are skipped, never sent.
async fn wait_until_routed(client: &reqwest::Client, hosts: &[String], webhooks: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = webhooks.clamp(1, 250);
    for (h, host) in hosts.iter().enumerate() {
        let mut attempt = 0;
        loop {
            let id = format!("probe-{h}-{attempt}");
            attempt += 1;
            call(
                client,
                client.post(format!("{host}/v1/events")).json(&json!({
                    "id": id, "kind": "order.created", "attributes": {"shop": "0"},
                    "payload": {"id": "PROBE", "amount": 0.0}
                })),
            )
            .await;
            let listing = format!("{host}/v1/deliveries?event_id={id}&limit={expected}");
            let (routed, evaluated) = loop {
                let listed = call(client, client.get(&listing)).await;
                let deliveries = listed["data"].as_array().cloned().unwrap_or_default();
                let evaluated = deliveries.iter().all(|d| d["status"] != "pending");
                if deliveries.len() < expected || evaluated || Instant::now() > deadline {
                    break (deliveries.len(), evaluated);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if routed >= expected && evaluated {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after 60 s, host {} routes events to {routed} of the {expected} webhooks{}",
                h + 1,
                if evaluated { "" } else { ", not all evaluated" }
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits (up to 10 s) until `host` lists no pending delivery.
async fn no_pending(client: &reqwest::Client, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pending = call(
            client,
            client.get(format!("{host}/v1/deliveries?status=pending&limit=1")),
        )
        .await;
        if pending["data"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `expected` deliveries arrived; panics if none arrives for a minute, or after
/// ten minutes.
async fn all_delivered(tally: &Tally, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = (0, Instant::now());
    while tally.received.load(Ordering::Relaxed) < expected {
        let now = tally.received.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(60),
            "deliveries stalled at {now}/{expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The raw limit: a plain keep-alive client posting the same bodies to the same kind of
/// receiver with `concurrency` requests in flight.
async fn raw(total: usize, concurrency: usize) -> f64 {
    let tally = Tally::new(0);
    let url = receiver(Some(tally.clone()), Duration::ZERO).await;
    let body = serde_json::to_vec(&json!({
        "event_id": "raw", "event": "order.created", "order_id": "ORD-00000001",
        "amount": 250.0, "currency": "EUR", "customer_email": "anna.kowalska@example.com",
        "message": "Order ORD-00000001 for 250 EUR needs review"
    }))
    .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, body) = (client.clone(), url.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let _ = response.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

const HEADER: &str = "| run | deliveries | time | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | host CPU | host peak RSS |\n|---|---|---|---|---|---|---|---|---|---|";

async fn backlog(args: &Args) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let host = Host::start(&data);
    let client = client();
    let module = upload(
        &client,
        &host.url,
        wasmhooks::examples::ORDER_THRESHOLD.to_vec(),
        "bench",
    )
    .await;
    webhook(
        &client,
        &host.url,
        json!({"name": "later", "event_kinds": ["order.created"], "module_id": module,
               "url": "http://127.0.0.1:9/never", "delay": "1h", "config": {"threshold": 100}}),
    )
    .await;
    let tally = Tally::new(args.pending);
    let emitted = Arc::new(AtomicUsize::new(0));
    let e = emitted.clone();
    let bar = progress_bar(
        "queueing",
        emitted.clone(),
        args.pending,
        Arc::new(move || e.load(Ordering::Relaxed)),
        args.pending,
    );
    let started = Instant::now();
    let emit_args = Args {
        batch: args.batch.max(1000),
        concurrency: 4,
        rate: None,
        ..args.clone()
    };
    emit(
        &client,
        std::slice::from_ref(&host.url),
        &tally,
        0..args.pending,
        &emit_args,
        0,
        &emitted,
    )
    .await;
    bar.store(true, Ordering::Relaxed);
    let queued_in = started.elapsed().as_secs_f64();
    let (rss_now, rss_peak) = host.rss_mib();
    println!(
        "- queued {} delayed deliveries in {queued_in:.1} s ({:.0} events/s, batches of {}); host RSS {rss_now:.0} MiB now, {rss_peak:.0} MiB peak",
        args.pending,
        args.pending as f64 / queued_in,
        emit_args.batch
    );
    host.stop();

    // Restart on the same data: time to answer, then to deliver a new event.
    let host = Host::start(&data);
    let answered = host.ready_after;
    let tally = Tally::new(1);
    let url = receiver(Some(tally.clone()), Duration::ZERO).await;
    webhook(
        &client,
        &host.url,
        json!({"name": "now", "event_kinds": ["order.now"], "module_id": module,
               "url": url, "config": {"threshold": 100}}),
    )
    .await;
    let mut event = order(0, 1);
    event["kind"] = json!("order.now");
    event["id"] = json!("after-restart");
    call(
        &client,
        client.post(format!("{}/v1/events", host.url)).json(&event),
    )
    .await;
    while tally.received.load(Ordering::Relaxed) == 0 {
        assert!(
            host.started.elapsed() < Duration::from_secs(120),
            "no delivery after restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = host.started.elapsed();
    let (rss_now, _) = host.rss_mib();
    println!(
        "- restart with {} pending: answering after {:.2} s, first new delivery after {:.2} s; host RSS {rss_now:.0} MiB",
        args.pending,
        answered.as_secs_f64(),
        delivered.as_secs_f64()
    );
    host.stop();
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du` counts them).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `wasmhooks_pruned_total` by kind (deliveries, events) from the host's `/metrics`.
async fn pruned(client: &reqwest::Client, host: &str) -> (u64, u64) {
    let text = match client.get(format!("{host}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let count = |kind: &str| {
        let name = format!("wasmhooks_pruned_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    (count("deliveries"), count("events"))
}

/// The soak: a steady rate to one webhook for minutes with short (or no) retention; every 30 s
/// what the host holds, to see whether memory and disk level off once pruning keeps pace.
async fn soak(args: &Args) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keep = args.keep.as_str();
    let host = Host::start_with(
        &data,
        &[
            ("WASMHOOKS_RETENTION__DELIVERED", keep),
            ("WASMHOOKS_RETENTION__FAILED", keep),
            ("WASMHOOKS_RETENTION__EVENTS", keep),
        ],
    );
    let tally = Tally::new(args.events);
    let url = receiver(Some(tally.clone()), Duration::ZERO).await;
    let client = client();
    let module = upload(
        &client,
        &host.url,
        wasmhooks::examples::ORDER_THRESHOLD.to_vec(),
        "bench",
    )
    .await;
    webhook(
        &client,
        &host.url,
        json!({"name": "soak", "event_kinds": ["order.created"], "module_id": module,
               "url": format!("{url}/hook/0"), "config": {"threshold": 100}}),
    )
    .await;
    println!(
        "retention {keep} (delivered, failed, events), interval {}\n",
        std::env::var("WASMHOOKS_RETENTION__INTERVAL").unwrap_or_else(|_| "10s (default)".into())
    );
    println!("| elapsed | delivered | deliveries/s | p99 ms | host CPU | host RSS | data dir on disk | pruned deliveries | pruned events |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let emitted = Arc::new(AtomicUsize::new(0));
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let first_emit_us = tally.now_us();
    let emitting = async {
        emit(
            &client,
            std::slice::from_ref(&host.url),
            &tally,
            0..args.events,
            args,
            1,
            &emitted,
        )
        .await;
        let emitted_in = started.elapsed();
        all_delivered(&tally, args.events).await;
        done.store(true, Ordering::Relaxed);
        emitted_in
    };
    // Every 30 s (and at the end): the window's deliveries, their p99 and the host's CPU, then
    // what the host holds.
    let sampling = async {
        let (mut seen, mut cpu, mut at) = (0, host.cpu_seconds(), started);
        let mut next = 30;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let finished = done.load(Ordering::Relaxed);
            if started.elapsed() < Duration::from_secs(next) && !finished {
                continue;
            }
            next += 30;
            let window = {
                let latencies = tally.latencies_us.lock().unwrap();
                let mut window = latencies[seen..].to_vec();
                seen = latencies.len();
                window.sort_unstable();
                window
            };
            let (cpu_now, seconds) = (host.cpu_seconds(), at.elapsed().as_secs_f64());
            let (deliveries, events) = pruned(&client, &host.url).await;
            println!(
                "| {:.0} s | {} | {:.0}/s | {:.1} | {:.0}% | {:.0} MiB | {:.0} MiB | {deliveries} | {events} |",
                started.elapsed().as_secs_f64(),
                tally.received.load(Ordering::Relaxed),
                window.len() as f64 / seconds,
                percentile(&window, 0.99),
                (cpu_now - cpu) / seconds * 100.0,
                host.rss_mib().0,
                disk_usage(&data) as f64 / (1u64 << 20) as f64,
            );
            (cpu, at) = (cpu_now, Instant::now());
            if finished {
                break;
            }
        }
    };
    let (emitted_in, ()) = tokio::join!(emitting, sampling);
    let planned = args.events as f64 / args.rate.unwrap();
    let last_us = tally.last_receipt_us.load(Ordering::Relaxed);
    let seconds = (last_us - first_emit_us) as f64 / 1_000_000.0;
    let mut latencies = tally.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    let (_, rss_peak) = host.rss_mib();
    // Kept up: the emitters (each POST waits for its 202) stayed on schedule, and the
    // deliveries ended within a second of the last emit.
    let lag = emitted_in.as_secs_f64() - planned;
    let drained = seconds - planned;
    println!(
        "\n- {} events in {:.1} s (planned {planned:.0} s): **{:.0} deliveries/s**; p50 **{:.1} ms**, p90 {:.1} ms, p99 **{:.1} ms**, max {:.1} ms; host peak RSS {rss_peak:.0} MiB",
        args.events,
        seconds,
        args.events as f64 / seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!(
        "- kept up: **{}** (emitters {lag:+.1} s against the schedule, last delivery {drained:+.1} s after the planned end)",
        if lag < 1.0 && drained < 1.0 { "yes" } else { "no" }
    );
    host.stop();
}

/// The files of `dir` (recursively) with their allocated sizes in bytes, largest first.
fn files_on_disk(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                let name = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string();
                out.push((name, meta.blocks() * 512));
            }
        }
    }
    out.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    out
}

/// `--stored N` events delivered, a clean stop and a start on the same data: the idle
/// host's memory then, which should not grow with the history it stores.
async fn idle(args: &Args) {
    let tmp = tempfile::tempdir().unwrap();
    let data = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    let host = Host::start(&data);
    let client = client();
    if args.stored > 0 {
        let module = upload(
            &client,
            &host.url,
            wasmhooks::examples::ORDER_THRESHOLD.to_vec(),
            "bench",
        )
        .await;
        let tally = Tally::new(args.stored);
        let url = receiver(Some(tally.clone()), Duration::ZERO).await;
        webhook(
            &client,
            &host.url,
            json!({"name": "stored", "event_kinds": ["order.created"], "module_id": module,
                   "url": url, "config": {"threshold": 100}}),
        )
        .await;
        let emitted = Arc::new(AtomicUsize::new(0));
        let t = tally.clone();
        let bar = progress_bar(
            "storing",
            emitted.clone(),
            args.stored,
            Arc::new(move || t.received.load(Ordering::Relaxed)),
            args.stored,
        );
        let started = Instant::now();
        let emit_args = Args {
            batch: args.batch.max(1000),
            concurrency: 4,
            rate: args.rate,
            ..args.clone()
        };
        emit(
            &client,
            std::slice::from_ref(&host.url),
            &tally,
            0..args.stored,
            &emit_args,
            0,
            &emitted,
        )
        .await;
        // Every delivery ends delivered, unless its plugin run failed (a CPU limit hit
        // while the machine is busy): done when nothing has arrived for a while and none is
        // pending.
        let mut last = (0, Instant::now());
        while tally.received.load(Ordering::Relaxed) < args.stored {
            let now = tally.received.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
            if last.1.elapsed() > Duration::from_secs(10) {
                let pending = call(
                    &client,
                    client.get(format!("{}/v1/deliveries?status=pending&limit=1", host.url)),
                )
                .await;
                if pending["data"].as_array().is_some_and(Vec::is_empty) {
                    break;
                }
                assert!(
                    last.1.elapsed() < Duration::from_secs(60),
                    "deliveries stalled at {now}/{}",
                    args.stored
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bar.store(true, Ordering::Relaxed);
        let (rss_now, rss_peak) = host.rss_mib();
        println!(
            "- stored {} events in {:.1} s, {} delivered (the rest failed); host RSS {rss_now:.0} MiB now, {rss_peak:.0} MiB peak",
            args.stored,
            started.elapsed().as_secs_f64(),
            tally.received.load(Ordering::Relaxed)
        );
    }
    let stopped_in = host.terminate();
    println!(
        "- SIGTERM: the host exited in {:.2} s",
        stopped_in.as_secs_f64()
    );

    let host = Host::start(&data);
    println!(
        "- restarted: answering after {:.2} s",
        host.ready_after.as_secs_f64()
    );
    for settle in [5, 15] {
        let at = host.started + host.ready_after + Duration::from_secs(settle);
        tokio::time::sleep_until(at.into()).await;
        let (rss, _) = host.rss_mib();
        let (anon, file) = host.rss_split_mib();
        println!(
            "- idle {settle} s after it answered: **RSS {rss:.1} MiB** (anonymous {anon:.1} MiB, file-backed {file:.1} MiB)"
        );
    }
    let files = files_on_disk(&data);
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let largest: Vec<String> = files
        .iter()
        .take(4)
        .map(|(name, size)| format!("{name} {:.1} MiB", *size as f64 / 1048576.0))
        .collect();
    println!(
        "- data dir: {:.1} MiB on disk ({})",
        total as f64 / 1048576.0,
        largest.join(", ")
    );
    host.terminate();
}

fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let postgres = args.postgres.then(Postgres::start);
    let postgres = postgres.as_ref();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if args.scenario == "idle" {
            println!(
                "\nscenario `idle`: {} events stored, then a restart, on {}\n",
                args.stored,
                args.data_dir
                    .as_ref()
                    .map_or("a temporary data dir".into(), |d| d.display().to_string())
            );
            idle(&args).await;
            return;
        }
        let storage = match postgres {
            Some(_) if args.hosts > 1 => format!("PostgreSQL, {} hosts", args.hosts),
            Some(_) => "PostgreSQL, 1 host".to_string(),
            None => "sled".to_string(),
        };
        println!(
            "\nscenario `{}`: {} events, {} webhook(s), {} emitting connection(s), batch {}{}; {}\n",
            args.scenario,
            args.events,
            args.webhooks,
            args.concurrency,
            args.batch,
            args.rate.map_or(String::new(), |r| format!(", {r} events/s")),
            match postgres {
                Some(postgres) => format!("{storage} on {}", postgres.describe()),
                None => storage.clone(),
            }
        );
        match args.scenario.as_str() {
            "flat" | "rate" => {
                let run = run(&args, postgres, Extra::None, 1, 1).await;
                let what = format!("{}, {storage}", args.scenario);
                println!("{HEADER}");
                run.print(&what);
                println!();
                run.print_details(&what);
                let raw = raw(run.deliveries.max(20_000), 32).await;
                println!(
                    "- raw limit: a keep-alive client, 32 in flight, same bodies, same receiver: **{raw:.0} requests/s**"
                );
                println!(
                    "- host / raw: **{:.3}**",
                    run.rate() / raw
                );
            }
            "slow" => {
                let base = run(&args, postgres, Extra::Fast, 1, 1).await;
                let slow = run(&args, postgres, Extra::Slow, 1, 1).await;
                println!("{HEADER}");
                base.print("plus a webhook on a second fast receiver (baseline)");
                slow.print("plus a webhook on a receiver answering after 2 s");
                println!();
                base.print_details("baseline");
                slow.print_details("slow receiver");
                println!(
                    "- the slow receiver changed the others' throughput by **{:+.1}%**",
                    (slow.rate() / base.rate() - 1.0) * 100.0
                );
            }
            "scale" => {
                let args = Args {
                    webhooks: 1000,
                    ..args.clone()
                };
                let run = run(&args, postgres, Extra::None, 1000, 100).await;
                println!("{HEADER}");
                run.print("1,000 webhooks, 100 modules, one match per event");
                println!();
                run.print_details(&storage);
            }
            "backlog" => backlog(&args).await,
            "idle" => unreachable!("idle was run above"),
            "soak" => soak(&args).await,
            other => unreachable!("scenario {other} was checked"),
        }
    });
}
