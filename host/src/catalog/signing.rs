//! Signing deliveries (Standard Webhooks) and rotating a webhook's secret.
//!
//! Which secret signs: a connection's `signing_secret`, when the webhook goes through a
//! connection that has one (one secret per receiving system); otherwise the webhook's own,
//! made when it was created. After a rotation the previous secret also signs until
//! `delivery.signature_overlap` has passed, so the `webhook-signature` header carries both.
//!
//! A secret is symmetric (`whsec_`, `v1` signatures) or an Ed25519 private key (`whsk_`,
//! `v1a`); for the latter receivers get only the public key (`whpk_`), shown on the webhook.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Catalog, Error, Principal};
use crate::model::{Connection, Millis, Secret, SigningKeys, Webhook, WebhookId};
use crate::signature::{signature_header, Signer};

/// A webhook's parsed signers: the current one, and the previous one with the end of its
/// overlap. Empty for a webhook without keys.
#[derive(Default)]
pub(super) struct CachedSigners {
    current: Option<Signer>,
    previous: Option<(Signer, Millis)>,
}

fn parse_signer(webhook: &Webhook, secret: &Secret) -> Option<Signer> {
    match Signer::parse(secret.expose()) {
        Ok(signer) => Some(signer),
        Err(e) => {
            tracing::error!(webhook = %webhook.id, "stored signing secret unusable: {e}");
            None
        }
    }
}

/// Which signature scheme a generated secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum Scheme {
    /// HMAC-SHA256 with a shared `whsec_` secret.
    #[default]
    #[serde(rename = "v1")]
    Symmetric,
    /// Ed25519: the host keeps `whsk_`, receivers verify with `whpk_`.
    #[serde(rename = "v1a")]
    Asymmetric,
}

/// What a receiver is told about a new signing secret: a generated symmetric secret (shown
/// this once), or the public key of a key pair.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Issued {
    /// A generated `whsec_…` secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// The `whpk_…` public key of a `whsk_…` key pair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_public_key: Option<String>,
}

/// The secret to use: the given one (checked), or a new one of `scheme`; with what to tell.
///
/// # Errors
/// [`Error::Invalid`] on `field` for a bad secret.
pub(super) fn issue(
    given: Option<Secret>,
    scheme: Option<Scheme>,
    field: &str,
) -> Result<(Secret, Issued), Error> {
    let signer = match (&given, scheme) {
        (Some(secret), None) => {
            Signer::parse(secret.expose()).map_err(|e| Error::invalid(field, e.to_string()))?
        }
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                field,
                "give a secret or a scheme to generate one, not both",
            ))
        }
        (None, scheme) => Signer::generate(scheme == Some(Scheme::Asymmetric)),
    };
    let issued = Issued {
        signing_secret: match (&given, &signer) {
            (None, Signer::Secret(s)) => Some(s.to_text()),
            _ => None,
        },
        signing_public_key: signer.public_key().map(|k| k.to_text()),
    };
    Ok((
        given.unwrap_or_else(|| Secret::new(signer.to_text())),
        issued,
    ))
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The new secret (`whsec_…` or `whsk_…`); the host generates one when absent.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// The scheme of a generated secret: `v1` (HMAC) or `v1a` (Ed25519). Default: the
    /// current secret's.
    #[serde(default)]
    pub scheme: Option<Scheme>,
}

/// What a rotation did.
#[derive(Debug, Serialize)]
pub struct Rotated {
    /// A generated symmetric secret (shown this once), or the new key pair's public key.
    #[serde(flatten)]
    pub issued: Issued,
    /// Until when the previous secret keeps signing too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Millis>,
}

impl Catalog {
    /// Makes a new signing secret current for a webhook; the old one keeps signing for the
    /// configured overlap.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Invalid`] for a bad secret, or a storage error.
    pub fn rotate_signing_secret(
        &self,
        id: &WebhookId,
        input: RotateInput,
    ) -> Result<Rotated, Error> {
        self.rotate_signing_secret_as(id, input, &Principal::admin())
    }

    /// [`Catalog::rotate_signing_secret`] for `who`: only a webhook of a tenant it sees, as
    /// stored, and no move to another tenant runs meanwhile on this host (a move gives the
    /// webhook a new secret the old tenant never sees).
    ///
    /// # Errors
    /// As [`Catalog::rotate_signing_secret`].
    pub fn rotate_signing_secret_as(
        &self,
        id: &WebhookId,
        input: RotateInput,
        who: &Principal,
    ) -> Result<Rotated, Error> {
        let _unmoved = self.tenant_moves.read().unwrap();
        let _writing = self.webhook_writes.lock().unwrap();
        let webhook = self.webhook_seen_by(id, who)?;
        let existing = self.store.signing_keys(&webhook.id)?;
        let scheme = match (&input.secret, input.scheme, &existing) {
            (None, None, Some(keys)) if keys.current.expose().starts_with("whsk_") => {
                Some(Scheme::Asymmetric)
            }
            (_, scheme, _) => scheme,
        };
        let (current, issued) = issue(input.secret, scheme, "secret")?;
        let previous = existing.map(|k| k.current);
        let overlap = self.config.delivery.signature_overlap;
        let previous_until = previous
            .as_ref()
            .map(|_| self.now().saturating_add(overlap));
        self.put_signing_keys(
            &webhook.id,
            &SigningKeys {
                current,
                previous,
                previous_until,
            },
        )?;
        Ok(Rotated {
            issued,
            previous_valid_until: previous_until,
        })
    }

    /// The public keys receivers may verify a webhook's `v1a` signatures with now (current
    /// first, then the previous one during a rotation's overlap). Empty for `v1` secrets.
    ///
    /// # Errors
    /// On storage failure.
    pub fn signing_public_keys(&self, webhook: &Webhook) -> Result<Vec<String>, Error> {
        let Some(keys) = self.store.signing_keys(&webhook.id)? else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let previous = keys
            .previous
            .filter(|_| keys.previous_until.is_some_and(|until| now < until));
        Ok([Some(keys.current), previous]
            .into_iter()
            .flatten()
            .filter_map(|s| Signer::parse(s.expose()).ok()?.public_key())
            .map(|k| k.to_text())
            .collect())
    }

    /// The `webhook-signature` header for one attempt, or `None` when nothing signs for this
    /// webhook (one created before signing existed, until its secret is rotated).
    pub fn signature(
        &self,
        webhook: &Webhook,
        connection: Option<&Connection>,
        message_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Option<String> {
        if let Some(secret) = connection.and_then(|c| c.signing_secret.as_ref()) {
            let signer = parse_signer(webhook, secret)?;
            return Some(signature_header(&[&signer], message_id, timestamp, body));
        }
        let signers = self.webhook_signers(webhook)?;
        let now = self.now();
        let mut refs: Vec<&Signer> = signers.current.iter().collect();
        if let Some((previous, until)) = &signers.previous {
            if now < *until {
                refs.push(previous);
            }
        }
        if refs.is_empty() {
            return None;
        }
        Some(signature_header(&refs, message_id, timestamp, body))
    }

    /// A webhook's signers, read from the store (and unsealed and parsed) once and kept
    /// until its keys change (`Catalog::put_signing_keys`).
    fn webhook_signers(&self, webhook: &Webhook) -> Option<Arc<CachedSigners>> {
        if let Some(signers) = self.signers.read().unwrap().get(&webhook.id) {
            return Some(signers.clone());
        }
        // Filled under the write lock: a rotation's store write then removal cannot fall
        // between this read of the store and the insertion of what it read.
        let mut cache = self.signers.write().unwrap();
        if let Some(signers) = cache.get(&webhook.id) {
            return Some(signers.clone());
        }
        let keys = match self.store.signing_keys(&webhook.id) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::error!(webhook = %webhook.id, "reading signing secrets: {e}");
                return None;
            }
        };
        let signers = Arc::new(match keys {
            None => CachedSigners::default(),
            Some(keys) => CachedSigners {
                current: parse_signer(webhook, &keys.current),
                previous: keys
                    .previous
                    .zip(keys.previous_until)
                    .and_then(|(previous, until)| Some((parse_signer(webhook, &previous)?, until))),
            },
        });
        cache.insert(webhook.id.clone(), signers.clone());
        Some(signers)
    }

    /// Stores a webhook's signing keys and drops the signers kept for it.
    ///
    /// # Errors
    /// On storage failure.
    pub(super) fn put_signing_keys(
        &self,
        id: &WebhookId,
        keys: &SigningKeys,
    ) -> Result<(), crate::storage::StorageError> {
        self.store.put_signing_keys(id, keys)?;
        self.signers.write().unwrap().remove(id);
        Ok(())
    }
}
