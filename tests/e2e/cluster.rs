//! Several hosts on one PostgreSQL database: they share the work, follow each other's
//! definitions, and take over a killed host's deliveries; nothing acknowledged is lost and
//! no delivery is in flight from two hosts at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use serde_json::{json, Value};
use wasmhooks::postgres::throwaway;

use crate::support::{data_dir, eventually, Server, ADMIN_KEY};

/// A database of its own on the test process's throwaway PostgreSQL, and the settings that
/// put a host on it (every host of one database shares its secrets key).
struct Database {
    env: Vec<(String, String)>,
}

impl Database {
    /// A database on the test process's shared server.
    fn new(name: &str) -> Database {
        Database::on(throwaway::Server::shared(), name)
    }

    /// A database on `server`.
    fn on(server: &throwaway::Server, name: &str) -> Database {
        let name = format!("{name}_{}", rand::random::<u32>());
        server
            .create_database(&name)
            .expect("create the test database");
        let key: [u8; 32] = rand::random();
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        Database {
            env: vec![
                ("WASMHOOKS_STORAGE".into(), "postgres".into()),
                ("WASMHOOKS_POSTGRES__URL".into(), server.url(&name)),
                ("WASMHOOKS_SECRETS__KEY".into(), key),
            ],
        }
    }

    /// Starts a host on the database, with `extra` settings.
    async fn host(&self, dir: &std::path::Path, extra: &[(&str, &str)]) -> Server {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend_from_slice(extra);
        Server::start(dir, &env).await
    }
}

/// What the in-flight receiver saw.
#[derive(Default)]
struct Seen {
    /// Deliveries (`webhook-id`) whose request is being answered now.
    in_flight: HashSet<String>,
    /// Deliveries that arrived while a request of theirs was still in flight.
    overlapping: Vec<String>,
    /// Requests per event (`n` of the payload).
    by_event: BTreeMap<String, usize>,
    /// Requests per delivery.
    by_delivery: BTreeMap<String, usize>,
}

/// A receiver that answers each request after a short while and notes every delivery that
/// came again while its earlier request was still being answered.
async fn in_flight_receiver() -> (String, Arc<Mutex<Seen>>) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let state = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let state = state.clone();
        async move {
            let delivery = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let event = serde_json::from_slice::<Value>(&body).unwrap()["n"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            {
                let mut seen = state.lock().unwrap();
                if !seen.in_flight.insert(delivery.clone()) {
                    seen.overlapping.push(delivery.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut seen = state.lock().unwrap();
            seen.in_flight.remove(&delivery);
            *seen.by_event.entry(event).or_default() += 1;
            *seen.by_delivery.entry(delivery).or_default() += 1;
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Waits until `host` routes events of `kind` to a webhook (its catalog followed the
/// database), emitting probes that are delivered like any other.
async fn wait_until_routed(host: &Server, kind: &str, probe: &str) {
    let mut n = 0;
    eventually("the webhook to reach the host", || {
        n += 1;
        let id = format!("{probe}-{n}");
        async move {
            host.emit(json!({ "id": id, "kind": kind, "payload": { "n": id } }))
                .await;
            let (status, body) = host.get(&format!("/v1/deliveries?event_id={id}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            (!body["data"].as_array().unwrap().is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_share_the_work_and_take_over_a_killed_hosts_deliveries() {
    let database = Database::new("cluster");
    let (receiver, seen) = in_flight_receiver().await;
    let in_flight = [("WASMHOOKS_DELIVERY__MAX_IN_FLIGHT", "16")];
    let dirs: Vec<_> = (0..3).map(|_| data_dir()).collect();
    let a = database.host(&dirs[0].1, &in_flight).await;
    let b = database.host(&dirs[1].1, &in_flight).await;
    let c = database.host(&dirs[2].1, &in_flight).await;
    let module = a.upload("forward", wasmhooks::examples::FORWARD).await;
    a.create_webhook(json!({ "name": "shared", "event_kinds": ["order.*"], "module_id": module, "url": receiver }))
        .await;
    for (host, name) in [(&b, "probe-b"), (&c, "probe-c")] {
        wait_until_routed(host, "order.probe", name).await;
    }

    // 5,000 events in calls of 50, round-robin over the three hosts; b is killed halfway
    // through its share. Only events answered 202 count.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut emitters = Vec::new();
    for (h, host) in [&a, &b, &c].into_iter().enumerate() {
        let client = wasmhooks::client::Client::new(&host.url, Some(ADMIN_KEY)).unwrap();
        let acked = acked.clone();
        emitters.push(tokio::spawn(async move {
            for call in (h..100).step_by(3) {
                let batch: Vec<Value> = (0..50)
                    .map(|i| {
                        let n = format!("e-{}", call * 50 + i);
                        json!({ "id": n, "kind": "order.created", "payload": { "n": n } })
                    })
                    .collect();
                if let Err(e) = client.emit(&json!(batch)).await {
                    eprintln!("cluster: host {h} stopped taking events: {e}");
                    return;
                }
                let ids = batch.iter().map(|e| e["id"].as_str().unwrap().to_string());
                acked.lock().unwrap().extend(ids);
            }
        }));
    }
    eventually("half the events acknowledged", || async {
        (acked.lock().unwrap().len() >= 2_500).then_some(())
    })
    .await;
    b.kill().await;
    for emitter in emitters {
        emitter.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3_000, "{} acknowledged", acked.len());

    // Every acknowledged event arrives: b's claimed deliveries after their lease lapses.
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            acked
                .iter()
                .filter(|n| !seen.by_event.contains_key(*n))
                .count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} acknowledged events never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cluster: {} acknowledged events all arrived {:.1} s after b was killed",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.overlapping.is_empty(),
        "in flight from two hosts at once: {:?}",
        seen.overlapping
    );
    // Sent twice only when b had sent it and died before recording it: at most its in-flight
    // count.
    let twice: Vec<_> = seen.by_delivery.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.len() <= 16,
        "{} deliveries sent twice: {twice:?}",
        twice.len()
    );
    drop(seen);
    drop((a, c));
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_answer_503_while_the_database_is_down_and_lose_nothing_acknowledged() {
    let server = throwaway::Server::start().expect("a PostgreSQL server of this test's own");
    let database = Database::on(&server, "restart");
    let receiver = crate::support::Receiver::start().await;
    let (_tmp, dir) = data_dir();
    let host = database.host(&dir, &[]).await;
    let module = host.upload("forward", wasmhooks::examples::FORWARD).await;
    host.create_webhook(json!({ "name": "r", "event_kinds": ["order.*"], "module_id": module, "url": receiver.url }))
        .await;

    // An emitter sends one event after another throughout; what it got back is kept.
    let answers: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let emitter = {
        let (client, answers, stop) = (host.client.clone(), answers.clone(), stop.clone());
        let url = format!("{}/v1/events", host.url);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let id = format!("r-{n}");
                let sent = client
                    .post(&url)
                    .json(&json!({ "id": id, "kind": "order.created", "payload": { "n": id } }))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                let status = sent.map_or(0, |r| r.status().as_u16());
                answers.lock().unwrap().push((id, status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let count = |status: u16| {
        let answers = answers.clone();
        move || {
            answers
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| *s == status)
                .count()
        }
    };
    let (accepted, unavailable) = (count(202), count(503));
    eventually("events accepted before the stop", || async {
        (accepted() >= 20).then_some(())
    })
    .await;
    server.stop().expect("stop the database");
    eventually("503 while the database is down", || async {
        (unavailable() >= 3).then_some(())
    })
    .await;
    let (status, body) = host.get("/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    server.restart().expect("start the database again");
    let before = accepted();
    eventually("events accepted again", || async {
        (accepted() >= before + 20).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    emitter.await.unwrap();

    let acked: BTreeSet<String> = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, status)| *status == 202)
        .map(|(id, _)| id.clone())
        .collect();
    eventually("every acknowledged event at the receiver", || async {
        let seen: BTreeSet<String> = receiver
            .received()
            .iter()
            .map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["n"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        acked.is_subset(&seen).then_some(())
    })
    .await;
    let odd: Vec<_> = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| ![202, 503].contains(s))
        .cloned()
        .collect();
    assert!(odd.is_empty(), "answers other than 202 and 503: {odd:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_made_on_one_host_routes_on_another_and_edits_and_streaks_both_survive() {
    let database = Database::new("definitions");
    let receiver = crate::support::Receiver::start().await;
    // Every attempt fails: a failure streak starts on whichever host sends.
    receiver.answer_with(&[500; 100]);
    let (dirs_a, dirs_b) = (data_dir(), data_dir());
    let a = database.host(&dirs_a.1, &[]).await;
    let b = database.host(&dirs_b.1, &[]).await;
    let module = a.upload("forward", wasmhooks::examples::FORWARD).await;
    let created = a
        .create_webhook(json!({ "name": "made on a", "event_kinds": ["order.*"], "module_id": module, "url": receiver.url }))
        .await;
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());
    wait_until_routed(&b, "order.probe", "probe-b").await;
    let streak = eventually("a failure streak on the webhook", || async {
        let (status, body) = a.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (!body["failing_since"].is_null()).then_some(body["failing_since"].clone())
    })
    .await;

    // An edit on a keeps the streak; b follows the edit and keeps both.
    let (status, body) = a
        .patch_json(&path, &json!({ "description": "edited on a" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["failing_since"], streak, "the edit kept the streak");
    eventually("b to follow the edit", || async {
        let (_, body) = b.get(&path).await;
        (body["description"] == "edited on a" && body["failing_since"] == streak).then_some(())
    })
    .await;

    // The database's figures are in the metrics: calls timed, connections, what it holds.
    let metrics = b
        .client
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "wasmhooks_storage_call_seconds_count{call=\"claim\"}",
        "wasmhooks_storage_call_seconds_count{call=\"insert_and_commit\"}",
        "wasmhooks_storage_connections{state=\"max\"} 16",
        "wasmhooks_store_size_bytes ",
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }
    let stored = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wasmhooks_store_size_bytes "))
        .unwrap();
    assert!(
        stored.parse::<u64>().unwrap() > 100_000,
        "the tables' size: {stored}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoints_concurrency_holds_across_three_hosts() {
    let database = Database::new("endpoint");
    // A receiver that takes its time, counting requests in flight.
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let (in_flight, most, answered) = (in_flight.clone(), most.clone(), answered.clone());
        axum::Router::new().fallback(move || {
            let (in_flight, most, answered) = (in_flight.clone(), most.clone(), answered.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = in_flight.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
                in_flight.fetch_sub(1, SeqCst);
                answered.fetch_add(1, SeqCst);
                StatusCode::OK
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let limit = [("WASMHOOKS_DELIVERY__ENDPOINT_CONCURRENCY", "4")];
    let dirs: Vec<_> = (0..3).map(|_| data_dir()).collect();
    let mut hosts = Vec::new();
    for (_, dir) in &dirs {
        hosts.push(database.host(dir, &limit).await);
    }
    let module = hosts[0]
        .upload("forward", wasmhooks::examples::FORWARD)
        .await;
    hosts[0]
        .create_webhook(json!({ "name": "limited", "event_kinds": ["order.*"], "module_id": module, "url": receiver }))
        .await;
    for (i, host) in hosts.iter().enumerate() {
        wait_until_routed(host, "order.probe", &format!("probe-{i}")).await;
        eventually("every host to count three", || async {
            let (_, health) = host.get("/healthz").await;
            (health["hosts"] == 3).then_some(())
        })
        .await;
    }
    let probes = answered.load(std::sync::atomic::Ordering::SeqCst);
    for round in 0..10 {
        for (i, host) in hosts.iter().enumerate() {
            let batch: Vec<Value> = (0..10)
                .map(|n| {
                    let id = format!("c-{round}-{i}-{n}");
                    json!({ "id": id, "kind": "order.created", "payload": { "n": id } })
                })
                .collect();
            host.emit(json!(batch)).await;
        }
    }
    eventually("all 300 events answered", || async {
        (answered.load(std::sync::atomic::Ordering::SeqCst) >= probes + 300).then_some(())
    })
    .await;
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("cluster: at most {most} requests in flight at the endpoint (limit 4, three hosts)");
    assert!(most <= 4, "{most} requests in flight at once");
}
