//! `forward` — Open Food Network style: every matching event goes to the webhook's URL with
//! the event payload as the JSON body, unchanged.

use wasmhooks_guest::{debug, export_plugin, Decision, Event, Plugin, Request, Result};

/// Forwards each event's payload as it is.
pub struct Forward;

impl Plugin for Forward {
    fn on_event(event: Event) -> Result<Decision> {
        debug!("forwarding {} ({})", event.id, event.kind);
        let request = Request::bytes(event.payload.into_bytes(), "application/json");
        Ok(Decision::send(request))
    }
}

export_plugin!(Forward);
