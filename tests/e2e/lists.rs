//! Lists: filters, ordering and cursor pagination behave the same on every list endpoint,
//! and detail endpoints expand related objects.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{data_dir, Receiver, Server};

/// Every item of a list, page by page with `limit`, following cursors.
async fn all_pages(server: &Server, path: &str, limit: usize) -> (Vec<Value>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut cursor: Option<String> = None;
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let (status, page) = server.get(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        pages += 1;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        items.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    (items, pages)
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn webhook_lists_filter_order_and_page() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let specs = [
        ("Orders to ERP", "order.*", true),
        ("stock alerts", "stock.changed", true),
        ("orders to CRM", "order.created", false),
        ("Customers", "customer.*", true),
        ("all events", "*", true),
    ];
    for (name, kind, enabled) in specs {
        server
            .create_webhook(
                json!({ "name": name, "event_kinds": [kind], "module_id": module,
                                    "url": "http://127.0.0.1:9/", "enabled": enabled,
                                    "description": format!("{name} (sync)") }),
            )
            .await;
    }

    // Default: oldest first; pages of 2 cover everything exactly once.
    let (items, pages) = all_pages(&server, "/v1/webhooks", 2).await;
    assert_eq!(pages, 3);
    assert_eq!(
        names(&items),
        [
            "Orders to ERP",
            "stock alerts",
            "orders to CRM",
            "Customers",
            "all events"
        ]
    );
    // By name, descending (case-insensitive), paged.
    let (items, _) = all_pages(&server, "/v1/webhooks?order_by=name&direction=desc", 2).await;
    assert_eq!(
        names(&items),
        [
            "stock alerts",
            "orders to ERP",
            "orders to CRM",
            "Customers",
            "all events"
        ]
        .map(|n| if n == "orders to ERP" {
            "Orders to ERP"
        } else {
            n
        })
    );

    let filtered = |query: &'static str| {
        let server = &server;
        async move {
            let (status, page) = server.get(&format!("/v1/webhooks?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}: {page}");
            names(page["data"].as_array().unwrap())
        }
    };
    assert_eq!(
        filtered("name_contains=ORDERS").await,
        ["Orders to ERP", "orders to CRM"]
    );
    assert_eq!(filtered("name=Customers").await, ["Customers"]);
    assert_eq!(filtered("enabled=false").await, ["orders to CRM"]);
    assert_eq!(
        filtered("event_kind=order.created").await,
        ["Orders to ERP", "orders to CRM", "all events"]
    );
    assert_eq!(
        filtered("description_contains=stock%20alerts").await,
        ["stock alerts"]
    );
    assert_eq!(filtered("module_id=mod_0000").await, Vec::<String>::new());

    // Bad parameters name themselves; nothing is listed.
    for (query, expected) in [
        ("limit=0", "limit: `0` is not a whole number from 1 to 250"),
        ("limit=251", "limit"),
        (
            "order_by=colour",
            "order_by: this list cannot be ordered by `colour`",
        ),
        (
            "direction=sideways",
            "direction: `sideways` is not a direction",
        ),
        (
            "cursor=garbage",
            "cursor: is not a cursor this list returned",
        ),
        ("enabled=maybe", "enabled: `maybe` is not true or false"),
        ("colour=red", "colour: is not a parameter of this list"),
    ] {
        let (status, body) = server.get(&format!("/v1/webhooks?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{query}: {message}");
    }
    // A cursor belongs to its order.
    let (_, page) = server.get("/v1/webhooks?limit=1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, body) = server
        .get(&format!(
            "/v1/webhooks?limit=1&order_by=name&cursor={cursor}"
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Modules list and detail: who uses it, expanded.
    let (_, modules) = server.get("/v1/modules?name_contains=forw").await;
    assert_eq!(modules["data"].as_array().unwrap().len(), 1);
    let (_, detail) = server
        .get(&format!("/v1/modules/{module}?expand=webhooks"))
        .await;
    assert_eq!(detail["used_by"].as_array().unwrap().len(), 5);
    assert_eq!(detail["webhooks"].as_array().unwrap().len(), 5);
    assert!(
        detail["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "on-event"),
        "{detail}"
    );
    let (status, body) = server
        .get(&format!("/v1/modules/{module}?expand=owner"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot expand `owner`"));
}

#[tokio::test]
async fn delivery_lists_filter_by_status_event_webhook_and_time_and_page() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let threshold = server
        .upload("order-threshold", wasmhooks::examples::ORDER_THRESHOLD)
        .await;
    let all = server
        .create_webhook(json!({ "name": "all", "event_kinds": ["order.*"], "module_id": module, "url": receiver.url }))
        .await;
    let big = server
        .create_webhook(
            json!({ "name": "big", "event_kinds": ["order.*"], "module_id": threshold,
                                "config": { "threshold": 100 }, "url": receiver.url }),
        )
        .await;
    let before = jiff::Timestamp::now();
    let events: Vec<Value> = (0..7)
        .map(|i| json!({ "id": format!("o-{i}"), "kind": "order.created",
                         "payload": { "id": format!("A-{i}"), "amount": i * 30, "currency": "EUR" } }))
        .collect();
    server.emit(Value::Array(events)).await;
    for i in 0..7 {
        for d in server.deliveries_of(&format!("o-{i}")).await {
            server.final_delivery(d["id"].as_str().unwrap()).await;
        }
    }

    let (items, _) = all_pages(&server, "/v1/deliveries", 3).await;
    assert_eq!(items.len(), 14);
    let ids: BTreeSet<&str> = items.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 14, "no delivery on two pages");
    let mut sorted: Vec<&str> = items.iter().map(|d| d["id"].as_str().unwrap()).collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        sorted,
        items
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        "newest first"
    );
    assert!(items[0].get("attempts").is_none(), "lists show summaries");

    let count = |query: String| {
        let server = &server;
        async move {
            let (status, page) = server.get(&format!("/v1/deliveries?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}: {page}");
            page["data"].as_array().unwrap().len()
        }
    };
    let big_id = big["id"].as_str().unwrap();
    assert_eq!(
        count("status=skipped".into()).await,
        4,
        "amounts 0..90 are below 100"
    );
    assert_eq!(
        count(format!("webhook_id={big_id}&status=delivered")).await,
        3
    );
    assert_eq!(
        count(format!("webhook_id={}", all["id"].as_str().unwrap())).await,
        7
    );
    assert_eq!(count("event_id=o-3".into()).await, 2);
    assert_eq!(count(format!("created_after={before}")).await, 14);
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    assert_eq!(count(format!("created_after={later}")).await, 0);
    assert_eq!(count(format!("created_before={before}")).await, 0);
    let (items, _) = all_pages(&server, "/v1/deliveries?direction=asc&status=delivered", 2).await;
    assert_eq!(items.len(), 10);

    for (query, expected) in [
        ("status=lost", "status: unknown status `lost`"),
        (
            "created_after=yesterday",
            "created_after: `yesterday` is not an RFC 3339 timestamp",
        ),
        ("webhook_id=hook", "webhook_id"),
        ("order_by=status", "order_by"),
    ] {
        let (status, body) = server.get(&format!("/v1/deliveries?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{query}: {body}"
        );
    }

    // Detail with related objects.
    let id = items[0]["id"].as_str().unwrap();
    let (_, detail) = server
        .get(&format!("/v1/deliveries/{id}?expand=event,webhook"))
        .await;
    assert_eq!(detail["event"]["id"], detail["event_id"]);
    assert_eq!(detail["webhook"]["id"], detail["webhook_id"]);
    assert!(detail["attempts"].as_array().is_some());
}
