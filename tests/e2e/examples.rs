//! Every example plugin through the real host: upload, webhook, event, what the receiver got.
//! (`forward`, `order-threshold` and `shipstation-notify` are exercised throughout the suite;
//! here are the ones with their own behaviour to show.)

use serde_json::{json, Value};

use crate::support::{data_dir, Receiver, Server};

fn body(r: &crate::support::Received) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("body is not JSON ({e})"))
}

#[tokio::test]
async fn k_inventory_fires_on_conditions_with_a_templated_request_and_keeps_the_return_value() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server
        .upload("k-inventory", wasmhooks::examples::K_INVENTORY)
        .await;
    server
        .create_webhook(json!({
            "name": "k", "event_kinds": ["sale.*"], "module_id": module, "url": receiver.url,
            "config": {
                "conditions": {"min_amount": 100, "statuses": ["paid"]},
                "method": "PUT",
                "path": "/api/entries/{id}",
                "headers": {"x-shop": "{attributes.store_id}"},
                "body": "{\"Order\": \"{id}\", \"Total\": {amount}, \"Email\": \"{payload.customer.email}\"}",
                "return_value": "entries.0.values.Request ID"
            }
        }))
        .await;
    receiver.answer_with_body(201, r#"{"entries": [{"values": {"Request ID": "REQ-1"}}]}"#);
    let ack = server
        .emit(json!([
            {"kind": "sale.created", "attributes": {"store_id": "7"},
             "payload": {"id": "S/1", "amount": 150, "status": "paid", "customer": {"email": "Zoë \"Z\" <z@x.pl>"}}},
            {"kind": "sale.created", "payload": {"id": "S/2", "amount": 50, "status": "paid"}}
        ]))
        .await;
    let sent = server
        .final_delivery(ack["data"][0]["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(sent["status"], "delivered", "{sent}");
    assert_eq!(sent["extracted_value"], "REQ-1");
    let skipped = server
        .final_delivery(ack["data"][1]["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(skipped["status"], "skipped");
    assert_eq!(skipped["skip_reason"], "amount 50 is below 100");

    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].method, "PUT");
    assert_eq!(got[0].path, "/api/entries/S%2F1");
    assert_eq!(got[0].header("x-shop"), Some("7"));
    assert_eq!(
        body(&got[0]),
        json!({"Order": "S/1", "Total": 150, "Email": "Zoë \"Z\" <z@x.pl>"})
    );
}

#[tokio::test]
async fn sellasist_action_calls_the_templated_url_after_its_delay_inside_its_window() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server
        .upload("sellasist-action", wasmhooks::examples::SELLASIST_ACTION)
        .await;
    let always = json!({"time_zone": "Europe/Warsaw", "windows": [{
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "00:00", "to": "24:00"}]});
    server
        .create_webhook(json!({
            "name": "sellasist", "event_kinds": ["order.paid"], "module_id": module,
            "url": receiver.url, "delay": "1s", "schedule": always, "retry_schedule": [],
            "config": {"path": "/api/v1/orders/{id_order}/jobs/{id_job}", "method": "POST",
                       "expected_status": 204}
        }))
        .await;
    receiver.answer_with(&[204, 404]);
    let ack = server
        .emit(json!([
            {"kind": "order.paid", "payload": {"id_order": "A 7", "id_job": 42}},
            {"kind": "order.paid", "payload": {"id_order": "A 8", "id_job": 43}}
        ]))
        .await;
    let first = server
        .final_delivery(ack["data"][0]["deliveries"][0].as_str().unwrap())
        .await;
    let second = server
        .final_delivery(ack["data"][1]["deliveries"][0].as_str().unwrap())
        .await;
    let got = receiver.wait_for(2).await;
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/api/v1/orders/A%207/jobs/42",
            "/api/v1/orders/A%208/jobs/43"
        ]
    );
    assert!(got.iter().all(|r| r.method == "POST"));
    // The delay held the call back; only the expected status delivers.
    for delivery in [&first, &second] {
        let created = delivery["created_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap();
        let sent = delivery["attempts"][0]["started_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap();
        assert!(
            sent.as_millisecond() - created.as_millisecond() >= 1000,
            "{delivery}"
        );
    }
    let statuses: Vec<(&str, Option<&str>)> = [&first, &second]
        .iter()
        .map(|d| (d["status"].as_str().unwrap(), d["error"].as_str()))
        .collect();
    assert!(statuses.contains(&("delivered", None)), "{statuses:?}");
    assert!(
        statuses.contains(&(
            "failed",
            Some("response hook failed the delivery: answered 404; expected 204")
        )),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn erp_product_shapes_the_record_per_webhook() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server
        .upload("erp-product", wasmhooks::examples::ERP_PRODUCT)
        .await;
    for shape in ["simple", "extended", "extendedRelated"] {
        server
            .create_webhook(json!({
                "name": shape, "event_kinds": ["product.updated"], "module_id": module,
                "url": format!("{}/{shape}", receiver.url), "config": {"shape": shape}
            }))
            .await;
    }
    server
        .emit(json!({"kind": "product.updated", "payload": {
            "sku": "P1", "name": "Mug", "price": 9.5, "stock": 3, "description": "Blue",
            "attributes": {"color": "blue"}, "related": [{"sku": "P2", "name": "Saucer"}]}}))
        .await;
    let got = receiver.wait_for(3).await;
    let by_path = |path: &str| body(got.iter().find(|r| r.path == path).unwrap());
    assert_eq!(
        by_path("/simple"),
        json!({"sku": "P1", "name": "Mug", "price": 9.5, "currency": "EUR"})
    );
    let extended = by_path("/extended");
    assert_eq!(extended["attributes"], json!({"color": "blue"}));
    assert!(extended.get("related").is_none(), "{extended}");
    assert_eq!(
        by_path("/extendedRelated")["related"],
        json!([{"sku": "P2", "name": "Saucer"}])
    );
}

#[tokio::test]
async fn stock_edge_fires_only_when_stock_crosses_zero() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server
        .upload("stock-edge", wasmhooks::examples::STOCK_EDGE)
        .await;
    server
        .create_webhook(json!({
            "name": "edges", "event_kinds": ["stock.changed"], "module_id": module,
            "url": receiver.url
        }))
        .await;
    // One at a time: each decision depends on the state the previous one left.
    let mut statuses = Vec::new();
    for stock in [5, 3, 0, 0, 2, 1] {
        let ack = server
            .emit(json!({"kind": "stock.changed", "payload": {"sku": "S1", "stock": stock}}))
            .await;
        let delivery = server
            .final_delivery(ack["deliveries"][0].as_str().unwrap())
            .await;
        statuses.push(delivery["status"].as_str().unwrap().to_string());
    }
    assert_eq!(
        statuses,
        [
            "skipped",
            "skipped",
            "delivered",
            "skipped",
            "delivered",
            "skipped"
        ]
    );
    let got = receiver.wait_for(2).await;
    let changes: Vec<Value> = got.iter().map(|r| body(r)["change"].clone()).collect();
    assert_eq!(changes, [json!("out_of_stock"), json!("back_in_stock")]);
}
