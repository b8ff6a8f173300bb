//! Signing deliveries (Standard Webhooks) and rotating a webhook's secret.
//!
//! Which secret signs: a connection's `signing_secret`, when the webhook goes through a
//! connection that has one (one secret per receiving system); otherwise the webhook's own,
//! made when it was created. After a rotation the previous secret also signs until
//! `delivery.signature_overlap` has passed, so the `webhook-signature` header carries both.

use serde::{Deserialize, Serialize};

use super::{Error, Pipeline};
use crate::model::{Connection, Millis, Secret, SigningKeys, Webhook};
use crate::signature::{signature_header, SigningSecret};

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The new secret (`whsec_…`); the host generates one when absent.
    #[serde(default)]
    pub secret: Option<Secret>,
}

/// What a rotation did.
#[derive(Debug, Serialize)]
pub struct Rotated {
    /// The new secret, only when the host generated it: shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// Until when the previous secret keeps signing too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Millis>,
}

impl Pipeline {
    /// Makes a new signing secret current for a webhook; the old one keeps signing for the
    /// configured overlap.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Invalid`] for a bad secret, or a storage error.
    pub fn rotate_signing_secret(&self, id: &str, input: RotateInput) -> Result<Rotated, Error> {
        let webhook = self.webhook(id)?;
        if let Some(secret) = &input.secret {
            super::connections::check_signing_secret(secret)?;
        }
        let _writing = self.webhook_writes.lock().unwrap();
        let generated = input
            .secret
            .is_none()
            .then(|| SigningSecret::generate().to_text());
        let current = input
            .secret
            .unwrap_or_else(|| Secret::new(generated.clone().expect("generated")));
        let previous = self.store.signing_keys(&webhook.id)?.map(|k| k.current);
        let overlap = self.config.delivery.signature_overlap.as_millis() as i64;
        let previous_until = previous
            .as_ref()
            .map(|_| Millis(self.now().as_i64() + overlap));
        self.store.put_signing_keys(
            &webhook.id,
            &SigningKeys {
                current,
                previous,
                previous_until,
            },
        )?;
        Ok(Rotated {
            signing_secret: generated,
            previous_valid_until: previous_until,
        })
    }

    /// The `webhook-signature` header for one attempt, or `None` when nothing signs for this
    /// webhook (one created before signing existed, until its secret is rotated).
    pub(super) fn signature(
        &self,
        webhook: &Webhook,
        connection: Option<&Connection>,
        message_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Option<String> {
        let parse = |secret: &Secret| match SigningSecret::parse(secret.expose()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(webhook = %webhook.id, "stored signing secret unusable: {e}");
                None
            }
        };
        let mut secrets = Vec::new();
        if let Some(secret) = connection.and_then(|c| c.signing_secret.as_ref()) {
            secrets.extend(parse(secret));
        } else {
            let keys = match self.store.signing_keys(&webhook.id) {
                Ok(keys) => keys?,
                Err(e) => {
                    tracing::error!(webhook = %webhook.id, "reading signing secrets: {e}");
                    return None;
                }
            };
            secrets.extend(parse(&keys.current));
            let now = self.now();
            if let (Some(previous), Some(until)) = (&keys.previous, keys.previous_until) {
                if now < until {
                    secrets.extend(parse(previous));
                }
            }
        }
        if secrets.is_empty() {
            return None;
        }
        let refs: Vec<&SigningSecret> = secrets.iter().collect();
        Some(signature_header(&refs, message_id, timestamp, body))
    }
}
