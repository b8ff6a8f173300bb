//! Whether a stored request may go out now, judged on its webhook and connection as they are
//! at that moment (not as they were when the round began or the request was built): this is
//! the last check before a connection's credentials, headers and signing secret are added.

use std::sync::Arc;

use super::Pipeline;
use crate::catalog::CachedWebhook;
use crate::model::{Connection, Delivery, OutboundRequest};

/// What may happen to one stored request now.
pub(super) enum Gate {
    /// Send it, through this webhook and its connection as they are now.
    Open {
        /// The webhook now.
        webhook: Arc<CachedWebhook>,
        /// Its connection now, which its tenant may use.
        connection: Option<Arc<Connection>>,
    },
    /// Not now: the webhook is gone, paused, moved to another tenant or its connection
    /// withdrawn. The delivery waits, and the worker looks at it again.
    Held,
    /// Never as stored: it was built for another connection than the webhook's now (a
    /// replay builds it anew).
    Stale(String),
}

impl Pipeline {
    /// Judges `request` of `delivery` on the webhook as it is now.
    pub(super) fn gate(&self, delivery: &Delivery, request: &OutboundRequest) -> Gate {
        let Some(webhook) = self.webhook_cached(&delivery.webhook_id) else {
            return Gate::Held;
        };
        if webhook.tenant != delivery.tenant || self.held_back(&webhook) {
            return Gate::Held;
        }
        let Ok(connection) = self.catalog.usable_connection(&webhook) else {
            return Gate::Held;
        };
        if request.connection_id != webhook.connection_id {
            let through = |id: &Option<crate::model::ConnectionId>| {
                id.as_ref()
                    .map_or("no connection".to_string(), |id| format!("connection {id}"))
            };
            return Gate::Stale(format!(
                "not sent: the request was built for {}, and the webhook now sends through {}; \
                 replay the delivery to build it anew",
                through(&request.connection_id),
                through(&webhook.connection_id)
            ));
        }
        Gate::Open {
            webhook,
            connection,
        }
    }
}
