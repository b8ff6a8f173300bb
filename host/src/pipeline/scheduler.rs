//! The scheduler: sweeps the due queue in due order, stages due deliveries in memory per
//! endpoint (`staging`), and starts them as their endpoint, `max_in_flight` and the fair share
//! of evaluation time (`fair_share`: admission per webhook) allow.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::staging::{Endpoint, QueueView, Staged, Staging};
use super::worker::{plus, LEASE};
use super::{endpoints, Pipeline};
use crate::fair_share::Admission;
use crate::model::{DeliveryId, Millis, WebhookId};
use crate::storage::{Claimed, QueueEntry, QueueFrom, QueuePosition, StorageError};

/// How often the scheduler notes itself alive and reads which hosts share the storage (for
/// its share of the endpoints' limits).
const PEERS_EVERY: Duration = Duration::from_secs(1);
/// How long the scheduler sleeps at most when nothing wakes it.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How long a delivery waits after a storage error before it is tried again.
const STORAGE_ERROR_WAIT: Duration = Duration::from_secs(5);
/// How far into a line the scheduler looks for a delivery of a webhook that may start one,
/// past those of webhooks that may not (throttled, or enough on their way to a turn).
const LOOK_AHEAD: usize = 64;

/// What the scheduler starts deliveries with: the host-wide slots, and the word to hand
/// back those in flight at shutdown.
pub(super) struct Slots {
    permits: Arc<Semaphore>,
    hand_back: watch::Receiver<bool>,
}

/// What a started delivery holds until it ends.
pub(super) struct Started {
    /// Its endpoint, freed once its requests are answered (taken out then), or when it ends.
    endpoint: Option<Arc<str>>,
    /// Its webhook's tenant, whose count of deliveries in flight it is in.
    tenant: Option<String>,
    /// Its host-wide slot.
    permit: OwnedSemaphorePermit,
    /// Turns true when the host stops waiting for it.
    hand_back: watch::Receiver<bool>,
}

/// How many of `max_in_flight` slots only endpoints with nothing in flight may take: an
/// eighth. Endpoints that hang (each holding requests until its timeout) then fill at most the
/// other seven eighths, plus one slot each of the last: a receiver that answers still gets
/// through unless more than an eighth of `max_in_flight` endpoints hang at once.
pub(super) fn reserved_slots(max_in_flight: usize) -> usize {
    max_in_flight / 8
}

/// How many deliveries one tenant's webhooks may have in flight together:
/// `delivery.tenant_share` of `max_in_flight`, at least one. Webhooks without a tenant (the
/// operator's) are not counted.
pub(super) fn tenant_slots(delivery: &crate::config::DeliveryConfig) -> usize {
    ((delivery.max_in_flight as f64 * delivery.tenant_share).floor() as usize).max(1)
}

/// From now until `at`, at least a millisecond.
fn until(at: std::time::Instant) -> Duration {
    at.saturating_duration_since(std::time::Instant::now())
        .max(Duration::from_millis(1))
}

/// The queue as the staging reads it: the store's, with the pipeline's webhooks and the
/// deliveries in flight.
struct StoreView<'a>(&'a Pipeline);

impl QueueView for StoreView<'_> {
    fn entries<'a>(
        &'a self,
        from: QueueFrom<'_>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a> {
        self.0.store.due_from(from)
    }

    fn take_written_due(&self) -> Option<Millis> {
        self.0.store.take_written_due()
    }

    fn endpoint(&self, webhook: &WebhookId) -> Endpoint {
        self.0
            .webhook_cached(webhook)
            .and_then(|w| self.0.endpoint(&w))
            .map(Arc::from)
    }

    fn in_flight(&self, id: &DeliveryId) -> Option<Millis> {
        self.0.in_flight.lock().unwrap().get(id).copied()
    }
}

/// A delivery chosen to start in this pass, with what it was given, until it is claimed.
struct Chosen {
    position: QueuePosition,
    started: Started,
    admission: Option<Admission>,
}

impl Pipeline {
    /// Runs the scheduler until `shutdown` turns true; then gives deliveries in flight
    /// `delivery.shutdown_grace` to finish their step, and hands back those still waiting for
    /// a receiver (written as due again, sent at the next start).
    pub async fn run_scheduler(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let max = self.config.delivery.max_in_flight;
        let permits = Arc::new(Semaphore::new(max));
        let (hand_back, handed_back) = watch::channel(false);
        let slots = Slots {
            permits: permits.clone(),
            hand_back: handed_back,
        };
        let mut peers_seen: Option<std::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if peers_seen.is_none_or(|at| at.elapsed() >= PEERS_EVERY) {
                peers_seen = Some(std::time::Instant::now());
                match self.store.peers(self.holder, self.now()) {
                    Ok(peers) => self.endpoints.set_peers(peers),
                    Err(e) => tracing::warn!("reading which hosts share the storage: {e}"),
                }
            }
            let wait = match self.start_due(&slots) {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::error!("scheduler: reading the queue failed: {e}");
                    STORAGE_ERROR_WAIT
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Let deliveries in flight finish their current step; none waits for a turn.
        self.fair.close();
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let grace = self.config.delivery.shutdown_grace;
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            let going = max - permits.available_permits();
            tracing::warn!(
                going,
                "deliveries still in flight after delivery.shutdown_grace are handed back; \
                 they are sent again after the next start"
            );
            hand_back.send_replace(true);
            let _ = permits.acquire_many(all).await;
        }
    }

    /// Starts every due delivery there is room for — overall (`max_in_flight`) and at its
    /// endpoint (concurrency and rate) — and returns how long to wait before looking again.
    ///
    /// Due deliveries are first *staged*: read from the queue into an in-memory line per
    /// endpoint (see [`staging`](super::staging): each queue entry is read about once, however
    /// long the backlog). Starting work then pops from the lines of endpoints with room, so
    /// one slow receiver holds back only its own line.
    pub(super) fn start_due(self: &Arc<Self>, slots: &Slots) -> Result<Duration, StorageError> {
        let generation = self.catalog.generation();
        if self.endpoints_generation.swap(generation, Ordering::AcqRel) != generation {
            // A webhook or connection changed: endpoints are worked out anew.
            self.forget_endpoints();
        }
        let now = self.now();
        let mut wait = IDLE_WAIT;
        // Throttled evaluations that may run again are granted their turns.
        if let Some(at) = self.fair.poke() {
            wait = wait.min(until(at));
        }
        let chosen = {
            let mut staging = self.staging.lock().unwrap();
            staging.stage(&StoreView(self), now, std::time::Instant::now(), &mut wait)?;
            let chosen = self.choose(&mut staging, slots, &mut wait);
            let ids: Vec<DeliveryId> = chosen.iter().map(|c| c.position.id.clone()).collect();
            staging.started(&ids);
            chosen
        };
        self.claim_and_spawn(chosen)?;
        Ok(wait)
    }

    /// Takes from the lines every delivery there is room for now, giving each its slot, its
    /// endpoint's allowance and its webhook's admission (counted as in flight from here).
    fn choose(&self, staging: &mut Staging, slots: &Slots, wait: &mut Duration) -> Vec<Chosen> {
        let permits = &slots.permits;
        let mut chosen = Vec::new();
        // Webhooks not admitted in this pass (throttled, or enough on their way already).
        let mut refused = HashSet::new();
        let reserve = reserved_slots(self.config.delivery.max_in_flight);
        let tenant_cap = tenant_slots(&self.config.delivery);
        'lines: for ((endpoint, webhook), line) in staging.lines_mut() {
            // A line is one webhook's: one tenant's.
            let tenant = webhook
                .as_ref()
                .and_then(|w| self.webhook_cached(w))
                .and_then(|w| w.tenant.clone());
            while !line.is_empty() {
                if tenant
                    .as_ref()
                    .is_some_and(|t| self.tenant_in_flight(t) >= tenant_cap)
                {
                    continue 'lines;
                }
                let free = permits.available_permits();
                if free == 0 {
                    break 'lines;
                }
                // The last slots go one at a time to endpoints with nothing in flight, so
                // receivers that never answer cannot hold every slot until they time out.
                if free <= reserve
                    && endpoint
                        .as_deref()
                        .is_some_and(|e| self.endpoints.in_flight(e) > 0)
                {
                    continue 'lines;
                }
                let Some((index, admission)) = self.first_admitted(line, &mut refused, wait) else {
                    continue 'lines;
                };
                if let Some(endpoint) = endpoint {
                    match self
                        .endpoints
                        .try_start(endpoint, std::time::Instant::now())
                    {
                        Ok(()) => {}
                        Err(endpoints::Busy::Full) => continue 'lines,
                        Err(endpoints::Busy::RateLimited(token)) => {
                            *wait = (*wait).min(token.max(Duration::from_millis(1)));
                            continue 'lines;
                        }
                    }
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    if let Some(endpoint) = endpoint {
                        self.endpoints.finish(endpoint);
                    }
                    break 'lines;
                };
                let (due, id, _) = line.remove(index).expect("found in the line");
                self.count_in_flight(&id, due, tenant.as_deref());
                chosen.push(Chosen {
                    position: QueuePosition { due, id },
                    started: Started {
                        endpoint: endpoint.clone(),
                        tenant: tenant.clone(),
                        permit,
                        hand_back: slots.hand_back.clone(),
                    },
                    admission,
                });
            }
        }
        chosen
    }

    /// Claims the chosen deliveries in one call and starts those claimed; the others (gone,
    /// finished, moved on, or another host's) give back what they were given, their
    /// endpoint's request allowance too.
    fn claim_and_spawn(self: &Arc<Self>, chosen: Vec<Chosen>) -> Result<(), StorageError> {
        if chosen.is_empty() {
            return Ok(());
        }
        let positions: Vec<QueuePosition> = chosen.iter().map(|c| c.position.clone()).collect();
        let now = self.now();
        let claimed = self
            .store
            .claim(&positions, self.holder, plus(now, LEASE), now)
            .and_then(|claimed| match claimed.len() == chosen.len() {
                true => Ok(claimed),
                false => Err(StorageError::Record {
                    source: format!(
                        "the storage answered {} claims for {} deliveries",
                        claimed.len(),
                        chosen.len()
                    )
                    .into(),
                }),
            });
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                for c in chosen {
                    self.let_go(&c.position.id, c.started, true);
                }
                return Err(e);
            }
        };
        let mut refused = false;
        for (c, claimed) in chosen.into_iter().zip(claimed) {
            match claimed {
                Some(claimed) => self.spawn_delivery(claimed, c.started, c.admission),
                None => {
                    self.let_go(&c.position.id, c.started, true);
                    refused = true;
                }
            }
        }
        if refused {
            // What those were given is free again: look for other work now.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The first of a line's first [`LOOK_AHEAD`] deliveries whose webhook may start one
    /// now, with its admission (`None`: no webhook to account it to). A webhook refused goes
    /// into `refused` for the rest of the pass, and `wait` shortens to when it may start.
    fn first_admitted(
        &self,
        line: &VecDeque<Staged>,
        refused: &mut HashSet<WebhookId>,
        wait: &mut Duration,
    ) -> Option<(usize, Option<Admission>)> {
        for (index, (_, _, webhook)) in line.iter().take(LOOK_AHEAD).enumerate() {
            let Some(webhook) = webhook else {
                return Some((index, None));
            };
            if refused.contains(webhook) {
                continue;
            }
            let Some(payer) = self.payer(webhook) else {
                // Deleted: the worker ends the delivery without evaluating it.
                return Some((index, None));
            };
            match self.fair.admit(&payer) {
                Ok(admission) => return Some((index, Some(admission))),
                Err(at) => {
                    if let Some(at) = at {
                        *wait = (*wait).min(until(at));
                    }
                    refused.insert(webhook.clone());
                }
            }
        }
        None
    }

    /// Runs one delivery on its own task; when it ends, frees its endpoint and permit and
    /// wakes the scheduler. Handed back at shutdown, a request still waiting for its answer is
    /// dropped and the delivery is written as due again at once (what was accepted before
    /// stays accepted).
    fn spawn_delivery(
        self: &Arc<Self>,
        claimed: Claimed,
        mut started: Started,
        admission: Option<Admission>,
    ) {
        let this = self.clone();
        let span = tracing::info_span!("wasmhooks.delivery", delivery = %claimed.claim.id);
        tokio::spawn(
            async move {
                let (due, id) = (claimed.claim.due, claimed.claim.id.clone());
                let hand_back = &mut started.hand_back;
                let endpoint = &mut started.endpoint;
                let processed = this.process(claimed, admission, hand_back, endpoint);
                // A panic is a bug, but it must not keep the endpoint's place or the tenant's
                // count for ever: what the delivery holds is let go either way.
                match AssertUnwindSafe(processed).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!("storage error, will retry: {e}");
                        this.postpone(due, &id);
                    }
                    Err(_) => {
                        tracing::error!("the delivery's task panicked; it will be tried again");
                        this.postpone(due, &id);
                    }
                }
                this.let_go(&id, started, false);
                this.wake.notify_one();
            }
            .instrument(span),
        );
    }

    /// Counts a delivery chosen to start as in flight: overall, and for its tenant.
    fn count_in_flight(&self, id: &DeliveryId, due: Millis, tenant: Option<&str>) {
        self.in_flight.lock().unwrap().insert(id.clone(), due);
        if let Some(tenant) = tenant {
            *self
                .tenants_in_flight
                .lock()
                .unwrap()
                .entry(tenant.to_string())
                .or_default() += 1;
        }
    }

    /// Ends what a delivery was given to start: its endpoint's place (and request
    /// allowance, when `unused`), its tenant's count, its slot.
    fn let_go(&self, id: &DeliveryId, started: Started, unused: bool) {
        let Started {
            endpoint,
            tenant,
            permit,
            hand_back: _,
        } = started;
        if let Some(endpoint) = &endpoint {
            match unused {
                true => self.endpoints.give_back(endpoint),
                false => self.endpoints.finish(endpoint),
            }
        }
        if let Some(tenant) = &tenant {
            let mut tenants = self.tenants_in_flight.lock().unwrap();
            if let Some(count) = tenants.get_mut(tenant) {
                *count -= 1;
                if *count == 0 {
                    tenants.remove(tenant);
                }
            }
        }
        self.in_flight.lock().unwrap().remove(id);
        drop(permit);
    }

    /// Deliveries of `tenant`'s webhooks in flight now.
    fn tenant_in_flight(&self, tenant: &str) -> usize {
        self.tenants_in_flight
            .lock()
            .unwrap()
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the endpoints worked out per webhook (after a webhook or connection changed).
    fn forget_endpoints(&self) {
        self.staging.lock().unwrap().forget_endpoints();
    }

    /// Puts a delivery whose step failed on a storage error off by
    /// [`STORAGE_ERROR_WAIT`].
    pub(super) fn postpone(&self, due: Millis, id: &DeliveryId) {
        let result = self.store.delivery(id).and_then(|d| match d {
            Some(mut d) if !d.status.is_final() && d.next_attempt_at == Some(due) => {
                d.next_attempt_at = Some(plus(self.now(), STORAGE_ERROR_WAIT));
                self.store.update_delivery(&mut d)
            }
            // Finished, gone or moved on meanwhile: nothing to put off.
            _ => Ok(()),
        });
        // Changed meanwhile (a newer event): it is queued as it is now.
        if let Err(e) = result.or_else(|e| {
            if e.conflict().is_some() {
                Ok(())
            } else {
                Err(e)
            }
        }) {
            // Its queue entry stays where it was; the next sweep from the head of the queue
            // (within `staging::FULL_SWEEP_EVERY`) finds it again.
            tracing::error!("could not postpone: {e}");
        }
    }
}
