//! Fuzzing, property-style: generated inputs for the parsers that take outside input —
//! event ingest, response paths, signature verification. Each property runs a few hundred
//! cases in every `cargo test` (set `PROPTEST_CASES` for a longer run). cargo-fuzz needs a
//! nightly toolchain, which CI does not have; these run on stable.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::model::{Millis, ResponsePath};
use crate::pipeline::EventInput;
use crate::signature::{
    signature_header, verify, verify_with, Signer, SigningKeyPair, SigningSecret, Verifier,
};

/// Any JSON value, a few levels deep, with awkward keys and strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An event-shaped object whose fields are sometimes right, sometimes wrong.
fn event_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just(json!("order.created")),
        "[a-z]{1,6}(\\.[a-z*]{1,6}){0,3}".prop_map(Value::from),
        json_value(),
    ];
    let attributes = prop_oneof![
        prop::collection::btree_map(".{0,10}", ".{0,10}", 0..5).prop_map(|m| json!(m)),
        json_value(),
    ];
    (
        proptest::option::of(".{0,20}"),
        kind,
        proptest::option::of(".{0,10}"),
        attributes,
        json_value(),
        proptest::option::of(json_value()),
    )
        .prop_map(|(id, kind, tenant, attributes, payload, occurred_at)| {
            let mut event = json!({"kind": kind, "attributes": attributes, "payload": payload});
            if let Some(id) = id {
                event["id"] = id.into();
            }
            if let Some(tenant) = tenant {
                event["tenant"] = tenant.into();
            }
            if let Some(at) = occurred_at {
                event["occurred_at"] = at;
            }
            event
        })
}

/// A key with the characters paths must escape, or not.
fn path_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _-]{1,8}",
        "[a-z.\\\\ ]{1,6}",
        "[0-9]{1,2}",
        ".{1,6}"
    ]
}

fn escape(key: &str) -> String {
    key.replace('\\', "\\\\").replace('.', "\\.")
}

proptest! {

    /// Ingest: any bytes are refused or accepted, never a panic; an accepted event obeys
    /// every rule the API promises.
    #[test]
    fn ingest_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(input) = serde_json::from_slice::<EventInput>(&bytes) {
            let _ = input.into_event(Millis(0), None);
        }
    }

    #[test]
    fn ingest_accepts_only_valid_events(event in event_like()) {
        let text = event.to_string();
        let Ok(input) = serde_json::from_str::<EventInput>(&text) else {
            return Ok(());
        };
        if let Ok(stored) = input.into_event(Millis(7), Some(3)) {
            prop_assert!(crate::model::validate_kind(&stored.kind, false).is_ok());
            prop_assert!(stored.attributes.len() <= crate::pipeline::MAX_ATTRIBUTES);
            prop_assert!(stored.tenant.as_ref().is_none_or(|t| !t.is_empty() && t.len() <= 128));
            prop_assert_eq!(stored.received_at, Millis(7));
            // The payload is kept byte for byte.
            prop_assert_eq!(stored.payload.get(), event["payload"].to_string());
        }
    }

    /// Response paths: any text parses or is refused, never a panic, and extraction from
    /// any document never panics.
    #[test]
    fn response_paths_never_panic(text in ".{0,40}", document in json_value()) {
        if let Ok(path) = ResponsePath::parse(&text) {
            let _ = path.extract(&document);
            prop_assert!(path.keys().iter().all(|k| !k.is_empty()));
        }
    }

    /// Escaped keys round-trip, and the value placed at a path is the value found there.
    #[test]
    fn response_paths_find_what_was_put_there(
        keys in prop::collection::vec(path_key(), 1..6),
        value in ".{1,12}",
    ) {
        let text = keys.iter().map(|k| escape(k)).collect::<Vec<_>>().join(".");
        let path = ResponsePath::parse(&text).unwrap();
        prop_assert_eq!(path.keys(), &keys[..]);
        let mut document = Value::String(value.clone());
        for key in keys.iter().rev() {
            document = match key.parse::<usize>() {
                Ok(i) if i < 20 => {
                    let mut items = vec![Value::Null; i + 1];
                    items[i] = document;
                    Value::Array(items)
                }
                _ => json!({ key.clone(): document }),
            };
        }
        prop_assert_eq!(path.extract(&document), Some(value));
    }

    /// Verification: any header, timestamp and body is refused or accepted, never a panic.
    #[test]
    fn verification_never_panics(
        id in ".{0,20}",
        timestamp in prop_oneof![".{0,12}", any::<i64>().prop_map(|t| t.to_string())],
        signature in ".{0,120}",
        body in prop::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
        tolerance in 0i64..1_000_000,
    ) {
        let secret = SigningSecret::generate();
        let _ = verify(&secret, &id, &timestamp, &signature, &body, now, tolerance);
        let public = Verifier::Public(SigningKeyPair::generate().public_key());
        let _ = verify_with(&public, &id, &timestamp, &signature, &body, now, tolerance);
        let _ = Verifier::parse(&signature);
        let _ = Signer::parse(&signature);
    }

    /// What the host signs verifies, for both schemes; changing any part of it does not.
    #[test]
    fn signatures_verify_and_any_change_breaks_them(
        id in "[a-zA-Z0-9_]{1,24}",
        timestamp in 0i64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 0..128),
        flip in any::<prop::sample::Index>(),
        asymmetric in any::<bool>(),
    ) {
        let signer = Signer::generate(asymmetric);
        let verifier = match &signer {
            Signer::Secret(s) => Verifier::Secret(s.clone()),
            Signer::KeyPair(k) => Verifier::Public(k.public_key()),
        };
        let header = signature_header(&[&signer], &id, timestamp, &body);
        let ts = timestamp.to_string();
        prop_assert!(verify_with(&verifier, &id, &ts, &header, &body, timestamp, 300).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            changed[flip.index(body.len())] ^= 1;
            prop_assert!(verify_with(&verifier, &id, &ts, &header, &changed, timestamp, 300).is_err());
        }
        let other_id = format!("{id}x");
        prop_assert!(verify_with(&verifier, &other_id, &ts, &header, &body, timestamp, 300).is_err());
        let other_ts = (timestamp + 1).to_string();
        prop_assert!(verify_with(&verifier, &id, &other_ts, &header, &body, timestamp, 300).is_err());
    }
}

/// Every event ingest accepts, and a delivery due from it after any delay, is stored in a
/// form that reads back as it was: times at the edges of the accepted range included (a due
/// time past year 9999 once made every delivery list fail).
#[test]
fn accepted_events_and_their_deliveries_read_back() {
    use proptest::test_runner::{Config, TestRunner};

    use crate::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), crate::store::Sealer::new([7; 32])).unwrap();
    let occurred_at = prop_oneof![
        any::<i64>(),
        Just(Millis::LATEST.as_i64()),
        Just(Millis::LATEST.as_i64() + 1),
        Just(253_402_300_800_000i64),
        0i64..=Millis::LATEST.as_i64(),
    ];
    let delay_ms = prop_oneof![Just(0u64), any::<u64>(), 0u64..(30 * 86_400_000)];
    let strategy = (event_like(), occurred_at, delay_ms);
    let mut runner = TestRunner::new(Config::with_cases(256));
    runner
        .run(&strategy, |(mut event, at, delay_ms)| {
            event["occurred_at"] = json!(at);
            let Ok(input) = serde_json::from_value::<EventInput>(event) else {
                return Ok(());
            };
            let Ok(stored) = input.into_event(Millis(1_700_000_000_000), None) else {
                return Ok(());
            };
            let due = stored
                .occurred_at
                .saturating_add(std::time::Duration::from_millis(delay_ms));
            let mut delivery = crate::store::tests::delivery(&stored, 0);
            delivery.tenant = stored.tenant.clone();
            delivery.created_at = stored.received_at;
            delivery.next_attempt_at = Some(due);
            store
                .insert_event(&stored, std::slice::from_ref(&delivery))
                .unwrap();
            let reopened = serde_json::to_string(&store.delivery(&delivery.id).unwrap()).unwrap();
            prop_assert_eq!(reopened, serde_json::to_string(&Some(&delivery)).unwrap());
            let read = store
                .event(stored.tenant.as_deref(), &stored.id)
                .unwrap()
                .expect("the event reads back");
            prop_assert_eq!(read.occurred_at, stored.occurred_at);
            prop_assert_eq!(read.payload.get(), stored.payload.get());
            // Straight from the stored bytes too, not only from the just-stored cache.
            let listed = store
                .scan_deliveries(&crate::storage::DeliveryQuery {
                    event: Some(delivery.event_id.clone()),
                    descending: true,
                    limit: 1,
                    ..Default::default()
                })
                .unwrap();
            prop_assert!(listed.unreadable.is_empty());
            prop_assert_eq!(listed.deliveries.len(), 1);
            Ok(())
        })
        .unwrap();
}

/// Duration text as the API takes it: any number of any unit, sometimes out of range.
fn duration_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![12 => "[1-9][0-9]?", 1 => "[0-9]{1,22}"];
    let unit = prop_oneof![
        8 => Just("ms"),
        8 => Just("s"),
        1 => Just("m"),
        1 => Just("h"),
        1 => Just("d")
    ];
    (number, unit).prop_map(|(n, unit)| format!("{n}{unit}"))
}

/// Every webhook definition the API accepts is stored in a form that reads back as it was
/// accepted (sealed, with its durations, limits, scope and config).
#[test]
fn accepted_webhooks_read_back() {
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};

    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.store.min_free_bytes = 0;
    config.store.min_free_percent = 0.0;
    config.store.ballast_bytes = 0;
    config.plugin.precompiled_cache = false;
    let host = crate::Host::open(config).unwrap();
    let pipeline = host.pipeline();
    let (module, _) = pipeline
        .catalog()
        .upload_module("forward", "1", crate::examples::FORWARD)
        .unwrap();
    let definition = (
        prop_oneof![8 => "[a-z][a-z ]{0,11}", 1 => ".{0,12}"],
        prop::collection::vec("[a-z]{1,5}(\\.[a-z]{1,5}){0,2}(\\.\\*)?", 1..3),
        proptest::option::of(duration_text()),
        proptest::option::of(duration_text()),
        proptest::option::of(prop::collection::vec(duration_text(), 0..4)),
        proptest::option::of((
            duration_text(),
            prop_oneof![4 => 1u32..1000, 1 => any::<u32>()],
        )),
        proptest::option::of((
            duration_text(),
            prop_oneof![1u32 << 20..1 << 28, any::<u32>()],
        )),
        prop::collection::btree_map("[a-z]{1,6}", prop::collection::vec(".{0,6}", 1..3), 0..3),
        json_value(),
    );
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(RunnerConfig::with_cases(256));
    runner
        .run(
            &definition,
            |(name, kinds, delay, timeout, retry, batch, limits, scope, config)| {
                let mut input = json!({
                    "name": name, "event_kinds": kinds, "module_id": module.id,
                    "url": "https://example.com/in", "scope": scope,
                    "config": { "value": config },
                });
                if let Some(delay) = delay {
                    input["delay"] = json!(delay);
                }
                if let Some(timeout) = timeout {
                    input["timeout"] = json!(timeout);
                }
                if let Some(retry) = retry {
                    input["retry_schedule"] = json!(retry);
                }
                if let Some((window, max_size)) = batch {
                    input["batch"] = json!({ "window": window, "max_size": max_size });
                }
                if let Some((cpu_time, memory_bytes)) = limits {
                    input["limits"] = json!({ "cpu_time": cpu_time, "memory_bytes": memory_bytes });
                }
                let text = input.to_string();
                let Ok(input) = crate::pipeline::WebhookInput::from_json(text.as_bytes()) else {
                    return Ok(());
                };
                let webhook = match pipeline.catalog().create_webhook(input) {
                    Ok(webhook) => webhook,
                    Err(e) => {
                        if std::env::var_os("FUZZ_SHOW_REFUSALS").is_some() {
                            eprintln!("refused: {e} <- {}", &text[..text.len().min(300)]);
                        }
                        return Ok(());
                    }
                };
                let stored = pipeline.storage().webhook(&webhook.id).unwrap();
                prop_assert_eq!(stored.as_ref(), Some(&webhook));
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            },
        )
        .unwrap();
    // The generator must reach the store, not only the refusals.
    let accepted = accepted.into_inner();
    assert!(
        accepted >= 20,
        "only {accepted} of 256 definitions were accepted"
    );
}
