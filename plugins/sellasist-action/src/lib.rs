//! `sellasist-action` — SellAsist style: call a URL built from the event's variables
//! (`{id_order}`, `{id_job}`) and expect one status. Meant for webhooks with a `delay` and
//! operating-window `schedule`, so the call happens some time after the order, in office hours.
//!
//! Config: `{"path": "/api/v1/orders/{id_order}/jobs/{id_job}", "method": "POST",
//! "expected_status": 200}` (method defaults to the webhook's; status to 200). Variables are
//! payload keys (and `payload.…`, `attributes.…`, `event.…`, `config.…` paths), escaped for
//! the URL. The expected status delivers; 429 and 5xx retry; any other status fails the
//! delivery with both statuses named.

use serde::Deserialize;
use wasmhooks_guest::template::{render_url, Vars};
use wasmhooks_guest::{
    export_plugin, info, Decision, Error, Event, Method, Plugin, Request, Response, Result, Verdict,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default = "ok")]
    expected_status: u16,
}

fn ok() -> u16 {
    200
}

fn config() -> Result<Config> {
    wasmhooks_guest::config().map_err(|e| Error::new(format!("sellasist-action {e}")))
}

/// Calls the configured action for each event.
pub struct SellAsistAction;

impl Plugin for SellAsistAction {
    const INSPECTS_RESPONSES: bool = true;

    fn on_event(event: Event) -> Result<Decision> {
        let config = config()?;
        let path = render_url(&config.path, &Vars::of(&event)?)?;
        let mut request = Request::empty().with_path(path.clone());
        if let Some(method) = &config.method {
            let method = Method::parse(method)
                .map_err(|e| Error::new(format!("sellasist-action config: {e}")))?;
            request = request.with_method(method);
        }
        info!("calling {path}");
        Ok(Decision::send(request))
    }

    fn on_response(response: Response) -> Verdict {
        let expected = config().map_or(200, |c| c.expected_status);
        match response.status {
            s if s == expected => Verdict::Success(None),
            s if s == 429 || s >= 500 => {
                Verdict::Retry(format!("answered {s}; expected {expected}"))
            }
            s => Verdict::Fail(format!("answered {s}; expected {expected}")),
        }
    }
}

export_plugin!(SellAsistAction);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmhooks_guest::testing::{event, response, Harness};

    #[test]
    fn variables_fill_the_path_escaped() {
        let mut host = Harness::new().config(json!({
            "path": "/api/v1/orders/{id_order}/jobs/{id_job}?note={note}",
            "method": "post"
        }));
        let order = event(
            "order.paid",
            json!({"id_order": "A/7", "id_job": 42, "note": "a&b c"}),
        );
        let decision = host.on_event::<SellAsistAction>(order).unwrap();
        let request = &decision.requests()[0];
        assert_eq!(
            request.path.as_deref(),
            Some("/api/v1/orders/A%2F7/jobs/42?note=a%26b%20c")
        );
        assert_eq!(request.method, Some(Method::Post));
        let missing = event("order.paid", json!({"id_order": 1}));
        let err = host.on_event::<SellAsistAction>(missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template variable `id_job` is not in the event"
        );
    }

    #[test]
    fn only_the_expected_status_delivers() {
        let mut host = Harness::new().config(json!({"path": "/x", "expected_status": 204}));
        assert_eq!(
            host.on_response::<SellAsistAction>(response(204, "")),
            Verdict::Success(None)
        );
        assert_eq!(
            host.on_response::<SellAsistAction>(response(200, "")),
            Verdict::Fail("answered 200; expected 204".into())
        );
        assert_eq!(
            host.on_response::<SellAsistAction>(response(503, "")),
            Verdict::Retry("answered 503; expected 204".into())
        );
    }
}
