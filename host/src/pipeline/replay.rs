//! Replays: send a finished delivery again as a new delivery of the same webhook and event.
//! When the original was evaluated, its stored requests are resent byte for byte with the same
//! `webhook-id` (receivers that already processed it can dedupe); otherwise (skipped, or a
//! plugin error) the webhook's current plugin evaluates the event afresh.

use super::{Error, Pipeline};
use crate::model::{Delivery, DeliveryId, DeliveryStatus};

impl Pipeline {
    /// Queues a replay of a finished delivery and returns the new delivery.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown delivery, [`Error::Conflict`] when it is still pending
    /// or its webhook was deleted, or a storage error.
    pub async fn replay(&self, id: &str) -> Result<Delivery, Error> {
        let original = self.delivery(id)?;
        if original.status == DeliveryStatus::Pending {
            return Err(Error::Conflict(format!(
                "delivery {id} is still pending; replay it once it has finished"
            )));
        }
        if self.webhook_cached(&original.webhook_id).is_none() {
            return Err(Error::Conflict(format!(
                "the webhook {} of delivery {id} was deleted",
                original.webhook_id
            )));
        }
        let now = self.now();
        let requests = original.requests.map(|mut requests| {
            for r in &mut requests {
                r.delivered = false;
            }
            requests
        });
        let replay = Delivery {
            id: DeliveryId::generate(),
            webhook_id: original.webhook_id,
            event_id: original.event_id,
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
        };
        self.store.update_delivery(&replay, None)?;
        self.store.commit().await?;
        self.wake.notify_one();
        Ok(replay)
    }
}
