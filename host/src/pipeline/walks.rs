//! Walks of the delivery table (lists, recover): a walk may read every stored delivery, so it
//! runs on a blocking thread, never the async runtime's; at most [`MAX_WALKS`] run at once in
//! the process, and one per tenant (another while it runs is refused, 429), so no caller can
//! queue walks ahead of everyone else's or take every core from delivery. The slot is held by
//! the walk itself: a caller that hangs up does not free it while its walk goes on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{Error, Pipeline};
use crate::storage::{DeliveryQuery, Scanned};

/// Walks at once in the process.
pub const MAX_WALKS: usize = 2;

/// Slots for walks, and the tenants with one under way.
pub(super) struct Walks {
    slots: Arc<Semaphore>,
    tenants: Arc<Mutex<HashSet<Option<String>>>>,
}

impl Default for Walks {
    fn default() -> Self {
        Walks {
            slots: Arc::new(Semaphore::new(MAX_WALKS)),
            tenants: Arc::default(),
        }
    }
}

/// A tenant's walk under way; dropped (with its walk) it lets the tenant walk again.
struct TenantWalk {
    tenants: Arc<Mutex<HashSet<Option<String>>>>,
    tenant: Option<String>,
}

impl Drop for TenantWalk {
    fn drop(&mut self) {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.tenant);
    }
}

impl Pipeline {
    /// The deliveries `queries` select ([`crate::storage::Deliveries::scan_deliveries`]), one
    /// walk each, for `tenant`'s caller (`None`: the operator), off the async threads and
    /// within the slots.
    ///
    /// # Errors
    /// [`Error::Busy`] while another walk of the same tenant runs, or a storage error.
    pub(super) async fn walk_deliveries<const N: usize>(
        &self,
        tenant: Option<&str>,
        queries: [DeliveryQuery; N],
    ) -> Result<[Scanned; N], Error> {
        let walks = &self.walks;
        let tenant = tenant.map(str::to_string);
        if !walks
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.clone())
        {
            return Err(Error::Busy(
                "a delivery list or recover of this tenant is already running; try again when \
                 it has answered"
                    .into(),
            ));
        }
        let mine = TenantWalk {
            tenants: walks.tenants.clone(),
            tenant,
        };
        let slot = walks
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the walk slots are never closed");
        let store = self.store.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let _held = (slot, mine);
            let mut walked = Vec::with_capacity(N);
            for query in &queries {
                walked.push(store.scan_deliveries(query)?);
            }
            Ok::<_, crate::storage::StorageError>(walked)
        })
        .await
        .expect("a delivery walk does not panic")?;
        Ok(walked.try_into().expect("one walk per query"))
    }
}
