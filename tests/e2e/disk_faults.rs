//! Disk faults, as an operator's bad day goes: the data directory on a small filesystem the
//! test mounts (a size-limited tmpfs; CI runs as root), filled to the floor and past it,
//! the host killed and restarted on the full disk, space freed. Nothing acknowledged is lost.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{error_message, eventually, Receiver, Server};

/// A tmpfs of a few MiB, mounted for one test and unmounted after it.
struct SmallDisk {
    _parent: tempfile::TempDir,
    root: PathBuf,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("disk");
        std::fs::create_dir(&root).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&root)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-fault tests mount a small tmpfs and need root for it (CI runs as root; \
             locally: sudo -E cargo test --test e2e disk_faults): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            _parent: parent,
            root,
        }
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Writes a file of zeros until the disk is full or `max` bytes are written.
    fn fill(&self, name: &str, max: u64) -> u64 {
        use std::io::Write as _;
        let mut file = std::fs::File::create(self.root.join(name)).unwrap();
        let block = vec![0u8; 64 << 10];
        let mut written = 0;
        while written < max {
            match file.write(&block[..block.len().min((max - written) as usize)]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = file.sync_all();
        written
    }

    fn free(&self, name: &str) {
        std::fs::remove_file(self.root.join(name)).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
    }
}

/// Every file's bytes under `dir`, by path (to show a refused start wrote nothing).
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A ~20 KB event whose payload names its id.
fn big_event(id: &str) -> Value {
    json!({ "id": id, "kind": "order.created", "payload": { "id": id, "blob": "x".repeat(20_000) } })
}

/// Settings with the guard off.
const GUARD_OFF: &[(&str, &str)] = &[];

async fn forward_to(server: &Server, receiver: &Receiver) {
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({ "name": "orders", "event_kinds": ["order.*"], "module_id": module,
                                "url": receiver.url, "retry_schedule": ["1s", "1s", "2s", "5s", "10s"] }))
        .await;
}

/// The ids of the events the receiver got (the forward plugin sends the payload).
fn delivered_ids(receiver: &Receiver) -> BTreeSet<String> {
    receiver
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|body| body["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn acknowledged_events_survive_a_full_disk_and_restarts_on_it() {
    let disk = SmallDisk::mount(24);
    let dir = disk.data();
    // Room the test frees later, as an operator would, a little at a time.
    for i in 0..24 {
        disk.fill(&format!("spare-{i}"), 256 << 10);
    }
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, GUARD_OFF).await;
    forward_to(&server, &receiver).await;

    // Emit until the store cannot take more: every 202 is an acknowledgement, and the
    // refusals are storage errors by name, never a generic 500.
    let mut acked = Vec::new();
    let mut refused = 0;
    for n in 0..5_000 {
        let id = format!("e-{n}");
        let (status, body) = server.post_json("/v1/events", &big_event(&id)).await;
        if status == StatusCode::ACCEPTED {
            acked.push(id);
            continue;
        }
        assert!(
            matches!(
                body["error"]["code"].as_str(),
                Some("insufficient_storage" | "storage_unavailable")
            ),
            "{status} {body}"
        );
        refused += 1;
        if refused >= 5 {
            break;
        }
    }
    assert!(refused >= 5, "the disk never filled");
    assert!(
        acked.len() > 50,
        "only {} events were acknowledged",
        acked.len()
    );
    server.kill().await;

    // Restarts on the full disk, as a supervisor would, with a little more room each time
    // (each start fails, or is killed, at a different point): none may damage the store.
    for i in 0..12 {
        if i % 2 == 1 {
            disk.free(&format!("spare-{i}"));
        }
        match Server::try_start(&dir, GUARD_OFF).await {
            Ok(started) => {
                started.kill().await;
            }
            Err(log) => assert!(
                log.contains("No space left") || log.contains("free"),
                "a refused start says why: {log}"
            ),
        }
    }

    for i in 0..24 {
        let _ = std::fs::remove_file(disk.root.join(format!("spare-{i}")));
    }
    let server = Server::start(&dir, GUARD_OFF).await;
    for id in &acked {
        let (status, event) = server.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id} was acknowledged: {event}");
    }
    let want: BTreeSet<String> = acked.iter().cloned().collect();
    eventually("every acknowledged event to be delivered", || async {
        want.is_subset(&delivered_ids(&receiver)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_guard_refuses_under_the_floor_delivers_meanwhile_and_accepts_again() {
    let disk = SmallDisk::mount(32);
    let dir = disk.data();
    let receiver = Receiver::start().await;
    let floor = (12u64 << 20).to_string();
    let env = [
        ("WASMHOOKS_STORE__MIN_FREE_BYTES", floor.as_str()),
        ("WASMHOOKS_STORE__MIN_FREE_PERCENT", "0"),
    ];
    let server = Server::start(&dir, &env).await;
    forward_to(&server, &receiver).await;
    receiver.hold();
    server.emit(big_event("before")).await;

    // Another process fills the disk to under the floor (but not to the brim).
    let free = wasmhooks::store::space::measure(&disk.root).unwrap().free;
    disk.fill("other-process", free - (6 << 20));
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let (refused_id, retry_after, body) = eventually("the guard to refuse", || async {
        let id = format!(
            "during-{}",
            attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let response = server
            .client
            .post(format!("{}/v1/events", server.url))
            .json(&big_event(&id))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        (status == StatusCode::INSUFFICIENT_STORAGE).then_some((id, retry_after, body))
    })
    .await;
    assert!(retry_after.is_some(), "a Retry-After header");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    assert!(
        error_message(&body).contains("below the floor of 12.0 MiB"),
        "{body}"
    );
    let (_, health) = server.get("/healthz").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["storage"]["accepting"], false, "{health}");
    // New definitions are refused too; pending deliveries go on.
    let (status, _) = server
        .post_json("/v1/keys", &json!({ "name": "k", "role": "emitter" }))
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    receiver.release();
    eventually("the pending delivery to arrive", || async {
        delivered_ids(&receiver).contains("before").then_some(())
    })
    .await;

    disk.free("other-process");
    eventually("the guard to accept again", || async {
        let (status, _) = server.post_json("/v1/events", &big_event("after")).await;
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    let (_, health) = server.get("/healthz").await;
    assert_eq!(health["status"], "ok", "{health}");
    let (status, _) = server.get(&format!("/v1/events/{refused_id}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused event was not stored"
    );
}

#[tokio::test]
async fn a_start_on_a_full_disk_refuses_untouched_or_opens_on_the_ballast() {
    let disk = SmallDisk::mount(24);
    let dir = disk.data();
    let receiver = Receiver::start().await;
    let guarded = [
        ("WASMHOOKS_STORE__MIN_FREE_BYTES", "4194304"),
        ("WASMHOOKS_STORE__MIN_FREE_PERCENT", "0"),
        ("WASMHOOKS_STORE__BALLAST_BYTES", "0"),
    ];
    let server = Server::start(&dir, &guarded).await;
    forward_to(&server, &receiver).await;
    for n in 0..20 {
        server.emit(big_event(&format!("kept-{n}"))).await;
    }
    server.kill().await;

    // Full: the start refuses, and writes nothing.
    disk.fill("hog", u64::MAX);
    let before = contents(&dir);
    let log = Server::try_start(&dir, &guarded)
        .await
        .err()
        .expect("a start on a full disk is refused");
    assert!(
        log.contains("needed to open the store safely; nothing was written"),
        "{log}"
    );
    assert!(
        contents(&dir) == before,
        "a refused start changed the data directory"
    );

    // With a ballast in reserve, a start on a full disk releases it, opens, and refuses
    // new events until space is freed.
    disk.free("hog");
    let with_ballast = [
        ("WASMHOOKS_STORE__MIN_FREE_BYTES", "4194304"),
        ("WASMHOOKS_STORE__MIN_FREE_PERCENT", "0"),
        ("WASMHOOKS_STORE__BALLAST_BYTES", "6291456"),
    ];
    let server = Server::start(&dir, &with_ballast).await;
    eventually("the ballast to be made", || async {
        dir.join("ballast").exists().then_some(())
    })
    .await;
    server.kill().await;
    disk.fill("hog", u64::MAX);
    let server = Server::start(&dir, &with_ballast).await;
    assert!(!dir.join("ballast").exists(), "the ballast was released");
    for n in 0..20 {
        let (status, _) = server.get(&format!("/v1/events/kept-{n}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(log.contains("released the ballast"), "{log}");
}

#[tokio::test]
async fn repeated_kills_while_the_store_opens_lose_nothing_acknowledged() {
    let (_tmp, dir) = crate::support::data_dir();
    let server = Server::start(&dir, GUARD_OFF).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(
            json!({ "name": "later", "event_kinds": ["order.*"], "module_id": module,
                                "url": "http://127.0.0.1:9/", "delay": "1h" }),
        )
        .await;
    let mut acked = Vec::new();
    for batch in 0..20 {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                json!({ "id": format!("k-{batch}-{i}"), "kind": "order.created",
                             "payload": { "n": i, "pad": "y".repeat(500) } })
            })
            .collect();
        server.emit(json!(events)).await;
        acked.extend((0..100).map(|i| format!("k-{batch}-{i}")));
    }
    server.kill().await;

    // SIGKILL at a different moment of each start: while sled recovers its log, while the
    // host undoes unfinished rounds and seals records, or once it serves.
    for attempt in 0..10u64 {
        let mut child = tokio::process::Command::from(crate::support::wasmhooks_command())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .env("WASMHOOKS_API__ADMIN_KEY", crate::support::ADMIN_KEY)
            .env("WASMHOOKS_STORE__MIN_FREE_BYTES", "0")
            .env("WASMHOOKS_STORE__MIN_FREE_PERCENT", "0")
            .env("WASMHOOKS_STORE__BALLAST_BYTES", "0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start wasmhooks");
        // The kill's timing is the fault being injected, not a wait for a condition.
        tokio::time::sleep(std::time::Duration::from_millis(attempt * 25)).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    let server = Server::start(&dir, GUARD_OFF).await;
    for chunk in acked.chunks(1000) {
        let (status, body) = server
            .get(&format!("/v1/events?ids={}", chunk.join(",")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"].as_array().unwrap().len(), chunk.len());
    }
    let mut pending = 0;
    let mut cursor = String::new();
    loop {
        let (status, page) = server
            .get(&format!("/v1/deliveries?limit=250{cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pending += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(pending, acked.len(), "one delivery per acknowledged event");
}
