//! Response values: a webhook names a path into the receiver's JSON answer; the value is kept
//! on the delivery, shown by the API, and emitted as a `webhook.response` event that other
//! webhooks can chain on.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{data_dir, eventually, Receiver, Server};

#[tokio::test]
async fn a_value_from_the_response_is_kept_and_emitted_for_chaining() {
    let (_tmp, dir) = data_dir();
    let erp = Receiver::start().await;
    let next = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;

    let (status, body) = server
        .post_json(
            "/v1/webhooks",
            &json!({"name": "bad", "event_kinds": ["order.created"], "module_id": module,
                    "url": erp.url, "response_value": {"path": "entries..id"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["message"],
        "response_value.path: key 2 is empty (two dots in a row, or a dot at an end)"
    );

    let request = server
        .create_webhook(json!({
            "name": "create request", "event_kinds": ["order.created"], "module_id": module,
            "url": format!("{}/requests", erp.url),
            "response_value": {"path": "entries.0.values.Request ID", "emit_event": true}
        }))
        .await;
    assert_eq!(
        request["response_value"],
        json!({"path": "entries.0.values.Request ID", "emit_event": true})
    );
    // Chained: a webhook on the follow-up event, scoped to the first webhook.
    let chained = server
        .create_webhook(json!({
            "name": "after request", "event_kinds": ["webhook.response"], "module_id": module,
            "scope": {"webhook_id": [request["id"]]}, "url": format!("{}/after", next.url)
        }))
        .await;

    erp.answer_with_body(
        201,
        r#"{"entries": [{"values": {"Request ID": "REQ-4711", "Status": "new"}}]}"#,
    );
    let ack = server
        .emit(json!({"kind": "order.created", "payload": {"id_order": 7}}))
        .await;
    let delivery = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(delivery["extracted_value"], "REQ-4711");
    let id = delivery["id"].as_str().unwrap();
    let (_, listed) = server
        .get(&format!(
            "/v1/deliveries?webhook_id={}",
            request["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(listed["data"][0]["extracted_value"], "REQ-4711", "{listed}");

    // The follow-up event, with an id made from the delivery's.
    let (status, event) = server.get(&format!("/v1/events/evt_response_{id}")).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["kind"], "webhook.response");
    assert_eq!(event["attributes"]["webhook_id"], request["id"]);
    assert_eq!(event["attributes"]["delivery_id"], id);
    assert_eq!(event["attributes"]["depth"], "1");
    assert_eq!(event["payload"]["value"], "REQ-4711");
    assert_eq!(event["payload"]["event_id"], ack["id"]);
    assert_eq!(event["payload"]["event_kind"], "order.created");

    // ...which the chained webhook delivered.
    let got = next.wait_for(1).await;
    assert_eq!(got[0].path, "/after");
    let forwarded: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(forwarded["value"], "REQ-4711", "{forwarded}");
    let (_, chained_deliveries) = server
        .get(&format!(
            "/v1/deliveries?webhook_id={}",
            chained["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(chained_deliveries["data"].as_array().unwrap().len(), 1);

    // A response without the value: delivered, no value, the reason in the delivery's log.
    erp.answer_with_body(200, r#"{"entries": []}"#);
    let ack = server
        .emit(json!({"kind": "order.created", "payload": {"id_order": 8}}))
        .await;
    let delivery = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(delivery["status"], "delivered");
    assert!(delivery.get("extracted_value").is_none(), "{delivery}");
    assert_eq!(
        delivery["logs"][1]["message"],
        "response value: `entries.0.values.Request ID` is not in the response (or is null)",
        "{delivery}"
    );
    let (status, _) = server
        .get(&format!(
            "/v1/events/evt_response_{}",
            delivery["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Clearing it: no more values.
    let (status, cleared) = server
        .patch_json(
            &format!("/v1/webhooks/{}", request["id"].as_str().unwrap()),
            &json!({"response_value": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert!(cleared.get("response_value").is_none(), "{cleared}");
}

#[tokio::test]
async fn webhooks_answering_each_other_stop_after_a_bounded_chain() {
    let (_tmp, dir) = data_dir();
    let echo = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    // Answers to its own follow-up events: a loop only the depth bound ends.
    let looping = server
        .create_webhook(json!({
            "name": "loop", "event_kinds": ["start", "webhook.response"], "module_id": module,
            "url": echo.url, "response_value": {"path": "ok", "emit_event": true}
        }))
        .await;
    for _ in 0..20 {
        echo.answer_with_body(200, r#"{"ok": "yes"}"#);
    }
    server.emit(json!({"kind": "start", "payload": {}})).await;
    // One start delivery and eight follow-ups, then a log line instead of a ninth event.
    let last = eventually("the chain to stop", || async {
        let (_, list) = server
            .get(&format!(
                "/v1/deliveries?webhook_id={}&limit=50",
                looping["id"].as_str().unwrap()
            ))
            .await;
        let data = list["data"].as_array().unwrap().clone();
        let finished = data.iter().all(|d| d["status"] == "delivered");
        (data.len() == 9 && finished).then_some(data)
    })
    .await;
    let mut stopped = 0;
    for summary in last {
        let (_, full) = server
            .get(&format!(
                "/v1/deliveries/{}",
                summary["id"].as_str().unwrap()
            ))
            .await;
        let logs = full["logs"].to_string();
        if logs.contains("webhook.response not emitted: 8 follow-ups in a row") {
            stopped += 1;
        }
    }
    assert_eq!(stopped, 1);
}
