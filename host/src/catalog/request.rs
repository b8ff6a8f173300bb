//! Turning a plugin's request into the exact HTTP request that will be sent (and re-sent).

use crate::model::Invalid;
use crate::model::{
    check_path_segments, Connection, ConnectionBase, ConnectionId, DeliveryId, Method,
    OutboundRequest, Webhook,
};
use crate::runtime::wit;

/// Where a webhook's requests go, resolved from the webhook and its connection: the
/// destination URL and the headers in order (the connection's, then the webhook's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Absolute destination URL.
    pub url: String,
    /// Default method.
    pub method: Method,
    /// Connection headers, then webhook headers (a later name replaces an earlier one).
    pub headers: Vec<(String, String)>,
    /// The connection whose auth is added when sending.
    pub connection_id: Option<ConnectionId>,
    /// That connection's base URL and query auth: every request stays under the base and
    /// sets none of the connection's query parameters.
    pub base: Option<ConnectionBase>,
}

impl Target {
    /// Resolves `webhook` through `connection` (which must be the webhook's connection).
    ///
    /// # Errors
    /// When the webhook names a connection that is not given, or the URL does not resolve.
    pub fn resolve(webhook: &Webhook, connection: Option<&Connection>) -> Result<Target, Invalid> {
        let url = match (&webhook.connection_id, connection) {
            (Some(id), None) => {
                return Err(Invalid::from(format!("connection {id} does not exist")))
            }
            (_, conn) => destination(webhook.url.as_deref(), conn.map(|c| c.base_url.as_str()))?,
        };
        Ok(Target {
            url,
            method: webhook.method,
            headers: base_headers(webhook, connection),
            connection_id: webhook.connection_id.clone(),
            base: connection.map(Connection::base),
        })
    }
}

/// The headers every request of `webhook` starts with: the connection's, then the
/// webhook's (a later name replaces an earlier one).
pub fn base_headers(webhook: &Webhook, connection: Option<&Connection>) -> Vec<(String, String)> {
    let pairs = connection
        .map(|c| c.headers.as_slice())
        .unwrap_or_default()
        .iter()
        .chain(&webhook.headers);
    compose_headers(&[], pairs)
}

/// `base` with each of `over` set on top of it: a name given again (in any case) replaces
/// the earlier value, in the later one's place.
pub fn compose_headers<'a>(
    base: &[(String, String)],
    over: impl IntoIterator<Item = &'a (String, String)>,
) -> Vec<(String, String)> {
    let mut headers = base.to_vec();
    for (name, value) in over {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.clone(), value.clone()));
    }
    headers
}

/// Whether `url` is absolute (has a scheme) rather than a path for a connection.
pub fn is_absolute(url: &str) -> bool {
    url::Url::parse(url).is_ok()
}

/// The destination of a webhook URL (absolute, relative to `base`, or absent: `base`).
///
/// # Errors
/// A relative URL without a base, or a result that is not a valid URL.
pub fn destination(url: Option<&str>, base: Option<&str>) -> Result<String, Invalid> {
    match (url, base) {
        (Some(url), _) if is_absolute(url) => Ok(url.to_string()),
        (Some(path), Some(base)) => {
            // The path goes after the base's path, and its query after the base's query.
            let (base, base_query) = base.split_once('?').unwrap_or((base, ""));
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let mut joined = format!(
                "{}/{}",
                base.trim_end_matches('/'),
                path.trim_start_matches('/')
            );
            let queries: Vec<&str> = [base_query, query]
                .into_iter()
                .filter(|q| !q.is_empty())
                .collect();
            if !queries.is_empty() {
                joined = format!("{joined}?{}", queries.join("&"));
            }
            url::Url::parse(&joined)
                .map(|_| joined.clone())
                .map_err(|e| Invalid(format!("`{joined}` is not a valid URL: {e}")))
        }
        (None, Some(base)) => Ok(base.to_string()),
        (Some(path), None) => Err(Invalid::from(format!(
            "`{path}` is a relative URL; give an absolute http(s) URL or a connection"
        ))),
        (None, None) => Err(Invalid::from("a url or a connection is required")),
    }
}

/// Headers nobody but the host may set: hop-by-hop headers, framing, and the Standard
/// Webhooks headers.
pub fn forbidden_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
            | "proxy-authorization"
            | "proxy-connection"
    ) || name.starts_with("webhook-")
}

/// Most headers a webhook, a connection or a plugin's request may set.
pub const MAX_HEADERS: usize = 64;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE: usize = 8 * 1024;

/// Checks one header: valid HTTP syntax, a value within [`MAX_HEADER_VALUE`], not reserved.
///
/// # Errors
/// A message naming the header and what is wrong with it.
pub fn check_header(name: &str, value: &str) -> Result<(), Invalid> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(Invalid::from(format!(
            "`{name}` is not a valid header name"
        )));
    }
    if value.len() > MAX_HEADER_VALUE {
        return Err(Invalid::from(format!(
            "the value of header `{name}` is {} bytes; the limit is {MAX_HEADER_VALUE}",
            value.len()
        )));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(Invalid::from(format!(
            "the value of header `{name}` has invalid characters"
        )));
    }
    if forbidden_header(name) {
        return Err(Invalid::from(format!(
            "header `{name}` is reserved (hop-by-hop, framing or webhook-* headers are set by the host)"
        )));
    }
    Ok(())
}

/// The `webhook-id` of request `index` of a delivery: stable across retries.
pub fn message_id(delivery: &DeliveryId, index: usize) -> String {
    if index == 0 {
        delivery.to_string()
    } else {
        format!("{delivery}-{index}")
    }
}

/// Resolves a plugin's path-and-query against the webhook URL: `/x?y` replaces the path and
/// query; `x` is appended to the path after a `/`; `?y` adds to the query.
///
/// # Errors
/// When the path is a full URL or the result is not a valid URL.
pub fn join_url(base: &str, path: Option<&str>) -> Result<String, Invalid> {
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Ok(base.to_string());
    };
    if path.contains("://") || path.starts_with("//") {
        return Err(Invalid::from(format!(
            "request path `{path}` must be a path and query, not a full URL"
        )));
    }
    let mut url = url::Url::parse(base).map_err(|e| format!("webhook URL `{base}`: {e}"))?;
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    if p.starts_with('/') {
        url.set_path(p);
        url.set_query(q);
    } else {
        if !p.is_empty() {
            let joined = format!("{}/{}", url.path().trim_end_matches('/'), p);
            url.set_path(&joined);
        }
        if let Some(q) = q {
            let query = match url.query() {
                Some(existing) if !existing.is_empty() => format!("{existing}&{q}"),
                _ => q.to_string(),
            };
            url.set_query(Some(&query));
        }
    }
    Ok(url.to_string())
}

/// Builds the stored request for request `index` of a delivery.
///
/// # Errors
/// A message saying which header or path the plugin got wrong.
pub fn build(
    target: &Target,
    delivery: &DeliveryId,
    index: usize,
    request: wit::Request,
) -> Result<OutboundRequest, Invalid> {
    let method = match request.method {
        None => target.method,
        Some(wit::Method::Get) => Method::Get,
        Some(wit::Method::Post) => Method::Post,
        Some(wit::Method::Put) => Method::Put,
        Some(wit::Method::Patch) => Method::Patch,
        Some(wit::Method::Delete) => Method::Delete,
    };
    let url = match (&target.base, request.path.as_deref()) {
        // Through a connection, `/x` is a path under the connection's base URL, and no path
        // may leave it: its credentials travel only there.
        (Some(base), Some(path)) if path.starts_with('/') => {
            join_url(&base.url, Some(path.trim_start_matches('/')))?
        }
        _ => join_url(&target.url, request.path.as_deref())?,
    };
    if let Some(base) = &target.base {
        base.check(&url).map_err(|m| format!("request path: {m}"))?;
        // Joining resolved `..` segments the path held; a path that needed them is refused
        // all the same.
        if let Some(path) = &request.path {
            check_path_segments(path).map_err(|m| format!("request path: {m}"))?;
        }
    }
    // Only what the plugin set is stored with the delivery: the connection's and the
    // webhook's headers (which may hold credentials, sealed in their own records) are added
    // when sending, as they are then.
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut set = |name: String, value: String| {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        headers.push((name, value));
    };
    for (name, value) in request.headers {
        check_header(&name, &value).map_err(|e| format!("plugin header: {e}"))?;
        set(name, value);
    }
    if let Some(content_type) = request.content_type {
        check_header("content-type", &content_type)
            .map_err(|e| format!("plugin content type: {e}"))?;
        set("content-type".into(), content_type);
    }
    let total = compose_headers(&target.headers, &headers).len();
    if total > MAX_HEADERS {
        return Err(Invalid::from(format!(
            "the request has {total} headers; the limit is {MAX_HEADERS}"
        )));
    }
    headers.push(("webhook-id".into(), message_id(delivery, index)));
    Ok(OutboundRequest {
        method,
        url,
        headers,
        body: request.body.unwrap_or_default(),
        delivered: false,
        connection_id: target.connection_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_and_queries() {
        let base = "http://example.test/api/hooks?token=1";
        assert_eq!(join_url(base, None).unwrap(), base);
        assert_eq!(
            join_url(base, Some("/orders/7?x=1")).unwrap(),
            "http://example.test/orders/7?x=1"
        );
        assert_eq!(
            join_url(base, Some("orders/7")).unwrap(),
            "http://example.test/api/hooks/orders/7?token=1"
        );
        assert_eq!(
            join_url(base, Some("?id_order=5")).unwrap(),
            "http://example.test/api/hooks?token=1&id_order=5"
        );
        assert!(join_url(base, Some("http://evil.test/")).is_err());
        assert!(join_url(base, Some("//evil.test/")).is_err());
    }

    #[test]
    fn destinations_resolve_against_the_connection() {
        let base = Some("https://erp.example/api/");
        assert_eq!(
            destination(Some("/orders?x=1"), base).unwrap(),
            "https://erp.example/api/orders?x=1"
        );
        assert_eq!(destination(None, base).unwrap(), "https://erp.example/api/");
        assert_eq!(
            destination(Some("http://other.example/x"), base).unwrap(),
            "http://other.example/x"
        );
        assert!(destination(Some("/orders"), None).is_err());
        assert!(destination(None, None).is_err());
    }

    fn connection_target() -> Target {
        Target {
            url: "https://erp.example/api/orders".into(),
            method: Method::Post,
            headers: Vec::new(),
            connection_id: Some(ConnectionId::generate()),
            base: Some(ConnectionBase {
                url: "https://erp.example/api/orders".into(),
                auth_param: Some("api_key".into()),
            }),
        }
    }

    fn with_path(path: &str) -> wit::Request {
        wit::Request {
            method: None,
            path: Some(path.into()),
            headers: Vec::new(),
            body: None,
            content_type: None,
        }
    }

    #[test]
    fn a_connections_requests_never_leave_its_base_url() {
        let target = connection_target();
        let id = DeliveryId::generate();
        let built = |path: &str| build(&target, &id, 0, with_path(path)).map(|r| r.url);
        assert_eq!(
            built("/items/7?x=1").unwrap(),
            "https://erp.example/api/orders/items/7?x=1"
        );
        assert_eq!(built("7").unwrap(), "https://erp.example/api/orders/7");
        // A second slash cannot name another host: it stays a path under the base.
        assert_eq!(
            built("//evil.test/x").unwrap(),
            "https://erp.example/api/orders/evil.test/x"
        );
        for escape in [
            "/../admin",
            "../../admin",
            "..//admin",
            "/%2e%2e/admin",
            "http://evil.test/x",
        ] {
            let refused = built(escape).unwrap_err();
            assert!(
                refused.contains("outside the connection's base URL")
                    || refused.contains("not a full URL"),
                "{escape}: {refused}"
            );
        }
    }

    #[test]
    fn a_stored_request_keeps_only_the_plugins_headers_and_sending_composes_the_rest() {
        let mut target = connection_target();
        target.headers = vec![
            ("x-api-key".into(), "webhook-secret".into()),
            ("content-type".into(), "text/plain".into()),
        ];
        let mut request = with_path("/items");
        request.headers = vec![("X-Trace".into(), "7".into())];
        request.content_type = Some("application/json".into());
        let built = build(&target, &DeliveryId::generate(), 0, request).unwrap();
        let names: Vec<&str> = built.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["X-Trace", "content-type", "webhook-id"]);
        assert!(!format!("{built:?}").contains("webhook-secret"));
        // Sending puts the plugin's on top of the connection's and the webhook's.
        let sent = compose_headers(&target.headers, &built.headers);
        let sent: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(sent[0], ("x-api-key", "webhook-secret"));
        assert!(sent.contains(&("content-type", "application/json")));
        assert_eq!(sent.len(), 4);
        // The limit counts what is sent.
        target.headers = (0..MAX_HEADERS)
            .map(|i| (format!("x-{i}"), "v".to_string()))
            .collect();
        let mut request = with_path("/items");
        request.headers = vec![("x-more".into(), "1".into())];
        let refused = build(&target, &DeliveryId::generate(), 0, request).unwrap_err();
        assert!(refused.contains("the limit is 64"), "{refused}");
    }

    #[test]
    fn a_plugin_path_cannot_add_the_connections_query_auth_or_climb_inside_its_base() {
        let target = connection_target();
        let id = DeliveryId::generate();
        let built = |path: &str| build(&target, &id, 0, with_path(path)).map(|r| r.url);
        for path in [
            "/items?api_key=ATTACKER",
            "items?API_KEY=ATTACKER",
            "?x=1&api_key=ATTACKER",
        ] {
            let refused = built(path).unwrap_err();
            assert!(
                refused.starts_with("request path: ")
                    && refused.contains("sets the query parameter `api_key`"),
                "{path}: {refused}"
            );
        }
        // Joining would resolve these inside the base; they are refused all the same.
        for path in ["/items/../x", "items/%2e%2e/x", "/items/..;/x", "/a%2fb"] {
            let refused = built(path).unwrap_err();
            assert!(refused.starts_with("request path: "), "{path}: {refused}");
        }
        assert_eq!(
            built("/items?key=1").unwrap(),
            "https://erp.example/api/orders/items?key=1"
        );
    }

    #[test]
    fn a_path_goes_before_the_connections_own_query() {
        assert_eq!(
            destination(Some("/orders?x=1"), Some("https://erp.example/api?shop=7")).unwrap(),
            "https://erp.example/api/orders?shop=7&x=1"
        );
        assert_eq!(
            destination(Some("orders"), Some("https://erp.example/api/?shop=7")).unwrap(),
            "https://erp.example/api/orders?shop=7"
        );
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        assert!(check_header("x-shop", "1").is_ok());
        assert!(check_header("Webhook-Signature", "v1,x").is_err());
        assert!(check_header("Transfer-Encoding", "chunked").is_err());
        assert!(check_header("bad header", "1").is_err());
        assert!(check_header("x-a", "line\nbreak").is_err());
        assert!(check_header("x-a", &"v".repeat(MAX_HEADER_VALUE)).is_ok());
        let long = check_header("x-a", &"v".repeat(MAX_HEADER_VALUE + 1)).unwrap_err();
        assert!(long.contains("is 8193 bytes; the limit is 8192"), "{long}");
    }
}
