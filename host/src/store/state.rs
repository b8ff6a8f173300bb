//! Plugin state per webhook, and the host's own secrets, in the sled store.

use super::*;

impl Store {
    // ----- plugin state -----

    pub(super) fn state_key(webhook: &WebhookId, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(webhook.as_str().len() + 1 + key.len());
        k.extend_from_slice(webhook.as_str().as_bytes());
        k.push(0);
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// A plugin state value of a webhook.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_get(&self, webhook: &WebhookId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .plugin_state
            .get(Self::state_key(webhook, key))?
            .map(|v| v.to_vec()))
    }

    /// Bytes (keys plus values) a webhook's plugin state holds.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_size(&self, webhook: &WebhookId) -> Result<usize, StoreError> {
        let mut prefix = webhook.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut total = 0;
        for item in self.plugin_state.scan_prefix(&prefix) {
            let (k, v) = item?;
            total += k.len() - prefix.len() + v.len();
        }
        Ok(total)
    }

    /// Removes all of a webhook's plugin state.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_clear(&self, webhook: &WebhookId) -> Result<(), StoreError> {
        let mut prefix = webhook.as_str().as_bytes().to_vec();
        prefix.push(0);
        for key in self.plugin_state.scan_prefix(&prefix).keys() {
            self.plugin_state.remove(key?)?;
        }
        Ok(())
    }

    // ----- host secrets -----

    /// A random 32-byte secret of this host under `name`, made on first use and kept.
    ///
    /// # Errors
    /// On storage failure.
    pub fn host_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let fresh: [u8; 32] = rand::random();
        let stored =
            match self
                .meta
                .compare_and_swap(name, None as Option<&[u8]>, Some(&fresh[..]))?
            {
                Ok(()) => fresh.to_vec(),
                Err(existing) => existing.current.map(|v| v.to_vec()).unwrap_or_default(),
            };
        stored.try_into().map_err(|_| StoreError::Corrupt {
            tree: "meta",
            source: <serde_json::Error as serde::de::Error>::custom(format!(
                "secret {name} is not 32 bytes"
            )),
        })
    }
}
