//! A throwaway PostgreSQL server for tests and benchmarks.
//!
//! [`Server::shared`] starts one server per process on first use; [`Server::start`] starts
//! one of its own for tests that stop and restart the database; [`Server::start_durable`]
//! starts one with durable settings, for benchmarks. Each server gets a fresh cluster
//! (`initdb`, trust authentication, superuser `wasmhooks`, UTF-8, locale C) in a directory
//! under `$TMPDIR/wasmhooks-pg-<uid>/` and listens on 127.0.0.1 only, on a free port, with
//! no Unix socket.
//!
//! It needs PostgreSQL's server binaries (`initdb`, `postgres`, and `psql` beside them or on
//! `PATH`). They are looked for in the directory named by `WASMHOOKS_PG_BIN` if that is set,
//! then next to the `initdb` found on `PATH` (symlinks resolved), then in the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout). Missing binaries are an error, never a
//! reason to skip: install Debian's `postgresql` package.
//!
//! Unless it is durable, a server is tuned for speed, not safety: `fsync`,
//! `synchronous_commit` and `full_page_writes` are off, so its data is not durable against
//! power loss or a kernel crash; a clean stop keeps everything. A server that is killed may
//! also lose its last fraction of a second of commits, those whose WAL was not flushed yet (a
//! `CHECKPOINT`, or `SET synchronous_commit = on` in the session, prevents that). A durable
//! server has those three on, as a production server would: every commit waits until its WAL
//! is on disk. Every server allows 200 connections, has 64 MB of shared buffers, keeps
//! dynamic shared memory in its data directory (not `/dev/shm`) and runs in UTC.
//!
//! PostgreSQL refuses to run as root, so when this process is root the cluster is owned by,
//! and the server runs as, the user `nobody`.
//!
//! No server outlives its process: `postgres` runs as a direct child that the kernel kills
//! (`PR_SET_PDEATHSIG`) when this process dies, however it dies. The shared server is shut
//! down and removed when the process exits normally; the directories (and shared memory) of
//! processes that were killed are removed by the next server started by the same user.
//! Linux only, like those means.

mod binaries;
mod process;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use binaries::{bin_dir, tool};
use process::{
    base_dir, die_with_this_process, init_cluster, new_server_dir, reap_stale, release_cluster,
    run_as_server_user, spawn_from_lasting_thread,
};

/// The superuser every cluster is created with.
const USER: &str = "wasmhooks";
/// How long a starting server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a server may take to shut down before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// How long `restart` waits for its port, and for the processes of a server that died, to
/// let go.
const BUSY_DEADLINE: Duration = Duration::from_secs(30);
/// How long `restart` waits before trying again when they have not.
const BUSY_RETRY: Duration = Duration::from_millis(100);
/// How many free ports `start` tries when another process takes the one it picked.
const PORT_ATTEMPTS: usize = 5;
/// How often a waiting loop looks again.
const POLL: Duration = Duration::from_millis(20);
/// The file in a server directory that receives the server's output.
const LOG_FILE: &str = "postgres.log";
/// The settings a durable server runs with, given on its command line (which overrides
/// `postgresql.conf`): PostgreSQL's defaults, under which a commit survives a crash.
const DURABLE_SETTINGS: [&str; 3] = ["fsync=on", "synchronous_commit=on", "full_page_writes=on"];
/// The settings appended to every cluster's `postgresql.conf`.
const SETTINGS: &str = "
# wasmhooks throwaway server: fast, not durable against power loss; a clean stop keeps all.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = '64MB'
dynamic_shared_memory_type = mmap
huge_pages = off
timezone = 'UTC'
";

/// The shared server, or why it could not be started (kept so every caller sees the reason).
static SHARED: OnceLock<Result<Server, ServerError>> = OnceLock::new();

/// A PostgreSQL server that lives in a temporary directory and is removed on drop.
#[derive(Debug)]
pub struct Server {
    /// The server directory: the owner file, `data/` (the cluster) and the log.
    dir: tempfile::TempDir,
    /// The directory holding `initdb` and `postgres`.
    bin: &'static Path,
    port: u16,
    /// Whether it runs with [`DURABLE_SETTINGS`].
    durable: bool,
    /// The running postmaster, `None` while stopped.
    postmaster: Mutex<Option<Child>>,
}

/// Why a throwaway server could not be started, used or stopped (with the server's log
/// where it has something to say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(pub String);

impl From<String> for ServerError {
    fn from(message: String) -> Self {
        ServerError(message)
    }
}

impl Server {
    /// One server per process, started on first use and shared by every test in it.
    ///
    /// # Panics
    /// When the server cannot be started, e.g. because PostgreSQL is not installed.
    pub fn shared() -> &'static Server {
        let shared = SHARED.get_or_init(|| {
            let started = Server::start();
            if started.is_ok() {
                // SAFETY: registers a plain function; atexit has no other requirement.
                unsafe { libc::atexit(discard_shared_at_exit) };
            }
            started
        });
        match shared {
            Ok(server) => server,
            Err(why) => panic!("could not start the shared test PostgreSQL server: {why}"),
        }
    }

    /// A new server of its own, for tests that stop and restart the database.
    pub fn start() -> Result<Server, ServerError> {
        Server::start_with(false)
    }

    /// A new server of its own whose commits are durable (`fsync`, `synchronous_commit` and
    /// `full_page_writes` on), for benchmarks that measure what a production server would do.
    pub fn start_durable() -> Result<Server, ServerError> {
        Server::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Server, ServerError> {
        let bin = bin_dir()?;
        let base = base_dir()?;
        reap_stale(&base);
        let dir = new_server_dir(&base)?;
        init_cluster(bin, dir.path())?;
        let mut server = Server {
            dir,
            bin,
            port: 0,
            durable,
            postmaster: Mutex::new(None),
        };
        server.launch_on_free_port()?;
        Ok(server)
    }

    /// The TCP port it listens on (on 127.0.0.1), the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` on it, e.g. `postgres://wasmhooks@127.0.0.1:5432/db`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{}",
            self.port,
            percent_encode(database)
        )
    }

    /// Creates the database `name` unless it exists already.
    pub fn create_database(&self, name: &str) -> Result<(), ServerError> {
        if self.database_exists(name)? {
            return Ok(());
        }
        let created = self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
        match created {
            // Another caller may have created it in the meantime.
            Err(_) if self.database_exists(name) == Ok(true) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Runs `sql` with `psql` against `database` as the superuser and returns what it
    /// printed: rows unaligned, one per line, columns separated by `|`, no headers. The SQL
    /// is sent as one query string, so several statements run in one implicit transaction
    /// and only the last one's rows are printed.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ServerError> {
        Ok(self.psql_on(self.port, database, sql)?)
    }

    /// Stops the server (a fast shutdown: sessions are ended, everything committed is kept)
    /// and waits until it is down. Stopping a stopped server does nothing.
    pub fn stop(&self) -> Result<(), ServerError> {
        match self.lock().take() {
            Some(mut postmaster) => Ok(self.shut_down(&mut postmaster, libc::SIGINT)?),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same data and port, stopping it first if it runs. A
    /// server that died, or dies while being stopped, is started again all the same and
    /// recovers its data as after a crash (its log tells what happened).
    pub fn restart(&self) -> Result<(), ServerError> {
        let mut postmaster = self.lock();
        if let Some(mut running) = postmaster.take() {
            // Down either way once this returns; how it went down does not matter here.
            let _ = self.shut_down(&mut running, libc::SIGINT);
        }
        let deadline = Instant::now() + BUSY_DEADLINE;
        loop {
            match self.launch(self.port) {
                Ok(started) => {
                    *postmaster = Some(started);
                    return Ok(());
                }
                Err(Launch::Busy(_)) if Instant::now() < deadline => thread::sleep(BUSY_RETRY),
                Err(Launch::Busy(log)) => return Err(self.still_busy(&log).into()),
                Err(Launch::Failed(why)) => return Err(why.into()),
            }
        }
    }

    /// Why `restart` gave up on a server that stayed [`Launch::Busy`].
    fn still_busy(&self, log: &str) -> String {
        format!(
            "could not restart PostgreSQL: for {BUSY_DEADLINE:?} its port {} stayed taken, or \
             processes of its previous run stayed attached to its shared memory; its log \
             ({}):\n{log}",
            self.port,
            self.log_path().display()
        )
    }

    /// The postmaster's process id while it runs.
    #[cfg(test)]
    fn postmaster_pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// The name the server reports as `cluster_name`, unique to this server.
    fn cluster_name(&self) -> String {
        let dir = self.dir.path().file_name().unwrap_or_default();
        format!("wasmhooks-{}", dir.to_string_lossy())
    }

    /// Starts the postmaster on a freshly picked port, picking another when that one is
    /// taken before the server binds it.
    fn launch_on_free_port(&mut self) -> Result<(), String> {
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            match self.launch(self.port) {
                Ok(postmaster) => {
                    *self.lock() = Some(postmaster);
                    return Ok(());
                }
                Err(Launch::Busy(log)) => last_log = log,
                Err(Launch::Failed(why)) => return Err(why),
            }
        }
        Err(format!(
            "could not start PostgreSQL: {PORT_ATTEMPTS} free ports in a row were taken before \
             it could bind them; its log ({}):\n{last_log}",
            self.log_path().display()
        ))
    }

    /// Runs `postgres` on `port` and waits until it accepts connections.
    fn launch(&self, port: u16) -> Result<Child, Launch> {
        let log_start = fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| {
                Launch::Failed(format!("could not open {}: {e}", self.log_path().display()))
            })?;
        let out = log
            .try_clone()
            .map_err(|e| Launch::Failed(format!("could not duplicate the log's handle: {e}")))?;
        let program = self.bin.join("postgres");
        let mut command = Command::new(&program);
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(format!("cluster_name={}", self.cluster_name()));
        if self.durable {
            for setting in DURABLE_SETTINGS {
                command.arg("-c").arg(setting);
            }
        }
        command
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log);
        run_as_server_user(&mut command);
        die_with_this_process(&mut command);
        let mut postmaster = spawn_from_lasting_thread(command)
            .map_err(|e| Launch::Failed(format!("could not run {}: {e}", program.display())))?;
        let ready = self.wait_until_ready(&mut postmaster, port, log_start);
        if ready.is_err() {
            let _ = postmaster.kill();
            let _ = postmaster.wait();
        }
        ready.map(|()| postmaster)
    }

    /// Polls until the server on `port` answers as this cluster, it exits, or the deadline.
    fn wait_until_ready(
        &self,
        postmaster: &mut Child,
        port: u16,
        log_start: u64,
    ) -> Result<(), Launch> {
        let deadline = Instant::now() + READY_DEADLINE;
        let name = self.cluster_name();
        loop {
            if let Ok(Some(status)) = postmaster.try_wait() {
                let log = read_from(&self.log_path(), log_start);
                if is_busy(&log) {
                    return Err(Launch::Busy(tail(&log)));
                }
                return Err(Launch::Failed(format!(
                    "PostgreSQL exited ({status}) before accepting connections; its log ({}):\n{}",
                    self.log_path().display(),
                    tail(&log)
                )));
            }
            if self
                .psql_on(port, "postgres", "SHOW cluster_name")
                .as_deref()
                == Ok(name.as_str())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Launch::Failed(format!(
                    "PostgreSQL did not accept connections on 127.0.0.1:{port} within \
                     {READY_DEADLINE:?}; its log ({}):\n{}",
                    self.log_path().display(),
                    tail(&read_from(&self.log_path(), log_start))
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal` to the postmaster and waits for it to exit, killing it after the
    /// deadline. A postmaster that had exited already is reported as an error.
    fn shut_down(&self, postmaster: &mut Child, signal: libc::c_int) -> Result<(), String> {
        if let Ok(Some(status)) = postmaster.try_wait() {
            return Err(format!(
                "PostgreSQL had exited already ({status}); its log ({}):\n{}",
                self.log_path().display(),
                tail(&read_from(&self.log_path(), 0))
            ));
        }
        // SAFETY: kill has no memory-safety requirements; the pid is our unreaped child.
        unsafe { libc::kill(postmaster.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match postmaster.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "PostgreSQL exited with {status} while shutting down; its log ({}):\n{}",
                        self.log_path().display(),
                        tail(&read_from(&self.log_path(), 0))
                    ))
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                Ok(None) => {
                    let _ = postmaster.kill();
                    let _ = postmaster.wait();
                    return Err(format!(
                        "PostgreSQL did not shut down within {STOP_DEADLINE:?} and was killed"
                    ));
                }
                Err(e) => return Err(format!("could not wait for PostgreSQL to exit: {e}")),
            }
        }
    }

    /// Shuts the server down without keeping its data (an immediate shutdown), unless
    /// another thread holds it, then removes its directory.
    fn discard(&self) {
        let mut postmaster = match self.postmaster.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Busy: the kernel kills it when the process ends and the next start removes it.
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(mut running) = postmaster.take() {
            let _ = self.shut_down(&mut running, libc::SIGQUIT);
        }
        // A postmaster that was killed instead leaves its shared memory behind.
        release_cluster(&self.data_dir());
        let _ = fs::remove_dir_all(self.dir.path());
    }

    fn database_exists(&self, name: &str) -> Result<bool, String> {
        let sql = format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            quote_literal(name)
        );
        Ok(self.psql_on(self.port, "postgres", &sql)? == "1")
    }

    fn psql_on(&self, port: u16, database: &str, sql: &str) -> Result<String, String> {
        let conninfo = format!(
            "host=127.0.0.1 port={port} user={USER} dbname={} connect_timeout=10",
            conninfo_value(database)
        );
        let program = tool(self.bin, "psql");
        let mut command = Command::new(&program);
        command
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &conninfo,
                "-c",
                sql,
            ])
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.as_bytes().starts_with(b"PG") {
                command.env_remove(name);
            }
        }
        let output = command
            .output()
            .map_err(|e| format!("could not run {}: {e}", program.display()))?;
        if !output.status.success() {
            return Err(format!(
                "psql on database {database:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_string())
    }
}

impl Drop for Server {
    /// Shuts the server down (immediately: its data is about to go) and removes its directory.
    fn drop(&mut self) {
        self.discard();
    }
}

/// Why a postmaster did not come up.
enum Launch {
    /// Another process holds the port, or processes of a previous run of the server (which
    /// died) still hold its shared memory; carries the tail of the server's log.
    Busy(String),
    /// Anything else, described with the tail of the server's log.
    Failed(String),
}

/// Whether a postmaster's log says it exited because something it needs is still held.
fn is_busy(log: &str) -> bool {
    log.contains("Address already in use")
        || (log.contains("pre-existing shared memory block") && log.contains("is still in use"))
}

/// Stops the shared server when the process exits normally (test harnesses exit with
/// `exit`, which runs `atexit` handlers); a statically held server is never dropped.
extern "C" fn discard_shared_at_exit() {
    if let Some(Ok(server)) = SHARED.get() {
        server.discard();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("could not find a free port on 127.0.0.1: {e}"))
}

/// The text of the file at `path` from byte `start` on (empty when unreadable).
fn read_from(path: &Path, start: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(start)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last lines of a log, enough to show why a server failed.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a quoted SQL string literal (standard_conforming_strings is on by default).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `value` quoted for a libpq connection string.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `text` with every byte outside URL's unreserved set percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}
