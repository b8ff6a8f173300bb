//! Connections: create, change, delete and list the destinations webhooks share.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::checks::{check_headers, check_label, check_tenant, check_text, check_url};
use super::listing::{contains, ListQuery, Listed, Page, SortValue};
use super::request::check_header;
use super::webhook_input::nullable;
use super::{Catalog, Error};
use crate::model::{Connection, ConnectionAuth, ConnectionId, Secret, Webhook};

/// Why a webhook may not send through its connection now (the webhook's `waiting_reason`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Withdrawn(pub String);

/// A connection as the API and CLI take it: everything on create, the fields to change on
/// update (`null` clears an optional field). Secrets are given here and never shown again.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionInput {
    /// Human name (required on create).
    #[serde(default)]
    pub name: Option<String>,
    /// What it is for.
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    /// Base URL, http or https (required on create).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Authentication: `{"type": "none" | "basic" | "bearer" | "header" | "query", …}`.
    #[serde(default)]
    pub auth: Option<ConnectionAuth>,
    /// Default headers (replace the existing set on update).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Signing secret: `whsec_` followed by base64 of 24 to 64 bytes.
    #[serde(default, deserialize_with = "nullable")]
    pub signing_secret: Option<Option<Secret>>,
    /// PEM certificates of CAs to trust for this connection's https destinations.
    #[serde(default, deserialize_with = "nullable")]
    pub ca_certificate: Option<Option<String>>,
    /// Tenants whose keys may attach it (replace the existing list on update; empty: only
    /// admin keys without a tenant).
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
}

impl ConnectionInput {
    /// Parses a connection definition, refusing `null` where a field cannot be cleared.
    ///
    /// # Errors
    /// [`Error::Json`] for a body that is not a definition, [`Error::Invalid`] for a `null`.
    pub fn from_json(body: &[u8]) -> Result<ConnectionInput, Error> {
        super::checks::refuse_nulls(body, &["name", "base_url", "auth", "headers", "tenants"])?;
        serde_json::from_slice(body).map_err(|e| Error::Json(e.to_string()))
    }
}

/// Most tenants one connection is shared with.
const MAX_SHARED_TENANTS: usize = 256;

impl Listed for Connection {
    fn list_id(&self) -> &str {
        self.id.as_str()
    }

    fn sort_value(&self, field: &str) -> SortValue {
        match field {
            "name" => SortValue::Text(self.name.to_lowercase()),
            "updated_at" => SortValue::Int(self.updated_at.as_i64()),
            _ => SortValue::Int(self.created_at.as_i64()),
        }
    }
}

/// Largest CA bundle, in bytes.
const MAX_CA_LEN: usize = 64 * 1024;

/// Longest secret value.
const MAX_SECRET_LEN: usize = 4096;

fn check_secret(field: &str, secret: &Secret) -> Result<(), Error> {
    let value = secret.expose();
    if value.is_empty() || value.len() > MAX_SECRET_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_SECRET_LEN} bytes"),
        ));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(Error::invalid(
            field,
            "has characters that cannot be sent in a header",
        ));
    }
    Ok(())
}

fn check_auth(auth: &ConnectionAuth) -> Result<(), Error> {
    match auth {
        ConnectionAuth::None => Ok(()),
        ConnectionAuth::Basic { username, password } => {
            if username.is_empty() || username.contains(':') || username.len() > 256 {
                return Err(Error::invalid(
                    "auth.username",
                    "must be 1 to 256 characters without `:`",
                ));
            }
            check_secret("auth.password", password)
        }
        ConnectionAuth::Bearer { token } => check_secret("auth.token", token),
        ConnectionAuth::Header { name, value } => {
            check_header(name, "x").map_err(|m| Error::invalid("auth.name", m))?;
            check_secret("auth.value", value)
        }
        ConnectionAuth::Query { name, value } => {
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "auth.name",
                    "must be 1 to 128 characters without control characters",
                ));
            }
            check_secret("auth.value", value)
        }
    }
}

/// Checks a Standard Webhooks signing secret: `whsec_` + base64 of 24 to 64 bytes, or an
/// Ed25519 private key `whsk_…` (asymmetric `v1a`).
///
/// # Errors
/// [`Error::Invalid`] on `signing_secret`.
pub fn check_signing_secret(secret: &Secret) -> Result<(), Error> {
    crate::signature::Signer::parse(secret.expose())
        .map(|_| ())
        .map_err(|e| Error::invalid("signing_secret", e.to_string()))
}

impl Catalog {
    /// Creates a connection after checking every field.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first bad or missing field, or a storage error.
    pub fn create_connection(&self, input: ConnectionInput) -> Result<Connection, Error> {
        self.store.admit()?;
        let connection = self.merge_connection(None, input)?;
        self.save_connection(connection)
    }

    /// Changes the given fields of a connection; webhooks using it see the change on their
    /// next delivery.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Invalid`] naming the first bad field, or a storage error.
    pub fn update_connection(
        &self,
        id: &ConnectionId,
        input: ConnectionInput,
    ) -> Result<Connection, Error> {
        // As stored, not as kept in memory: another host may have changed it.
        let existing = self.store.connection(id)?.ok_or_else(|| Error::NotFound {
            kind: "connection",
            id: id.to_string(),
        })?;
        let connection = self.merge_connection(Some(&existing), input)?;
        self.save_connection(connection)
    }

    /// Deletes a connection, refused while a webhook uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] naming the webhooks, or a storage error.
    pub fn delete_connection(&self, id: &ConnectionId) -> Result<Connection, Error> {
        let existing = self.connection(id)?;
        let users: Vec<String> = self
            .webhooks()
            .into_iter()
            .filter(|w| w.connection_id.as_ref() == Some(&existing.id))
            .map(|w| w.id.to_string())
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "connection {} is used by webhook(s) {}; point them elsewhere first",
                existing.id,
                users.join(", ")
            )));
        }
        self.store.delete_connection(&existing.id)?;
        self.connections.write().unwrap().remove(&existing.id);
        self.changed();
        Ok(existing)
    }

    /// The connection `webhook` sends through as it is now (`None`: it has none), if the
    /// webhook's tenant may still use it. Credentials follow the connection, never a copy:
    /// once the operator withdraws it from the tenant, nothing of the tenant's goes out
    /// with it.
    ///
    /// # Errors
    /// Why the webhook may not send through it: the connection is gone, or no longer shared
    /// with the webhook's tenant.
    pub fn usable_connection(
        &self,
        webhook: &Webhook,
    ) -> Result<Option<Arc<Connection>>, Withdrawn> {
        let Some(id) = &webhook.connection_id else {
            return Ok(None);
        };
        let Some(connection) = self.connection_cached(id) else {
            return Err(Withdrawn(format!("its connection {id} does not exist")));
        };
        if !connection.shared_with(webhook.tenant.as_deref()) {
            return Err(Withdrawn(format!(
                "its connection {id} is not shared with tenant `{}`; its deliveries wait \
                 until the operator shares the connection again or the webhook is detached \
                 from it (\"connection_id\": null)",
                webhook.tenant.as_deref().unwrap_or_default()
            )));
        }
        Ok(Some(connection))
    }

    /// One connection.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn connection(&self, id: &ConnectionId) -> Result<Connection, Error> {
        self.connection_cached(id)
            .map(|c| (*c).clone())
            .ok_or_else(|| Error::NotFound {
                kind: "connection",
                id: id.to_string(),
            })
    }

    /// Connections matching the query's filters (`name`, `name_contains`,
    /// `description_contains`), ordered by `created_at`, `updated_at` or `name`; for a key
    /// bound to `tenant`, only those shared with it.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter.
    pub fn list_connections(
        &self,
        mut query: ListQuery,
        tenant: Option<&str>,
    ) -> Result<Page<Connection>, Error> {
        let name = query.take("name");
        let name_contains = query.take("name_contains");
        let description_contains = query.take("description_contains");
        query.finish()?;
        let items = self
            .connections
            .read()
            .unwrap()
            .values()
            .filter(|c| {
                c.shared_with(tenant)
                    && name.as_ref().is_none_or(|n| &c.name == n)
                    && name_contains.as_ref().is_none_or(|n| contains(&c.name, n))
                    && description_contains
                        .as_ref()
                        .is_none_or(|n| c.description.as_ref().is_some_and(|d| contains(d, n)))
            })
            .map(|c| (**c).clone())
            .collect();
        Ok(query.page(items))
    }

    /// Writes `connection` over the version it was read at, and keeps it in memory.
    fn save_connection(&self, mut connection: Connection) -> Result<Connection, Error> {
        self.store
            .put_connection(&mut connection)
            .map_err(|e| match e.conflict() {
                Some(_) => Error::Conflict(format!(
                    "connection {} was changed by another writer since it was read; read it \
                     again and make the change on what it is now",
                    connection.id
                )),
                None => e.into(),
            })?;
        self.keep_connection(connection.clone());
        self.changed();
        Ok(connection)
    }

    /// Keeps `connection` in memory, unless a later version is kept already.
    pub(super) fn keep_connection(&self, connection: Connection) {
        let mut connections = self.connections.write().unwrap();
        if connections
            .get(&connection.id)
            .is_some_and(|kept| kept.version > connection.version)
        {
            return;
        }
        connections.insert(connection.id.clone(), Arc::new(connection));
    }

    fn merge_connection(
        &self,
        existing: Option<&Connection>,
        input: ConnectionInput,
    ) -> Result<Connection, Error> {
        let api = &self.config.api;
        let name = match (input.name, existing) {
            (Some(name), _) => name,
            (None, Some(c)) => c.name.clone(),
            (None, None) => return Err(Error::invalid("name", "is required")),
        };
        check_label("name", &name, api.max_name_len)?;
        let description = match input.description {
            Some(d) => d,
            None => existing.and_then(|c| c.description.clone()),
        };
        if let Some(text) = &description {
            check_text("description", text, api.max_description_len)?;
        }
        let base_url = match (input.base_url, existing) {
            (Some(url), _) => url,
            (None, Some(c)) => c.base_url.clone(),
            (None, None) => return Err(Error::invalid("base_url", "is required")),
        };
        check_url(&base_url, api.max_url_len).map_err(|e| match e {
            Error::Invalid { message, .. } => Error::invalid("base_url", message),
            other => other,
        })?;
        self.check_destination("base_url", &base_url)?;
        let auth = match (input.auth, existing) {
            (Some(auth), _) => auth,
            (None, Some(c)) => c.auth.clone(),
            (None, None) => ConnectionAuth::None,
        };
        check_auth(&auth)?;
        let headers = match (input.headers, existing) {
            (Some(map), _) => check_headers("headers", map)?,
            (None, Some(c)) => c.headers.clone(),
            (None, None) => Vec::new(),
        };
        let signing_secret = match input.signing_secret {
            Some(secret) => secret,
            None => existing.and_then(|c| c.signing_secret.clone()),
        };
        if let Some(secret) = &signing_secret {
            check_signing_secret(secret)?;
        }
        let ca_certificate = match input.ca_certificate {
            Some(pem) => pem,
            None => existing.and_then(|c| c.ca_certificate.clone()),
        };
        self.check_ca_certificate(ca_certificate.as_deref())?;
        let tenants = match (input.tenants, existing) {
            (Some(tenants), _) => tenants,
            (None, Some(c)) => c.tenants.clone(),
            (None, None) => Vec::new(),
        };
        check_shared_tenants(&tenants)?;
        if let Some(c) = existing {
            self.check_webhooks_stay_under(c, &base_url, &auth)?;
        }
        let now = self.now();
        Ok(Connection {
            id: existing.map_or_else(ConnectionId::generate, |c| c.id.clone()),
            version: existing.map_or(0, |c| c.version),
            name,
            description,
            base_url,
            auth,
            headers,
            signing_secret,
            ca_certificate,
            tenants,
            created_at: existing.map_or(now, |c| c.created_at),
            updated_at: now,
        })
    }

    /// A CA certificate: at most [`MAX_CA_LEN`] bytes, and one a client can be built with.
    fn check_ca_certificate(&self, pem: Option<&str>) -> Result<(), Error> {
        let Some(pem) = pem else {
            return Ok(());
        };
        if pem.len() > MAX_CA_LEN {
            return Err(Error::invalid(
                "ca_certificate",
                format!("is {} bytes; the limit is {MAX_CA_LEN}", pem.len()),
            ));
        }
        self.sender
            .client_for(Some(pem))
            .map_err(|e| Error::invalid("ca_certificate", e))?;
        Ok(())
    }

    /// When a connection's base URL or query auth changes: the webhooks already pointing at
    /// it must stay under the new base, and not set the new query auth's parameter, since its
    /// credentials travel only there.
    fn check_webhooks_stay_under(
        &self,
        existing: &Connection,
        base_url: &str,
        auth: &ConnectionAuth,
    ) -> Result<(), Error> {
        if existing.base_url == base_url && existing.auth.query_name() == auth.query_name() {
            return Ok(());
        }
        for webhook in self.webhooks() {
            if webhook.connection_id.as_ref() != Some(&existing.id) {
                continue;
            }
            let url = super::request::destination(webhook.url.as_deref(), Some(base_url))
                .map_err(|m| Error::invalid("base_url", m))?;
            crate::model::credentials_may_go(&url, base_url, auth.query_name()).map_err(|m| {
                Error::invalid(
                    "base_url",
                    format!("webhook {} would send to {m}", webhook.id),
                )
            })?;
        }
        Ok(())
    }
}

/// The tenants a connection is shared with: at most [`MAX_SHARED_TENANTS`], each a tenant.
fn check_shared_tenants(tenants: &[String]) -> Result<(), Error> {
    if tenants.len() > MAX_SHARED_TENANTS {
        return Err(Error::invalid(
            "tenants",
            format!(
                "has {} entries; the limit is {MAX_SHARED_TENANTS}",
                tenants.len()
            ),
        ));
    }
    for (i, tenant) in tenants.iter().enumerate() {
        check_tenant(&format!("tenants[{i}]"), tenant)?;
    }
    Ok(())
}
