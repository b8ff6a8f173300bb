//! API keys: who may call the API. Keys are stored as SHA-256 hashes and compared in constant
//! time; a key's text is shown once, when it is created.

use serde::Deserialize;

use super::checks::{check_label, check_tenant};
use super::listing::{contains, ListQuery, Listed, Page, SortValue};
use super::{Catalog, Error};
use crate::model::{constant_time_eq, generate_key, hash_key, key_id_of, ApiKey, ApiKeyId, Role};

/// Who is calling: the role and tenant of the key that authenticated the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// What the key may do.
    pub role: Role,
    /// The tenant the key is bound to, if any.
    pub tenant: Option<String>,
    /// The stored key (absent for the configured admin key).
    pub key_id: Option<ApiKeyId>,
}

impl Principal {
    /// An unbound admin (the configured key, and in-process callers).
    pub fn admin() -> Principal {
        Principal {
            role: Role::Admin,
            tenant: None,
            key_id: None,
        }
    }

    /// Whether something of `tenant` is visible to this key.
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        self.tenant.is_none() || self.tenant.as_deref() == tenant
    }
}

/// A key to create.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// Human name.
    #[serde(default)]
    pub name: Option<String>,
    /// `admin` or `emitter`.
    #[serde(default)]
    pub role: Option<String>,
    /// Bind the key to one tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

impl Listed for ApiKey {
    fn list_id(&self) -> &str {
        self.id.as_str()
    }

    fn sort_value(&self, field: &str) -> SortValue {
        match field {
            "name" => SortValue::Text(self.name.to_lowercase()),
            _ => SortValue::Int(self.created_at.as_i64()),
        }
    }
}

impl Catalog {
    /// On a first start without a configured admin key, creates an admin key and returns its
    /// text (to print once). Otherwise returns `None`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn bootstrap_admin_key(&self) -> Result<Option<String>, Error> {
        if self.config.api.admin_key.is_some() || !self.store.api_keys()?.is_empty() {
            return Ok(None);
        }
        let (_, text) = self.insert_key("first admin key".into(), Role::Admin, None)?;
        Ok(Some(text))
    }

    /// Creates a key; returns it and its text, which is never shown again.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming a bad field, or a storage error.
    pub fn create_key(&self, input: KeyInput) -> Result<(ApiKey, String), Error> {
        self.store.admit()?;
        let name = input
            .name
            .ok_or_else(|| Error::invalid("name", "is required"))?;
        check_label("name", &name, self.config.api.max_name_len)?;
        let role = Role::parse(
            input
                .role
                .as_deref()
                .ok_or_else(|| Error::invalid("role", "is required (admin or emitter)"))?,
        )
        .map_err(|m| Error::invalid("role", m))?;
        if let Some(tenant) = &input.tenant {
            check_tenant("tenant", tenant)?;
        }
        self.insert_key(name, role, input.tenant)
    }

    fn insert_key(
        &self,
        name: String,
        role: Role,
        tenant: Option<String>,
    ) -> Result<(ApiKey, String), Error> {
        let (id, text) = generate_key();
        let key = ApiKey {
            id,
            name,
            role,
            tenant,
            hash: hash_key(&text),
            created_at: self.now(),
            revoked_at: None,
        };
        self.store.put_api_key(&key)?;
        self.store.flush()?;
        Ok((key, text))
    }

    /// One key.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn api_key(&self, id: &ApiKeyId) -> Result<ApiKey, Error> {
        self.store.api_key(id)?.ok_or_else(|| Error::NotFound {
            kind: "API key",
            id: id.to_string(),
        })
    }

    /// Revokes a key: it authenticates nothing from now on. Revoking twice is a no-op.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn revoke_key(&self, id: &ApiKeyId) -> Result<ApiKey, Error> {
        let mut key = self.api_key(id)?;
        if key.revoked_at.is_none() {
            key.revoked_at = Some(self.now());
            self.store.put_api_key(&key)?;
            self.store.flush()?;
        }
        Ok(key)
    }

    /// Keys matching the query's filters (`name_contains`, `role`, `tenant`, `revoked`),
    /// ordered by `created_at` or `name`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter, or a storage error.
    pub fn list_keys(&self, mut query: ListQuery) -> Result<Page<ApiKey>, Error> {
        let name_contains = query.take("name_contains");
        let role = query.take_parsed("role", Role::parse)?;
        let tenant = query.take("tenant");
        let revoked = query.take_bool("revoked")?;
        query.finish()?;
        let items = self
            .store
            .api_keys()?
            .into_iter()
            .filter(|k| {
                name_contains.as_ref().is_none_or(|n| contains(&k.name, n))
                    && role.is_none_or(|r| k.role == r)
                    && tenant.as_ref().is_none_or(|t| k.tenant.as_ref() == Some(t))
                    && revoked.is_none_or(|r| k.revoked_at.is_some() == r)
            })
            .collect();
        Ok(query.page(items))
    }

    /// Whether `token` is `secret`, compared in constant time.
    pub fn is_secret(&self, token: &str, secret: &crate::model::Secret) -> bool {
        constant_time_eq(
            hash_key(token).as_bytes(),
            hash_key(secret.expose()).as_bytes(),
        )
    }

    /// The caller a bearer token stands for, if it is a valid, unrevoked key.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        if let Some(admin) = &self.config.api.admin_key {
            let expected = hash_key(admin.expose());
            if constant_time_eq(hash_key(token).as_bytes(), expected.as_bytes()) {
                return Some(Principal::admin());
            }
        }
        let id = key_id_of(token)?;
        let key = match self.store.api_key(&id) {
            Ok(Some(key)) => key,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!("reading API key {id}: {e}");
                return None;
            }
        };
        let matches = constant_time_eq(hash_key(token).as_bytes(), key.hash.as_bytes());
        (matches && key.revoked_at.is_none()).then_some(Principal {
            role: key.role,
            tenant: key.tenant,
            key_id: Some(key.id),
        })
    }
}
