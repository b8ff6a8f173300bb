//! Replays: send a finished delivery again as a new delivery of the same webhook and event.
//! When the original was evaluated, its stored requests are resent byte for byte with the same
//! `webhook-id` (receivers that already processed it can dedupe); otherwise (skipped, or a
//! plugin error) the webhook's current plugin evaluates the event afresh.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Error, Pipeline};
use crate::catalog::Principal;
use crate::model::{Delivery, DeliveryId, DeliveryStatus, Millis, Webhook, WebhookId};
use crate::storage::{DeliveryQuery, Tenancy};

/// Which deliveries `recover` replays: the failed and dead ones created in `[since, until)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverInput {
    /// Start of the range (RFC 3339).
    pub since: Millis,
    /// End of the range (RFC 3339); now when absent.
    #[serde(default)]
    pub until: Option<Millis>,
}

/// What `recover` did.
#[derive(Debug, Serialize)]
pub struct Recovered {
    /// The new deliveries, one per replayed original.
    pub replayed: Vec<Delivery>,
}

/// Most deliveries one `recover` call replays.
pub const MAX_RECOVER: usize = 10_000;

impl Pipeline {
    /// Queues a replay of a finished delivery and returns the new delivery. It is sent
    /// through the webhook's connection as it is then, never one stored with the original.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown delivery, [`Error::Conflict`] when it is still pending,
    /// its webhook was deleted or has moved to another tenant, or a storage error.
    pub async fn replay(&self, id: &DeliveryId) -> Result<Delivery, Error> {
        self.store.admit()?;
        let original = self.delivery(id)?;
        let replay = self.queue_replay(original)?;
        self.store.commit().await?;
        self.wake.notify_one();
        Ok(replay)
    }

    /// Replays every failed or dead delivery of a webhook created in the range, except those
    /// already replayed and those recorded under another tenant (before the webhook moved),
    /// oldest first (at most `MAX_RECOVER` per call).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown webhook, [`Error::Invalid`] for an empty range, or
    /// a storage error.
    pub async fn recover(
        self: &Arc<Self>,
        webhook_id: &WebhookId,
        input: RecoverInput,
        who: &Principal,
    ) -> Result<Recovered, Error> {
        self.store.admit()?;
        // As stored, and the caller's: the copy in memory may not yet know of a move to
        // another tenant.
        let webhook = self.catalog.webhook_seen_by(webhook_id, who)?;
        let until = input.until.unwrap_or_else(|| self.now());
        if until <= input.since {
            return Err(Error::invalid("until", "must be after `since`"));
        }
        // Only what was recorded under the webhook's present tenant: a webhook moved from
        // another tenant never replays that tenant's events to its new owner.
        if let Err(withdrawn) = self.catalog.usable_connection(&webhook) {
            return Err(Error::Conflict(format!(
                "webhook {webhook_id} sends nothing now: {withdrawn}"
            )));
        }
        // What may be replayed, and the replays made already (after their originals, so
        // created since `since`), in two walks of one slot.
        let recorded = DeliveryQuery {
            webhook: Some(webhook.id.clone()),
            tenant: Tenancy::Only(webhook.tenant.clone()),
            created_from: Some(input.since),
            limit: usize::MAX,
            ..DeliveryQuery::default()
        };
        let failed = DeliveryQuery {
            statuses: vec![DeliveryStatus::Failed, DeliveryStatus::Dead],
            created_before: Some(until),
            ..recorded.clone()
        };
        let replays = DeliveryQuery {
            replays: Some(true),
            ..recorded
        };
        let [candidates, replays] = self
            .walk_deliveries(webhook.tenant.as_deref(), [failed, replays])
            .await?;
        let replayed: HashSet<DeliveryId> = replays
            .deliveries
            .into_iter()
            .filter_map(|d| d.replay_of)
            .collect();
        let originals: Vec<Delivery> = candidates
            .deliveries
            .into_iter()
            .filter(|d| !replayed.contains(&d.id))
            .take(MAX_RECOVER)
            .collect();
        // Up to MAX_RECOVER replays, each a few writes: on a blocking thread.
        let this = self.clone();
        let out = tokio::task::spawn_blocking(move || {
            originals
                .into_iter()
                .map(|original| this.queue_replay(original))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .expect("queueing replays does not panic")?;
        self.store.commit().await?;
        if !out.is_empty() {
            self.wake.notify_one();
        }
        Ok(Recovered { replayed: out })
    }

    /// Stores the replay of `original` (not yet durable).
    fn queue_replay(&self, original: Delivery) -> Result<Delivery, Error> {
        let webhook = self.replayable(&original)?;
        let id = original.id.to_string();
        let rebuilt = original.requests.as_ref().is_none_or(|requests| {
            requests
                .iter()
                .any(|r| r.connection_id != webhook.connection_id)
        });
        // Kept for the replay while it is pending, so the pruner leaves them alone.
        let replay_id = DeliveryId::generate();
        let tenant = original.events_tenant();
        for event in std::iter::once(&original.event_id).chain(&original.batch_events) {
            let kept = self
                .store
                .keep_event_for(tenant, event, &replay_id, original.updated_at)?;
            if !kept && rebuilt {
                return Err(Error::Conflict(format!(
                    "delivery {id} cannot be replayed: its plugin must build the request \
                     again, and its event {event} was removed after retention.events"
                )));
            }
        }
        let mut replay = replay_of(original, replay_id, &webhook, self.now());
        self.store.update_delivery(&mut replay)?;
        Ok(replay)
    }

    /// The webhook `original` is replayed through, if it may be: the delivery has finished,
    /// and its webhook still exists, may send, and is still the tenant's it was recorded for.
    fn replayable(&self, original: &Delivery) -> Result<Webhook, Error> {
        let id = &original.id;
        if original.status == DeliveryStatus::Pending {
            return Err(Error::Conflict(format!(
                "delivery {id} is still pending; replay it once it has finished"
            )));
        }
        // As stored: the copy in memory may not yet know of a move to another tenant.
        let stored = self
            .catalog
            .webhook_seen_by(&original.webhook_id, &Principal::admin());
        let webhook = match stored {
            Ok(webhook) => webhook,
            Err(Error::NotFound { .. }) => {
                return Err(Error::Conflict(format!(
                    "the webhook {} of delivery {id} was deleted",
                    original.webhook_id
                )))
            }
            Err(e) => return Err(e),
        };
        if let Err(withdrawn) = self.catalog.usable_connection(&webhook) {
            return Err(Error::Conflict(format!(
                "webhook {} sends nothing now: {withdrawn}",
                original.webhook_id
            )));
        }
        if webhook.tenant != original.tenant {
            return Err(Error::Conflict(format!(
                "the webhook {} of delivery {id} has moved to another tenant since; a delivery \
                 is replayed only to the tenant it was recorded for",
                original.webhook_id
            )));
        }
        Ok(webhook)
    }
}

/// A new pending delivery `id` replaying `original` through `webhook` now. Requests built
/// through another connection than the webhook's now are dropped, to be built anew by its
/// plugin: a request is only ever sent through the connection it was built for.
fn replay_of(original: Delivery, id: DeliveryId, webhook: &Webhook, now: Millis) -> Delivery {
    let requests = original
        .requests
        .filter(|requests| {
            requests
                .iter()
                .all(|r| r.connection_id == webhook.connection_id)
        })
        .map(|mut requests| {
            for r in &mut requests {
                r.delivered = false;
            }
            requests
        });
    Delivery {
        version: 0,
        id,
        webhook_id: original.webhook_id,
        event_id: original.event_id,
        tenant: original.tenant,
        event_tenant: original.event_tenant,
        status: DeliveryStatus::Pending,
        created_at: now,
        updated_at: now,
        next_attempt_at: Some(now),
        logs: if requests.is_some() {
            original.logs
        } else {
            Vec::new()
        },
        requests,
        rounds: 0,
        attempts: Vec::new(),
        skip_reason: None,
        error: None,
        extracted_value: None,
        replay_of: Some(original.id),
        entity: None,
        in_order: false,
        line_position: None,
        batch_events: original.batch_events,
        batch_limit: 0,
        replaced: 0,
        replaced_events: Vec::new(),
    }
}
