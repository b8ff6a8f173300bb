//! The events and deliveries stored last, kept decoded in memory: a delivery is usually
//! started moments after it was stored, and reading it and its event back from sled and
//! decoding their JSON again cost more than keeping them.
//!
//! Events never change once stored, so a kept event is always the stored one (a pruned one is
//! forgotten); they are bounded by bytes, the oldest go first. A kept delivery is a *plain* one (no debounce,
//! batch or order index), which only [`Store::update_delivery`](super::Store::update_delivery)
//! writes after ingest: it is kept from just before its ingest transaction (so nothing can
//! read or write it through sled first) and forgotten when that transaction does not store
//! it or when it is next written. They are bounded by count, the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::model::{Delivery, DeliveryId, Event};

/// Payload and attribute bytes kept at most.
const MAX_BYTES: usize = 8 << 20;
/// Larger events are not kept (they are rare and would push out many small ones).
const MAX_EVENT_BYTES: usize = 64 << 10;

#[derive(Default)]
pub(super) struct RecentEvents {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By [`super::event_key`].
    events: HashMap<String, Arc<Event>>,
    order: VecDeque<(String, usize)>,
    bytes: usize,
}

fn size(event: &Event) -> usize {
    event.payload.get().len()
        + event
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

impl RecentEvents {
    /// The kept event of this [`super::event_key`].
    pub(super) fn get(&self, key: &str) -> Option<Arc<Event>> {
        self.inner.lock().unwrap().events.get(key).cloned()
    }

    /// Keeps a just-stored event, dropping the oldest kept ones beyond the bound.
    pub(super) fn put(&self, event: &Event) {
        let bytes = size(event);
        if bytes > MAX_EVENT_BYTES {
            return;
        }
        let key = super::event_key(event.tenant.as_deref(), &event.id);
        let event = Arc::new(event.clone());
        let mut inner = self.inner.lock().unwrap();
        if inner.events.insert(key.clone(), event).is_some() {
            return;
        }
        inner.order.push_back((key, bytes));
        inner.bytes += bytes;
        while inner.bytes > MAX_BYTES {
            let Some((id, bytes)) = inner.order.pop_front() else {
                break;
            };
            inner.events.remove(&id);
            inner.bytes -= bytes;
        }
    }

    /// Forgets a pruned event (its bytes count until its turn to go comes).
    pub(super) fn forget(&self, key: &str) {
        self.inner.lock().unwrap().events.remove(key);
    }
}

/// Deliveries kept at most (~700 bytes each with their index entry). A delivery is usually
/// started within milliseconds of being stored; one queued behind a backlog is evicted
/// before it starts and read from sled, so a larger bound buys nothing but memory (8,192
/// cost 8–10 MiB of peak RSS with 1,000 webhooks).
const MAX_DELIVERIES: usize = 2048;

#[derive(Default)]
pub(super) struct RecentDeliveries {
    inner: Mutex<KeptDeliveries>,
}

#[derive(Default)]
struct KeptDeliveries {
    deliveries: HashMap<DeliveryId, Delivery>,
    /// Ids in the order they were kept; some may have been forgotten since.
    order: VecDeque<DeliveryId>,
}

impl RecentDeliveries {
    pub(super) fn get(&self, id: &DeliveryId) -> Option<Delivery> {
        self.inner.lock().unwrap().deliveries.get(id).cloned()
    }

    /// Keeps deliveries about to be stored, dropping the oldest kept ones beyond the bound.
    pub(super) fn put<'a>(&self, deliveries: impl IntoIterator<Item = &'a Delivery>) {
        let mut inner = self.inner.lock().unwrap();
        for delivery in deliveries {
            inner
                .deliveries
                .insert(delivery.id.clone(), delivery.clone());
            inner.order.push_back(delivery.id.clone());
            while inner.order.len() > MAX_DELIVERIES {
                let Some(id) = inner.order.pop_front() else {
                    break;
                };
                inner.deliveries.remove(&id);
            }
        }
    }

    /// Forgets deliveries: written since, or never stored.
    pub(super) fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a DeliveryId>) {
        let mut inner = self.inner.lock().unwrap();
        for id in ids {
            inner.deliveries.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventId, Millis};
    use crate::store::tests::{delivery, event as stored_event};

    #[test]
    fn keeps_the_newest_deliveries_until_forgotten() {
        let recent = RecentDeliveries::default();
        let all: Vec<Delivery> = (0..=MAX_DELIVERIES)
            .map(|i| delivery(&stored_event("e"), i as i64))
            .collect();
        recent.put(&all);
        // One more than fits: the oldest went.
        assert!(recent.get(&all[0].id).is_none());
        assert_eq!(recent.get(&all[1].id).as_ref(), Some(&all[1]));
        recent.forget([&all[1].id]);
        assert!(recent.get(&all[1].id).is_none());
        assert_eq!(
            recent.get(&all[MAX_DELIVERIES].id).as_ref(),
            Some(&all[MAX_DELIVERIES])
        );
    }

    fn event(id: &str, payload_bytes: usize) -> Event {
        let payload = format!("\"{}\"", "x".repeat(payload_bytes - 2));
        Event {
            id: EventId::parse(id).unwrap(),
            kind: "k".into(),
            tenant: None,
            occurred_at: Millis(1),
            received_at: Millis(1),
            attributes: Vec::new(),
            payload: serde_json::value::RawValue::from_string(payload).unwrap(),
        }
    }

    #[test]
    fn keeps_the_newest_events_within_its_bytes() {
        let recent = RecentEvents::default();
        let big = event("big", MAX_EVENT_BYTES + 1);
        recent.put(&big);
        assert!(recent.get(big.id.as_str()).is_none());
        let each = MAX_EVENT_BYTES;
        let fit = MAX_BYTES / each;
        let events: Vec<Event> = (0..=fit).map(|i| event(&format!("e{i}"), each)).collect();
        for e in &events {
            recent.put(e);
        }
        // One more than fits: the oldest went.
        assert!(recent.get(events[0].id.as_str()).is_none());
        for kept in [&events[1], &events[fit]] {
            let got = recent.get(kept.id.as_str()).expect("kept");
            assert_eq!(got.payload.get(), kept.payload.get());
        }
    }
}
