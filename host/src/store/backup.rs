//! A copy of the store taken while the host runs (`wasmhooks backup`), which a host starts
//! from like any data directory.
//!
//! Every tree is walked and written into a new sled database. Walks are not one snapshot, so
//! the copy is made consistent where it matters: deliveries are copied before events (a
//! delivery is stored after its event, so each copied delivery has its event), and the due
//! queue and the in-order lines are rebuilt from the copied deliveries rather than copied (an
//! entry copied before its delivery moved would point at a time the delivery no longer has).
//! An ingest round under way is copied with its intent record, so the copy's start undoes it
//! like a crash's. Claims live in memory and are not copied.

use std::path::Path;

use super::ingest::fifo_key;
use super::{decode, Store, StoreError};
use crate::model::Delivery;
use crate::storage::{queue_key, BackupReport};

/// Trees the copy rebuilds from the deliveries instead of copying.
const REBUILT: &[&[u8]] = &[b"deliveries", b"queue", b"fifo"];

impl Store {
    /// Copies the store into a new database in `dir`; see the module doc. Blocking.
    ///
    /// # Errors
    /// When reading this store or writing the copy fails.
    pub fn backup(&self, dir: &Path) -> Result<BackupReport, StoreError> {
        let copy = sled::Config::new()
            .path(dir)
            .cache_capacity(4 << 20)
            .open()?;
        let mut report = BackupReport::default();
        let deliveries = copy.open_tree("deliveries")?;
        let queue = copy.open_tree("queue")?;
        let fifo = copy.open_tree("fifo")?;
        for entry in self.ingest.deliveries.iter() {
            let (key, value) = entry?;
            deliveries.insert(&key, value.clone())?;
            report.records += 1;
            report.deliveries += 1;
            // One that does not decode is copied as it is; lists name it there too.
            let Ok(delivery) = decode::<Delivery>("deliveries", &value) else {
                continue;
            };
            let Some(due) = delivery
                .next_attempt_at
                .filter(|_| !delivery.status.is_final())
            else {
                continue;
            };
            queue.insert(
                queue_key(due, &delivery.id),
                delivery.webhook_id.as_str().as_bytes(),
            )?;
            if let Some(line) = fifo_key(&delivery) {
                fifo.insert(line, &[] as &[u8])?;
            }
            report.pending += 1;
        }
        for name in self.db.tree_names() {
            if REBUILT.contains(&name.as_ref()) {
                continue;
            }
            let source = self.db.open_tree(&name)?;
            let target = copy.open_tree(&name)?;
            for entry in source.iter() {
                let (key, value) = entry?;
                target.insert(key, value)?;
                report.records += 1;
            }
        }
        copy.flush()?;
        Ok(report)
    }
}
