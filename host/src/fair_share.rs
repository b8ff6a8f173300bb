//! Fair share of plugin evaluation time between tenants and webhooks.
//!
//! Evaluations run in a fixed number of **turns** (one per evaluation slot of the sandbox).
//! While more evaluations wait than there are turns, the next turn goes to the tenant that has
//! used the least evaluation time, and within that tenant to the webhook that has used the
//! least: fair queuing on virtual time, as Linux's CFS does for threads. Each turn's time is
//! added to its tenant's and its webhook's virtual time (an estimate when the turn starts,
//! corrected when it ends); a tenant or webhook that comes back after idling starts from the
//! virtual time of the last one picked, so idling banks no credit. A cheap webhook's
//! evaluation therefore waits for at most the evaluations already running, however many
//! expensive ones are queued, and a tenant with many webhooks gets no more than one with few.
//!
//! Beyond the order:
//! - **Budgets.** A webhook (and, when configured, a tenant) may use so much evaluation time
//!   per second, with one second's worth as a burst. Over it, its evaluations wait until the
//!   budget refills, even while turns are free.
//! - **Back-off.** After `backoff_after_limit_hits` evaluations in a row that hit a sandbox
//!   limit, the webhook waits before each next evaluation: [`FIRST_BACKOFF`], twice as long
//!   each further hit, at most [`MAX_BACKOFF`]. One evaluation within its limits ends the
//!   streak; meanwhile it runs one evaluation at a time. The pipeline disables a webhook
//!   whose streak grows longer still.
//! - **Admission.** The scheduler asks before it starts a delivery ([`FairShare::admit`]). A
//!   webhook that is throttled, or that has evaluations queued and enough deliveries on their
//!   way to an evaluation already, is not started, so its deliveries cannot take the host's
//!   in-flight slots from others.
//!
//! Time is measured as how long an evaluation holds its turn, from when the plugin starts to
//! when it returns (the hand-over to the thread that evaluates is the host's, not charged):
//! what the others were denied. It is CPU time unless the machine runs more than it has cores
//! for. A plugin proven quick (well under a millisecond) takes a turn beside the counted ones
//! ([`FairShare::quick_turn`]), so it does not wait behind long evaluations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::config::FairShareConfig;
use crate::model::WebhookId;

mod accounts;
mod usage;

pub use accounts::{backoff, FIRST_BACKOFF, MAX_BACKOFF};
use accounts::{tenant_key, Budget, Ended, State};
pub use usage::{Summary, Throttle, ThrottleReason, Usage};

/// Who an evaluation is for: its webhook, and the webhook's tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payer {
    /// The webhook.
    pub webhook: WebhookId,
    /// Its tenant (`None`: a webhook of the operator's, for every tenant).
    pub tenant: Option<String>,
}

/// The fair queue for evaluation turns. See the module docs.
pub struct FairShare {
    turns: usize,
    config: FairShareConfig,
    /// Woken when a webhook that was not admitted may be again, or when the next moment a
    /// throttled webhook may run changed ([`FairShare::poke`] grants then).
    wake: Arc<Notify>,
    now: Box<dyn Fn() -> Instant + Send + Sync>,
    state: Mutex<State>,
}

impl FairShare {
    /// A fair queue for `turns` evaluations at once, waking `wake` (the scheduler) when it
    /// should look again.
    pub fn new(turns: usize, config: FairShareConfig, wake: Arc<Notify>) -> FairShare {
        Self::with_clock(turns, config, wake, Box::new(Instant::now))
    }

    fn with_clock(
        turns: usize,
        config: FairShareConfig,
        wake: Arc<Notify>,
        now: Box<dyn Fn() -> Instant + Send + Sync>,
    ) -> FairShare {
        FairShare {
            turns: turns.max(1),
            config,
            wake,
            now,
            state: Mutex::default(),
        }
    }

    /// Waits for a turn to evaluate for `payer`. The turn ends with [`Turn::finish`] (or
    /// when dropped), which charges its time. `None` once the fair share is closed (the host
    /// is stopping): the caller leaves its work for the next start.
    pub async fn turn(self: &Arc<Self>, payer: &Payer) -> Option<Turn> {
        let receiver = {
            let now = (self.now)();
            let mut state = self.state.lock().unwrap();
            if state.closed {
                return None;
            }
            state.flow(payer, now);
            self.grant(&mut state, now);
            // A free turn means no waiter that may run now is waiting (each grant gives
            // turns to them first), so one that may run takes it at once.
            if state.running < self.turns
                && self.ready_at(&state, &payer.webhook, now).is_none()
                && !self.probing(&state, &payer.webhook)
            {
                state.activate(&payer.webhook);
                return Some(self.start(&mut state, &payer.webhook, now));
            }
            let (sender, receiver) = oneshot::channel();
            state.enqueue(&payer.webhook, sender);
            // Notes when it may run, if it is throttled.
            self.grant(&mut state, now);
            receiver
        };
        // Its sender is dropped only by `close`.
        receiver.await.ok()
    }

    /// Stops granting turns: every waiter, and every later ask, gets none. Turns running
    /// go on. Called when the host stops, so no delivery waits for a turn (or a budget)
    /// meanwhile.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        for id in std::mem::take(&mut state.waiting) {
            if let Some(flow) = state.flows.get_mut(&id) {
                flow.waiters.clear();
            }
            state.deactivate_if_idle(&id);
        }
    }

    /// A turn beside the counted ones, for an evaluation that has proven to take well under a
    /// millisecond, so it need not wait behind long ones: given unless the webhook (or its
    /// tenant) is throttled. It is charged like any other turn.
    pub fn quick_turn(self: &Arc<Self>, payer: &Payer) -> Option<Turn> {
        let now = (self.now)();
        let mut state = self.state.lock().unwrap();
        state.flow(payer, now);
        if self.throttle(&state, &payer.webhook, now).is_some()
            || self.probing(&state, &payer.webhook)
        {
            return None;
        }
        state.activate(&payer.webhook);
        Some(self.start_as(&mut state, &payer.webhook, now, false))
    }

    /// Whether the scheduler may start a delivery of `payer`'s webhook now: `Err` with when
    /// it may (`None`: when woken) if the webhook is throttled, or has evaluations waiting and
    /// enough deliveries on their way to a turn. The admission is held until the delivery's
    /// evaluation is done or not needed.
    pub fn admit(self: &Arc<Self>, payer: &Payer) -> Result<Admission, Option<Instant>> {
        let now = (self.now)();
        let mut state = self.state.lock().unwrap();
        state.flow(payer, now);
        if let Some((_, until)) = self.throttle(&state, &payer.webhook, now) {
            return Err(Some(until));
        }
        let flow = state.flows.get_mut(&payer.webhook).expect("made above");
        if !flow.waiters.is_empty() && flow.admitted >= self.turns * 2 {
            flow.capped = true;
            return Err(None);
        }
        flow.admitted += 1;
        Ok(Admission {
            share: self.clone(),
            webhook: payer.webhook.clone(),
        })
    }

    /// Grants the turns that are free to waiters that may run now; returns the next moment a
    /// throttled waiter may run, for the caller to poke again then.
    pub fn poke(self: &Arc<Self>) -> Option<Instant> {
        let now = (self.now)();
        let mut state = self.state.lock().unwrap();
        self.grant(&mut state, now);
        state.forget_idle(&self.config, now);
        state.next_ready
    }

    /// Forgets `webhook`'s streak of limit hits and its back-off (after it was disabled for
    /// them, so it starts afresh when enabled again).
    pub fn forgive(&self, webhook: &WebhookId) {
        if let Some(flow) = self.state.lock().unwrap().flows.get_mut(webhook) {
            flow.streak = 0;
            flow.backoff_until = None;
        }
    }

    /// Why and until when `webhook` may not start an evaluation (`None`: it may now).
    fn throttle(
        &self,
        state: &State,
        webhook: &WebhookId,
        now: Instant,
    ) -> Option<(ThrottleReason, Instant)> {
        let flow = &state.flows[webhook];
        if let Some(until) = flow.backoff_until.filter(|until| *until > now) {
            return Some((ThrottleReason::Backoff, until));
        }
        let budget = Budget::of(self.config.webhook_cpu_per_second);
        if let Some(until) = budget.and_then(|b| flow.bucket.ready_at(b, now)) {
            return Some((ThrottleReason::WebhookBudget, until));
        }
        let tenant = flow.tenant.as_ref().and_then(|t| state.tenants.get(t))?;
        let budget = Budget::of(self.config.tenant_cpu_per_second)?;
        let until = tenant.bucket.ready_at(budget, now)?;
        Some((ThrottleReason::TenantBudget, until))
    }

    /// Whether `webhook` backs off and has an evaluation running: it runs one at a time
    /// until an evaluation within its limits ends the streak.
    fn probing(&self, state: &State, webhook: &WebhookId) -> bool {
        let flow = &state.flows[webhook];
        let after = self.config.backoff_after_limit_hits;
        after > 0 && flow.streak >= after && flow.running > 0
    }

    fn ready_at(&self, state: &State, webhook: &WebhookId, now: Instant) -> Option<Instant> {
        self.throttle(state, webhook, now).map(|(_, until)| until)
    }

    /// Gives free turns to waiters, the least-served tenant's least-served webhook first,
    /// and notes when the next throttled waiter may run.
    fn grant(self: &Arc<Self>, state: &mut State, now: Instant) {
        let mut next_ready: Option<Instant> = None;
        while state.running < self.turns {
            let mut best: Option<(f64, f64, &WebhookId)> = None;
            next_ready = None;
            for id in &state.waiting {
                if let Some(until) = self.ready_at(state, id, now) {
                    next_ready = Some(next_ready.map_or(until, |t| t.min(until)));
                    continue;
                }
                if self.probing(state, id) {
                    // Granted when its running evaluation ends.
                    continue;
                }
                let flow = &state.flows[id];
                let tenant = state.tenant_vtime(&flow.tenant);
                let better = best.is_none_or(|(t, f, _)| {
                    tenant.total_cmp(&t).then(flow.vtime.total_cmp(&f)).is_lt()
                });
                if better {
                    best = Some((tenant, flow.vtime, id));
                }
            }
            let Some((_, _, id)) = best else { break };
            let id = id.clone();
            let flow = state.flows.get_mut(&id).expect("waiting flows exist");
            let sender = flow
                .waiters
                .pop_front()
                .expect("waiting flows have waiters");
            if flow.waiters.is_empty() {
                state.waiting.remove(&id);
            }
            if sender.is_closed() {
                // Its delivery stopped waiting.
                state.deactivate_if_idle(&id);
                continue;
            }
            let turn = self.start(state, &id, now);
            if let Err(mut turn) = sender.send(turn) {
                // Gone between the check and the send: take the turn back here, under the
                // lock (its drop would lock again).
                turn.share = None;
                state.running -= 1;
                state.finish(
                    &self.config,
                    &id,
                    turn.charged,
                    Duration::ZERO,
                    Ended::Dropped,
                    now,
                );
            }
        }
        let moved = next_ready != state.next_ready;
        state.next_ready = next_ready;
        if moved && next_ready.is_some() {
            self.wake.notify_one();
        }
    }

    /// Starts a turn for an active flow.
    fn start(self: &Arc<Self>, state: &mut State, id: &WebhookId, now: Instant) -> Turn {
        self.start_as(state, id, now, true)
    }

    /// Starts a turn, counted or beside the counted ones. Only a counted one is a pick that
    /// comers-back start from: a busy quick webhook's virtual time says nothing about the
    /// queue.
    fn start_as(
        self: &Arc<Self>,
        state: &mut State,
        id: &WebhookId,
        now: Instant,
        counted: bool,
    ) -> Turn {
        state.running += usize::from(counted);
        let flow = state.flows.get_mut(id).expect("started flows exist");
        flow.running += 1;
        let charged = flow.estimate;
        let tenant = flow.tenant.clone();
        if counted {
            state.pick(&tenant, id);
        }
        state.flows.get_mut(id).expect("started flows exist").vtime += charged;
        if let Some(t) = state.tenants.get_mut(&tenant_key(&tenant)) {
            t.vtime += charged;
        }
        Turn {
            share: Some(self.clone()),
            webhook: id.clone(),
            started: now,
            charged,
            counted,
        }
    }

    /// Ends a turn and gives the freed one to the next waiter.
    fn end(self: &Arc<Self>, turn: &Turn, ended: Ended) -> u32 {
        let now = (self.now)();
        let used = now.saturating_duration_since(turn.started);
        let mut state = self.state.lock().unwrap();
        if turn.counted {
            state.running -= 1;
        }
        let streak = state.finish(&self.config, &turn.webhook, turn.charged, used, ended, now);
        self.grant(&mut state, now);
        streak
    }

    fn release(&self, webhook: &WebhookId) {
        let mut state = self.state.lock().unwrap();
        if let Some(flow) = state.flows.get_mut(webhook) {
            flow.admitted = flow.admitted.saturating_sub(1);
            if std::mem::take(&mut flow.capped) {
                self.wake.notify_one();
            }
        }
    }
}

/// A turn to evaluate. [`Turn::finish`] ends it; dropped unfinished, it ends charging its
/// time, with no say on the limit streak.
pub struct Turn {
    share: Option<Arc<FairShare>>,
    webhook: WebhookId,
    started: Instant,
    /// The estimate charged when it started.
    charged: f64,
    /// Whether it is one of the counted turns (not a quick one beside them).
    counted: bool,
}

impl Turn {
    /// Marks when the evaluation itself begins: the turn is charged from here (after the
    /// hand-over to the thread that evaluates).
    pub fn begin(&mut self) {
        if let Some(share) = &self.share {
            self.started = (share.now)();
        }
    }

    /// Ends the turn, charging its time to its webhook and tenant; `hit_limit` says whether
    /// the evaluation hit a sandbox limit. Returns the webhook's limit hits in a row.
    pub fn finish(mut self, hit_limit: bool) -> u32 {
        match self.share.take() {
            Some(share) => share.end(&self, Ended::Judged(hit_limit)),
            None => 0,
        }
    }

    /// Ends the turn like [`Turn::finish`], counting the evaluation and its limit hit but
    /// leaving the webhook's streak (and back-off) as they are: for an evaluation that must
    /// not judge its webhook (one tenant's event on a webhook serving every tenant).
    pub fn finish_unjudged(mut self, hit_limit: bool) {
        if let Some(share) = self.share.take() {
            share.end(&self, Ended::Unjudged(hit_limit));
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(share) = self.share.take() {
            share.end(self, Ended::Dropped);
        }
    }
}

/// Leave to start one delivery, held until its evaluation is done or not needed.
pub struct Admission {
    share: Arc<FairShare>,
    webhook: WebhookId,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.share.release(&self.webhook);
    }
}

#[cfg(test)]
mod tests;
