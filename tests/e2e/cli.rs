//! The CLI drives the same flows as the API: every operator command against a real server.

use serde_json::{json, Value};

use crate::support::{data_dir, eventually, Receiver, Server, ADMIN_KEY};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

async fn cli_with(server: &Server, key: Option<&str>, args: &[&str]) -> Run {
    let mut command = crate::support::wasmhooks_command();
    command.env("WASMHOOKS_SERVER", &server.url).args(args);
    if let Some(key) = key {
        command.env("WASMHOOKS_KEY", key);
    }
    let output = crate::support::finish(command).await;
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn cli(server: &Server, args: &[&str]) -> Run {
    let run = cli_with(server, Some(ADMIN_KEY), args).await;
    assert!(
        run.ok,
        "wasmhooks {args:?} failed: {}{}",
        run.stdout, run.stderr
    );
    run
}

#[tokio::test]
async fn the_cli_drives_modules_connections_webhooks_deliveries_and_keys() {
    let (tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let wasm = tmp.path().join("forward.wasm");
    std::fs::write(&wasm, wasmhooks::examples::FORWARD).unwrap();
    let wasm = wasm.to_str().unwrap();

    let module = cli(
        &server,
        &[
            "module",
            "upload",
            wasm,
            "--name",
            "forward",
            "--version",
            "1.2.0",
        ],
    )
    .await
    .json();
    let module_id = module["id"].as_str().unwrap();
    assert_eq!(module["version"], "1.2.0");
    let listed = cli(&server, &["module", "list"]).await.stdout;
    assert!(
        listed.contains(module_id) && listed.contains("1.2.0"),
        "{listed}"
    );

    let base = format!("{}/erp", receiver.url);
    let connection = cli(
        &server,
        &[
            "connection",
            "create",
            "--name",
            "ERP",
            "--base-url",
            &base,
            "--auth",
            r#"{"type":"bearer","token":"cli-token"}"#,
            "--header",
            "x-src=cli",
        ],
    )
    .await
    .json();
    let connection_id = connection["id"].as_str().unwrap();
    assert!(!connection.to_string().contains("cli-token"));
    let listed = cli(&server, &["connection", "list"]).await.stdout;
    assert!(
        listed.contains("ERP") && listed.contains("bearer"),
        "{listed}"
    );

    let webhook = cli(
        &server,
        &[
            "webhook",
            "create",
            "--name",
            "cli hook",
            "--kind",
            "order.*",
            "--module",
            module_id,
            "--connection",
            connection_id,
            "--url",
            "/orders",
            "--success-status",
            "200",
            "--config",
            "{}",
            "--timeout",
            "10s",
        ],
    )
    .await
    .json();
    let webhook_id = webhook["id"].as_str().unwrap();
    assert_eq!(webhook["url"], "/orders");
    let table = cli(&server, &["webhook", "list"]).await.stdout;
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains("cli hook"), "{table}");
    let page = cli(
        &server,
        &["webhook", "list", "--json", "--filter", "name_contains=CLI"],
    )
    .await
    .json();
    assert_eq!(page["data"][0]["id"], webhook_id);
    let got = cli(
        &server,
        &["webhook", "get", webhook_id, "--expand", "connection"],
    )
    .await
    .json();
    assert_eq!(got["connection"]["name"], "ERP");

    // Dry run from a file.
    let event_file = tmp.path().join("event.json");
    std::fs::write(
        &event_file,
        r#"{"kind": "order.created", "payload": {"id": "T-1"}}"#,
    )
    .unwrap();
    let run = cli(
        &server,
        &[
            "webhook",
            "test",
            webhook_id,
            "--event",
            event_file.to_str().unwrap(),
        ],
    )
    .await
    .json();
    assert_eq!(run["decision"], "send");
    assert_eq!(run["requests"][0]["url"], format!("{base}/orders"));
    assert!(receiver.received().is_empty(), "a dry run sends nothing");

    // Emit, then follow the delivery.
    cli(
        &server,
        &[
            "emit",
            "--kind",
            "order.created",
            "--id",
            "c-1",
            "--payload",
            r#"{"id":"A-1"}"#,
        ],
    )
    .await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, "/erp/orders");
    assert_eq!(got[0].header("authorization"), Some("Bearer cli-token"));
    assert_eq!(got[0].header("x-src"), Some("cli"));
    let delivery_id = eventually("the delivery to show as delivered", || async {
        let page = cli(&server, &["deliveries", "list", "--event", "c-1", "--json"])
            .await
            .json();
        let first = &page["data"][0];
        (first["status"] == "delivered").then(|| first["id"].as_str().unwrap().to_string())
    })
    .await;
    let table = cli(&server, &["deliveries", "list", "--status", "delivered"])
        .await
        .stdout;
    assert!(table.contains(&delivery_id), "{table}");
    let detail = cli(
        &server,
        &["deliveries", "get", &delivery_id, "--expand", "event"],
    )
    .await
    .json();
    assert_eq!(detail["event"]["id"], "c-1");
    assert_eq!(detail["attempts"][0]["status"], 200);
    let event = cli(&server, &["event", "get", "c-1"]).await.json();
    assert_eq!(event["payload"], json!({ "id": "A-1" }));

    let replay = cli(&server, &["replay", &delivery_id]).await.json();
    assert_eq!(replay["replay_of"], delivery_id.as_str());
    receiver.wait_for(2).await;
    let usage = cli(&server, &["usage"]).await.json();
    assert_eq!(usage["data"][0]["webhook_id"], webhook_id, "{usage}");
    assert!(usage["data"][0]["evaluations"].as_u64().unwrap() >= 1);
    let recovered = cli(
        &server,
        &[
            "webhook",
            "recover",
            webhook_id,
            "--since",
            "2020-01-01T00:00:00Z",
        ],
    )
    .await
    .json();
    assert_eq!(recovered["replayed"], 0, "nothing failed");

    // Update, pause, resume.
    let renamed = cli(
        &server,
        &[
            "webhook",
            "update",
            webhook_id,
            "--name",
            "renamed",
            "--keep-failed",
            "90d",
        ],
    )
    .await
    .json();
    assert_eq!(
        (renamed["name"].as_str(), renamed["url"].as_str()),
        (Some("renamed"), Some("/orders"))
    );
    assert_eq!(
        renamed["retention"],
        json!({ "failed": "90d" }),
        "{renamed}"
    );
    assert_eq!(
        cli(&server, &["webhook", "disable", webhook_id])
            .await
            .json()["enabled"],
        false
    );
    assert_eq!(
        cli(&server, &["webhook", "enable", webhook_id])
            .await
            .json()["enabled"],
        true
    );
    let changed = cli(
        &server,
        &[
            "connection",
            "update",
            connection_id,
            "--description",
            "the ERP",
        ],
    )
    .await
    .json();
    assert_eq!(changed["description"], "the ERP");

    // Keys.
    let key = cli(
        &server,
        &["key", "create", "--name", "ci emitter", "--role", "emitter"],
    )
    .await
    .json();
    let text = key["key"].as_str().unwrap().to_string();
    let key_id = key["id"].as_str().unwrap();
    let as_emitter = cli_with(&server, Some(&text), &["emit", "--kind", "order.paid"]).await;
    assert!(as_emitter.ok, "{}", as_emitter.stderr);
    let refused = cli_with(&server, Some(&text), &["webhook", "list"]).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("emitter role") && refused.stderr.contains("403"),
        "{}",
        refused.stderr
    );
    let keys = cli(&server, &["key", "list"]).await.stdout;
    assert!(
        keys.contains("ci emitter") && keys.contains("emitter"),
        "{keys}"
    );
    assert!(!keys.contains(&text[20..]), "the key text is never listed");
    assert_eq!(
        cli(&server, &["key", "revoke", key_id]).await.json()["revoked"],
        true
    );
    let revoked = cli_with(&server, Some(&text), &["emit", "--kind", "order.paid"]).await;
    assert!(
        !revoked.ok && revoked.stderr.contains("401"),
        "{}",
        revoked.stderr
    );

    // Errors are reported with the server's message and a failing exit code.
    let anonymous = cli_with(&server, None, &["webhook", "list"]).await;
    assert!(
        !anonymous.ok && anonymous.stderr.contains("missing API key"),
        "{}",
        anonymous.stderr
    );
    let in_use = cli_with(&server, Some(ADMIN_KEY), &["module", "delete", module_id]).await;
    assert!(!in_use.ok);
    assert!(
        in_use.stderr.contains("is used by webhook(s)") && in_use.stderr.contains("409"),
        "{}",
        in_use.stderr
    );
    let bad = cli_with(
        &server,
        Some(ADMIN_KEY),
        &[
            "webhook", "create", "--name", "x", "--kind", "a", "--module", module_id, "--url",
            "ftp://x/",
        ],
    )
    .await;
    assert!(
        !bad.ok && bad.stderr.contains("url: scheme `ftp` is not allowed"),
        "{}",
        bad.stderr
    );

    // Tear down in order.
    cli(&server, &["webhook", "delete", webhook_id]).await;
    cli(&server, &["connection", "delete", connection_id]).await;
    cli(&server, &["module", "delete", module_id]).await;
    let empty = cli(&server, &["webhook", "list"]).await.stdout;
    assert!(empty.contains("(none)"), "{empty}");
}
