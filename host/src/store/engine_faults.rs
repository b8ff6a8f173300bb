//! The storage engine (vendored sled) under write faults: what a failed write leaves behind
//! must never stop the store from opening. The faults come from a child process whose file
//! size limit makes every write past it fail, as a full disk would for that write alone.

use std::path::Path;
use std::process::Command;

/// Set in the child: the directory of the database it writes.
const CHILD_DIR: &str = "WASMHOOKS_TEST_ENGINE_FAULT_DIR";
/// Files the child may not grow past; the main log file stays well under it.
const FILE_SIZE_LIMIT: u64 = 2 << 20;

/// Opens the engine, waiting for a just-closed handle's threads to let go of the lock.
fn engine(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => return db,
            Err(sled::Error::Io(e)) if std::time::Instant::now() < deadline => {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "opening: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("opening the engine: {e}"),
        }
    }
}

/// Runs this test again in a child process under the file size limit, and waits for it.
fn run_child(test: &str, dir: &Path) {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FILE_SIZE_LIMIT,
                rlim_max: FILE_SIZE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A write past the limit then fails with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let output = command.output().expect("starting the child");
    assert!(
        output.status.success(),
        "the child failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A leaf split whose new right half is too large to write fails to allocate its page;
/// later allocations succeed. The failed page must not leave a hole that a restart cannot
/// recover from (a hole makes recovery panic with "tried to serialize Uninitialized").
#[test]
fn a_page_whose_first_write_failed_leaves_nothing_a_restart_trips_on() {
    let test =
        "store::engine_faults::a_page_whose_first_write_failed_leaves_nothing_a_restart_trips_on";
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let db = engine(Path::new(&dir));
        let big = db.open_tree("big").unwrap();
        let mut failed = 0;
        // Small keys first, then large values in the same leaf: the split's right half
        // holds at least four of them (an appended-to leaf keeps all but four on the left)
        // and is larger than any one file may grow.
        for i in 0..9 {
            big.insert(format!("a{i:02}"), &[1u8][..]).unwrap();
        }
        for i in 0..12 {
            if big
                .insert(format!("b{i:02}"), vec![7u8; 600 << 10])
                .is_err()
            {
                failed += 1;
            }
        }
        assert!(failed > 0, "no write failed under the file size limit");
        // Many small writes elsewhere: their splits allocate pages above the failed one.
        let small = db.open_tree("small").unwrap();
        for i in 0..2_000 {
            small.insert(format!("s{i:05}"), &b"value"[..]).unwrap();
        }
        db.flush().unwrap();
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    run_child(test, dir.path());
    for _ in 0..2 {
        let db = engine(dir.path());
        let small = db.open_tree("small").unwrap();
        assert!(small.len() >= 2_000);
        assert_eq!(small.get("s01999").unwrap().as_deref(), Some(&b"value"[..]));
        let big = db.open_tree("big").unwrap();
        assert!(big.get("a00").unwrap().is_some());
        // The store takes new pages after the restart, and keeps them over the next one.
        for i in 0..500 {
            small.insert(format!("t{i:05}"), &b"more"[..]).unwrap();
        }
        db.flush().unwrap();
    }
}
