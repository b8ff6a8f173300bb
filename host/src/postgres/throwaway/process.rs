//! The server's processes and what they leave behind: the unprivileged user the server runs
//! as, spawning it so that it dies with this process, its directory and cluster, and the
//! reaping of directories, postmasters and shared memory left by processes that died.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::{POLL, SETTINGS, STOP_DEADLINE, USER};

/// How old a server directory without an owner file must be before it counts as stale.
const UNOWNED_GRACE: Duration = Duration::from_secs(60);
/// The file in a server directory that names the process owning it.
const OWNER_FILE: &str = "owner.pid";

/// The user and group the server runs as: `nobody` when this process is root (PostgreSQL
/// refuses to run as root), else this process's own.
pub(super) fn server_user() -> Option<(libc::uid_t, libc::gid_t)> {
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

pub(super) fn run_as_server_user(command: &mut Command) {
    if let Some((uid, gid)) = server_user() {
        command.uid(uid).gid(gid);
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawned it exits, i.e. (with
/// [`spawn_from_lasting_thread`]) when this process dies.
///
/// std runs `pre_exec` closures after it has applied `uid`/`gid`, which matters: the kernel
/// clears the parent-death signal whenever the child's credentials change.
pub(super) fn die_with_this_process(command: &mut Command) {
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
pub(super) fn spawn_from_lasting_thread(command: Command) -> io::Result<Child> {
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
pub(super) fn base_dir() -> Result<PathBuf, String> {
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
pub(super) fn new_server_dir(base: &Path) -> Result<tempfile::TempDir, String> {
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
pub(super) fn init_cluster(bin: &Path, dir: &Path) -> Result<(), String> {
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

/// Removes the server directories under `base` whose owning process is gone, after killing
/// any postmaster still running from one and freeing its shared memory.
pub(super) fn reap_stale(base: &Path) {
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
pub(super) fn release_cluster(data: &Path) {
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
pub(super) fn is_alive(pid: libc::pid_t) -> bool {
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
