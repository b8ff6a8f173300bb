//! Definitions in the sled store: modules, webhooks, connections, API keys and signing
//! secrets (credentials sealed at rest).

use super::*;
use crate::storage::{Changed, Conflict};

impl Store {
    // ----- modules -----

    /// Stores a module's bytes and description (overwriting the description).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_module(&self, info: &ModuleInfo, bytes: &[u8]) -> Result<(), StoreError> {
        (&self.modules, &self.module_info).transaction(|(modules, infos)| {
            modules.insert(info.id.as_str().as_bytes(), bytes)?;
            infos.insert(info.id.as_str().as_bytes(), encode(info))?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Deletes a module's bytes and description.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_module(&self, id: &ModuleId) -> Result<(), StoreError> {
        (&self.modules, &self.module_info).transaction(|(modules, infos)| {
            modules.remove(id.as_str().as_bytes())?;
            infos.remove(id.as_str().as_bytes())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// A module's description.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn module_info(&self, id: &ModuleId) -> Result<Option<ModuleInfo>, StoreError> {
        self.module_info
            .get(id.as_str())?
            .map(|v| decode("module_info", &v))
            .transpose()
    }

    /// A module's component bytes.
    ///
    /// # Errors
    /// On storage failure.
    pub fn module_bytes(&self, id: &ModuleId) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.modules.get(id.as_str())?)
    }

    /// Every module's description, in id order.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        self.module_info
            .iter()
            .values()
            .map(|v| decode("module_info", &v?))
            .collect()
    }

    // ----- webhooks -----

    /// Stores a webhook (create or replace) over the version it was read at, and counts
    /// its `version` up.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another version is stored, or on storage failure.
    pub fn put_webhook(&self, webhook: &mut Webhook) -> Result<(), StoreError> {
        let _writing = self
            .definition_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let stored = self.webhook(&webhook.id)?.map_or(0, |w| w.version);
        if stored != webhook.version {
            return Err(Conflict::Changed.into());
        }
        webhook.version += 1;
        // Sealed: its headers and plugin config may hold tokens.
        let key = webhook.id.as_str().as_bytes();
        let sealed = self
            .sealer
            .seal(&context("webhooks", key), &encode(&*webhook));
        let changed = Changed::Webhook(webhook.id.clone());
        let written = self.write_fed(&self.webhooks, key, Some(&sealed), &changed);
        if written.is_err() {
            webhook.version -= 1;
        }
        written
    }

    /// Deletes a webhook and its plugin state.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_webhook(&self, id: &WebhookId) -> Result<(), StoreError> {
        let changed = Changed::Webhook(id.clone());
        self.write_fed(&self.webhooks, id.as_str().as_bytes(), None, &changed)?;
        self.signing.remove(id.as_str())?;
        self.state_clear(id)
    }

    /// One webhook.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.webhooks
            .get(id.as_str())?
            .map(|v| self.decode_sealed("webhooks", id.as_str().as_bytes(), &v))
            .transpose()
    }

    /// Every webhook, oldest first.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.webhooks
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                self.decode_sealed("webhooks", &key, &value)
            })
            .collect()
    }

    // ----- connections -----

    /// Stores a connection (create or replace) over the version it was read at, and counts
    /// its `version` up.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another version is stored, or on storage failure.
    pub fn put_connection(&self, connection: &mut Connection) -> Result<(), StoreError> {
        let _writing = self
            .definition_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let stored = self.connection(&connection.id)?.map_or(0, |c| c.version);
        if stored != connection.version {
            return Err(Conflict::Changed.into());
        }
        connection.version += 1;
        let key = connection.id.as_str().as_bytes();
        let sealed = self
            .sealer
            .seal(&context("connections", key), &encode(&*connection));
        let changed = Changed::Connection(connection.id.clone());
        let written = self.write_fed(&self.connections, key, Some(&sealed), &changed);
        if written.is_err() {
            connection.version -= 1;
        }
        written
    }

    /// One connection.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn connection(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.connections
            .get(id.as_str())?
            .map(|v| self.decode_sealed("connections", id.as_str().as_bytes(), &v))
            .transpose()
    }

    /// Deletes a connection.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_connection(&self, id: &ConnectionId) -> Result<(), StoreError> {
        let changed = Changed::Connection(id.clone());
        self.write_fed(&self.connections, id.as_str().as_bytes(), None, &changed)
    }

    /// Every connection, oldest first.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn connections(&self) -> Result<Vec<Connection>, StoreError> {
        self.connections
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                self.decode_sealed("connections", &key, &value)
            })
            .collect()
    }

    // ----- API keys -----

    /// Stores an API key (create or replace).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.api_keys.insert(key.id.as_str(), encode(key))?;
        Ok(())
    }

    /// One API key.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys
            .get(id.as_str())?
            .map(|v| decode("api_keys", &v))
            .transpose()
    }

    /// Every API key, oldest first.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.api_keys
            .iter()
            .values()
            .map(|v| decode("api_keys", &v?))
            .collect()
    }

    // ----- signing secrets -----

    /// A webhook's signing secrets.
    ///
    /// # Errors
    /// On storage failure or a corrupt record.
    pub fn signing_keys(&self, id: &WebhookId) -> Result<Option<SigningKeys>, StoreError> {
        let key = id.as_str().as_bytes();
        self.signing
            .get(key)?
            .map(|v| self.decode_sealed("signing", key, &v))
            .transpose()
    }

    /// Stores a webhook's signing secrets.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_signing_keys(&self, id: &WebhookId, keys: &SigningKeys) -> Result<(), StoreError> {
        let key = id.as_str().as_bytes();
        let sealed = self.sealer.seal(&context("signing", key), &encode(keys));
        let changed = Changed::Webhook(id.clone());
        self.write_fed(&self.signing, key, Some(&sealed), &changed)
    }
}
