//! What a round or an evaluation leads to beyond the delivery: its webhook's failure streak,
//! its streak of limit hits, auto-disable (`webhook.disabled`), and the `webhook.response`
//! follow-up event.

use super::outcome::{self, Round, WebhookChange};
use super::Pipeline;
use crate::model::{Delivery, EventId, LogLine, Webhook, WebhookId};
use crate::runtime::PluginError;
use crate::storage::StorageError;

impl Pipeline {
    /// What a round means for its webhook: a success ends a failure streak; the first
    /// failure starts one; 410 Gone, or a delivery dying after failing for longer than
    /// `auto_disable_after`, disables the webhook and emits `webhook.disabled`.
    pub(super) async fn after_round(&self, webhook: &Webhook, delivery: &Delivery, round: &Round) {
        let limit = self.config.delivery.auto_disable_after;
        let change = outcome::after_round(webhook, delivery, round, limit, self.now());
        // The common case changes nothing: skip the webhook lock and copy.
        if !change.is_none() {
            self.change_webhook(&webhook.id, change).await;
        }
    }

    /// After an evaluation that hit a sandbox limit, the `streak`-th in a row: disables the
    /// webhook when the streak reaches `disable_after_limit_hits`.
    pub(super) async fn after_limit_hit(
        &self,
        webhook: &Webhook,
        streak: u32,
        error: &PluginError,
    ) {
        let disable_after = self.config.plugin.fair_share.disable_after_limit_hits;
        let Some(reason) = outcome::limit_streak(streak, disable_after, error) else {
            return;
        };
        let change = WebhookChange {
            failing_since: None,
            disable: Some(reason),
        };
        self.change_webhook(&webhook.id, change).await;
        // Enabled again, it starts afresh. Only once it is disabled: a delivery waiting for
        // a turn then finds it disabled instead of evaluating once more.
        self.fair.forgive(&webhook.id);
    }

    /// Writes a change the host makes to a webhook; one that disables it emits
    /// `webhook.disabled` (once, however many deliveries decided it at the same time).
    async fn change_webhook(&self, id: &WebhookId, change: WebhookChange) {
        let mut disabled_now = false;
        let result = self.catalog.change_webhook(id, |w| {
            // Made again on what another writer saved, should one have come in between.
            disabled_now = false;
            if let Some(failing_since) = change.failing_since {
                w.failing_since = failing_since;
            }
            if let Some(reason) = &change.disable {
                if w.enabled {
                    w.enabled = false;
                    w.disabled_reason = Some(reason.clone());
                    disabled_now = true;
                }
            }
        });
        match result {
            Ok(Some(changed)) if disabled_now => {
                let reason = changed.disabled_reason.clone().unwrap_or_default();
                tracing::warn!(webhook = %changed.id, "disabled: {reason}");
                self.emit_webhook_disabled(&changed, &reason).await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(webhook = %id, "changing the webhook: {e}"),
        }
    }

    /// Emits `webhook.response` for a delivered delivery with a value, when its webhook
    /// asks for it. Attributes `webhook_id`, `delivery_id` and `depth` (how many follow-ups
    /// led here); a chain stops at [`MAX_RESPONSE_DEPTH`] with a log line.
    pub(super) async fn emit_response_event(
        &self,
        webhook: &Webhook,
        delivery: &mut Delivery,
    ) -> Result<(), StorageError> {
        let emit = webhook
            .response_value
            .as_ref()
            .is_some_and(|r| r.emit_event);
        let Some(value) = delivery.extracted_value.clone().filter(|_| emit) else {
            return Ok(());
        };
        let cause = self
            .store
            .event(delivery.events_tenant(), &delivery.event_id)?;
        let depth = cause
            .as_ref()
            .filter(|e| e.kind == RESPONSE_EVENT)
            .and_then(|e| {
                e.attributes
                    .iter()
                    .find(|(k, _)| k == "depth")
                    .map(|(_, v)| v.as_str())
            })
            .and_then(|d| d.parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        if depth > MAX_RESPONSE_DEPTH {
            delivery.logs.push(LogLine {
                level: crate::model::LogLevel::Warn,
                message: format!(
                    "{RESPONSE_EVENT} not emitted: {MAX_RESPONSE_DEPTH} follow-ups in a row \
                     (a loop of webhooks answering each other?)"
                ),
            });
            return Ok(());
        }
        let payload = serde_json::json!({
            "webhook_id": webhook.id,
            "webhook_name": webhook.name,
            "delivery_id": delivery.id,
            "event_id": delivery.event_id,
            "event_kind": cause.as_ref().map(|e| e.kind.as_str()),
            "value": value,
        });
        let id = EventId::parse(&format!("evt_response_{}", delivery.id))
            .expect("delivery ids make valid event ids");
        let attributes = [
            ("webhook_id", webhook.id.to_string()),
            ("delivery_id", delivery.id.to_string()),
            ("depth", depth.to_string()),
        ];
        let input = super::EventInput {
            id: Some(id.to_string()),
            kind: RESPONSE_EVENT.into(),
            tenant: webhook.tenant.clone(),
            occurred_at: None,
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect(),
            payload: serde_json::value::to_raw_value(&payload).expect("payload serialises"),
        };
        match self
            .emit_from(vec![input], super::ingest::Origin::Host)
            .await
        {
            Ok(_) => Ok(()),
            Err(super::Error::Store(e)) => Err(e),
            Err(e) => {
                // A value too large for an event, say: the delivery keeps it; say why.
                delivery.logs.push(LogLine {
                    level: crate::model::LogLevel::Warn,
                    message: format!("{RESPONSE_EVENT} not emitted: {e}"),
                });
                Ok(())
            }
        }
    }

    /// Emits `webhook.disabled` (attribute `webhook_id`; payload id, name, reason) so host
    /// applications and other webhooks can react.
    pub(super) async fn emit_webhook_disabled(&self, webhook: &Webhook, reason: &str) {
        let payload = serde_json::json!({
            "webhook_id": webhook.id,
            "name": webhook.name,
            "reason": reason,
        });
        let input = super::EventInput {
            id: None,
            kind: "webhook.disabled".into(),
            tenant: webhook.tenant.clone(),
            occurred_at: None,
            attributes: [("webhook_id".to_string(), webhook.id.to_string().into())]
                .into_iter()
                .collect(),
            payload: serde_json::value::to_raw_value(&payload).expect("payload serialises"),
        };
        if let Err(e) = self
            .emit_from(vec![input], super::ingest::Origin::Host)
            .await
        {
            tracing::error!(webhook = %webhook.id, "emitting webhook.disabled: {e}");
        }
    }
}

/// The kind of the follow-up event carrying a response value.
pub const RESPONSE_EVENT: &str = "webhook.response";
/// Most `webhook.response` events in a row, each caused by the one before.
pub const MAX_RESPONSE_DEPTH: u32 = 8;
