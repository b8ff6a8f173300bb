//! Deliveries checked by an independent Standard Webhooks implementation: the
//! `standardwebhooks` package from PyPI for `v1`, and `cryptography`'s Ed25519 for `v1a`
//! (which that package does not check), installed by this test into a virtualenv under the
//! target folder (once; later runs reuse it).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{data_dir, Received, Receiver, Server};

const PACKAGES: &[&str] = &["standardwebhooks==1.1.0", "cryptography==44.0.0"];

/// A Python with `standardwebhooks` installed, made on first use.
fn python_with_standardwebhooks() -> PathBuf {
    let venv =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("standardwebhooks-1.1.0-cryptography-44");
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import standardwebhooks, cryptography"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return python;
    }
    let run = |program: &Path, args: &[&str]| {
        let output = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed:\n{}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(
        Path::new("python3"),
        &["-m", "venv", venv.to_str().expect("utf-8 path")],
    );
    let mut install = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    install.extend_from_slice(PACKAGES);
    run(&python, &install);
    assert!(ready(&python), "{PACKAGES:?} did not install");
    python
}

fn case(what: &str, key: &str, r: &Received, body: &str, expect: &str) -> Value {
    let header = |name: &str| r.header(name).unwrap_or_default().to_string();
    let key_field = if key.starts_with("whpk_") {
        "public_key"
    } else {
        "secret"
    };
    json!({
        "what": what,
        key_field: key,
        "headers": {
            "webhook-id": header("webhook-id"),
            "webhook-timestamp": header("webhook-timestamp"),
            "webhook-signature": header("webhook-signature"),
        },
        "body": body,
        "expect": expect,
    })
}

#[tokio::test]
async fn an_independent_implementation_accepts_every_delivery_including_after_rotation() {
    let python = tokio::task::spawn_blocking(python_with_standardwebhooks)
        .await
        .unwrap();
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let own = server
        .create_webhook(
            json!({"name": "own", "event_kinds": ["a"], "module_id": module,
                               "url": format!("{}/own", receiver.url),
                               "retry_schedule": ["100ms"]}),
        )
        .await;
    let old_secret = own["signing_secret"].as_str().unwrap().to_string();
    let shared = wasmhooks::signature::SigningSecret::generate().to_text();
    let (status, connection) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "erp", "base_url": receiver.url, "signing_secret": shared}),
        )
        .await;
    assert_eq!(status, 201, "{connection}");
    let asymmetric = server
        .create_webhook(
            json!({"name": "ed25519", "event_kinds": ["a"], "module_id": module,
                               "url": format!("{}/v1a", receiver.url),
                               "signature_scheme": "v1a", "retry_schedule": ["100ms"]}),
        )
        .await;
    assert!(asymmetric.get("signing_secret").is_none(), "{asymmetric}");
    let public_key = asymmetric["signing_public_keys"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(public_key.starts_with("whpk_"), "{asymmetric}");
    server
        .create_webhook(json!({"name": "via connection", "event_kinds": ["a"],
                               "module_id": module, "connection_id": connection["id"],
                               "url": "/shared", "retry_schedule": ["100ms"]}))
        .await;

    // Before rotation; a non-ASCII body too.
    receiver.answer_with(&[500]);
    server.emit(json!({"kind": "a", "payload": {"n": 1}})).await;
    server
        .emit(json!({"kind": "a", "payload": {"name": "Zażółć gęślą jaźń \"quoted\" </tag>"}}))
        .await;
    // Six deliveries, one of them retried after a 500.
    let before = receiver.wait_for(7).await;
    let path = format!("/v1/webhooks/{}/rotate-secret", own["id"].as_str().unwrap());
    let (status, rotated) = server.post_json(&path, &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["signing_secret"].as_str().unwrap().to_string();
    server.emit(json!({"kind": "a", "payload": {"n": 3}})).await;
    let all = receiver.wait_for(10).await;

    let mut cases = Vec::new();
    for (i, r) in all.iter().enumerate() {
        let body = std::str::from_utf8(&r.body).unwrap();
        let rotated = i >= before.len();
        if r.path == "/v1a" {
            cases.push(case("v1a", &public_key, r, body, "accept"));
            cases.push(case(
                "v1a, tampered",
                &public_key,
                r,
                &body.replacen('{', "{ ", 1),
                "reject",
            ));
            cases.push(case("v1a under a v1 secret", &shared, r, body, "reject"));
            continue;
        }
        let is_own = r.path == "/own";
        match (is_own, rotated) {
            (false, _) => cases.push(case("shared", &shared, r, body, "accept")),
            (true, false) => {
                cases.push(case("own before rotation", &old_secret, r, body, "accept"))
            }
            (true, true) => {
                cases.push(case(
                    "own after rotation, new",
                    &new_secret,
                    r,
                    body,
                    "accept",
                ));
                cases.push(case(
                    "own after rotation, old",
                    &old_secret,
                    r,
                    body,
                    "accept",
                ));
            }
        }
        // The same headers over another body, or under another secret, must be refused,
        // or this test could not fail.
        let tampered = body.replacen('{', "{ ", 1);
        cases.push(case("tampered body", &shared, r, &tampered, "reject"));
    }
    let own_before = all[..before.len()].iter().filter(|r| r.path == "/own");
    for r in own_before {
        let body = std::str::from_utf8(&r.body).unwrap();
        cases.push(case("other secret", &new_secret, r, body, "reject"));
    }
    assert!(cases.iter().filter(|c| c["expect"] == "accept").count() >= 11);

    let file = dir.with_extension("cases.json");
    std::fs::write(&file, serde_json::to_vec(&cases).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/scripts/standardwebhooks_verify.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "standardwebhooks disagreed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(", 0 wrong"), "{stdout}");
}
