//! The PostgreSQL server of a `--postgres` bench, a fresh database per run, and what the
//! database did during a measured phase (CPU, requests, transactions, statements).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::host::process_cpu_seconds;

/// The server's counters as a measured phase begins.
#[derive(Clone, Copy)]
pub(crate) struct Counters {
    /// CPU seconds of its processes.
    cpu: f64,
    /// TCP segments with data received on its open connections.
    requests: Option<u64>,
    /// Transactions in the run's database.
    transactions: u64,
}

/// The PostgreSQL server of a `--postgres` bench, with durable settings, and a fresh
/// database for every run on it.
pub(crate) struct Postgres {
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
pub(crate) struct DatabaseWork {
    /// CPU seconds of the server's processes (all of them: the hosts' sessions, the WAL
    /// writer, the checkpointer).
    pub(crate) cpu: f64,
    /// Requests the hosts sent it: TCP segments with data on its connections, when `ss`
    /// can tell. Each round trip is one, and so is a message sent without waiting for its
    /// answer (tokio-postgres closes a statement it prepared from text that way); a message
    /// over 64 KiB takes more.
    pub(crate) requests: Option<u64>,
    /// Transactions committed or rolled back in the database (`pg_stat_database`).
    pub(crate) transactions: u64,
    /// Executed statements by calls, most first, with their normalised text
    /// (`pg_stat_statements`), when it is loaded.
    pub(crate) statements: Option<Vec<(u64, String)>>,
}

impl Postgres {
    /// Starts the server (durable: fsync, synchronous_commit and full_page_writes on) with
    /// `pg_stat_statements` loaded when it is installed.
    pub(crate) fn start() -> Postgres {
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
    pub(crate) fn describe(&self) -> String {
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
    pub(crate) fn database(&self) -> (String, Vec<(&'static str, String)>) {
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
    pub(crate) fn cpu_seconds(&self) -> f64 {
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
    pub(crate) fn begin_count(&self, database: &str) -> Counters {
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
    pub(crate) fn requests(&self) -> Option<u64> {
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
    pub(crate) fn work(
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
