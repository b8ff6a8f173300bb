//! Harness for the end-to-end tests: the real `wasmhooks` binary on a temp data dir and port 0,
//! a real HTTP receiver that records what it gets, and condition waits with generous
//! deadlines (never fixed sleeps).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};

/// How long any condition may take before a test fails. Generous: CI machines are shared.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The test-only plugins' build folder (from build.rs).
pub fn test_plugin(name: &str) -> Vec<u8> {
    let path = Path::new(env!("PLUGIN_WASM_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`] with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin key every test server is configured with.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

/// A key of `role` bound to `tenant`, as a client.
pub async fn tenant_client(server: &Server, role: &str, tenant: &str) -> reqwest::Client {
    let (status, key) = server
        .post_json(
            "/v1/keys",
            &json!({ "name": format!("{tenant} {role}"), "role": role, "tenant": tenant }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    client_with_key(key["key"].as_str().unwrap())
}

/// A running `wasmhooks serve`.
pub struct Server {
    child: Child,
    /// Base URL of its API.
    pub url: String,
    /// A client that sends the admin key with every request.
    pub client: reqwest::Client,
    /// The library's API client, with the admin key.
    pub api: wasmhooks::client::Client,
    /// What the server printed on stdout after the address line.
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Its log lines (stderr).
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    drain: tokio::task::JoinHandle<()>,
}

/// A client sending `key` as a bearer token with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Server {
    /// Starts the binary on `data_dir` with extra `WASMHOOKS_*` settings.
    pub async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::launch(data_dir, env, None).await
    }

    /// Starts the binary with its virtual address space limited to `kib` (`ulimit -v`).
    pub async fn start_with_address_space(
        data_dir: &Path,
        env: &[(&str, &str)],
        kib: u64,
    ) -> Server {
        Self::launch(data_dir, env, Some(format!("-v {kib}"))).await
    }

    /// Starts the binary with at most `files` open file descriptors (`ulimit -n`).
    pub async fn start_with_open_files(
        data_dir: &Path,
        env: &[(&str, &str)],
        files: u64,
    ) -> Server {
        Self::launch(data_dir, env, Some(format!("-n {files}"))).await
    }

    async fn launch(data_dir: &Path, env: &[(&str, &str)], ulimit: Option<String>) -> Server {
        match Self::try_launch(data_dir, env, ulimit).await {
            Ok(server) => server,
            Err(log) => panic!("wasmhooks exited before listening:\n{log}"),
        }
    }

    /// Starts the binary, or returns what it logged when it exits before listening (a
    /// refused start).
    pub async fn try_start(data_dir: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
        Self::try_launch(data_dir, env, None).await
    }

    async fn try_launch(
        data_dir: &Path,
        env: &[(&str, &str)],
        ulimit: Option<String>,
    ) -> Result<Server, String> {
        let binary = env!("CARGO_BIN_EXE_wasmhooks");
        let mut command = match ulimit {
            None => Command::new(binary),
            Some(limit) => {
                let mut shell = Command::new("bash");
                shell.args([
                    "-c",
                    &format!("ulimit {limit} && exec \"$0\" \"$@\""),
                    binary,
                ]);
                shell
            }
        };
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Hermetic: only the settings this test chooses.
        for (key, _) in
            std::env::vars().filter(|(k, _)| k.starts_with("WASMHOOKS_") || k.starts_with("OTEL_"))
        {
            command.env_remove(key);
        }
        // The cpu limit is measured in wall-clock ticks: on a loaded CI machine a well-behaved
        // plugin must not hit it by being descheduled. Tests about the limit set their own.
        command.env("WASMHOOKS_PLUGIN__MAX_LIMITS__CPU_TIME", "20s");
        command.env("WASMHOOKS_PLUGIN__LIMITS__CPU_TIME", "10s");
        command.env("WASMHOOKS_API__ADMIN_KEY", ADMIN_KEY);
        // The free-space guard and its ballast are off: tests run beside each other on
        // whatever disk the machine has. The disk-fault tests set their own.
        command.env("WASMHOOKS_STORE__MIN_FREE_BYTES", "0");
        command.env("WASMHOOKS_STORE__MIN_FREE_PERCENT", "0");
        command.env("WASMHOOKS_STORE__BALLAST_BYTES", "0");
        // Receivers run on loopback, which the SSRF guard refuses unless allow-listed.
        command.env(
            "WASMHOOKS_DELIVERY__ALLOWED_DESTINATIONS",
            r#"["127.0.0.1"]"#,
        );
        for (key, value) in env {
            if value.is_empty() {
                command.env_remove(key);
                continue;
            }
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start wasmhooks");
        // Log lines are kept for tests that read them, and passed on to the test's stderr.
        let stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let mut log_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log_sink = stderr.clone();
        let log_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log_finished = log_done.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = log_lines.next_line().await {
                eprintln!("{line}");
                log_sink.lock().unwrap().push(line);
            }
            log_finished.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("server printed its address in time")
            .expect("read stdout");
        let Some(first) = first else {
            // It exited: hand back what it logged.
            let _ = tokio::time::timeout(DEADLINE, child.wait()).await;
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while !log_done.load(std::sync::atomic::Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return Err(stderr.lock().unwrap().join("\n"));
        };
        let url = first
            .strip_prefix("wasmhooks listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_string();
        // Keep draining stdout so the pipe never fills.
        let stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let sink = stdout.clone();
        let drain = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Server {
            child,
            api: wasmhooks::client::Client::new(&url, Some(ADMIN_KEY)).unwrap(),
            url,
            client: client_with_key(ADMIN_KEY),
            stdout,
            stderr,
            drain,
        })
    }

    /// Kills the process with SIGKILL (no shutdown, no flush), waits for it to die, and
    /// returns everything it printed on stdout after the address line.
    pub async fn kill(mut self) -> Vec<String> {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("wait for the killed server");
        let _ = tokio::time::timeout(DEADLINE, self.drain).await;
        let lines = self.stdout.lock().unwrap().clone();
        lines
    }

    /// Sends SIGTERM, waits for the process to exit (at most [`DEADLINE`]) and returns its
    /// exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the server is running");
        let pid = i32::try_from(pid).expect("a pid fits an i32");
        // SAFETY: kill sends a signal to the process this harness started; it reads no memory.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the server to exit after SIGTERM")
            .expect("wait for the server");
        let _ = tokio::time::timeout(DEADLINE, self.drain).await;
        status
    }

    /// Sends a request and returns status and JSON body.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request to wasmhooks");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("non-JSON response ({status}): {text}"));
        (status, body)
    }

    /// Calls the API through the library's client; the status and body, whatever they are.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<wasmhooks::client::Body>,
    ) -> (StatusCode, Value) {
        let answer = self
            .api
            .call(method, path, &[], body)
            .await
            .expect("request to wasmhooks");
        (StatusCode::from_u16(answer.status).unwrap(), answer.body)
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// POST JSON to a path.
    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let body = wasmhooks::client::Body::Json(body.clone());
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// POST raw bytes with a content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        self.send(
            self.client
                .post(format!("{}{path}", self.url))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// Uploads a module and returns its id.
    pub async fn upload(&self, name: &str, bytes: &[u8]) -> String {
        match self
            .api
            .upload_module(name, Some("1.0.0"), bytes.to_vec())
            .await
        {
            Ok(module) => module.id.to_string(),
            Err(e) => panic!("upload {name}: {e}"),
        }
    }

    /// Creates a webhook and returns its JSON.
    pub async fn create_webhook(&self, definition: Value) -> Value {
        let (status, body) = self.post_json("/v1/webhooks", &definition).await;
        assert_eq!(status, StatusCode::CREATED, "create webhook: {body}");
        body
    }

    /// Emits (one event object or an array) and expects it acknowledged.
    pub async fn emit(&self, events: Value) -> Value {
        self.api
            .emit(&events)
            .await
            .unwrap_or_else(|e| panic!("emit: {e}"))
    }

    /// Waits until a delivery reaches a final status and returns it.
    pub async fn final_delivery(&self, id: &str) -> Value {
        eventually(&format!("delivery {id} to finish"), || async {
            let (status, body) = self.get(&format!("/v1/deliveries/{id}")).await;
            (status == StatusCode::OK && body["status"] != "pending").then_some(body)
        })
        .await
    }

    /// The deliveries of one event, in full (the list gives summaries).
    pub async fn deliveries_of(&self, event_id: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/v1/deliveries?event_id={event_id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut full = Vec::new();
        for summary in body["data"].as_array().unwrap() {
            let id = summary["id"].as_str().unwrap();
            let (status, detail) = self.get(&format!("/v1/deliveries/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{detail}");
            full.push(detail);
        }
        full
    }

    /// PATCH JSON to a path.
    pub async fn patch_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let body = wasmhooks::client::Body::Json(body.clone());
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// DELETE a path.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// The binary, without any `WASMHOOKS_*` setting of the environment the tests run in: a
/// test passes the settings it means.
pub fn wasmhooks_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wasmhooks"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("WASMHOOKS_")) {
        command.env_remove(key);
    }
    command
}

/// Runs a command to its end and returns what it printed; one still running after
/// [`DEADLINE`] is killed and fails the test.
pub fn run_to_end(command: &mut std::process::Command) -> std::process::Output {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} was still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap().expect("read stdout"),
        stderr: stderr.join().unwrap().expect("read stderr"),
    }
}

/// [`run_to_end`] for an async test.
pub async fn finish(command: std::process::Command) -> std::process::Output {
    let mut command = Command::from(command);
    command.kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("still running after {DEADLINE:?}"))
        .expect("run the command")
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Requests that arrived and are held at the gate.
    waiting: std::sync::atomic::AtomicUsize,
    script: Mutex<VecDeque<Answer>>,
    notify: Notify,
}

/// One scripted answer: status, `Retry-After`, body (`answered <status>` when none).
type Answer = (u16, Option<String>, Option<String>);

/// A local HTTP receiver: answers from a script of statuses (then 200), records every request
/// it answered, and can hold requests until released.
pub struct Receiver {
    /// Base URL.
    pub url: String,
    state: Arc<ReceiverState>,
    gate: watch::Sender<bool>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0.
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let (gate, gate_rx) = watch::channel(true);
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = handler_state.clone();
                let mut gate = gate_rx.clone();
                async move {
                    let at = std::time::Instant::now();
                    state
                        .waiting
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    state
                        .waiting
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    let (status, retry_after, answer) = state
                        .script
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or((200, None, None));
                    state.received.lock().unwrap().push(Received {
                        method: method.to_string(),
                        path: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers,
                        body,
                        at,
                    });
                    state.notify.notify_waiters();
                    let mut headers = HeaderMap::new();
                    if let Some(value) = retry_after {
                        headers.insert("retry-after", value.parse().unwrap());
                    }
                    (
                        StatusCode::from_u16(status).unwrap(),
                        headers,
                        answer.unwrap_or_else(|| format!("answered {status}")),
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, state, gate }
    }

    /// The next answers, in order (200 after they run out).
    pub fn answer_with(&self, statuses: &[u16]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(statuses.iter().map(|s| (*s, None, None)));
    }

    /// The next answer: `status` with a `Retry-After` header.
    pub fn answer_with_retry_after(&self, status: u16, retry_after: &str) {
        self.state
            .script
            .lock()
            .unwrap()
            .push_back((status, Some(retry_after.to_string()), None));
    }

    /// The next answer: `status` with this body.
    pub fn answer_with_body(&self, status: u16, body: &str) {
        self.state
            .script
            .lock()
            .unwrap()
            .push_back((status, None, Some(body.to_string())));
    }

    /// Holds every request until [`Receiver::release`].
    pub fn hold(&self) {
        self.gate.send_replace(false);
    }

    /// Lets held and later requests through.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// How many requests are held at the gate now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request answered so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests were answered.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} requests at the receiver"), || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

/// The message of an API error body (`""` when it is not one).
pub fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

/// A fresh temp dir for a test's data.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    (dir, path)
}
