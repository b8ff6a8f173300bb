//! The fair queue's books: per webhook (a flow) and per tenant, the virtual time charged,
//! the budget spent, the use per second, the limit streak and the back-off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Payer, Turn};
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

/// How a turn ended.
pub(super) enum Ended {
    /// Dropped unfinished: its time is charged, nothing else.
    Dropped,
    /// Its evaluation ran; whether it hit a limit judges the webhook's streak.
    Judged(bool),
    /// Its evaluation ran and is counted, without a say on the streak.
    Unjudged(bool),
}

/// A budget as a rate: nanoseconds of evaluation per nanosecond, with a second's worth as
/// the most that can be saved up.
#[derive(Clone, Copy)]
pub(super) struct Budget {
    pub(super) rate: f64,
    pub(super) burst: f64,
}

impl Budget {
    pub(super) fn of(per_second: Duration) -> Option<Budget> {
        (!per_second.is_zero()).then(|| Budget {
            rate: per_second.as_nanos() as f64 / 1e9,
            burst: per_second.as_nanos() as f64,
        })
    }
}

/// Evaluation time left to spend, in nanoseconds (a token bucket; below zero is a debt).
#[derive(Clone, Copy, Default)]
pub(super) struct Bucket {
    /// Time spent beyond what refilled, as of `at` (so a new bucket is full).
    pub(super) spent: f64,
    pub(super) at: Option<Instant>,
}

impl Bucket {
    /// Spent time as of `now`: what refilled since is taken off.
    pub(super) fn spent_at(&self, budget: Budget, now: Instant) -> f64 {
        let refilled = self.at.map_or(0.0, |at| {
            now.saturating_duration_since(at).as_nanos() as f64
        }) * budget.rate;
        (self.spent - refilled).max(0.0)
    }

    pub(super) fn charge(&mut self, budget: Option<Budget>, used: Duration, now: Instant) {
        let Some(budget) = budget else { return };
        self.spent = self.spent_at(budget, now) + used.as_nanos() as f64;
        self.at = Some(now);
    }

    /// When the budget allows an evaluation again (`None`: now).
    pub(super) fn ready_at(&self, budget: Budget, now: Instant) -> Option<Instant> {
        let over = self.spent_at(budget, now) - budget.burst;
        (over > 0.0).then(|| now + Duration::from_nanos((over / budget.rate).ceil() as u64 + 1))
    }

    pub(super) fn owes(&self, budget: Option<Budget>, now: Instant) -> bool {
        budget.is_some_and(|b| self.spent_at(b, now) > 0.0)
    }
}

/// Use per second, decaying over [`USAGE_WINDOW`].
#[derive(Clone, Copy, Default)]
pub(super) struct Rate {
    /// Milliseconds per second as of `at`.
    pub(super) value: f64,
    pub(super) at: Option<Instant>,
}

impl Rate {
    pub(super) fn per_second(&self, now: Instant) -> f64 {
        let Some(at) = self.at else { return 0.0 };
        let age = now.saturating_duration_since(at).as_secs_f64();
        self.value * (-age / USAGE_WINDOW.as_secs_f64()).exp()
    }

    pub(super) fn add(&mut self, used: Duration, now: Instant) {
        let ms = used.as_secs_f64() * 1000.0;
        self.value = self.per_second(now) + ms / USAGE_WINDOW.as_secs_f64();
        self.at = Some(now);
    }
}

/// One webhook in the queue.
pub(super) struct Flow {
    pub(super) tenant: Option<String>,
    /// Evaluation time charged, in nanoseconds, from where it last came back from idling.
    pub(super) vtime: f64,
    pub(super) waiters: VecDeque<oneshot::Sender<Turn>>,
    pub(super) running: usize,
    /// Deliveries admitted whose evaluation is not done.
    pub(super) admitted: usize,
    /// A delivery was refused admission: wake the scheduler when one is released.
    pub(super) capped: bool,
    /// How long its turns take, in nanoseconds (a moving average).
    pub(super) estimate: f64,
    pub(super) bucket: Bucket,
    pub(super) streak: u32,
    pub(super) backoff_until: Option<Instant>,
    pub(super) usage: Rate,
    pub(super) evaluations: u64,
    pub(super) limit_hits: u64,
    pub(super) touched: Instant,
}

/// One tenant (or the operator's webhooks for every tenant, keyed `""`).
#[derive(Default)]
pub(super) struct Tenant {
    pub(super) vtime: f64,
    /// The virtual time of its webhook last picked: where one coming back starts.
    pub(super) floor: f64,
    /// Its webhooks waiting or running.
    pub(super) active: usize,
    pub(super) bucket: Bucket,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) running: usize,
    pub(super) flows: HashMap<WebhookId, Flow>,
    pub(super) tenants: HashMap<String, Tenant>,
    /// Webhooks with waiters.
    pub(super) waiting: HashSet<WebhookId>,
    /// The virtual time of the tenant last picked: where one coming back starts.
    pub(super) floor: f64,
    /// When the first throttled waiter may run.
    pub(super) next_ready: Option<Instant>,
    /// No more turns are granted to waiters.
    pub(super) closed: bool,
    pub(super) forgotten_at: Option<Instant>,
}

/// Operator webhooks (no tenant) share one tenant entry; tenant names are never empty.
pub(super) fn tenant_key(tenant: &Option<String>) -> String {
    tenant.clone().unwrap_or_default()
}

impl State {
    /// Makes sure `payer`'s webhook is known, under its current tenant.
    pub(super) fn flow(&mut self, payer: &Payer, now: Instant) {
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

    pub(super) fn tenant_vtime(&self, tenant: &Option<String>) -> f64 {
        self.tenants
            .get(&tenant_key(tenant))
            .map_or(0.0, |t| t.vtime)
    }

    /// Marks a webhook active before it waits or runs: one coming back from idling starts at
    /// the virtual time of the last picked, as does its tenant.
    pub(super) fn activate(&mut self, id: &WebhookId) {
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

    pub(super) fn deactivate_if_idle(&mut self, id: &WebhookId) {
        let flow = &self.flows[id];
        if flow.running == 0 && flow.waiters.is_empty() {
            if let Some(tenant) = self.tenants.get_mut(&tenant_key(&flow.tenant)) {
                tenant.active = tenant.active.saturating_sub(1);
            }
        }
    }

    pub(super) fn enqueue(&mut self, id: &WebhookId, sender: oneshot::Sender<Turn>) {
        self.activate(id);
        self.flows
            .get_mut(id)
            .expect("known flows")
            .waiters
            .push_back(sender);
        self.waiting.insert(id.clone());
    }

    /// Notes the pick as where comers-back start.
    pub(super) fn pick(&mut self, tenant: &Option<String>, id: &WebhookId) {
        let vtime = self.flows[id].vtime;
        if let Some(t) = self.tenants.get_mut(&tenant_key(tenant)) {
            t.floor = t.floor.max(vtime);
            self.floor = self.floor.max(t.vtime);
        }
    }

    /// Ends a turn: corrects the charge to the time used, spends the budgets, and keeps the
    /// limit streak and back-off. Returns the streak.
    pub(super) fn finish(
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
    pub(super) fn forget_idle(&mut self, config: &FairShareConfig, now: Instant) {
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
