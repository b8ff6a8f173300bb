//! Tests of the throwaway server; they start real PostgreSQL servers.

use super::binaries::{find_bin_dir, NOT_FOUND};
use super::process::{base_dir, is_alive, reap_stale, server_user};
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
    let error = find_bin_dir(None, Some(nowhere.path().as_os_str()), nowhere.path()).unwrap_err();
    assert_eq!(error, NOT_FOUND);
    assert!(error.contains("apt-get install postgresql"));
    let error = find_bin_dir(Some(nowhere.path().as_os_str()), None, nowhere.path()).unwrap_err();
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
