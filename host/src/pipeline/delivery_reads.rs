//! Reading what happened: one event, one delivery, and delivery lists with their filters.

use super::listing::{ListQuery, Page, SortValue};
use super::{Error, Pipeline};
use crate::model::{Delivery, DeliveryId, DeliveryStatus, Event, EventId, Millis, WebhookId};

/// Filters for listing deliveries.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    /// Only this webhook's.
    pub webhook_id: Option<WebhookId>,
    /// Only this event's.
    pub event_id: Option<EventId>,
    /// Only in this status.
    pub status: Option<DeliveryStatus>,
    /// Only created at or after this time.
    pub created_after: Option<Millis>,
    /// Only created before this time.
    pub created_before: Option<Millis>,
    /// Only of webhooks of this tenant (tenant-bound keys).
    pub tenant: Option<String>,
}

impl DeliveryFilter {
    /// Whether `d` passes.
    pub fn keeps(&self, d: &Delivery) -> bool {
        self.webhook_id.as_ref().is_none_or(|w| &d.webhook_id == w)
            && self.event_id.as_ref().is_none_or(|e| &d.event_id == e)
            && self.status.is_none_or(|s| d.status == s)
            && self.created_after.is_none_or(|t| d.created_at >= t)
            && self.created_before.is_none_or(|t| d.created_at < t)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| d.tenant.as_ref() == Some(t))
    }
}

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
        let filter = DeliveryFilter {
            webhook_id: query.take_parsed("webhook_id", |t| {
                WebhookId::parse(t).map_err(|e| e.to_string())
            })?,
            event_id: query.take_parsed("event_id", EventId::parse)?,
            status: query.take_parsed("status", DeliveryStatus::parse)?,
            created_after: query.take_parsed("created_after", Millis::parse)?,
            created_before: query.take_parsed("created_before", Millis::parse)?,
            tenant: tenant.map(str::to_string),
        };
        query.finish()?;
        // Ids sort by creation time, so creation order is id order: the tree is walked in that
        // order and stops at a full page (plus one, to know whether there is a next page).
        let limit = query.limit;
        let position = |d: &Delivery| SortValue::Text(d.id.to_string());
        let walked_query = query.clone();
        let scanned = self
            .walk_deliveries(
                tenant,
                query.descending,
                move |d: &Delivery| {
                    filter.keeps(d) && walked_query.is_after_cursor(&position(d), d.id.as_str())
                },
                limit + 1,
            )
            .await?;
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
