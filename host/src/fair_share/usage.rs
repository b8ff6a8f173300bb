//! What each webhook has used, and all of them together, as the API shows it.

use std::time::Instant;

use super::accounts::State;
use super::FairShare;
use crate::model::WebhookId;

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

impl FairShare {
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
}
