//! The change feed of definitions in the sled store: one entry per webhook or connection
//! written or deleted, keyed by a sequence number sled hands out (`generate_id`, increasing
//! across restarts), so a reader follows every writer's changes in order. The feed keeps the
//! entries within [`KEPT`] positions of the newest; a reader from before the last one dropped
//! is told to read everything again.
//!
//! An entry is written in one transaction with the change it names, so a reader that meets
//! it reads the change (a shared database does the same in its own transaction).

use std::ops::Bound;

use sled::transaction::{ConflictableTransactionError, Transactional};

use super::{Store, StoreError};
use crate::model::{ConnectionId, WebhookId};
use crate::storage::{Changed, DefinitionChanges};

/// Entries kept: those within this many positions of the newest.
const KEPT: u64 = 10_000;
/// The `meta` key of the last position dropped from the feed.
const TRIMMED: &[u8] = b"definition_changes_trimmed";
/// Most entries one read returns.
const READ_AT_MOST: usize = 1_000;

impl Store {
    /// Writes a record's new value (`None`: removes it) to `tree` together with the
    /// change-feed entry naming it, in one transaction: a reader meets the entry only once
    /// the change can be read.
    pub(super) fn write_fed(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: Option<&[u8]>,
        changed: &Changed,
    ) -> Result<(), StoreError> {
        // Positions are taken and committed in one order: a reader never meets a later
        // entry before an earlier one is readable.
        let _feed = self.feed_writes.lock().unwrap_or_else(|e| e.into_inner());
        let position = self.db.generate_id()?.saturating_add(1).to_be_bytes();
        let entry = match changed {
            Changed::Webhook(id) => [b"w", id.as_str().as_bytes()].concat(),
            Changed::Connection(id) => [b"c", id.as_str().as_bytes()].concat(),
        };
        (tree, &self.changes).transaction(|(tree, changes)| {
            match value {
                Some(value) => tree.insert(key, value)?,
                None => tree.remove(key)?,
            };
            changes.insert(&position[..], entry.as_slice())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        self.trim_changes(u64::from_be_bytes(position))
    }

    /// Drops the entries older than the last [`KEPT`] positions (usually none or one),
    /// noting the last one dropped: a reader from before it has missed changes.
    fn trim_changes(&self, position: u64) -> Result<(), StoreError> {
        let oldest = position.saturating_sub(KEPT).to_be_bytes();
        let mut dropped = None;
        for key in self
            .changes
            .range::<&[u8], _>((Bound::Unbounded, Bound::Excluded(&oldest[..])))
            .keys()
        {
            let key = key?;
            dropped = Some(position_of(&key));
            self.changes.remove(key)?;
        }
        if let Some(dropped) = dropped {
            self.meta.insert(TRIMMED, &dropped.to_be_bytes())?;
        }
        Ok(())
    }

    /// See [`crate::storage::Definitions::definition_changes`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn definition_changes(&self, after: u64) -> Result<DefinitionChanges, StoreError> {
        let mut out = DefinitionChanges {
            position: after,
            ..DefinitionChanges::default()
        };
        // Entries after `after` were dropped: the reader has missed changes. (Positions
        // themselves leap, by a million or so after each restart; only drops count.)
        let trimmed = self.meta.get(TRIMMED)?.map_or(0, |v| position_of(&v));
        out.reset = trimmed > after;
        let from = after.to_be_bytes();
        for entry in self
            .changes
            .range::<&[u8], _>((Bound::Excluded(&from[..]), Bound::Unbounded))
            .take(READ_AT_MOST)
        {
            let (key, value) = entry?;
            out.position = position_of(&key);
            match parse_change(&value) {
                Some(changed) => out.changed.push(changed),
                None => tracing::warn!(entry = ?value, "skipping a malformed change entry"),
            }
        }
        Ok(out)
    }

    /// The feed's last position (0: none yet).
    ///
    /// # Errors
    /// On storage failure.
    pub fn change_head(&self) -> Result<u64, StoreError> {
        Ok(self.changes.last()?.map_or(0, |(key, _)| position_of(&key)))
    }
}

fn position_of(key: &[u8]) -> u64 {
    <[u8; 8]>::try_from(key).map_or(0, u64::from_be_bytes)
}

fn parse_change(value: &[u8]) -> Option<Changed> {
    let (&kind, id) = value.split_first()?;
    let id = std::str::from_utf8(id).ok()?;
    match kind {
        b'w' => WebhookId::parse(id).ok().map(Changed::Webhook),
        b'c' => ConnectionId::parse(id).ok().map(Changed::Connection),
        _ => None,
    }
}
