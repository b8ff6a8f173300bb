//! Templates with variables taken from the event, escaped for where they land.
//!
//! A variable is a name in braces:
//!
//! | variable | value |
//! |---|---|
//! | `{id_order}` | the payload's top-level `id_order` |
//! | `{payload.customer.email}`, `{payload.lines.0.sku}` | a path into the payload (digits index arrays) |
//! | `{attributes.store_id}` | a routing attribute |
//! | `{event.id}`, `{event.kind}`, `{event.tenant}`, `{event.occurred_at}` | the event's own fields |
//! | `{config.shop_id}` | a path into the webhook's config |
//! | any name given with [`Vars::set`] | that value |
//!
//! Strings are used as they are, numbers and booleans as JSON text, `null` as nothing; an
//! object or array as JSON text. A variable that is not there is an error naming it. Other
//! braces are text, so JSON and XML templates need no escaping; `{{` is a literal `{` for the
//! rare text that looks like a variable.
//!
//! Each value is escaped for its context ([`Escape`]); [`render_url`] picks path escaping
//! before the `?` and query escaping after it.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Error, Event, Result};

/// Where a rendered value lands, and so how it is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As it is (plain text bodies, header values).
    None,
    /// One URL path segment: everything but `A–Z a–z 0–9 - . _ ~` is percent-encoded, `/`
    /// included, so a value cannot add path segments.
    UrlPath,
    /// A query parameter name or value: as [`Escape::UrlPath`] (space is `%20`), so a value
    /// cannot add parameters.
    Query,
    /// Inside a JSON string literal (the template supplies the quotes).
    Json,
    /// XML text or attribute value.
    Xml,
}

/// The values a template may use: the event (payload, attributes, fields), the config, and
/// values set by the plugin.
#[derive(Debug, Clone)]
pub struct Vars {
    event: Value,
    payload: Value,
    attributes: BTreeMap<String, String>,
    config: Value,
    extra: BTreeMap<String, Value>,
}

impl Vars {
    /// The variables of `event` (and the webhook's config, read from the host).
    ///
    /// # Errors
    /// When the payload or the config is not JSON.
    pub fn of(event: &Event) -> Result<Vars> {
        let config: Value = crate::config()?;
        Vars::with_config(event, config)
    }

    /// The variables of `event` with this config.
    ///
    /// # Errors
    /// When the payload is not JSON.
    pub fn with_config(event: &Event, config: Value) -> Result<Vars> {
        Ok(Vars {
            event: serde_json::json!({
                "id": event.id,
                "kind": event.kind,
                "tenant": event.tenant,
                "occurred_at": event.occurred_at,
            }),
            payload: event.payload_json()?,
            attributes: event.attributes.iter().cloned().collect(),
            config,
            extra: BTreeMap::new(),
        })
    }

    /// Adds or replaces a variable of this name (it wins over a payload key).
    pub fn set(mut self, name: &str, value: impl Into<Value>) -> Vars {
        self.extra.insert(name.to_string(), value.into());
        self
    }

    /// The value of a variable as text, or `None` when it is not there.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = if let Some(v) = self.extra.get(name) {
            v.clone()
        } else if let Some(rest) = name.strip_prefix("attributes.") {
            Value::String(self.attributes.get(rest)?.clone())
        } else if let Some(rest) = name.strip_prefix("payload.") {
            path(&self.payload, rest)?.clone()
        } else if let Some(rest) = name.strip_prefix("event.") {
            path(&self.event, rest)?.clone()
        } else if let Some(rest) = name.strip_prefix("config.") {
            path(&self.config, rest)?.clone()
        } else {
            self.payload.get(name)?.clone()
        };
        Some(match value {
            Value::Null => String::new(),
            Value::String(s) => s,
            other => other.to_string(),
        })
    }
}

/// The value at a dotted path (digits index arrays).
pub fn path<'a>(value: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(value, |at, key| match at {
        Value::Object(map) => map.get(key),
        Value::Array(items) => items.get(key.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Renders `template`, escaping every value for `escape`.
///
/// # Errors
/// A variable that is not there, named in the message.
pub fn render(template: &str, vars: &Vars, escape: Escape) -> Result<String> {
    render_with(template, vars, |_| escape)
}

/// Renders a URL or a path-and-query: values before the `?` are escaped as path segments,
/// values after it as query components.
///
/// # Errors
/// As [`render`].
pub fn render_url(template: &str, vars: &Vars) -> Result<String> {
    render_with(template, vars, |in_query| {
        if in_query {
            Escape::Query
        } else {
            Escape::UrlPath
        }
    })
}

fn render_with(template: &str, vars: &Vars, escape_at: impl Fn(bool) -> Escape) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut in_query = false;
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let (text, tail) = rest.split_at(i);
        out.push_str(text);
        in_query |= text.contains('?');
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
            continue;
        }
        // `{name}` is a variable; any other brace (JSON, XML) is text.
        let name = tail[1..]
            .find('}')
            .map(|end| &tail[1..=end])
            .filter(|inner| is_name(inner.trim()));
        match name {
            Some(inner) => {
                let name = inner.trim();
                let value = vars.get(name).ok_or_else(|| {
                    Error::new(format!("template variable `{name}` is not in the event"))
                })?;
                out.push_str(&escape(&value, escape_at(in_query)));
                rest = &tail[inner.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `text` can be a variable name: letters, digits, `_ . -` and inner spaces (keys
/// such as `payload.Request ID`).
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | ' '))
}

/// `value` escaped for `how`.
pub fn escape(value: &str, how: Escape) -> String {
    match how {
        Escape::None => value.to_string(),
        Escape::UrlPath | Escape::Query => percent_encode(value),
        Escape::Json => {
            let quoted = serde_json::to_string(value).expect("strings serialise");
            quoted[1..quoted.len() - 1].to_string()
        }
        Escape::Xml => xml_escape(value),
    }
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Escapes `& < > " '` for XML text and attribute values.
pub fn xml_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::event;
    use serde_json::json;

    /// Quotes, `&`, `<`, `/`, spaces and non-ASCII, in one value.
    const NASTY: &str = r#"Zażółć "gęślą" & <jaźń>/ 'ok'"#;

    fn vars() -> Vars {
        let e = event(
            "order.created",
            json!({"id_order": NASTY, "n": 7, "customer": {"email": "a b@x.pl"}, "lines": [{"sku": "S/1"}], "none": null}),
        )
        .with_attribute("store", "A&B");
        Vars::with_config(&e, json!({"shop": {"id": "sh 1"}})).unwrap()
    }

    #[test]
    fn each_context_escapes_quotes_ampersands_angles_slashes_spaces_and_non_ascii() {
        let v = vars();
        assert_eq!(
            render("/orders/{id_order}", &v, Escape::UrlPath).unwrap(),
            "/orders/Za%C5%BC%C3%B3%C5%82%C4%87%20%22g%C4%99%C5%9Bl%C4%85%22%20%26%20%3Cja%C5%BA%C5%84%3E%2F%20%27ok%27"
        );
        assert_eq!(
            render("id={id_order}", &v, Escape::Query).unwrap(),
            render("id={id_order}", &v, Escape::UrlPath).unwrap()
        );
        let json_text = render(r#"{"order": "{id_order}"}"#, &v, Escape::Json).unwrap();
        assert_eq!(json_text, r#"{"order": "Zażółć \"gęślą\" & <jaźń>/ 'ok'"}"#);
        let parsed: Value = serde_json::from_str(&json_text).unwrap();
        assert_eq!(parsed["order"], NASTY);
        assert_eq!(
            render(
                "<order id=\"{id_order}\">{id_order}</order>",
                &v,
                Escape::Xml
            )
            .unwrap(),
            "<order id=\"Zażółć &quot;gęślą&quot; &amp; &lt;jaźń&gt;/ &apos;ok&apos;\">\
             Zażółć &quot;gęślą&quot; &amp; &lt;jaźń&gt;/ &apos;ok&apos;</order>"
        );
        assert_eq!(render("{id_order}", &v, Escape::None).unwrap(), NASTY);
    }

    #[test]
    fn urls_escape_paths_and_queries_by_position() {
        let v = vars();
        assert_eq!(
            render_url("/shops/{config.shop.id}/orders/{n}?email={payload.customer.email}&s={attributes.store}", &v)
                .unwrap(),
            "/shops/sh%201/orders/7?email=a%20b%40x.pl&s=A%26B"
        );
        // A value cannot add segments or parameters.
        let path = render_url("/p/{payload.lines.0.sku}?q={attributes.store}", &v).unwrap();
        assert_eq!(path, "/p/S%2F1?q=A%26B");
    }

    #[test]
    fn variables_come_from_the_event_config_and_plugin() {
        let v = vars().set("id_job", 42);
        let text = render(
            "{event.kind} {event.id} {id_job} {none}|{{literal}",
            &v,
            Escape::None,
        )
        .unwrap();
        assert_eq!(text, "order.created evt_test_1 42 |{literal}");
        let err = render("/x/{missing}", &v, Escape::UrlPath).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template variable `missing` is not in the event"
        );
        // JSON and XML braces are text.
        let body = render(r#"{"a": {"n": {n}}, "open": "{"}"#, &v, Escape::Json).unwrap();
        assert_eq!(body, r#"{"a": {"n": 7}, "open": "{"}"#);
        assert_eq!(render("{open", &v, Escape::None).unwrap(), "{open");
    }
}
