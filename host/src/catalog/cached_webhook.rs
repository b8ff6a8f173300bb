//! A webhook as the flow reads it from the catalog's in-memory copy: the stored definition
//! with what is compiled from it once, when it is saved or read at start, so a delivery
//! never pays for checking it again (a tenant's schedule could otherwise cost every
//! delivery, on the async threads, as much as saving it did).

use std::ops::Deref;

use crate::model::{CheckedSchedule, Webhook};

/// A stored webhook and its compiled schedule.
#[derive(Debug)]
pub struct CachedWebhook {
    /// The definition as stored.
    webhook: Webhook,
    /// Its schedule, checked and compiled; `None` without one, or when a stored schedule no
    /// longer passes the check (the webhook then sends at any time, and the start says so).
    schedule: Option<CheckedSchedule>,
}

impl CachedWebhook {
    /// Compiles `webhook`'s schedule.
    pub fn new(webhook: Webhook) -> CachedWebhook {
        let schedule = webhook
            .schedule
            .as_ref()
            .and_then(|schedule| match schedule.check() {
                Ok(checked) => Some(checked),
                Err((field, message)) => {
                    tracing::warn!(
                        webhook = %webhook.id,
                        "{field}: {message}; the webhook sends at any time until its schedule is changed"
                    );
                    None
                }
            });
        CachedWebhook { webhook, schedule }
    }

    /// The definition as stored.
    pub fn webhook(&self) -> &Webhook {
        &self.webhook
    }

    /// The compiled schedule: `None` when the webhook may send at any time.
    pub fn checked_schedule(&self) -> Option<&CheckedSchedule> {
        self.schedule.as_ref()
    }
}

/// Reads as the stored webhook, so the flow's code reads its fields directly.
impl Deref for CachedWebhook {
    type Target = Webhook;

    fn deref(&self) -> &Webhook {
        &self.webhook
    }
}
