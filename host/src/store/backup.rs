//! A copy of the store taken while the host runs (`wasmhooks backup`), which a host starts
//! from like any data directory.
//!
//! Every tree is walked and written into a new sled database. The walks are not one
//! snapshot, so the copy is made to stand for the moment the backup began (`taken_at`):
//! - deliveries created after it are left out, and so are events received after it, unless
//!   a copied delivery points at one (a debounced delivery that took a newer event, a batch
//!   that took one more): each copied delivery has its events, and no event is in the copy
//!   without the deliveries it was acknowledged with;
//! - plugin state is copied before the deliveries: a delivery copied before its evaluation
//!   was stored beside state that already holds its change could make the plugin decide
//!   against sending it again; the other way round it may send once more (at least once);
//! - the due queue and the in-order lines are rebuilt from the copied deliveries rather than
//!   copied (an entry copied before its delivery moved would point at a time it no longer
//!   has); the retention indexes are left out, and rebuilt when a host starts from the copy;
//!   so is the definitions' change feed (a host starting from the copy reads every
//!   definition).
//!
//! An ingest round under way is copied with its intent record, and the copy's start undoes
//! it like a crash's. Claims live in memory and are not copied.

use std::collections::HashSet;
use std::path::Path;

use super::codec::decode_event;
use super::ingest::{event_key, fifo_key, queue_value};
use super::queue_key;
use super::{decode, Store, StoreError};
use crate::model::{Delivery, Millis};
use crate::storage::BackupReport;

/// Trees copied first, rebuilt, or left out, apart from the rest.
const HANDLED: &[&[u8]] = &[
    b"plugin_state",
    b"deliveries",
    b"queue",
    b"fifo",
    b"events",
    b"finished",
    b"received",
    b"pins",
    b"definition_changes",
];

impl Store {
    /// Copies the store into a new database in `dir`, as of `taken_at`; see the module doc.
    /// Blocking.
    ///
    /// # Errors
    /// When reading this store or writing the copy fails.
    pub fn backup(&self, dir: &Path, taken_at: Millis) -> Result<BackupReport, StoreError> {
        let copy = sled::Config::new()
            .path(dir)
            .cache_capacity(4 << 20)
            .open()?;
        let mut report = BackupReport::default();
        report.records += copy_tree(&self.plugin_state, &copy.open_tree("plugin_state")?)?;
        let needed = self.copy_deliveries(&copy, taken_at, &mut report)?;
        let events = copy.open_tree("events")?;
        for entry in self.ingest.events.iter() {
            let (key, value) = entry?;
            let received = decode_event(&value).map(|e| e.received_at);
            if received.is_ok_and(|at| at >= taken_at) && !needed.contains(key.as_ref()) {
                continue;
            }
            events.insert(key, value)?;
            report.records += 1;
        }
        for name in self.db.tree_names() {
            if HANDLED.contains(&name.as_ref()) {
                continue;
            }
            let target = copy.open_tree(&name)?;
            report.records += copy_tree(&self.db.open_tree(&name)?, &target)?;
        }
        // The copy's start rebuilds them: copied here, they could miss a record copied just
        // before the pruning walk removed its entry, which would then be kept for ever.
        let meta = copy.open_tree("meta")?;
        // The copy's sequence starts again: its line positions start past all of ours.
        let past = self.db.generate_id()?.saturating_add(self.ingest.line_base);
        meta.insert(super::ingest::LINE_BASE, &past.to_be_bytes())?;
        meta.remove(super::retention::INDEXED)?;
        for place in super::retention::INDEXED_UP_TO {
            meta.remove(place)?;
        }
        // Its place was copied after the records, and may be past some the copy has: the
        // copy's walk starts over.
        super::retention::forget_hand_over_place(&meta)?;
        copy.flush()?;
        Ok(report)
    }

    /// Copies the deliveries created before `taken_at`, queues the pending ones, and returns
    /// the keys of the events received after it that they point at.
    fn copy_deliveries(
        &self,
        copy: &sled::Db,
        taken_at: Millis,
        report: &mut BackupReport,
    ) -> Result<HashSet<Vec<u8>>, StoreError> {
        let deliveries = copy.open_tree("deliveries")?;
        let queue = copy.open_tree("queue")?;
        let fifo = copy.open_tree("fifo")?;
        let mut needed = HashSet::new();
        for entry in self.ingest.deliveries.iter() {
            let (key, value) = entry?;
            // One that does not decode is copied as it is; lists name it there too.
            let delivery = decode::<Delivery>("deliveries", &value).ok();
            if delivery.as_ref().is_some_and(|d| d.created_at >= taken_at) {
                continue;
            }
            deliveries.insert(&key, value.clone())?;
            report.records += 1;
            report.deliveries += 1;
            let Some(delivery) = delivery else {
                continue;
            };
            if delivery.updated_at >= taken_at {
                // Changed while the copy was taken: it may point at a newer event.
                let tenant = delivery.events_tenant();
                for id in std::iter::once(&delivery.event_id).chain(&delivery.batch_events) {
                    needed.insert(event_key(tenant, id).into_bytes());
                }
            }
            let Some(due) = delivery
                .next_attempt_at
                .filter(|_| !delivery.status.is_final())
            else {
                continue;
            };
            queue.insert(queue_key(due, &delivery.id), queue_value(&delivery))?;
            if let Some(line) = fifo_key(&delivery) {
                fifo.insert(line, delivery.id.as_str().as_bytes())?;
            }
            report.pending += 1;
        }
        Ok(needed)
    }
}

/// Copies every record of `source` into `target`; returns how many.
fn copy_tree(source: &sled::Tree, target: &sled::Tree) -> Result<u64, StoreError> {
    let mut copied = 0;
    for entry in source.iter() {
        let (key, value) = entry?;
        target.insert(key, value)?;
        copied += 1;
    }
    Ok(copied)
}
