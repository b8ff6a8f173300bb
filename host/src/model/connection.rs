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
    /// Whether `url` lies under this connection's base URL: the same scheme, host and port,
    /// and a path at or below the base path (after `.` and `..` segments are resolved). The
    /// connection's credentials and signature only ever travel there.
    ///
    /// # Errors
    /// A message naming the URL and the base it leaves.
    pub fn covers(&self, url: &str) -> Result<(), Invalid> {
        within_base(url, &self.base_url)
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
}
