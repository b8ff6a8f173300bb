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
//! Time is measured as how long a turn is held, from the grant to its end: what the others
//! were denied. It is CPU time unless the machine runs more than it has cores for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::config::FairShareConfig;
use crate::model::WebhookId;

/// The first wait of a webhook backing off.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait of a webhook backing off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The time over which the reported use per second is averaged.
const USAGE_WINDOW: Duration = Duration::from_secs(10);
/// A webhook idle this long, owing nothing, is forgotten (its figures start again at zero).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How often idle webhooks are looked for.
const FORGET_EVERY: Duration = Duration::from_secs(60);
/// How much a new turn weighs in a webhook's estimate of its turns' length.
const ESTIMATE_WEIGHT: f64 = 0.25;

/// Who an evaluation is for: its webhook, and the webhook's tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payer {
    /// The webhook.
    pub webhook: WebhookId,
    /// Its tenant (`None`: a webhook of the operator's, for every tenant).
    pub tenant: Option<String>,
}

/// Why a webhook's evaluations wait although turns may be free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleReason {
    /// The webhook used its budget (`webhook_cpu_per_second`).
    WebhookBudget,
    /// Its tenant used its budget (`tenant_cpu_per_second`).
    TenantBudget,
    /// Its evaluations keep hitting a sandbox limit.
    Backoff,
}

/// A webhook's throttle: why, and for how much longer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Throttle {
    /// Why it waits.
    pub reason: ThrottleReason,
    /// For how much longer, in milliseconds.
    pub for_ms: u64,
}

/// What one webhook has used, as the host saw it since it last started (or since the webhook
/// was idle for ten minutes).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Usage {
    /// The webhook.
    pub webhook_id: WebhookId,
    /// Its tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Evaluation time per second, in milliseconds, averaged over about ten seconds.
    pub cpu_ms_per_second: f64,
    /// Evaluations run.
    pub evaluations: u64,
    /// Evaluations that hit a sandbox limit.
    pub limit_hits: u64,
    /// The last evaluations that hit a limit, in a row.
    pub limit_hits_in_a_row: u32,
    /// Evaluations running now.
    pub running: usize,
    /// Evaluations waiting for a turn.
    pub waiting: usize,
    /// Why its evaluations wait although turns may be free, when they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled: Option<Throttle>,
}

/// All webhooks together.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Evaluations that may run at once.
    pub turns: usize,
    /// Evaluations running now.
    pub running: usize,
    /// Evaluations waiting for a turn.
    pub waiting: usize,
    /// Evaluation time per second of all webhooks, in milliseconds (about ten seconds).
    pub cpu_ms_per_second: f64,
    /// Webhooks whose evaluations wait for their budget or a back-off.
    pub throttled_webhooks: usize,
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
        let mut turn = self.start(&mut state, &payer.webhook, now);
        state.running -= 1;
        turn.counted = false;
        Some(turn)
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

    /// What `webhook` has used (all zero when nothing since the host started, or since it
    /// was forgotten).
    pub fn usage(&self, webhook: &WebhookId) -> Usage {
        let now = (self.now)();
        let state = self.state.lock().unwrap();
        if state.flows.contains_key(webhook) {
            return self.usage_of(&state, webhook, now);
        }
        Usage {
            webhook_id: webhook.clone(),
            tenant: None,
            cpu_ms_per_second: 0.0,
            evaluations: 0,
            limit_hits: 0,
            limit_hits_in_a_row: 0,
            running: 0,
            waiting: 0,
            throttled: None,
        }
    }

    /// What every webhook known has used, most first.
    pub fn usages(&self) -> Vec<Usage> {
        let now = (self.now)();
        let state = self.state.lock().unwrap();
        let mut all: Vec<Usage> = state
            .flows
            .keys()
            .map(|id| self.usage_of(&state, id, now))
            .collect();
        all.sort_by(|a, b| {
            b.cpu_ms_per_second
                .total_cmp(&a.cpu_ms_per_second)
                .then_with(|| a.webhook_id.cmp(&b.webhook_id))
        });
        all
    }

    /// All webhooks together.
    pub fn summary(&self) -> Summary {
        let now = (self.now)();
        let state = self.state.lock().unwrap();
        Summary {
            turns: self.turns,
            running: state.running,
            waiting: state.flows.values().map(|f| f.waiters.len()).sum(),
            cpu_ms_per_second: state.flows.values().map(|f| f.usage.per_second(now)).sum(),
            throttled_webhooks: state
                .flows
                .keys()
                .filter(|id| self.throttle(&state, id, now).is_some())
                .count(),
        }
    }

    fn usage_of(&self, state: &State, id: &WebhookId, now: Instant) -> Usage {
        let flow = &state.flows[id];
        Usage {
            webhook_id: id.clone(),
            tenant: flow.tenant.clone(),
            cpu_ms_per_second: (flow.usage.per_second(now) * 1000.0).round() / 1000.0,
            evaluations: flow.evaluations,
            limit_hits: flow.limit_hits,
            limit_hits_in_a_row: flow.streak,
            running: flow.running,
            waiting: flow.waiters.len(),
            throttled: self
                .throttle(state, id, now)
                .map(|(reason, until)| Throttle {
                    reason,
                    for_ms: until.saturating_duration_since(now).as_millis() as u64,
                }),
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
        state.running += 1;
        let flow = state.flows.get_mut(id).expect("started flows exist");
        flow.running += 1;
        let charged = flow.estimate;
        let tenant = flow.tenant.clone();
        state.pick(&tenant, id);
        state.flows.get_mut(id).expect("started flows exist").vtime += charged;
        if let Some(t) = state.tenants.get_mut(&tenant_key(&tenant)) {
            t.vtime += charged;
        }
        Turn {
            share: Some(self.clone()),
            webhook: id.clone(),
            started: now,
            charged,
            counted: true,
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

/// How a turn ended.
enum Ended {
    /// Dropped unfinished: its time is charged, nothing else.
    Dropped,
    /// Its evaluation ran; whether it hit a limit judges the webhook's streak.
    Judged(bool),
    /// Its evaluation ran and is counted, without a say on the streak.
    Unjudged(bool),
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

/// A budget as a rate: nanoseconds of evaluation per nanosecond, with a second's worth as
/// the most that can be saved up.
#[derive(Clone, Copy)]
struct Budget {
    rate: f64,
    burst: f64,
}

impl Budget {
    fn of(per_second: Duration) -> Option<Budget> {
        (!per_second.is_zero()).then(|| Budget {
            rate: per_second.as_nanos() as f64 / 1e9,
            burst: per_second.as_nanos() as f64,
        })
    }
}

/// Evaluation time left to spend, in nanoseconds (a token bucket; below zero is a debt).
#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Time spent beyond what refilled, as of `at` (so a new bucket is full).
    spent: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Spent time as of `now`: what refilled since is taken off.
    fn spent_at(&self, budget: Budget, now: Instant) -> f64 {
        let refilled = self.at.map_or(0.0, |at| {
            now.saturating_duration_since(at).as_nanos() as f64
        }) * budget.rate;
        (self.spent - refilled).max(0.0)
    }

    fn charge(&mut self, budget: Option<Budget>, used: Duration, now: Instant) {
        let Some(budget) = budget else { return };
        self.spent = self.spent_at(budget, now) + used.as_nanos() as f64;
        self.at = Some(now);
    }

    /// When the budget allows an evaluation again (`None`: now).
    fn ready_at(&self, budget: Budget, now: Instant) -> Option<Instant> {
        let over = self.spent_at(budget, now) - budget.burst;
        (over > 0.0).then(|| now + Duration::from_nanos((over / budget.rate).ceil() as u64 + 1))
    }

    fn owes(&self, budget: Option<Budget>, now: Instant) -> bool {
        budget.is_some_and(|b| self.spent_at(b, now) > 0.0)
    }
}

/// Use per second, decaying over [`USAGE_WINDOW`].
#[derive(Clone, Copy, Default)]
struct Rate {
    /// Milliseconds per second as of `at`.
    value: f64,
    at: Option<Instant>,
}

impl Rate {
    fn per_second(&self, now: Instant) -> f64 {
        let Some(at) = self.at else { return 0.0 };
        let age = now.saturating_duration_since(at).as_secs_f64();
        self.value * (-age / USAGE_WINDOW.as_secs_f64()).exp()
    }

    fn add(&mut self, used: Duration, now: Instant) {
        let ms = used.as_secs_f64() * 1000.0;
        self.value = self.per_second(now) + ms / USAGE_WINDOW.as_secs_f64();
        self.at = Some(now);
    }
}

/// One webhook in the queue.
struct Flow {
    tenant: Option<String>,
    /// Evaluation time charged, in nanoseconds, from where it last came back from idling.
    vtime: f64,
    waiters: VecDeque<oneshot::Sender<Turn>>,
    running: usize,
    /// Deliveries admitted whose evaluation is not done.
    admitted: usize,
    /// A delivery was refused admission: wake the scheduler when one is released.
    capped: bool,
    /// How long its turns take, in nanoseconds (a moving average).
    estimate: f64,
    bucket: Bucket,
    streak: u32,
    backoff_until: Option<Instant>,
    usage: Rate,
    evaluations: u64,
    limit_hits: u64,
    touched: Instant,
}

/// One tenant (or the operator's webhooks for every tenant, keyed `""`).
#[derive(Default)]
struct Tenant {
    vtime: f64,
    /// The virtual time of its webhook last picked: where one coming back starts.
    floor: f64,
    /// Its webhooks waiting or running.
    active: usize,
    bucket: Bucket,
}

#[derive(Default)]
struct State {
    running: usize,
    flows: HashMap<WebhookId, Flow>,
    tenants: HashMap<String, Tenant>,
    /// Webhooks with waiters.
    waiting: HashSet<WebhookId>,
    /// The virtual time of the tenant last picked: where one coming back starts.
    floor: f64,
    /// When the first throttled waiter may run.
    next_ready: Option<Instant>,
    /// No more turns are granted to waiters.
    closed: bool,
    forgotten_at: Option<Instant>,
}

/// Operator webhooks (no tenant) share one tenant entry; tenant names are never empty.
fn tenant_key(tenant: &Option<String>) -> String {
    tenant.clone().unwrap_or_default()
}

impl State {
    /// Makes sure `payer`'s webhook is known, under its current tenant.
    fn flow(&mut self, payer: &Payer, now: Instant) {
        if let Some(flow) = self.flows.get_mut(&payer.webhook) {
            flow.touched = now;
            if flow.tenant == payer.tenant {
                return;
            }
            // Moved to another tenant: it starts anew there once idle.
            if flow.running == 0 && flow.waiters.is_empty() {
                flow.tenant = payer.tenant.clone();
            }
            return;
        }
        self.flows.insert(
            payer.webhook.clone(),
            Flow {
                tenant: payer.tenant.clone(),
                vtime: 0.0,
                waiters: VecDeque::new(),
                running: 0,
                admitted: 0,
                capped: false,
                estimate: 0.0,
                bucket: Bucket::default(),
                streak: 0,
                backoff_until: None,
                usage: Rate::default(),
                evaluations: 0,
                limit_hits: 0,
                touched: now,
            },
        );
        self.tenants.entry(tenant_key(&payer.tenant)).or_default();
    }

    fn tenant_vtime(&self, tenant: &Option<String>) -> f64 {
        self.tenants
            .get(&tenant_key(tenant))
            .map_or(0.0, |t| t.vtime)
    }

    /// Marks a webhook active before it waits or runs: one coming back from idling starts at
    /// the virtual time of the last picked, as does its tenant.
    fn activate(&mut self, id: &WebhookId) {
        let flow = self.flows.get_mut(id).expect("known flows");
        if flow.running > 0 || !flow.waiters.is_empty() {
            return;
        }
        let tenant = self.tenants.entry(tenant_key(&flow.tenant)).or_default();
        flow.vtime = flow.vtime.max(tenant.floor);
        if tenant.active == 0 {
            tenant.vtime = tenant.vtime.max(self.floor);
        }
        tenant.active += 1;
    }

    fn deactivate_if_idle(&mut self, id: &WebhookId) {
        let flow = &self.flows[id];
        if flow.running == 0 && flow.waiters.is_empty() {
            if let Some(tenant) = self.tenants.get_mut(&tenant_key(&flow.tenant)) {
                tenant.active = tenant.active.saturating_sub(1);
            }
        }
    }

    fn enqueue(&mut self, id: &WebhookId, sender: oneshot::Sender<Turn>) {
        self.activate(id);
        self.flows
            .get_mut(id)
            .expect("known flows")
            .waiters
            .push_back(sender);
        self.waiting.insert(id.clone());
    }

    /// Notes the pick as where comers-back start.
    fn pick(&mut self, tenant: &Option<String>, id: &WebhookId) {
        let vtime = self.flows[id].vtime;
        if let Some(t) = self.tenants.get_mut(&tenant_key(tenant)) {
            t.floor = t.floor.max(vtime);
            self.floor = self.floor.max(t.vtime);
        }
    }

    /// Ends a turn: corrects the charge to the time used, spends the budgets, and keeps the
    /// limit streak and back-off. Returns the streak.
    fn finish(
        &mut self,
        config: &FairShareConfig,
        id: &WebhookId,
        charged: f64,
        used: Duration,
        ended: Ended,
        now: Instant,
    ) -> u32 {
        let Some(flow) = self.flows.get_mut(id) else {
            return 0;
        };
        flow.running = flow.running.saturating_sub(1);
        let used_ns = used.as_nanos() as f64;
        flow.vtime += used_ns - charged;
        flow.estimate += ESTIMATE_WEIGHT * (used_ns - flow.estimate);
        flow.bucket
            .charge(Budget::of(config.webhook_cpu_per_second), used, now);
        flow.usage.add(used, now);
        flow.touched = now;
        match ended {
            Ended::Dropped => {}
            Ended::Unjudged(hit) => {
                flow.evaluations += 1;
                flow.limit_hits += u64::from(hit);
            }
            Ended::Judged(true) => {
                flow.evaluations += 1;
                flow.limit_hits += 1;
                flow.streak = flow.streak.saturating_add(1);
                if let Some(wait) = backoff(config.backoff_after_limit_hits, flow.streak) {
                    flow.backoff_until = Some(now + wait);
                }
            }
            Ended::Judged(false) => {
                flow.evaluations += 1;
                flow.streak = 0;
                flow.backoff_until = None;
            }
        }
        let streak = flow.streak;
        let tenant = flow.tenant.clone();
        if let Some(t) = self.tenants.get_mut(&tenant_key(&tenant)) {
            t.vtime += used_ns - charged;
            if tenant.is_some() {
                t.bucket
                    .charge(Budget::of(config.tenant_cpu_per_second), used, now);
            }
        }
        self.deactivate_if_idle(id);
        streak
    }

    /// Forgets webhooks idle for [`FORGET_AFTER`] that owe nothing, and tenants left without
    /// webhooks.
    fn forget_idle(&mut self, config: &FairShareConfig, now: Instant) {
        if self
            .forgotten_at
            .is_some_and(|t| now.saturating_duration_since(t) < FORGET_EVERY)
        {
            return;
        }
        self.forgotten_at = Some(now);
        let webhook_budget = Budget::of(config.webhook_cpu_per_second);
        self.flows.retain(|_, f| {
            f.running > 0
                || !f.waiters.is_empty()
                || f.admitted > 0
                || f.backoff_until.is_some_and(|t| t > now)
                || f.bucket.owes(webhook_budget, now)
                || now.saturating_duration_since(f.touched) < FORGET_AFTER
        });
        let tenant_budget = Budget::of(config.tenant_cpu_per_second);
        let used: HashSet<String> = self.flows.values().map(|f| tenant_key(&f.tenant)).collect();
        self.tenants
            .retain(|key, t| used.contains(key) || t.bucket.owes(tenant_budget, now));
    }
}

/// How long a webhook waits after its `streak`-th limit hit in a row (`None`: not at all).
pub fn backoff(after: u32, streak: u32) -> Option<Duration> {
    if after == 0 || streak < after {
        return None;
    }
    let doublings = (streak - after).min(16);
    Some(
        FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF),
    )
}

#[cfg(test)]
mod tests;
