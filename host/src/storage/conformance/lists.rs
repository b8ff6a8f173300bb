//! The contract's listing part: a walk selects deliveries by filters given as data, in id
//! order either way, and pages from a cursor.

use super::{event, insert, pending, webhook, Opener};
use crate::model::{DeliveryId, DeliveryStatus, Millis};
use crate::storage::{Deliveries, DeliveryQuery, Tenancy};

/// Walks select by every filter together, in id order either way, and page from a cursor.
pub(super) async fn a_delivery_query_filters_and_pages(opener: &impl Opener) {
    let dir = tempfile::tempdir().unwrap();
    let storage = opener.open(dir.path());
    let (w, other) = (webhook(), webhook());
    let mut ids = Vec::new();
    for i in 0..6 {
        let tenant = (i % 3 == 2).then_some("acme");
        let e = event(&format!("listed-{i}"), tenant);
        let mut d = pending(if i == 5 { &other } else { &w }, &e, 1_000);
        d.tenant = tenant.map(str::to_string);
        d.created_at = Millis(1_000 * i);
        insert(&storage, &e, std::slice::from_ref(&d)).await;
        if i % 2 == 1 {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_at = None;
            storage.update_delivery(&mut d).unwrap();
        }
        ids.push(d.id);
    }
    let select = |query: DeliveryQuery| -> Vec<DeliveryId> {
        let query = DeliveryQuery {
            limit: query.limit.max(1),
            ..query
        };
        let scanned = storage.scan_deliveries(&query).unwrap();
        scanned.deliveries.into_iter().map(|d| d.id).collect()
    };
    let all = DeliveryQuery {
        limit: 100,
        ..DeliveryQuery::default()
    };
    assert_eq!(select(all.clone()), ids);
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    let descending = DeliveryQuery {
        descending: true,
        ..all.clone()
    };
    assert_eq!(select(descending.clone()), newest_first);
    // Pages: each after the last of the one before, either way.
    for query in [all.clone(), descending] {
        let expected = select(query.clone());
        let first = select(DeliveryQuery {
            limit: 4,
            ..query.clone()
        });
        let rest = select(DeliveryQuery {
            after: first.last().cloned(),
            ..query
        });
        assert_eq!([first, rest].concat(), expected);
    }
    let of_w = DeliveryQuery {
        webhook: Some(w.id.clone()),
        ..all.clone()
    };
    assert_eq!(select(of_w.clone()), ids[..5]);
    let failed = DeliveryQuery {
        statuses: vec![DeliveryStatus::Failed, DeliveryStatus::Dead],
        ..of_w.clone()
    };
    assert_eq!(select(failed.clone()), [ids[1].clone(), ids[3].clone()]);
    let in_range = DeliveryQuery {
        created_from: Some(Millis(1_000)),
        created_before: Some(Millis(3_000)),
        ..of_w.clone()
    };
    assert_eq!(select(in_range), ids[1..3]);
    let acme = DeliveryQuery {
        tenant: Tenancy::Only(Some("acme".into())),
        ..all.clone()
    };
    assert_eq!(select(acme), [ids[2].clone(), ids[5].clone()]);
    let no_tenant = DeliveryQuery {
        tenant: Tenancy::Only(None),
        ..failed
    };
    assert_eq!(select(no_tenant), [ids[1].clone(), ids[3].clone()]);
    let replays = DeliveryQuery {
        replays: Some(true),
        ..all
    };
    assert!(select(replays).is_empty());
}
