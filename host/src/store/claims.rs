//! Claims on deliveries, kept in memory: only the process that opened the store works on its
//! deliveries, and a restart ends every claim (which is what a lapsed claim means).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use crate::model::{DeliveryId, Millis};
use crate::storage::Claim;

/// Shards of the table, so workers finishing different deliveries rarely wait on each other.
const SHARDS: usize = 16;
/// Past this many claims in a shard, taking one first drops those that lapsed.
const PRUNE_ABOVE: usize = 4_096;

/// The claims in force, by delivery.
pub struct Claims {
    shards: [Mutex<HashMap<DeliveryId, Claim>>; SHARDS],
    hasher: RandomState,
}

impl Default for Claims {
    fn default() -> Self {
        Claims {
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::new(),
        }
    }
}

impl Claims {
    fn shard(&self, id: &DeliveryId) -> &Mutex<HashMap<DeliveryId, Claim>> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    /// Takes `claim` unless another holder's claim on the delivery runs past `now`.
    pub fn take(&self, claim: Claim, now: Millis) -> Option<Claim> {
        let mut held = self.shard(&claim.id).lock().unwrap();
        if let Some(current) = held.get(&claim.id) {
            if current.holder != claim.holder && current.until > now {
                return None;
            }
        }
        if held.len() > PRUNE_ABOVE {
            held.retain(|_, c| c.until > now);
        }
        held.insert(claim.id.clone(), claim.clone());
        Some(claim)
    }

    /// Runs `write` while `claim` is the one in force on its delivery (no claim can be taken
    /// meanwhile), and ends it afterwards unless `keep`; `None` when `claim` is not in force.
    pub fn while_held<T>(&self, claim: &Claim, keep: bool, write: impl FnOnce() -> T) -> Option<T> {
        let mut held = self.shard(&claim.id).lock().unwrap();
        if !held.get(&claim.id).is_some_and(|c| c.is(claim)) {
            return None;
        }
        let written = write();
        if !keep {
            held.remove(&claim.id);
        }
        Some(written)
    }

    /// Moves the lapse of `claim` to `until`; `false` when it is not in force.
    pub fn renew(&self, claim: &Claim, until: Millis) -> bool {
        let mut held = self.shard(&claim.id).lock().unwrap();
        match held.get_mut(&claim.id) {
            Some(current) if current.is(claim) => {
                current.until = current.until.max(until);
                true
            }
            _ => false,
        }
    }

    /// Ends `claim`, if it is the one in force.
    pub fn end(&self, claim: &Claim) {
        let mut held = self.shard(&claim.id).lock().unwrap();
        if held.get(&claim.id).is_some_and(|c| c.is(claim)) {
            held.remove(&claim.id);
        }
    }
}
