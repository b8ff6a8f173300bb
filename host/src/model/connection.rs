//! Connections: a destination many webhooks share — base URL, authentication, default
//! headers and a signing secret. Secrets are write-only: they are stored, used when sending,
//! and never shown (see [`Connection::public`]).

use super::Invalid;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ConnectionId, Millis};

/// A secret value: kept for sending, masked in `Debug` so it never reaches a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

/// A webhook's Standard Webhooks signing secrets: the current one, and during a rotation the
/// previous one with the time it stops being used. Kept apart from the webhook record so it
/// can never be part of a webhook's API view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeys {
    /// Signs every delivery.
    pub current: Secret,
    /// Also signs deliveries until `previous_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Secret>,
    /// When the previous secret stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<super::Millis>,
}

/// How requests through a connection authenticate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConnectionAuth {
    /// No authentication.
    #[default]
    None,
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// User name (shown).
        username: String,
        /// Password (write-only).
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token (write-only).
        token: Secret,
    },
    /// An API key in a header of the given name.
    Header {
        /// Header name (shown).
        name: String,
        /// Header value (write-only).
        value: Secret,
    },
    /// An API key in a query parameter of the given name.
    Query {
        /// Parameter name (shown).
        name: String,
        /// Parameter value (write-only).
        value: Secret,
    },
}

impl ConnectionAuth {
    /// The query parameter the credentials are sent in, for query auth.
    pub fn query_name(&self) -> Option<&str> {
        match self {
            ConnectionAuth::Query { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The auth with its secrets left out, as the API shows it.
    pub fn public(&self) -> serde_json::Value {
        match self {
            ConnectionAuth::None => serde_json::json!({ "type": "none" }),
            ConnectionAuth::Basic { username, .. } => {
                serde_json::json!({ "type": "basic", "username": username })
            }
            ConnectionAuth::Bearer { .. } => serde_json::json!({ "type": "bearer" }),
            ConnectionAuth::Header { name, .. } => {
                serde_json::json!({ "type": "header", "name": name })
            }
            ConnectionAuth::Query { name, .. } => {
                serde_json::json!({ "type": "query", "name": name })
            }
        }
    }
}

/// A destination shared by webhooks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// Id (`con_…`).
    pub id: ConnectionId,
    /// How many times it was written (see [`crate::model::Webhook::version`]).
    #[serde(default)]
    pub version: u64,
    /// Human name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Base URL (http or https); webhooks may give a path relative to it.
    pub base_url: String,
    /// Authentication added to every request.
    #[serde(default)]
    pub auth: ConnectionAuth,
    /// Headers sent first, before the webhook's and the plugin's.
    #[serde(default, with = "super::string_map")]
    pub headers: Vec<(String, String)>,
    /// Secret used to sign requests (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<Secret>,
    /// PEM certificates of CAs trusted for this connection's https destinations, beside the
    /// built-in roots (a private PKI, a self-signed receiver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// The tenants whose keys may attach it to their webhooks (and see it). Empty: only an
    /// admin key without a tenant may attach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

impl Connection {
    /// Whether this connection's credentials and signature may travel to `url`: see
    /// [`credentials_may_go`].
    ///
    /// # Errors
    /// A message naming the URL and what is wrong with it.
    pub fn covers(&self, url: &str) -> Result<(), Invalid> {
        credentials_may_go(url, &self.base_url, self.auth.query_name())
    }

    /// Where this connection's credentials may go, for checking requests without the
    /// connection at hand.
    pub fn base(&self) -> ConnectionBase {
        ConnectionBase {
            url: self.base_url.clone(),
            auth_param: self.auth.query_name().map(String::from),
        }
    }

    /// Whether a key bound to `tenant` (or to none) may see and attach this connection.
    pub fn shared_with(&self, tenant: Option<&str>) -> bool {
        tenant.is_none_or(|t| self.tenants.iter().any(|shared| shared == t))
    }
}

/// Whether `url` lies under `base`: same origin, and a path equal to the base path or below
/// it (segment-wise, so `/api/orders` does not cover `/api/orders-admin`).
///
/// # Errors
/// A message naming the URL and the base it leaves.
pub fn within_base(url: &str, base: &str) -> Result<(), Invalid> {
    let outside = || format!("`{url}` is outside the connection's base URL `{base}`");
    let (Ok(target), Ok(base_url)) = (url::Url::parse(url), url::Url::parse(base)) else {
        return Err(Invalid::from(outside()));
    };
    if target.origin() != base_url.origin() {
        return Err(Invalid::from(outside()));
    }
    let base_path = base_url.path().trim_end_matches('/');
    let path = target.path();
    let under = base_path.is_empty()
        || path == base_path
        || path
            .strip_prefix(base_path)
            .is_some_and(|rest| rest.starts_with('/'));
    if under {
        Ok(())
    } else {
        Err(Invalid::from(outside()))
    }
}

/// A connection's base URL and the query parameter its auth is sent in: all it takes to
/// check where its credentials may go (see [`credentials_may_go`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionBase {
    /// The base URL.
    pub url: String,
    /// The name of the query parameter its credentials are sent in, for query auth.
    pub auth_param: Option<String>,
}

impl ConnectionBase {
    /// Whether the connection's credentials may travel to `url`: see [`credentials_may_go`].
    ///
    /// # Errors
    /// A message naming the URL and what is wrong with it.
    pub fn check(&self, url: &str) -> Result<(), Invalid> {
        credentials_may_go(url, &self.url, self.auth_param.as_deref())
    }
}

/// Whether a connection's credentials may travel to `url`: under `base` (see
/// [`within_base`]), by a path without `..`-like segments or encoded slashes in any encoding
/// (see [`check_path_segments`]; a server may read them where this check does not), and
/// without a query parameter the connection sets itself — `auth_param` (its query auth's
/// name) or one of the base URL's own parameters with another value — names compared
/// without case and after decoding, so a path cannot put its own `api_key` beside the
/// connection's.
///
/// # Errors
/// A message naming the URL and what is wrong with it.
pub fn credentials_may_go(url: &str, base: &str, auth_param: Option<&str>) -> Result<(), Invalid> {
    within_base(url, base)?;
    check_path_segments(url)?;
    // The base's own parameters may appear as they are, once each.
    let mut own: Vec<(String, String)> = query_pairs(query_of(base)).collect();
    let reserved: Vec<String> = own
        .iter()
        .map(|(name, _)| name.clone())
        .chain(auth_param.map(str::to_lowercase))
        .collect();
    for (name, value) in query_pairs(query_of(url)) {
        if !reserved.contains(&name) {
            continue;
        }
        match own
            .iter()
            .position(|pair| pair.0 == name && pair.1 == value)
        {
            Some(i) => {
                own.swap_remove(i);
            }
            None => {
                return Err(Invalid::from(format!(
                    "`{url}` sets the query parameter `{name}`, which the connection sets itself"
                )))
            }
        }
    }
    Ok(())
}

/// Refuses a path (of a URL, or a path and query alone) holding a segment that a server
/// may read as `..` — `..`, `%2e%2e`, `.%2e`, `..;param`, `%252e%252e` — or a slash or
/// backslash encoded inside a segment (`%2f`, `%5c`).
///
/// # Errors
/// A message naming the URL and the segment.
pub fn check_path_segments(url: &str) -> Result<(), Invalid> {
    for segment in raw_path(url).split(['/', '\\']) {
        let decoded = decode_fully(segment);
        if decoded.contains(['/', '\\']) {
            return Err(Invalid::from(format!(
                "`{url}` has an encoded slash or backslash in the path segment `{segment}`"
            )));
        }
        // `..;x` is `..` to servers that drop path parameters; trailing spaces and NULs are
        // dropped by some file systems.
        let name = decoded
            .split(';')
            .next()
            .unwrap_or_default()
            .trim_end_matches([' ', '\0']);
        if name.len() >= 2 && name.bytes().all(|b| b == b'.') {
            return Err(Invalid::from(format!(
                "`{url}` has the path segment `{segment}`, which reads as `..`; a path under a \
                 connection may not climb, in any encoding"
            )));
        }
    }
    Ok(())
}

/// The path of a URL as written (before any normalisation), or of a path and query.
fn raw_path(url: &str) -> &str {
    let before_query = &url[..url.find(['?', '#']).unwrap_or(url.len())];
    match before_query.split_once("://") {
        Some((_, after)) => after
            .find(['/', '\\'])
            .map_or("", |authority_end| &after[authority_end..]),
        None => before_query,
    }
}

/// The query of a URL as written, without its fragment.
fn query_of(url: &str) -> &str {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    url.split_once('?').map_or("", |(_, query)| query)
}

/// A query's parameters as a server may read them: split at `&` and `;`, decoded (`+` is a
/// space), names in lower case.
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split(['&', ';'])
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| decode_fully(&text.replace('+', " "));
            (decode(name).to_lowercase(), decode(value))
        })
}

/// Percent-decodes `text` as often as a chain of servers might (so `%252e` is `.`), bad
/// UTF-8 replaced.
fn decode_fully(text: &str) -> String {
    let mut current = text.to_string();
    for _ in 0..DECODE_ROUNDS {
        let decoded = percent_decode(&current);
        if decoded == current {
            break;
        }
        current = decoded;
    }
    current
}

/// How many times a path or query is decoded when looking for what a server may read.
const DECODE_ROUNDS: usize = 4;

/// One round of percent-decoding; a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Connection {
    /// The connection as the API shows it: no secret values, only whether they are set.
    pub fn public(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut view = serde_json::json!({
            "id": self.id,
            "name": self.name,
            "base_url": self.base_url,
            "auth": self.auth.public(),
            "headers": headers,
            "signing_secret_set": self.signing_secret.is_some(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if let Some(description) = &self.description {
            view["description"] = description.clone().into();
        }
        let public_key = self
            .signing_secret
            .as_ref()
            .and_then(|s| crate::signature::Signer::parse(s.expose()).ok())
            .and_then(|s| s.public_key());
        if let Some(public_key) = public_key {
            view["signing_public_key"] = public_key.to_text().into();
        }
        if let Some(pem) = &self.ca_certificate {
            view["ca_certificate"] = pem.clone().into();
        }
        if !self.tenants.is_empty() {
            view["tenants"] = serde_json::json!(self.tenants);
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_or_public_views() {
        let connection = Connection {
            id: ConnectionId::generate(),
            version: 0,
            name: "erp".into(),
            description: None,
            base_url: "https://erp.example/api".into(),
            auth: ConnectionAuth::Basic {
                username: "shop".into(),
                password: Secret::new("hunter2-password"),
            },
            headers: vec![("x-shop".into(), "1".into())],
            signing_secret: Some(Secret::new("whsec_signing-secret")),
            ca_certificate: None,
            tenants: Vec::new(),
            created_at: Millis(1),
            updated_at: Millis(1),
        };
        let debug = format!("{connection:?}");
        let public = connection.public().to_string();
        for text in [&debug, &public] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("signing-secret"), "{text}");
        }
        assert!(public.contains("\"username\":\"shop\""));
        assert!(public.contains("\"signing_secret_set\":true"));
        // The store keeps them.
        let stored = serde_json::to_string(&connection).unwrap();
        assert!(stored.contains("hunter2-password"));
    }

    #[test]
    fn only_urls_under_the_base_are_covered() {
        let base = "https://erp.example/api/orders";
        for url in [
            "https://erp.example/api/orders",
            "https://erp.example/api/orders/",
            "https://erp.example/api/orders/7?x=1",
            "https://erp.example:443/api/orders/a/../b",
        ] {
            assert_eq!(within_base(url, base), Ok(()), "{url}");
        }
        for url in [
            "https://erp.example/admin",
            "https://erp.example/api/orders-admin",
            "https://erp.example/api/orders/../admin",
            "https://erp.example/api/orders/%2e%2e/admin",
            "http://erp.example/api/orders",
            "https://erp.example:8443/api/orders",
            "https://evil.example/api/orders",
            "not a url",
        ] {
            let refused = within_base(url, base).unwrap_err();
            assert!(
                refused.contains("outside the connection's base URL"),
                "{refused}"
            );
        }
        assert_eq!(within_base("https://h/any/path", "https://h/"), Ok(()));
        assert_eq!(within_base("https://h/any", "https://h"), Ok(()));
    }

    #[test]
    fn paths_under_a_connection_may_not_climb_in_any_encoding() {
        let base = "https://erp.example/api";
        for url in [
            "https://erp.example/api/orders/../orders",
            "https://erp.example/api/orders/%2e%2e/orders",
            "https://erp.example/api/orders/.%2E/orders",
            "https://erp.example/api/orders/..;x=1/orders",
            "https://erp.example/api/orders/..%3b/orders",
            "https://erp.example/api/orders/%252e%252e/orders",
            "https://erp.example/api/orders/..%00/orders",
            "https://erp.example/api/a%2f..%2fadmin",
            "https://erp.example/api/a%5C..%5Cadmin",
            "https://erp.example/api/a%252fb",
        ] {
            let refused = credentials_may_go(url, base, None).unwrap_err();
            assert!(
                refused.contains("reads as `..`") || refused.contains("encoded slash"),
                "{url}: {refused}"
            );
        }
        for path in ["orders/..;/admin", "/x/%2e%2e", "a%2Fb?q=1", "..\\x"] {
            assert!(check_path_segments(path).is_err(), "{path}");
        }
        // Dots inside a name, a single dot's parameter and an encoded percent are fine.
        for url in [
            "https://erp.example/api/orders/v1.2/a..b/...x",
            "https://erp.example/api/50%25off?a=..",
            "https://erp.example/api/x?next=%2e%2e%2fadmin",
        ] {
            assert_eq!(credentials_may_go(url, base, None), Ok(()), "{url}");
        }
    }

    #[test]
    fn paths_under_a_connection_may_not_set_its_query_parameters() {
        let base = "https://erp.example/api?shop=7";
        let check = |url: &str| credentials_may_go(url, base, Some("api_key"));
        for url in [
            "https://erp.example/api/orders?api_key=ATTACKER",
            "https://erp.example/api/orders?x=1&API_KEY=ATTACKER",
            "https://erp.example/api/orders?x=1;Api_Key=ATTACKER",
            "https://erp.example/api/orders?api%5Fkey=ATTACKER",
            "https://erp.example/api/orders?api_key",
            "https://erp.example/api/orders?shop=8",
            "https://erp.example/api/orders?shop=7&SHOP=8",
            "https://erp.example/api/orders?shop=7&shop=7",
        ] {
            let refused = check(url).unwrap_err();
            assert!(
                refused.contains("which the connection sets itself"),
                "{url}: {refused}"
            );
        }
        for url in [
            "https://erp.example/api?shop=7",
            "https://erp.example/api/orders?shop=7&id=5",
            "https://erp.example/api/orders?id=5&api_keys=1",
            "https://erp.example/api/orders",
        ] {
            assert_eq!(check(url), Ok(()), "{url}");
        }
    }
}
