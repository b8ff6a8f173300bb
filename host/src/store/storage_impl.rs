//! The storage traits on the sled store: each call is the store's own method, with its error
//! turned into the engine-neutral [`StorageError`]; claims are kept in memory ([`Claims`]).
//!
//! [`Claims`]: super::claims::Claims

use crate::model::{
    ApiKey, ApiKeyId, Connection, ConnectionId, Delivery, DeliveryId, Event, EventId, Millis,
    ModuleId, ModuleInfo, SigningKeys, Webhook, WebhookId,
};
use crate::storage::{
    BackupReport, Capacity, Claim, Claimed, Conflict, DefinitionChanges, Definitions, Deliveries,
    DeliveryQuery, Finished, Inserted, LowSpace, Outcome, PluginStates, Pruning, QueueEntry,
    QueueFrom, QueuePosition, Scanned, SpaceStatus, StopWalk, StorageError, StorageFuture,
};

use super::{Store, StoreError};

impl From<StoreError> for StorageError {
    fn from(error: StoreError) -> Self {
        if let StoreError::Conflict(conflict) = error {
            return StorageError::Conflict(conflict);
        }
        let out_of_space = error.is_out_of_space();
        if error.is_unavailable() {
            StorageError::Unavailable {
                source: Box::new(error),
                out_of_space,
            }
        } else {
            StorageError::Record {
                source: Box::new(error),
            }
        }
    }
}

impl Definitions for Store {
    fn put_module(&self, info: &ModuleInfo, bytes: &[u8]) -> Result<(), StorageError> {
        Ok(Store::put_module(self, info, bytes)?)
    }
    fn delete_module(&self, id: &ModuleId) -> Result<(), StorageError> {
        Ok(Store::delete_module(self, id)?)
    }
    fn module_info(&self, id: &ModuleId) -> Result<Option<ModuleInfo>, StorageError> {
        Ok(Store::module_info(self, id)?)
    }
    fn module_bytes(&self, id: &ModuleId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(Store::module_bytes(self, id)?.map(|bytes| bytes.to_vec()))
    }
    fn modules(&self) -> Result<Vec<ModuleInfo>, StorageError> {
        Ok(Store::modules(self)?)
    }
    fn put_webhook(&self, webhook: &mut Webhook) -> Result<(), StorageError> {
        Ok(Store::put_webhook(self, webhook)?)
    }
    fn delete_webhook(&self, id: &WebhookId) -> Result<(), StorageError> {
        Ok(Store::delete_webhook(self, id)?)
    }
    fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StorageError> {
        Ok(Store::webhook(self, id)?)
    }
    fn webhooks(&self) -> Result<Vec<Webhook>, StorageError> {
        Ok(Store::webhooks(self)?)
    }
    fn connection(&self, id: &ConnectionId) -> Result<Option<Connection>, StorageError> {
        Ok(Store::connection(self, id)?)
    }
    fn definition_changes(&self, after: u64) -> Result<DefinitionChanges, StorageError> {
        Ok(Store::definition_changes(self, after)?)
    }
    fn definition_feed_head(&self) -> Result<u64, StorageError> {
        Ok(Store::change_head(self)?)
    }
    fn put_connection(&self, connection: &mut Connection) -> Result<(), StorageError> {
        Ok(Store::put_connection(self, connection)?)
    }
    fn delete_connection(&self, id: &ConnectionId) -> Result<(), StorageError> {
        Ok(Store::delete_connection(self, id)?)
    }
    fn connections(&self) -> Result<Vec<Connection>, StorageError> {
        Ok(Store::connections(self)?)
    }
    fn put_api_key(&self, key: &ApiKey) -> Result<(), StorageError> {
        Ok(Store::put_api_key(self, key)?)
    }
    fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, StorageError> {
        Ok(Store::api_key(self, id)?)
    }
    fn api_keys(&self) -> Result<Vec<ApiKey>, StorageError> {
        Ok(Store::api_keys(self)?)
    }
    fn signing_keys(&self, id: &WebhookId) -> Result<Option<SigningKeys>, StorageError> {
        Ok(Store::signing_keys(self, id)?)
    }
    fn put_signing_keys(&self, id: &WebhookId, keys: &SigningKeys) -> Result<(), StorageError> {
        Ok(Store::put_signing_keys(self, id, keys)?)
    }
}

impl Deliveries for Store {
    fn insert_and_commit(
        &self,
        items: Vec<(Event, Vec<Delivery>)>,
    ) -> StorageFuture<'_, Vec<Inserted>> {
        Box::pin(async move { Ok(Store::insert_and_commit(self, items).await?) })
    }

    fn event(&self, tenant: Option<&str>, id: &EventId) -> Result<Option<Event>, StorageError> {
        Ok(Store::event(self, tenant, id)?)
    }

    fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StorageError> {
        Ok(Store::delivery(self, id)?)
    }

    fn scan_deliveries(&self, query: &DeliveryQuery) -> Result<Scanned, StorageError> {
        Ok(Store::scan_deliveries(self, query)?)
    }

    fn claim(
        &self,
        positions: &[QueuePosition],
        holder: u64,
        until: Millis,
        now: Millis,
    ) -> Result<Vec<Option<Claimed>>, StorageError> {
        Ok(Store::claim_positions(self, positions, holder, until, now)?)
    }

    fn close(&self, claim: &Claim, read: &Delivery) -> Result<bool, StorageError> {
        let closed = Store::close_collecting(self, read, claim.due)?;
        if !closed {
            self.claims.end(claim);
        }
        Ok(closed)
    }

    fn finish(&self, claim: &Claim, outcome: Outcome<'_>) -> Result<(), StorageError> {
        let Outcome {
            delivery,
            state,
            keep,
        } = outcome;
        let old_due = if keep { None } else { Some(claim.due) };
        match self.claims.while_held(claim, keep, || {
            Store::write_outcome(self, delivery, old_due, state)
        }) {
            Some(written) => Ok(written?),
            None => Err(StorageError::Conflict(Conflict::ClaimLost)),
        }
    }

    fn renew(&self, claim: &Claim, until: Millis) -> Result<(), StorageError> {
        if self.claims.renew(claim, until) {
            Ok(())
        } else {
            Err(StorageError::Conflict(Conflict::ClaimLost))
        }
    }

    fn update_delivery(&self, delivery: &mut Delivery) -> Result<(), StorageError> {
        Ok(Store::update_delivery(self, delivery)?)
    }

    fn first_in_line(&self, delivery: &Delivery) -> Result<Option<DeliveryId>, StorageError> {
        Ok(Store::first_in_line(self, delivery)?)
    }

    fn due_from<'a>(
        &'a self,
        from: QueueFrom<'_>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a> {
        Box::new(Store::due_from(self, from).map(|entry| entry.map_err(StorageError::from)))
    }

    fn take_written_due(&self) -> Option<Millis> {
        Store::take_written_due(self)
    }

    fn queue_len(&self) -> usize {
        Store::queue_len(self)
    }
}

impl PluginStates for Store {
    fn state_get(&self, webhook: &WebhookId, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(Store::state_get(self, webhook, key)?)
    }
    fn state_size(&self, webhook: &WebhookId) -> Result<usize, StorageError> {
        Ok(Store::state_size(self, webhook)?)
    }
    fn state_clear(&self, webhook: &WebhookId) -> Result<(), StorageError> {
        Ok(Store::state_clear(self, webhook)?)
    }
}

impl Capacity for Store {
    fn host_secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        Ok(Store::host_secret(self, name)?)
    }
    fn admit(&self) -> Result<(), LowSpace> {
        self.space().admit()
    }
    fn space_status(&self) -> SpaceStatus {
        self.space().status()
    }
    fn commit(&self) -> StorageFuture<'_, ()> {
        Box::pin(async move { Ok(Store::commit(self).await?) })
    }
    fn flush(&self) -> Result<(), StorageError> {
        Ok(Store::flush(self)?)
    }
    fn backup(
        &self,
        dir: &std::path::Path,
        taken_at: Millis,
    ) -> Result<BackupReport, StorageError> {
        Ok(Store::backup(self, dir, taken_at)?)
    }
}

impl Pruning for Store {
    fn prepare_pruning(&self, stop: StopWalk<'_>) -> Result<bool, StorageError> {
        Ok(Store::prepare_pruning(self, stop)?)
    }

    fn prune_deliveries(
        &self,
        cutoff: &(dyn Fn(&WebhookId, Finished) -> Option<Millis> + Sync),
        shortest_keep: Option<std::time::Duration>,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StorageError> {
        Ok(Store::prune_deliveries(
            self,
            cutoff,
            shortest_keep,
            batch,
            stop,
        )?)
    }

    fn prune_events(
        &self,
        before: Millis,
        batch: usize,
        stop: StopWalk<'_>,
    ) -> Result<u64, StorageError> {
        Ok(Store::prune_events(self, before, batch, stop)?)
    }

    fn keep_event_for(
        &self,
        tenant: Option<&str>,
        id: &EventId,
        delivery: &DeliveryId,
        received_by: Millis,
    ) -> Result<bool, StorageError> {
        Ok(Store::keep_event_for(
            self,
            tenant,
            id,
            delivery,
            received_by,
        )?)
    }
}
