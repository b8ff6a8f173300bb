//! Webhooks: create, change, delete, look up and list (the pipeline's in-memory copy is
//! read for routing; the store is the truth).

use std::sync::Arc;

use super::listing::{contains, ListQuery, Listed, Page, SortValue};
use super::webhook_input::WebhookInput;
use super::{CachedWebhook, Catalog, Error, Principal};
use crate::model::SigningKeys;
use crate::model::{kind_matches, Webhook, WebhookId};

impl Listed for Webhook {
    fn list_id(&self) -> &str {
        self.id.as_str()
    }

    fn sort_value(&self, field: &str) -> SortValue {
        match field {
            "name" => SortValue::Text(self.name.to_lowercase()),
            "updated_at" => SortValue::Int(self.updated_at.as_i64()),
            _ => SortValue::Int(self.created_at.as_i64()),
        }
    }
}

/// How often a change the host makes to a webhook (a failure streak) is made again when
/// another writer changed the webhook in between.
const HOST_CHANGE_TRIES: usize = 5;

impl Catalog {
    /// Creates a webhook after checking every field.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first bad or missing field, [`Error::NotFound`] for an
    /// unknown module or connection, or a storage error. Nothing is stored on error.
    pub fn create_webhook(&self, input: WebhookInput) -> Result<Webhook, Error> {
        self.create_webhook_signed(input)
            .map(|(webhook, _)| webhook)
    }

    /// Creates a webhook and its signing secret: the one given (checked), or a new one of
    /// the requested scheme; returns what to tell the caller about it (a generated symmetric
    /// secret, shown once, or a key pair's public key).
    ///
    /// # Errors
    /// As [`Catalog::create_webhook`], and [`Error::Invalid`] for a bad `signing_secret`.
    pub fn create_webhook_signed(
        &self,
        mut input: WebhookInput,
    ) -> Result<(Webhook, super::signing::Issued), Error> {
        self.store.admit()?;
        let given = input.signing_secret.take();
        let scheme = input.signature_scheme.take();
        let (current, issued) = super::signing::issue(given, scheme, "signing_secret")?;
        let webhook = self.merge_webhook(None, input)?;
        self.put_signing_keys(
            &webhook.id,
            &SigningKeys {
                current,
                previous: None,
                previous_until: None,
            },
        )?;
        Ok((self.save_webhook(webhook)?, issued))
    }

    /// Changes the fields given in `input`; the result is checked like a new webhook. Takes
    /// effect on the next evaluation (module and config included), no restart.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown webhook, module or connection, [`Error::Invalid`]
    /// naming the first bad field, or a storage error. Nothing changes on error.
    pub fn update_webhook(&self, id: &WebhookId, input: WebhookInput) -> Result<Webhook, Error> {
        self.update_webhook_signed(id, input, &Principal::admin())
            .map(|(webhook, _)| webhook)
    }

    /// [`Catalog::update_webhook`], telling what to show of the new signing secret when the
    /// change moved the webhook to another tenant. A move starts the webhook afresh for its
    /// new tenant: its plugin state is cleared (it was made from the old tenant's events) and
    /// it gets a new signing secret of the same scheme, with no overlap (the old tenant knew
    /// the old one).
    ///
    /// # Errors
    /// As [`Catalog::update_webhook`].
    pub fn update_webhook_signed(
        &self,
        id: &WebhookId,
        input: WebhookInput,
        who: &Principal,
    ) -> Result<(Webhook, Option<super::signing::Issued>), Error> {
        if input.signature_scheme.is_some() {
            return Err(Error::invalid(
                "signature_scheme",
                "is chosen when the webhook is created, or with POST /v1/webhooks/{id}/rotate-secret",
            ));
        }
        if input.signing_secret.is_some() {
            return Err(Error::invalid(
                "signing_secret",
                "is set when the webhook is created, or changed with POST /v1/webhooks/{id}/rotate-secret (which keeps the old one valid for a while)",
            ));
        }
        let _moves = self.tenant_moves.write().unwrap();
        let _writing = self.webhook_writes.lock().unwrap();
        // As stored, not as kept in memory: another host may have changed it. Checked
        // against the caller here, under the lock: a webhook moved to another tenant since
        // the caller looked is not the caller's to change.
        let existing = self.webhook_stored(id, who)?;
        let webhook = self.merge_webhook(Some(&existing), input)?;
        if webhook.tenant == existing.tenant {
            return Ok((self.save_webhook(webhook)?, None));
        }
        let issued = self.renew_for_new_tenant(&webhook)?;
        Ok((self.save_webhook(webhook)?, Some(issued)))
    }

    /// Before `webhook` is saved under its new tenant: clears its plugin state and gives it a
    /// new signing secret of the scheme it had, the old one ending at once.
    fn renew_for_new_tenant(&self, webhook: &Webhook) -> Result<super::signing::Issued, Error> {
        self.store.state_clear(&webhook.id)?;
        let asymmetric = self
            .store
            .signing_keys(&webhook.id)?
            .is_some_and(|keys| keys.current.expose().starts_with("whsk_"));
        let scheme = asymmetric.then_some(super::signing::Scheme::Asymmetric);
        let (current, issued) = super::signing::issue(None, scheme, "signing_secret")?;
        self.put_signing_keys(
            &webhook.id,
            &SigningKeys {
                current,
                previous: None,
                previous_until: None,
            },
        )?;
        Ok(issued)
    }

    /// Holds off every move of a webhook to another tenant while the plugin state of an
    /// evaluation made for `webhook` (as it was when the evaluation began) is written with
    /// its delivery: state is never carried from one tenant's events to another's. `None`
    /// when the webhook was deleted or has moved since, and the state is to be dropped.
    pub fn state_keeping(&self, webhook: &Webhook) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        let unmoved = self.tenant_moves.read().unwrap();
        let current = self.webhook_cached(&webhook.id)?;
        (current.tenant == webhook.tenant).then_some(unmoved)
    }

    /// Pauses a webhook: it takes no more events and sends nothing. Allowed whatever else
    /// holds it back (a connection withdrawn from its tenant), since pausing sends nothing.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn pause_webhook(&self, id: &WebhookId) -> Result<Webhook, Error> {
        self.pause_webhook_as(id, &Principal::admin())
    }

    /// [`Catalog::pause_webhook`] for `who`: only a webhook of a tenant it sees, as stored
    /// when the pause is written.
    ///
    /// # Errors
    /// As [`Catalog::pause_webhook`].
    pub fn pause_webhook_as(&self, id: &WebhookId, who: &Principal) -> Result<Webhook, Error> {
        match self.change_webhook_seen_by(id, who, |w| w.enabled = false)? {
            Some(paused) => Ok(paused),
            // Paused already, or not the caller's (not found).
            None => self.webhook_seen_by(id, who),
        }
    }

    /// Deletes a webhook. Its pending deliveries end as failed ("the webhook was deleted");
    /// its history stays readable.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn delete_webhook(&self, id: &WebhookId) -> Result<Webhook, Error> {
        self.delete_webhook_as(id, &Principal::admin())
    }

    /// [`Catalog::delete_webhook`] for `who`: only a webhook of a tenant it sees, as stored
    /// when the delete runs.
    ///
    /// # Errors
    /// As [`Catalog::delete_webhook`].
    pub fn delete_webhook_as(&self, id: &WebhookId, who: &Principal) -> Result<Webhook, Error> {
        let _writing = self.webhook_writes.lock().unwrap();
        let existing = self.webhook_stored(id, who)?;
        self.store.delete_webhook(&existing.id)?;
        self.signers.write().unwrap().remove(&existing.id);
        self.webhooks.write().unwrap().remove(&existing.id);
        self.changed();
        Ok(existing)
    }

    /// Changes a stored webhook from inside the host (failure streaks, auto-disable), under
    /// the same lock as API updates so neither overwrites the other. Returns the new webhook,
    /// or `None` when it no longer exists or `change` left it as it was.
    pub fn change_webhook(
        &self,
        id: &WebhookId,
        change: impl FnMut(&mut Webhook),
    ) -> Result<Option<Webhook>, Error> {
        self.change_webhook_seen_by(id, &Principal::admin(), change)
    }

    /// [`Catalog::change_webhook`] of a webhook `who` sees as stored (`None` otherwise).
    fn change_webhook_seen_by(
        &self,
        id: &WebhookId,
        who: &Principal,
        mut change: impl FnMut(&mut Webhook),
    ) -> Result<Option<Webhook>, Error> {
        let _writing = self.webhook_writes.lock().unwrap();
        // Read as stored and written over that version: when another host changed it in
        // between, the change is made again on what it wrote.
        for _ in 0..HOST_CHANGE_TRIES {
            let stored = self.store.webhook(id)?;
            let Some(current) = stored.filter(|w| who.sees(w.tenant.as_deref())) else {
                return Ok(None);
            };
            let mut changed = current.clone();
            change(&mut changed);
            if changed == current {
                return Ok(None);
            }
            changed.updated_at = self.now();
            match self.save_webhook(changed) {
                Err(Error::Conflict(_)) => continue,
                saved => return saved.map(Some),
            }
        }
        Err(Error::Conflict(format!(
            "webhook {id} kept changing while the host changed it"
        )))
    }

    /// Writes `webhook` over the version it was read at, and keeps it in memory.
    fn save_webhook(&self, mut webhook: Webhook) -> Result<Webhook, Error> {
        self.store
            .put_webhook(&mut webhook)
            .map_err(|e| match e.conflict() {
                Some(_) => Error::Conflict(format!(
                    "webhook {} was changed by another writer since it was read; read it again \
                     and make the change on what it is now",
                    webhook.id
                )),
                None => e.into(),
            })?;
        self.keep_webhook(webhook.clone());
        self.changed();
        Ok(webhook)
    }

    /// Keeps `webhook` in memory, unless a later version is kept already.
    pub(super) fn keep_webhook(&self, webhook: Webhook) {
        let mut webhooks = self.webhooks.write().unwrap();
        if webhooks
            .get(&webhook.id)
            .is_some_and(|kept| kept.version > webhook.version)
        {
            return;
        }
        self.signers.write().unwrap().remove(&webhook.id);
        webhooks.insert(webhook.id.clone(), Arc::new(CachedWebhook::new(webhook)));
    }

    /// A webhook as stored now (not as kept in memory, which follows another host's changes
    /// a moment later), if `who` sees its tenant: what an action on it checks.
    ///
    /// # Errors
    /// [`Error::NotFound`] (also for another tenant's) or a storage error.
    pub fn webhook_seen_by(&self, id: &WebhookId, who: &Principal) -> Result<Webhook, Error> {
        self.webhook_stored(id, who)
    }

    /// [`Catalog::webhook_seen_by`].
    fn webhook_stored(&self, id: &WebhookId, who: &Principal) -> Result<Webhook, Error> {
        self.store
            .webhook(id)?
            .filter(|w| who.sees(w.tenant.as_deref()))
            .ok_or_else(|| Error::NotFound {
                kind: "webhook",
                id: id.to_string(),
            })
    }

    /// One webhook.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn webhook(&self, id: &WebhookId) -> Result<Webhook, Error> {
        self.webhook_cached(id)
            .map(|w| w.webhook().clone())
            .ok_or_else(|| Error::NotFound {
                kind: "webhook",
                id: id.to_string(),
            })
    }

    /// Every webhook, oldest first.
    pub fn webhooks(&self) -> Vec<Webhook> {
        let mut all: Vec<Webhook> = self
            .webhooks
            .read()
            .unwrap()
            .values()
            .map(|w| w.webhook().clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Webhooks matching the query's filters (`name`, `name_contains`,
    /// `description_contains`, `enabled`, `tenant`, `module_id`, `connection_id`,
    /// `event_kind`: takes this kind), ordered by `created_at`, `updated_at` or `name`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter.
    pub fn list_webhooks(&self, mut query: ListQuery) -> Result<Page<Webhook>, Error> {
        let name = query.take("name");
        let name_contains = query.take("name_contains");
        let description_contains = query.take("description_contains");
        let enabled = query.take_bool("enabled")?;
        let tenant = query.take("tenant");
        let module_id = query.take("module_id");
        let connection_id = query.take("connection_id");
        let event_kind = query.take("event_kind");
        query.finish()?;
        let items = self
            .webhooks()
            .into_iter()
            .filter(|w| {
                name.as_ref().is_none_or(|n| &w.name == n)
                    && name_contains.as_ref().is_none_or(|n| contains(&w.name, n))
                    && description_contains
                        .as_ref()
                        .is_none_or(|n| w.description.as_ref().is_some_and(|d| contains(d, n)))
                    && enabled.is_none_or(|e| w.enabled == e)
                    && tenant.as_ref().is_none_or(|t| w.tenant.as_ref() == Some(t))
                    && module_id.as_ref().is_none_or(|m| w.module_id.as_str() == m)
                    && connection_id
                        .as_ref()
                        .is_none_or(|c| w.connection_id.as_ref().is_some_and(|id| id.as_str() == c))
                    && event_kind
                        .as_ref()
                        .is_none_or(|k| w.event_kinds.iter().any(|p| kind_matches(p, k)))
            })
            .collect();
        Ok(query.page(items))
    }
}
