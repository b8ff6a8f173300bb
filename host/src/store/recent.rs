//! The events stored last, kept decoded in memory: a delivery is usually evaluated moments
//! after its event was stored, and reading the event back from sled and decoding its JSON
//! again cost more than keeping it. Events never change once stored, so a kept copy is
//! always the stored one. Bounded by bytes; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::model::{Event, EventId};

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
    events: HashMap<EventId, Arc<Event>>,
    order: VecDeque<(EventId, usize)>,
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
    pub(super) fn get(&self, id: &EventId) -> Option<Arc<Event>> {
        self.inner.lock().unwrap().events.get(id).cloned()
    }

    /// Keeps a just-stored event, dropping the oldest kept ones beyond the bound.
    pub(super) fn put(&self, event: &Event) {
        let bytes = size(event);
        if bytes > MAX_EVENT_BYTES {
            return;
        }
        let event = Arc::new(event.clone());
        let mut inner = self.inner.lock().unwrap();
        if inner
            .events
            .insert(event.id.clone(), event.clone())
            .is_some()
        {
            return;
        }
        inner.order.push_back((event.id.clone(), bytes));
        inner.bytes += bytes;
        while inner.bytes > MAX_BYTES {
            let Some((id, bytes)) = inner.order.pop_front() else {
                break;
            };
            inner.events.remove(&id);
            inner.bytes -= bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Millis;

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
        assert!(recent.get(&big.id).is_none());
        let each = MAX_EVENT_BYTES;
        let fit = MAX_BYTES / each;
        let events: Vec<Event> = (0..=fit).map(|i| event(&format!("e{i}"), each)).collect();
        for e in &events {
            recent.put(e);
        }
        // One more than fits: the oldest went.
        assert!(recent.get(&events[0].id).is_none());
        for kept in [&events[1], &events[fit]] {
            let got = recent.get(&kept.id).expect("kept");
            assert_eq!(got.payload.get(), kept.payload.get());
        }
    }
}
