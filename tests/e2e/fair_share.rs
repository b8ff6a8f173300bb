//! Fair share: a flood of evaluations that burn their cpu limit does not hold back another
//! tenant's cheap webhook, and a webhook whose evaluations keep hitting a limit backs off and
//! is disabled.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{data_dir, eventually, test_plugin, Receiver, Server};

/// How many of `webhook`'s deliveries are in `status`, across pages.
async fn count(server: &Server, webhook: &str, status: &str) -> usize {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/deliveries?webhook_id={webhook}&status={status}&limit=250");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (code, page) = server.get(&path).await;
        assert!(code.is_success(), "{path}: {page}");
        n += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return n,
        }
    }
}

/// A server that backs a webhook off after `backoff` limit hits in a row and disables it
/// after `disable` ("0": never).
async fn start_with_streak_limits(dir: &std::path::Path, backoff: &str, disable: &str) -> Server {
    Server::start(
        dir,
        &[
            (
                "WASMHOOKS_PLUGIN__FAIR_SHARE__BACKOFF_AFTER_LIMIT_HITS",
                backoff,
            ),
            (
                "WASMHOOKS_PLUGIN__FAIR_SHARE__DISABLE_AFTER_LIMIT_HITS",
                disable,
            ),
        ],
    )
    .await
}

/// A webhook of `tenant` whose plugin loops until its 50 ms cpu limit stops it.
async fn burner(server: &Server, tenant: &str, receiver: &Receiver) -> String {
    let module = server.upload("misbehave", &test_plugin("misbehave")).await;
    let webhook = server
        .create_webhook(json!({
            "name": "burner", "tenant": tenant, "event_kinds": ["burn.*"],
            "module_id": module, "config": { "mode": "loop" },
            "limits": { "cpu_time": "50ms" }, "url": receiver.url,
        }))
        .await;
    webhook["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_flood_of_limit_burning_evaluations_does_not_hold_back_another_tenants_webhook() {
    let (_tmp, dir) = data_dir();
    let burnt = Receiver::start().await;
    let cheap_receiver = Receiver::start().await;
    // No back-off and no disabling: the fair order alone must keep the cheap webhook quick.
    let server = start_with_streak_limits(&dir, "0", "0").await;
    let burner = burner(&server, "a", &burnt).await;
    let forward = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({
            "name": "cheap", "tenant": "b", "event_kinds": ["order.*"],
            "module_id": forward, "url": cheap_receiver.url,
        }))
        .await;

    let flood: Vec<Value> = (0..400)
        .map(|i| json!({ "kind": "burn.it", "tenant": "a", "payload": { "i": i } }))
        .collect();
    server.emit(json!(flood)).await;
    eventually("the flood to be under way", || async {
        (count(&server, &burner, "failed").await >= 2).then_some(())
    })
    .await;
    let burnt_before = count(&server, &burner, "failed").await;

    // 50 events at 50 a second; each one's latency runs from its acknowledgement.
    let mut acked = Vec::new();
    let start = tokio::time::Instant::now();
    for i in 0..50u32 {
        tokio::time::sleep_until(start + Duration::from_millis(20) * i).await;
        server
            .emit(json!({ "kind": "order.created", "tenant": "b", "payload": { "i": i } }))
            .await;
        acked.push(Instant::now());
    }
    let got = cheap_receiver.wait_for(50).await;
    let burnt_after = count(&server, &burner, "failed").await;

    let mut latencies: Vec<Duration> = got
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let i = body["i"].as_u64().unwrap() as usize;
            r.at.saturating_duration_since(acked[i])
        })
        .collect();
    latencies.sort();
    // Nearest rank: the 25th and the 50th of 50.
    let (p50, p99) = (latencies[24], latencies[49]);
    eprintln!(
        "cheap webhook beside the flood: p50 {p50:?}, p99 {p99:?}; the flood failed \
         {burnt_before} → {burnt_after} meanwhile"
    );
    assert!(
        p99 < Duration::from_millis(500),
        "the cheap webhook waited behind the flood: p50 {p50:?}, p99 {p99:?}"
    );
    assert!(
        burnt_after >= burnt_before + 5,
        "the flood kept going: {burnt_before} → {burnt_after} evaluations done"
    );
    let (_, page) = server
        .get(&format!(
            "/v1/deliveries?webhook_id={burner}&status=failed&limit=1"
        ))
        .await;
    assert_eq!(
        page["data"][0]["error"], "plugin exceeded 50 ms cpu limit",
        "{page}"
    );
    assert!(burnt.received().is_empty());
}

#[tokio::test]
async fn a_webhook_whose_plugin_keeps_hitting_its_limit_backs_off_and_is_disabled() {
    let (_tmp, dir) = data_dir();
    let burnt = Receiver::start().await;
    let told = Receiver::start().await;
    let server = start_with_streak_limits(&dir, "2", "6").await;
    let burner = burner(&server, "a", &burnt).await;
    let forward = server.upload("forward", wasmhooks::examples::FORWARD).await;
    server
        .create_webhook(json!({
            "name": "watcher", "tenant": "a", "event_kinds": ["webhook.disabled"],
            "module_id": forward, "url": told.url,
        }))
        .await;

    let started = Instant::now();
    let flood: Vec<Value> = (0..20)
        .map(|i| json!({ "kind": "burn.it", "tenant": "a", "payload": { "i": i } }))
        .collect();
    server.emit(json!(flood)).await;
    let webhook = eventually("the burner to be disabled", || async {
        let (_, webhook) = server.get(&format!("/v1/webhooks/{burner}")).await;
        (webhook["enabled"] == false).then_some(webhook)
    })
    .await;
    let took = started.elapsed();
    assert_eq!(
        webhook["disabled_reason"],
        "its plugin hit a limit in 6 evaluations in a row \
         (the last: plugin exceeded 50 ms cpu limit)"
    );
    // From the second hit on it waited 100, 200, 400 and 800 ms before each next evaluation.
    assert!(
        took >= Duration::from_millis(1_500),
        "six evaluations took only {took:?}: no back-off"
    );
    // The sixth failure is written just after the webhook is disabled.
    let failed = eventually("the sixth failure to be recorded", || async {
        let failed = count(&server, &burner, "failed").await;
        (failed >= 6).then_some(failed)
    })
    .await;
    assert!(
        (6..=7).contains(&failed),
        "one evaluation at a time while backing off: {failed} failed"
    );
    // Forgiven once disabled, so it starts afresh when enabled again.
    let usage = eventually("the streak to be forgiven", || async {
        let (_, webhook) = server.get(&format!("/v1/webhooks/{burner}")).await;
        (webhook["usage"]["limit_hits_in_a_row"] == 0).then(|| webhook["usage"].clone())
    })
    .await;
    assert_eq!(usage["limit_hits"], failed, "{usage}");
    assert!(usage["throttled"].is_null(), "{usage}");

    // The host said so, and kept the rest: they wait for the webhook to be enabled again.
    let said = told.wait_for(1).await;
    let body: Value = serde_json::from_slice(&said[0].body).unwrap();
    assert_eq!(body["webhook_id"], burner.as_str());
    assert_eq!(body["reason"], webhook["disabled_reason"]);
    assert_eq!(count(&server, &burner, "pending").await, 20 - failed);
    assert!(burnt.received().is_empty());
}

#[tokio::test]
async fn usage_shows_each_tenant_its_own_webhooks_and_healthz_only_totals_to_the_admin() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let forward = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let mut ids = Vec::new();
    for tenant in ["a", "b"] {
        let webhook = server
            .create_webhook(json!({
                "name": tenant, "tenant": tenant, "event_kinds": ["order.*"],
                "module_id": forward, "url": receiver.url,
            }))
            .await;
        ids.push(webhook["id"].as_str().unwrap().to_string());
        server
            .emit(json!({ "kind": "order.created", "tenant": tenant, "payload": {} }))
            .await;
    }
    receiver.wait_for(2).await;

    let (_, all) = server.get("/v1/usage").await;
    let listed: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{all}");
    assert!(ids.iter().all(|id| listed.contains(&id.as_str())));
    assert!(all["data"][0]["evaluations"].as_u64().unwrap() >= 1);

    let (_, key) = server
        .post_json(
            "/v1/keys",
            &json!({ "name": "a admin", "role": "admin", "tenant": "a" }),
        )
        .await;
    let tenant_a = crate::support::client_with_key(key["key"].as_str().unwrap());
    let (_, own) = server
        .send(tenant_a.get(format!("{}/v1/usage", server.url)))
        .await;
    assert_eq!(own["data"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["data"][0]["webhook_id"], ids[0].as_str());
    assert_eq!(own["data"][0]["tenant"], "a");

    // Totals for the admin key, and no webhook ids even there.
    let (_, health) = server.get("/healthz").await;
    let fair = &health["fair_share"];
    assert!(fair["turns"].as_u64().unwrap() >= 1, "{health}");
    assert_eq!(fair["throttled_webhooks"], 0);
    assert!(!health.to_string().contains(&ids[0]), "no webhook ids");
    // A tenant's key sees no totals: they would show how busy the other tenants are.
    let (_, health) = server
        .send(tenant_a.get(format!("{}/healthz", server.url)))
        .await;
    assert_eq!(health, json!({ "status": "ok" }));
}

#[tokio::test]
async fn one_tenants_events_cannot_back_off_or_disable_a_webhook_serving_every_tenant() {
    let (_tmp, dir) = data_dir();
    let burnt = Receiver::start().await;
    let server = start_with_streak_limits(&dir, "2", "3").await;
    let module = server.upload("misbehave", &test_plugin("misbehave")).await;
    let shared = server
        .create_webhook(json!({
            "name": "for every tenant", "event_kinds": ["burn.*"], "module_id": module,
            "config": { "mode": "loop" }, "limits": { "cpu_time": "50ms" }, "url": burnt.url,
        }))
        .await;
    let shared = shared["id"].as_str().unwrap();

    // A tenant's events its plugin chokes on: counted, but they do not judge the webhook.
    let attack: Vec<Value> = (0..8)
        .map(|i| json!({ "kind": "burn.it", "tenant": "mallory", "payload": { "i": i } }))
        .collect();
    server.emit(json!(attack)).await;
    eventually("the tenant's events to fail", || async {
        (count(&server, shared, "failed").await == 8).then_some(())
    })
    .await;
    let (_, webhook) = server.get(&format!("/v1/webhooks/{shared}")).await;
    assert_eq!(webhook["enabled"], true, "{webhook}");
    assert_eq!(webhook["usage"]["limit_hits"], 8);
    assert_eq!(webhook["usage"]["limit_hits_in_a_row"], 0);
    assert!(webhook["usage"]["throttled"].is_null(), "{webhook}");

    // The operator's own events do judge it.
    let own: Vec<Value> = (0..3)
        .map(|i| json!({ "kind": "burn.it", "payload": { "i": i } }))
        .collect();
    server.emit(json!(own)).await;
    let webhook = eventually("the webhook to be disabled", || async {
        let (_, webhook) = server.get(&format!("/v1/webhooks/{shared}")).await;
        (webhook["enabled"] == false).then_some(webhook)
    })
    .await;
    assert!(webhook["disabled_reason"]
        .as_str()
        .unwrap()
        .starts_with("its plugin hit a limit in 3 evaluations in a row"));
}
