//! Delays and operating windows: the host owns time. (The window arithmetic, DST included,
//! is unit-tested in `model::schedule`; here the real binary applies it.)

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{data_dir, error_message, eventually, Receiver, Server};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn ms(value: &Value) -> i64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

#[tokio::test]
async fn delays_and_windows_decide_when_a_delivery_is_due() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let weekday =
        |offset: i8| DAYS[(today.weekday().to_monday_zero_offset() + offset) as usize % 7];
    // Windows a whole day wide, chosen so a test that runs across midnight UTC still holds:
    // "open" covers today and tomorrow; "closed" opens only in three days.
    let in_three_days = today
        .date()
        .checked_add(jiff::Span::new().days(3))
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap();
    let all_day = |days: &[&str]| json!({ "time_zone": "UTC", "windows": [{ "days": days, "from": "00:00", "to": "24:00" }] });

    let hook = |name: &str, kind: &str, extra: Value| {
        let mut body = json!({ "name": name, "event_kinds": [kind], "module_id": module,
                               "url": format!("{}/{name}", receiver.url) });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    server
        .create_webhook(hook("later", "t.later", json!({ "delay": "1h" })))
        .await;
    server
        .create_webhook(hook(
            "open",
            "t.open",
            json!({ "schedule": all_day(&[weekday(0), weekday(1)]) }),
        ))
        .await;
    server
        .create_webhook(hook(
            "closed",
            "t.closed",
            json!({ "schedule": all_day(&[weekday(3)]) }),
        ))
        .await;

    // Delayed by an hour from when the event happened...
    let ack = server
        .emit(json!({ "kind": "t.later", "payload": {} }))
        .await;
    let (_, d) = server
        .get(&format!(
            "/v1/deliveries/{}",
            ack["deliveries"][0].as_str().unwrap()
        ))
        .await;
    let (_, event) = server
        .get(&format!("/v1/events/{}", ack["id"].as_str().unwrap()))
        .await;
    assert_eq!(d["status"], "pending");
    assert_eq!(
        ms(&d["next_attempt_at"]) - ms(&event["occurred_at"]),
        3_600_000
    );
    // ...so an event that happened two hours ago is due at once.
    let past = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2)).to_string();
    let ack = server
        .emit(json!({ "kind": "t.later", "occurred_at": past, "payload": {} }))
        .await;
    let d = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(d["status"], "delivered");

    // Inside today's window: sent. Outside: waits for 00:00 UTC in three days.
    let ack = server
        .emit(json!({ "kind": "t.open", "payload": {} }))
        .await;
    let d = server
        .final_delivery(ack["deliveries"][0].as_str().unwrap())
        .await;
    assert_eq!(d["status"], "delivered");
    let ack = server
        .emit(json!({ "kind": "t.closed", "payload": {} }))
        .await;
    let id = ack["deliveries"][0].as_str().unwrap().to_string();
    let waiting = eventually("the delivery to wait for its window", || async {
        let (_, d) = server.get(&format!("/v1/deliveries/{id}")).await;
        (d["next_attempt_at"].is_string()
            && ms(&d["next_attempt_at"]) == in_three_days.timestamp().as_millisecond())
        .then_some(d)
    })
    .await;
    assert_eq!(waiting["status"], "pending");
    assert_eq!(waiting["attempts"], json!([]));
    let sent: Vec<String> = receiver.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(sent, ["/later", "/open"]);

    // Bad timing definitions.
    for (extra, expected) in [
        (json!({ "delay": "-5s" }), "delay: `-5s` is not a duration"),
        (json!({ "delay": "31d" }), "delay: must be at most 30d"),
        (
            json!({ "schedule": { "time_zone": "Mars/Olympus", "windows": [{ "days": ["mon"], "from": "09:00", "to": "17:00" }] } }),
            "schedule.time_zone: `Mars/Olympus` is not an IANA time zone",
        ),
        (
            json!({ "schedule": { "time_zone": "UTC", "windows": [] } }),
            "schedule.windows: list at least one window",
        ),
        (
            json!({ "schedule": { "time_zone": "UTC", "windows": [{ "days": ["mon"], "from": "17:00", "to": "09:00" }] } }),
            "schedule.windows[0].to: the window 17:00–09:00 is empty",
        ),
        (
            json!({ "schedule": { "time_zone": "UTC", "windows": [
            { "days": ["mon"], "from": "09:00", "to": "12:00" }, { "days": ["mon"], "from": "11:00", "to": "13:00" }] } }),
            "schedule.windows[1]: overlaps window 0",
        ),
        (
            json!({ "schedule": { "time_zone": "UTC" } }),
            "missing field `windows`",
        ),
        (
            json!({ "entity_key": "sku" }),
            "entity_key: `sku` is not a JSON pointer",
        ),
    ] {
        let (status, answer) = server
            .post_json("/v1/webhooks", &hook("bad", "t.bad", extra.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{extra}: expected {expected:?} in {message:?}"
        );
    }
    let (_, list) = server.get("/v1/webhooks?name=bad").await;
    assert_eq!(list["data"], json!([]), "no refused webhook was stored");
}

/// `n` windows on every day, 10 minutes each, one every 20 minutes from midnight UTC.
fn windows_every_20_minutes(n: u32) -> Value {
    let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    let windows: Vec<Value> = (0..n)
        .map(|k| json!({ "days": DAYS, "from": hhmm(k * 20), "to": hhmm(k * 20 + 10) }))
        .collect();
    json!({ "time_zone": "UTC", "windows": windows })
}

#[tokio::test]
async fn a_schedule_of_a_window_per_minute_is_refused_and_the_largest_allowed_stalls_no_one() {
    let (_tmp, dir) = data_dir();
    let receiver = Receiver::start().await;
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;
    let hook = |tenant: &str, schedule: Value| {
        json!({ "name": tenant, "tenant": tenant, "event_kinds": [format!("{tenant}.*")],
                "module_id": module, "url": format!("{}/{tenant}", receiver.url),
                "schedule": schedule })
    };

    // The attack: 7 days × 1,440 one-minute windows (a 500 KB body), each checked against
    // every other when saved and again for every delivery.
    let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    let per_minute: Vec<Value> = DAYS
        .iter()
        .flat_map(|day| {
            (0..1440u32).map(move |m| json!({ "days": [day], "from": hhmm(m), "to": hhmm(m + 1) }))
        })
        .collect();
    let per_minute = json!({ "time_zone": "UTC", "windows": per_minute });
    // A body that echoes the schedule is cut short in a failure message.
    let short = |body: &Value| body.to_string().chars().take(300).collect::<String>();
    let (status, body) = server
        .post_json("/v1/webhooks", &hook("attacker", per_minute.clone()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", short(&body));
    assert_eq!(
        error_message(&body),
        "schedule.windows: has 10080 windows; the limit is 64 (give a window several days \
         instead of one window per day)"
    );

    // The largest schedule allowed saves, and a change to the attack is refused too.
    let big = server
        .create_webhook(hook("attacker", windows_every_20_minutes(64)))
        .await;
    let big_id = big["id"].as_str().unwrap();
    let (status, body) = server
        .patch_json(
            &format!("/v1/webhooks/{big_id}"),
            &json!({ "schedule": per_minute }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", short(&body));
    assert!(
        error_message(&body).contains("the limit is 64"),
        "{}",
        short(&body)
    );
    server.create_webhook(hook("other", json!(null))).await;

    // Deliveries to the big schedule are looked at while another tenant's event comes in:
    // the other one is delivered, and each of the big ones is sent or waits for an opening.
    let events: Vec<Value> = (0..50)
        .map(|i| json!({ "kind": "attacker.x", "tenant": "attacker", "payload": { "i": i } }))
        .collect();
    let acks = server.emit(json!(events)).await;
    server
        .emit(json!({ "kind": "other.x", "tenant": "other", "payload": {} }))
        .await;
    eventually("the other tenant's delivery", || async {
        receiver
            .received()
            .iter()
            .any(|r| r.path == "/other")
            .then_some(())
    })
    .await;
    for ack in acks["data"].as_array().unwrap() {
        let id = ack["deliveries"][0].as_str().unwrap().to_string();
        eventually("a big-schedule delivery to be looked at", || async {
            let (_, d) = server.get(&format!("/v1/deliveries/{id}")).await;
            let waits_for_opening = d["next_attempt_at"].is_string()
                && ms(&d["next_attempt_at"]) % 1_200_000 == 0
                && ms(&d["next_attempt_at"]) > ms(&d["created_at"]);
            (d["status"] == "delivered" || waits_for_opening).then_some(())
        })
        .await;
    }
}
