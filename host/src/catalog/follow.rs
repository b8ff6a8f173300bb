//! Following the definitions' change feed: the webhooks and connections kept in memory are
//! made again from storage when any writer (this host or another on the same database)
//! changes them, so routing, the gate and sending never act for long on a copy that went
//! stale. This host's own writes are kept at once as well; the feed only repeats them.

use std::collections::HashSet;
use std::sync::Arc;

use super::{CachedWebhook, Catalog};
use crate::model::{ConnectionId, WebhookId};
use crate::storage::{Changed, StorageError};

impl Catalog {
    /// Reads the change feed from where it was last followed, and makes every webhook and
    /// connection it names again from storage (or forgets it, when deleted); reads them all
    /// again when the feed no longer reaches back that far. Returns how many changed.
    /// Blocking (it reads storage).
    ///
    /// # Errors
    /// When storage cannot be read; the next call reads from the same place.
    pub fn follow(&self) -> Result<usize, StorageError> {
        let mut followed = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        let changes = self.store.definition_changes(*followed)?;
        let mut seen = HashSet::new();
        let mut count = 0;
        if changes.reset {
            count += self.read_all_again()?;
        }
        for changed in changes.changed {
            if !seen.insert(changed.clone()) {
                continue;
            }
            match &changed {
                Changed::Webhook(id) => self.refresh_webhook(id)?,
                Changed::Connection(id) => self.refresh_connection(id)?,
            }
            count += 1;
        }
        *followed = changes.position;
        if count > 0 {
            self.changed();
        }
        Ok(count)
    }

    /// Makes the kept copy of a webhook what storage holds (read while the copies are
    /// locked, so a write of this host kept meanwhile is never undone by an older read).
    fn refresh_webhook(&self, id: &WebhookId) -> Result<(), StorageError> {
        let mut webhooks = self.webhooks.write().unwrap();
        self.signers.write().unwrap().remove(id);
        match self.store.webhook(id)? {
            Some(stored)
                if webhooks
                    .get(id)
                    .is_none_or(|kept| kept.version <= stored.version) =>
            {
                webhooks.insert(id.clone(), Arc::new(CachedWebhook::new(stored)));
            }
            Some(_) => {}
            None => {
                webhooks.remove(id);
            }
        }
        Ok(())
    }

    /// [`Catalog::refresh_webhook`] for a connection.
    fn refresh_connection(&self, id: &ConnectionId) -> Result<(), StorageError> {
        let mut connections = self.connections.write().unwrap();
        match self.store.connection(id)? {
            Some(stored)
                if connections
                    .get(id)
                    .is_none_or(|kept| kept.version <= stored.version) =>
            {
                connections.insert(id.clone(), Arc::new(stored));
            }
            Some(_) => {}
            None => {
                connections.remove(id);
            }
        }
        Ok(())
    }

    /// Reads every webhook and connection again, keeping a kept copy newer than what was
    /// read (this host's write kept meanwhile) and forgetting what storage no longer holds;
    /// under the webhooks' write lock, so no write of this host interleaves. Returns how
    /// many there are.
    fn read_all_again(&self) -> Result<usize, StorageError> {
        let _writing = self.webhook_writes.lock().unwrap();
        let webhooks = self.store.webhooks()?;
        let connections = self.store.connections()?;
        let count = webhooks.len() + connections.len();
        {
            let mut kept = self.webhooks.write().unwrap();
            let stored: HashSet<WebhookId> = webhooks.iter().map(|w| w.id.clone()).collect();
            kept.retain(|id, _| stored.contains(id));
            for webhook in webhooks {
                if kept
                    .get(&webhook.id)
                    .is_none_or(|k| k.version <= webhook.version)
                {
                    kept.insert(webhook.id.clone(), Arc::new(CachedWebhook::new(webhook)));
                }
            }
        }
        {
            let mut kept = self.connections.write().unwrap();
            let stored: HashSet<ConnectionId> = connections.iter().map(|c| c.id.clone()).collect();
            kept.retain(|id, _| stored.contains(id));
            for connection in connections {
                if kept
                    .get(&connection.id)
                    .is_none_or(|k| k.version <= connection.version)
                {
                    kept.insert(connection.id.clone(), Arc::new(connection));
                }
            }
        }
        self.signers.write().unwrap().clear();
        Ok(count)
    }
}
