//! Reading what happened: one event, one delivery, and delivery lists with their filters.

use super::listing::{ListQuery, Page, SortValue};
use super::{Error, Pipeline};
use crate::model::{Delivery, DeliveryId, DeliveryStatus, Event, EventId, Millis, WebhookId};
use crate::storage::{DeliveryQuery, Tenancy};

impl Pipeline {
    /// One event of `tenant` (event ids are unique per tenant; `None`: an event without a
    /// tenant).
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn event(&self, tenant: Option<&str>, id: &EventId) -> Result<Event, Error> {
        self.store
            .event(tenant, id)?
            .ok_or_else(|| Error::NotFound {
                kind: "event",
                id: id.to_string(),
            })
    }

    /// One delivery.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a storage error.
    pub fn delivery(&self, id: &DeliveryId) -> Result<Delivery, Error> {
        self.store.delivery(id)?.ok_or_else(|| Error::NotFound {
            kind: "delivery",
            id: id.to_string(),
        })
    }

    /// Deliveries matching the query's filters (`webhook_id`, `event_id`, `status`,
    /// `created_after`, `created_before` as RFC 3339), ordered by `created_at` (newest first
    /// by default). `tenant` restricts to one tenant's webhooks (tenant-bound keys).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad parameter, or a storage error.
    pub async fn list_deliveries(
        &self,
        mut query: ListQuery,
        tenant: Option<&str>,
    ) -> Result<Page<Delivery>, Error> {
        let parsed = DeliveryQuery {
            webhook: query.take_parsed("webhook_id", |t| {
                WebhookId::parse(t).map_err(|e| e.to_string())
            })?,
            event: query.take_parsed("event_id", EventId::parse)?,
            statuses: query
                .take_parsed("status", DeliveryStatus::parse)?
                .into_iter()
                .collect(),
            created_from: query.take_parsed("created_after", Millis::parse)?,
            created_before: query.take_parsed("created_before", Millis::parse)?,
            tenant: match tenant {
                Some(tenant) => Tenancy::Only(Some(tenant.to_string())),
                None => Tenancy::Any,
            },
            replays: None,
            // Ids sort by creation time, so creation order is id order: the walk goes on
            // after the cursor and stops at a full page (plus one, to know whether there is a
            // next page).
            after: query
                .cursor_id()
                .map(DeliveryId::parse)
                .transpose()
                .map_err(|_| Error::invalid("cursor", "not a cursor of this list"))?,
            descending: query.descending,
            limit: query.limit + 1,
        };
        query.finish()?;
        let limit = query.limit;
        let position = |d: &Delivery| SortValue::Text(d.id.to_string());
        let [scanned] = self.walk_deliveries(tenant, [parsed]).await?;
        let mut data = scanned.deliveries;
        let more = data.len() > limit;
        data.truncate(limit);
        let next_cursor = more
            .then(|| data.last())
            .flatten()
            .map(|d| query.cursor_for(&position(d), d.id.as_str()));
        Ok(Page {
            data,
            next_cursor,
            unreadable: scanned.unreadable,
        })
    }
}
