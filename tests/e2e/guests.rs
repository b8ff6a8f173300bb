//! Plugins in three languages, from `wasmhooks plugin new` to a delivery through the real
//! host: each scaffold is generated, passes its own tests, builds, and delivers. The JS and
//! Python toolchains (ComponentizeJS from npm, componentize-py from PyPI) are installed by
//! these tests under the target folder, once; later runs reuse them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{data_dir, Receiver, Server};

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Runs a command to success in `dir`, with the host build's cargo settings removed.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut command = std::process::Command::new(program);
    command.current_dir(dir).args(args);
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} in {} failed:\n{text}",
        dir.display()
    );
    text
}

/// `wasmhooks plugin new <name> --lang <lang>` into a fresh folder; returns the folder.
fn scaffold(name: &str, lang: &str) -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir_in(tmp()).unwrap();
    let dir = parent.path().join(name);
    let out = run(
        parent.path(),
        env!("CARGO_BIN_EXE_wasmhooks"),
        &[
            "plugin",
            "new",
            name,
            "--lang",
            lang,
            "--dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.contains(&format!("plugin `{name}`")), "{out}");
    (parent, dir)
}

/// Uploads a component, points a webhook with `min_amount` 100 at a receiver, emits a large
/// and a small order, and returns what the receiver got (the large order only).
async fn deliver(component: &[u8], name: &str) -> crate::support::Received {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload(name, component).await;
    server
        .create_webhook(
            json!({"name": name, "event_kinds": ["order.created"], "module_id": module,
                               "url": receiver.url, "config": {"min_amount": 100}}),
        )
        .await;
    let ack = server
        .emit(json!([
            {"kind": "order.created", "payload": {"id": "A-1", "amount": 120, "customer": {"email": "a@example.com"}}},
            {"kind": "order.created", "payload": {"id": "A-2", "amount": 20}}
        ]))
        .await;
    let big = server
        .final_delivery(ack["data"][0]["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(big["status"], "delivered", "{big}");
    assert_eq!(
        big["logs"][0]["message"],
        format!("order {} qualifies", ack["data"][0]["id"].as_str().unwrap())
    );
    let small = server
        .final_delivery(ack["data"][1]["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(small["status"], "skipped", "{small}");
    assert_eq!(small["skip_reason"], "amount 20 is below 100");
    receiver.wait_for(1).await.remove(0)
}

fn body(r: &crate::support::Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn a_rust_scaffold_tests_builds_and_delivers() {
    let (_keep, dir) = tokio::task::spawn_blocking(|| {
        let (keep, dir) = scaffold("rust-notify", "rust");
        // One target folder for every run, so later runs reuse the dependencies.
        let target = tmp().join("scaffold-target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let tests = run(&dir, &cargo, &["test"], &[("CARGO_TARGET_DIR", &target)]);
        assert!(tests.contains("test result: ok. 2 passed"), "{tests}");
        run(
            &dir,
            &cargo,
            &["build", "--release", "--target", "wasm32-wasip2"],
            &[("CARGO_TARGET_DIR", &target)],
        );
        (keep, dir)
    })
    .await
    .unwrap();
    let wasm = tmp().join("scaffold-target/wasm32-wasip2/release/rust_notify.wasm");
    let got = deliver(&std::fs::read(wasm).unwrap(), "rust-notify").await;
    assert_eq!(
        body(&got),
        json!({"order": "A-1", "amount": 120, "email": "a@example.com"})
    );
    drop(dir);
}

#[tokio::test]
async fn a_javascript_scaffold_tests_builds_and_delivers() {
    let (_keep, wasm) = tokio::task::spawn_blocking(|| {
        let (keep, dir) = scaffold("js-notify", "js");
        let cache = tmp().join("npm-cache");
        let npm_env: &[(&str, &Path)] = &[("npm_config_cache", &cache)];
        run(
            &dir,
            "npm",
            &["install", "--no-audit", "--no-fund", "--prefer-offline"],
            npm_env,
        );
        let tests = run(&dir, "npm", &["test"], npm_env);
        assert!(tests.contains("# pass 2"), "{tests}");
        run(&dir, "npm", &["run", "build"], npm_env);
        (keep, dir.join("dist/js-notify.wasm"))
    })
    .await
    .unwrap();
    let got = deliver(&std::fs::read(wasm).unwrap(), "js-notify").await;
    assert_eq!(got.header("x-plugin-lang"), Some("javascript"));
    assert_eq!(
        body(&got),
        json!({"order": "A-1", "amount": 120, "email": "a@example.com", "lang": "javascript"})
    );
}

#[tokio::test]
async fn a_python_scaffold_tests_builds_and_delivers() {
    let (_keep, wasm) = tokio::task::spawn_blocking(|| {
        let (keep, dir) = scaffold("py-notify", "python");
        let requirements = std::fs::read_to_string(dir.join("requirements.txt")).unwrap();
        assert_eq!(requirements.trim(), COMPONENTIZE_PY);
        // One virtualenv for every run.
        let venv = tmp().join("componentize-py-0.25.1");
        let bin = venv.join("bin");
        if !bin.join("componentize-py").exists() {
            run(
                &tmp(),
                "python3",
                &["-m", "venv", venv.to_str().unwrap()],
                &[],
            );
            run(
                &dir,
                bin.join("pip").to_str().unwrap(),
                &[
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    "requirements.txt",
                ],
                &[],
            );
        }
        let tests = run(
            &dir,
            bin.join("python").to_str().unwrap(),
            &["-m", "unittest"],
            &[],
        );
        assert!(
            tests.contains("Ran 2 tests") && tests.contains("OK"),
            "{tests}"
        );
        run(
            &dir,
            bin.join("componentize-py").to_str().unwrap(),
            &[
                "-d",
                "wit",
                "-w",
                "webhook",
                "componentize",
                "app",
                "-o",
                "py-notify.wasm",
            ],
            &[],
        );
        (keep, dir.join("py-notify.wasm"))
    })
    .await
    .unwrap();
    let got = deliver(&std::fs::read(wasm).unwrap(), "py-notify").await;
    assert_eq!(got.header("x-plugin-lang"), Some("python"));
    assert_eq!(
        body(&got),
        json!({"order": "A-1", "amount": 120, "email": "a@example.com", "lang": "python"})
    );
}
