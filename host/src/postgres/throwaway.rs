//! A throwaway PostgreSQL server for tests and benchmarks.
//!
//! [`Server::shared`] starts one server per process on first use; [`Server::start`] starts
//! one of its own for tests that stop and restart the database. Each server gets a fresh
//! cluster (`initdb`, trust authentication, superuser `wasmhooks`, UTF-8, locale C) in a
//! directory under `$TMPDIR/wasmhooks-pg-<uid>/` and listens on 127.0.0.1 only, on a free
//! port, with no Unix socket.
//!
//! It needs PostgreSQL's server binaries (`initdb`, `postgres`, and `psql` beside them or on
//! `PATH`). They are looked for in the directory named by `WASMHOOKS_PG_BIN` if that is set,
//! then next to the `initdb` found on `PATH` (symlinks resolved), then in the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout). Missing binaries are an error, never a
//! reason to skip: install Debian's `postgresql` package.
//!
//! The server is tuned for speed, not safety: `fsync`, `synchronous_commit` and
//! `full_page_writes` are off, so its data is not durable against power loss or a kernel
//! crash; a clean stop keeps everything. A server that is killed may also lose its last
//! fraction of a second of commits, those whose WAL was not flushed yet (a `CHECKPOINT`, or
//! `SET synchronous_commit = on` in the session, prevents that). It allows 200
//! connections, has 64 MB of shared buffers, keeps dynamic shared memory in its data
//! directory (not `/dev/shm`) and runs in UTC.
//!
//! PostgreSQL refuses to run as root, so when this process is root the cluster is owned by,
//! and the server runs as, the user `nobody`.
//!
//! No server outlives its process: `postgres` runs as a direct child that the kernel kills
//! (`PR_SET_PDEATHSIG`) when this process dies, however it dies. The shared server is shut
//! down and removed when the process exits normally; the directories (and shared memory) of
//! processes that were killed are removed by the next server started by the same user.
//! Linux only, like those means.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The superuser every cluster is created with.
const USER: &str = "wasmhooks";
/// Why a server could not be started when no binaries are found.
const NOT_FOUND: &str = "PostgreSQL's server binaries (initdb, postgres) were not found on \
     PATH or in /usr/lib/postgresql/*/bin: install Debian's `postgresql` package (apt-get \
     install postgresql), or set WASMHOOKS_PG_BIN";
/// Where Debian installs each major version's binaries (`<version>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
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
/// How old a server directory without an owner file must be before it counts as stale.
const UNOWNED_GRACE: Duration = Duration::from_secs(60);
/// The file in a server directory that names the process owning it.
const OWNER_FILE: &str = "owner.pid";
/// The file in a server directory that receives the server's output.
const LOG_FILE: &str = "postgres.log";
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
        let bin = bin_dir()?;
        let base = base_dir()?;
        reap_stale(&base);
        let dir = new_server_dir(&base)?;
        init_cluster(bin, dir.path())?;
        let mut server = Server {
            dir,
            bin,
            port: 0,
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
            .arg(format!("cluster_name={}", self.cluster_name()))
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

/// The directory holding the server binaries, found once per process.
fn bin_dir() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        find_bin_dir(
            std::env::var_os("WASMHOOKS_PG_BIN").as_deref(),
            std::env::var_os("PATH").as_deref(),
            Path::new(DEBIAN_ROOT),
        )
    });
    found.as_deref().map_err(Clone::clone)
}

/// Finds the server binaries: in `env_dir` (`WASMHOOKS_PG_BIN`) if given, else next to the
/// `initdb` on `path`, else in the newest `<debian_root>/<version>/bin`.
fn find_bin_dir(
    env_dir: Option<&OsStr>,
    path: Option<&OsStr>,
    debian_root: &Path,
) -> Result<PathBuf, String> {
    if let Some(dir) = env_dir {
        let dir = PathBuf::from(dir);
        if !has_server(&dir) {
            return Err(format!(
                "WASMHOOKS_PG_BIN is {}, which does not hold PostgreSQL's server binaries \
                 (initdb, postgres)",
                dir.display()
            ));
        }
        return Ok(dir);
    }
    let beside_initdb = find_on_path("initdb", path).and_then(|initdb| {
        let resolved = fs::canonicalize(&initdb).ok()?;
        [resolved, initdb]
            .iter()
            .filter_map(|file| file.parent())
            .find(|dir| has_server(dir))
            .map(Path::to_path_buf)
    });
    beside_initdb
        .or_else(|| newest_debian_bin_dir(debian_root))
        .ok_or_else(|| NOT_FOUND.to_string())
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

fn find_on_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// The `bin` directory of the highest version under `root` that holds the server binaries.
fn newest_debian_bin_dir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .max()
        .map(|(_, bin)| bin)
}

/// A client program: the one beside the server binaries, else the one on `PATH`.
fn tool(bin: &Path, name: &str) -> PathBuf {
    let beside = bin.join(name);
    if beside.is_file() {
        return beside;
    }
    find_on_path(name, std::env::var_os("PATH").as_deref()).unwrap_or(beside)
}

/// The user and group the server runs as: `nobody` when this process is root (PostgreSQL
/// refuses to run as root), else this process's own.
fn server_user() -> Option<(libc::uid_t, libc::gid_t)> {
    static NOBODY: OnceLock<(libc::uid_t, libc::gid_t)> = OnceLock::new();
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    Some(*NOBODY.get_or_init(|| lookup_user(c"nobody").unwrap_or((65534, 65534))))
}

fn lookup_user(name: &std::ffi::CStr) -> Option<(libc::uid_t, libc::gid_t)> {
    // SAFETY: passwd is plain data that getpwnam_r fills in; zeroes are a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer's length is passed with it.
    let status = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    (status == 0 && !found.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

fn run_as_server_user(command: &mut Command) {
    if let Some((uid, gid)) = server_user() {
        command.uid(uid).gid(gid);
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawned it exits, i.e. (with
/// [`spawn_from_lasting_thread`]) when this process dies.
///
/// std runs `pre_exec` closures after it has applied `uid`/`gid`, which matters: the kernel
/// clears the parent-death signal whenever the child's credentials change.
fn die_with_this_process(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    let arm = move || {
        // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the signal was armed.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe calls, as pre_exec requires.
    unsafe { command.pre_exec(arm) };
}

/// A spawn request for the lasting thread, with where to send the child.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from a thread that lives as long as the process: the parent-death
/// signal fires when the spawning *thread* exits, so children spawned from short-lived
/// threads (each test runs on its own) would be killed with them.
fn spawn_from_lasting_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<io::Result<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("postgres-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| requests)
    });
    let spawner = spawner.as_ref().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not start the spawning thread: {e}"),
        )
    })?;
    let (reply, spawned) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawning thread is gone"))?;
    spawned
        .recv()
        .map_err(|_| io::Error::other("the spawning thread is gone"))?
}

/// The directory holding every server directory of this user, created if missing.
fn base_dir() -> Result<PathBuf, String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    let base = std::env::temp_dir().join(format!("wasmhooks-pg-{uid}"));
    if let Err(e) = fs::create_dir(&base) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(format!("could not create {}: {e}", base.display()));
        }
    }
    let meta = fs::symlink_metadata(&base)
        .map_err(|e| format!("could not inspect {}: {e}", base.display()))?;
    if !meta.is_dir() || meta.uid() != uid {
        return Err(format!(
            "{} is not a directory owned by uid {uid}; remove it",
            base.display()
        ));
    }
    // Searchable by all so that `nobody` can reach its directory when we are root.
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("could not set the permissions of {}: {e}", base.display()))?;
    if let Some((server_uid, _)) = server_user() {
        check_searchable(&base, server_uid)?;
    }
    Ok(base)
}

/// Checks that every directory above `dir` lets others through, so the server's user can
/// reach its cluster.
fn check_searchable(dir: &Path, server_uid: libc::uid_t) -> Result<(), String> {
    for ancestor in dir.ancestors().skip(1) {
        let mode = fs::metadata(ancestor).map_or(0, |m| m.mode());
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} is not searchable by others, so PostgreSQL cannot reach its data under it \
                 as user nobody (uid {server_uid}), which it runs as because it refuses to run \
                 as root; set TMPDIR to a directory every user can reach, such as /tmp",
                ancestor.display()
            ));
        }
    }
    Ok(())
}

/// A fresh server directory under `base`, marked as this process's and owned by the server's
/// user.
fn new_server_dir(base: &Path) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("pg-")
        .tempdir_in(base)
        .map_err(|e| format!("could not create a directory in {}: {e}", base.display()))?;
    let owner = dir.path().join(OWNER_FILE);
    fs::write(&owner, std::process::id().to_string())
        .map_err(|e| format!("could not write {}: {e}", owner.display()))?;
    if let Some((uid, gid)) = server_user() {
        chown(dir.path(), uid, gid)?;
    }
    Ok(dir)
}

fn chown(path: &Path, uid: libc::uid_t, gid: libc::gid_t) -> Result<(), String> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::chown(c_path.as_ptr(), uid, gid) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!(
            "could not chown {} to {uid}:{gid}: {e}",
            path.display()
        ));
    }
    Ok(())
}

/// Creates the cluster in `<dir>/data` and appends the test settings to its configuration.
fn init_cluster(bin: &Path, dir: &Path) -> Result<(), String> {
    let data = dir.join("data");
    let program = bin.join("initdb");
    let mut command = Command::new(&program);
    command
        .arg("-D")
        .arg(&data)
        .args([
            "--auth=trust",
            &format!("--username={USER}"),
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    run_as_server_user(&mut command);
    let output = command
        .output()
        .map_err(|e| format!("could not run {}: {e}", program.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}{}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let config = data.join("postgresql.conf");
    OpenOptions::new()
        .append(true)
        .open(&config)
        .and_then(|mut file| file.write_all(SETTINGS.as_bytes()))
        .map_err(|e| {
            format!(
                "could not append the test settings to {}: {e}",
                config.display()
            )
        })
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("could not find a free port on 127.0.0.1: {e}"))
}

/// Removes the server directories under `base` whose owning process is gone, after killing
/// any postmaster still running from one and freeing its shared memory.
fn reap_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_dir && entry.file_name().as_bytes().starts_with(b"pg-") && is_stale(&dir) {
            release_cluster(&dir.join("data"));
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Whether the process named in the directory's owner file is gone (or, without an owner
/// file, whether the directory is older than a process needs to write one).
fn is_stale(dir: &Path) -> bool {
    let owner = fs::read_to_string(dir.join(OWNER_FILE))
        .ok()
        .and_then(|owner| owner.trim().parse().ok());
    match owner {
        Some(pid) => !is_alive(pid),
        None => fs::metadata(dir)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age > UNOWNED_GRACE),
    }
}

/// Kills the postmaster recorded in `data`'s `postmaster.pid` if it still runs from `data`,
/// and removes the System V shared memory segment it leaves behind when killed.
fn release_cluster(data: &Path) {
    let Ok(pid_file) = fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    // Line 1 is the postmaster's pid; line 7 the shared memory key and id.
    let lines: Vec<&str> = pid_file.lines().collect();
    let Some(pid) = lines
        .first()
        .and_then(|line| line.trim().parse::<libc::pid_t>().ok())
    else {
        return;
    };
    if runs_from(pid, data) {
        // SAFETY: kill has no memory-safety requirements.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + STOP_DEADLINE;
        while is_alive(pid) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
    }
    let shm_id = lines
        .get(6)
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok());
    if let Some(shm_id) = shm_id {
        remove_shared_memory(shm_id, pid);
    }
}

/// Whether process `pid` is a postgres whose command line names `data`.
fn runs_from(pid: libc::pid_t, data: &Path) -> bool {
    let Ok(command_line) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let data = data.as_os_str().as_bytes();
    is_alive(pid)
        && command_line
            .windows(data.len())
            .any(|window| window == data)
}

/// Removes segment `id` if process `creator` (a dead postmaster) created it; the kernel
/// frees it once the postmaster's exiting children have detached.
fn remove_shared_memory(id: libc::c_int, creator: libc::pid_t) {
    // SAFETY: shmid_ds is plain data that shmctl fills in; zeroes are a valid value.
    let mut info: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: info is a valid shmid_ds for IPC_STAT to fill; IPC_RMID takes no buffer.
    unsafe {
        if libc::shmctl(id, libc::IPC_STAT, &mut info) == 0 && info.shm_cpid == creator {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

/// Whether process `pid` exists and is not a zombie (one of another user counts as alive).
fn is_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Names the file the child process of `postmasters_die_with_their_process` reports to.
    const CHILD_REPORT: &str = "WASMHOOKS_PG_THROWAWAY_REPORT";

    fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + deadline;
        while !done() {
            assert!(
                Instant::now() < give_up,
                "timed out after {deadline:?} waiting for {what}"
            );
            thread::sleep(POLL);
        }
    }

    /// The uid a process runs as, from `/proc`.
    fn uid_of(pid: u32) -> libc::uid_t {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The System V shared memory segment recorded in a server directory's `postmaster.pid`.
    fn shm_id_of(dir: &Path) -> libc::c_int {
        let pid_file = fs::read_to_string(dir.join("data").join("postmaster.pid")).unwrap();
        let line = pid_file.lines().nth(6).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_database_holds_what_psql_writes() {
        let server = Server::shared();
        server.create_database("throwaway_roundtrip").unwrap();
        server.create_database("throwaway_roundtrip").unwrap();
        server
            .psql(
                "throwaway_roundtrip",
                "CREATE TABLE greetings (id int PRIMARY KEY, text text); \
                 INSERT INTO greetings VALUES (1, 'hello'), (2, 'wörld');",
            )
            .unwrap();
        let rows = server
            .psql(
                "throwaway_roundtrip",
                "SELECT id, text FROM greetings ORDER BY id",
            )
            .unwrap();
        assert_eq!(rows, "1|hello\n2|wörld");
        assert_eq!(
            server.url("throwaway_roundtrip"),
            format!(
                "postgres://wasmhooks@127.0.0.1:{}/throwaway_roundtrip",
                server.port()
            )
        );
    }

    #[test]
    fn concurrent_creates_of_one_database_all_succeed() {
        let server = Server::shared();
        thread::scope(|scope| {
            let creates: Vec<_> = (0..6)
                .map(|_| scope.spawn(|| server.create_database("throwaway_concurrent")))
                .collect();
            for create in creates {
                create.join().unwrap().unwrap();
            }
        });
        assert_eq!(
            server.psql("throwaway_concurrent", "SELECT 1").unwrap(),
            "1"
        );
    }

    #[test]
    fn the_server_is_tuned_for_tests_and_runs_unprivileged() {
        let server = Server::shared();
        let settings = server
            .psql(
                "postgres",
                "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings \
                 WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', \
                 'max_connections', 'listen_addresses', 'unix_socket_directories', \
                 'server_encoding', 'lc_collate')",
            )
            .unwrap();
        assert_eq!(
            settings,
            "fsync=off,full_page_writes=off,lc_collate=C,listen_addresses=127.0.0.1,\
             max_connections=200,server_encoding=UTF8,synchronous_commit=off,\
             unix_socket_directories="
        );
        let pid = server.postmaster_pid().unwrap();
        match server_user() {
            Some((nobody, _)) => assert_eq!(uid_of(pid), nobody),
            // SAFETY: geteuid cannot fail.
            None => assert_eq!(uid_of(pid), unsafe { libc::geteuid() }),
        }
    }

    #[test]
    fn stop_and_restart_keep_the_data() {
        let server = Server::start().unwrap();
        let port = server.port();
        server.create_database("kept").unwrap();
        server
            .psql("kept", "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
            .unwrap();
        server.stop().unwrap();
        assert!(server.postmaster_pid().is_none());
        let refused = server.psql("kept", "SELECT 1").unwrap_err();
        assert!(refused.0.contains("connection"), "{refused}");
        server.stop().unwrap();
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(server.psql("kept", "SELECT x FROM t").unwrap(), "42");
        server.restart().unwrap();
        assert_eq!(server.psql("kept", "SELECT x FROM t").unwrap(), "42");
        let dir = server.dir.path().to_path_buf();
        let pid = server.postmaster_pid().unwrap() as libc::pid_t;
        drop(server);
        assert!(!dir.exists(), "{} was not removed", dir.display());
        assert!(!is_alive(pid), "postmaster {pid} outlived its server");
    }

    /// Kills the server's postmaster as a crash would and waits until it is gone.
    fn kill_postmaster(server: &Server) {
        let pid = server.postmaster_pid().unwrap() as libc::pid_t;
        // SAFETY: kill has no memory-safety requirements.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_for(
            "the killed postmaster to die",
            Duration::from_secs(60),
            || !is_alive(pid),
        );
    }

    #[test]
    fn restart_recovers_a_server_that_died() {
        let server = Server::start().unwrap();
        server.create_database("crashed").unwrap();
        server
            .psql(
                "crashed",
                "CREATE TABLE t (x int); INSERT INTO t VALUES (7)",
            )
            .unwrap();
        // With synchronous_commit off, a killed server loses commits not yet flushed.
        server.psql("crashed", "CHECKPOINT").unwrap();
        kill_postmaster(&server);
        server.restart().unwrap();
        assert_eq!(server.psql("crashed", "SELECT x FROM t").unwrap(), "7");
        kill_postmaster(&server);
        let stopped = server.stop().unwrap_err();
        assert!(stopped.0.contains("had exited already"), "{stopped}");
        server.restart().unwrap();
        assert_eq!(server.psql("crashed", "SELECT x FROM t").unwrap(), "7");
    }

    /// The checkpointer process of the postmaster `pid`, found in `/proc`.
    fn checkpointer_of(pid: libc::pid_t) -> libc::pid_t {
        let parent_of = |stat: String| -> Option<libc::pid_t> {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(1)?.parse().ok()
        };
        let is_checkpointer = |child: libc::pid_t| {
            let title = fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            parent_of(stat) == Some(pid) && String::from_utf8_lossy(&title).contains("checkpointer")
        };
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .find(|child| is_checkpointer(*child))
            .unwrap()
    }

    #[test]
    fn restart_waits_for_a_dead_servers_processes_to_let_go() {
        let server = Server::start().unwrap();
        let pid = server.postmaster_pid().unwrap() as libc::pid_t;
        let lingering = checkpointer_of(pid);
        // SAFETY: kill has no memory-safety requirements.
        unsafe { libc::kill(lingering, libc::SIGSTOP) };
        kill_postmaster(&server);
        thread::scope(|scope| {
            let restarted = scope.spawn(|| server.restart());
            wait_for(
                "PostgreSQL to find its shared memory held",
                Duration::from_secs(60),
                || {
                    restarted.is_finished()
                        || read_from(&server.log_path(), 0).contains("is still in use")
                },
            );
            // SAFETY: as above.
            unsafe { libc::kill(lingering, libc::SIGKILL) };
            restarted.join().unwrap().unwrap();
        });
        assert_eq!(server.psql("postgres", "SELECT 1").unwrap(), "1");
    }

    #[test]
    fn restart_waits_for_its_port_to_come_free() {
        let server = Server::start().unwrap();
        server.stop().unwrap();
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, server.port())).unwrap();
        thread::scope(|scope| {
            let restarted = scope.spawn(|| server.restart());
            wait_for(
                "PostgreSQL to find its port taken",
                Duration::from_secs(60),
                || {
                    restarted.is_finished()
                        || read_from(&server.log_path(), 0).contains("Address already in use")
                },
            );
            drop(squatter);
            restarted.join().unwrap().unwrap();
        });
        assert_eq!(server.psql("postgres", "SELECT 1").unwrap(), "1");
    }

    #[test]
    fn missing_binaries_name_the_package() {
        let nowhere = tempfile::tempdir().unwrap();
        let error =
            find_bin_dir(None, Some(nowhere.path().as_os_str()), nowhere.path()).unwrap_err();
        assert_eq!(error, NOT_FOUND);
        assert!(error.contains("apt-get install postgresql"));
        let error =
            find_bin_dir(Some(nowhere.path().as_os_str()), None, nowhere.path()).unwrap_err();
        assert!(error.contains("WASMHOOKS_PG_BIN"), "{error}");
    }

    #[test]
    fn the_newest_debian_version_wins() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "12", "16"] {
            let bin = root.path().join(version).join("bin");
            fs::create_dir_all(&bin).unwrap();
            if version != "16" {
                fs::write(bin.join("initdb"), "").unwrap();
                fs::write(bin.join("postgres"), "").unwrap();
            }
        }
        let found = find_bin_dir(None, None, root.path()).unwrap();
        assert_eq!(found, root.path().join("15").join("bin"));
    }

    #[test]
    fn urls_encode_the_database_name() {
        let server = Server::shared();
        assert!(server.url("a b/c").ends_with("/a%20b%2Fc"));
    }

    /// Run as a child process by `postmasters_die_with_their_process`: starts the shared
    /// server from a thread that then exits, and a server of its own, reports both
    /// postmasters and waits to be killed.
    #[test]
    #[ignore = "a helper run in a child process by postmasters_die_with_their_process"]
    fn child_that_gets_killed() {
        let Some(report) = std::env::var_os(CHILD_REPORT) else {
            return;
        };
        thread::spawn(Server::shared).join().unwrap();
        let shared = Server::shared();
        assert_eq!(shared.psql("postgres", "SELECT 1").unwrap(), "1");
        let owned = Server::start().unwrap();
        let lines: Vec<String> = [shared, &owned]
            .iter()
            .map(|server| {
                let pid = server.postmaster_pid().unwrap();
                format!("{pid} {}\n", server.dir.path().display())
            })
            .collect();
        let partial = PathBuf::from(&report).with_extension("partial");
        fs::write(&partial, lines.concat()).unwrap();
        fs::rename(&partial, &report).unwrap();
        loop {
            thread::park();
        }
    }

    #[test]
    fn postmasters_die_with_their_process() {
        let scratch = tempfile::tempdir().unwrap();
        let report = scratch.path().join("report");
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, inner)| inner);
        let stderr = fs::File::create(scratch.path().join("stderr")).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("{module}::child_that_gets_killed"),
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_REPORT, &report)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        wait_for(
            "the child to start its servers",
            Duration::from_secs(180),
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    let stderr = fs::read_to_string(scratch.path().join("stderr")).unwrap();
                    panic!("the child exited ({status}) before reporting:\n{stderr}");
                }
                report.exists()
            },
        );
        let servers: Vec<(libc::pid_t, PathBuf)> = fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|line| {
                let (pid, dir) = line.split_once(' ').unwrap();
                (pid.parse().unwrap(), PathBuf::from(dir))
            })
            .collect();
        assert_eq!(servers.len(), 2);
        for (pid, _) in &servers {
            assert!(
                is_alive(*pid),
                "postmaster {pid} died before its process was killed"
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for (pid, dir) in &servers {
            wait_for(
                &format!("postmaster {pid} to die"),
                Duration::from_secs(60),
                || !is_alive(*pid),
            );
            assert!(dir.exists(), "{} went before it was reaped", dir.display());
        }
        let segments: Vec<libc::c_int> = servers.iter().map(|(_, dir)| shm_id_of(dir)).collect();
        reap_stale(&base_dir().unwrap());
        for (_, dir) in &servers {
            assert!(!dir.exists(), "{} was not reaped", dir.display());
        }
        for id in segments {
            wait_for(
                &format!("shared memory segment {id} to go"),
                Duration::from_secs(60),
                || {
                    // SAFETY: a zeroed shmid_ds is valid for IPC_STAT to fill in.
                    let mut info: libc::shmid_ds = unsafe { std::mem::zeroed() };
                    // SAFETY: info is a valid shmid_ds.
                    unsafe { libc::shmctl(id, libc::IPC_STAT, &mut info) != 0 }
                },
            );
        }
    }
}
