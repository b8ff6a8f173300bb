//! Sending a round: each request not yet accepted, signed, through the sender; the
//! response hook and `outcome` decide what each attempt means.

use super::gate::Gate;
use super::outcome::{self, Judged, RetryRules, Round, RoundFacts};
use super::worker::{plus, PAUSED_WAIT};
use super::Pipeline;
use crate::catalog::request;
use crate::model::{
    Attempt, AttemptOutcome, Connection, Delivery, LogLine, Millis, OutboundRequest, ResponsePath,
    Webhook,
};
use crate::runtime::{wit, Call, LoadedPlugin, StateChange};
use crate::sender::SendResult;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

/// A round as it goes: who reads the answers, and what the attempts so far add up to.
struct Going {
    round: u32,
    hook: Option<Arc<LoadedPlugin>>,
    response_path: Option<ResponsePath>,
    facts: RoundFacts,
    report: Round,
    /// Whether any request was tried (a round that tried none is not counted).
    attempted: bool,
}

/// One request of a round to try, with its place in the delivery.
struct RequestAt<'a> {
    index: usize,
    request: &'a mut OutboundRequest,
}

impl Pipeline {
    /// Sends every request not yet accepted and decides the delivery's next state.
    pub(super) async fn send_round(
        &self,
        webhook: &Webhook,
        delivery: &mut Delivery,
        state: &mut Vec<StateChange>,
        hand_back: &mut watch::Receiver<bool>,
    ) -> Round {
        delivery.rounds += 1;
        let (hook, response_path) = self.answer_readers(webhook);
        let mut going = Going {
            round: delivery.rounds,
            hook,
            response_path,
            facts: RoundFacts::default(),
            report: Round::default(),
            attempted: false,
        };
        let mut requests = delivery.requests.take().unwrap_or_default();
        let mut held = None;
        for (index, request) in requests.iter_mut().enumerate() {
            if request.delivered {
                continue;
            }
            let attempt = RequestAt { index, request };
            held = self
                .attempt(delivery, attempt, &mut going, state, hand_back)
                .await;
            if held.is_some() {
                break;
            }
        }
        if let Some(again) = held {
            // Nothing more goes out now: the worker looks again when the webhook may send
            // (or at the next start, when handed back). A round that sent nothing is none.
            delivery.requests = Some(requests);
            delivery.rounds -= u32::from(!going.attempted);
            delivery.next_attempt_at = Some(again);
            delivery.updated_at = self.now();
            return going.report;
        }
        going.facts.all_delivered = requests.iter().all(|r| r.delivered);
        delivery.requests = Some(requests);
        outcome::settle(
            delivery,
            going.facts,
            &self.retry_rules(webhook),
            self.now(),
        );
        going.report
    }

    /// Sends one request of a round through the webhook as it is now, and judges the answer
    /// into `going`. Returns when to look again when the round stops here: the webhook is
    /// held back, or the host is handing work back at shutdown.
    async fn attempt(
        &self,
        delivery: &mut Delivery,
        attempt: RequestAt<'_>,
        going: &mut Going,
        state: &mut Vec<StateChange>,
        hand_back: &mut watch::Receiver<bool>,
    ) -> Option<Millis> {
        let RequestAt { index, request } = attempt;
        let round = going.round;
        let started_at = self.now();
        let (current, connection) = match self.gate(delivery, request) {
            Gate::Open {
                webhook,
                connection,
            } => (webhook, connection),
            Gate::Held => return Some(plus(self.now(), PAUSED_WAIT)),
            Gate::Stale(why) => {
                delivery
                    .attempts
                    .push(unsent(round, index, started_at, why.clone()));
                going.attempted = true;
                going.facts.failed_for_good = Some(why);
                return None;
            }
        };
        let webhook: &Webhook = &current;
        let span = attempt_span(delivery, webhook, index, round);
        let sending = self
            .send_signed(webhook, connection.as_deref(), request, started_at)
            .instrument(span.clone());
        let Some(result) = until_handed_back(sending, hand_back).await else {
            // The host is stopping: the answer is not waited for, and the next start sends
            // the request again.
            tracing::info!(delivery = %delivery.id, "handed back at shutdown");
            return Some(self.now());
        };
        going.attempted = true;
        if let Some(status) = result.status {
            span.record("status", status);
        }
        let answer = Answered {
            index,
            hook: going.hook.as_ref(),
            response_path: going.response_path.as_ref(),
        };
        let judged = self
            .judge_answer(webhook, delivery, state, answer, &result)
            .await;
        going.report.gone |= judged.gone;
        if judged.outcome == AttemptOutcome::Retry {
            going.facts.signals.note(
                result.status,
                result.error.as_ref(),
                &result.headers,
                self.now(),
            );
        }
        self.metrics.attempt(result.status, result.duration);
        delivery
            .attempts
            .push(sent(round, index, started_at, result, judged.outcome));
        request.delivered = judged.outcome == AttemptOutcome::Success;
        tally(judged, &mut going.facts, &mut going.report);
        None
    }

    /// What reads `webhook`'s answers besides their status: its plugin, when it has a
    /// response hook, and its `response_value` path (checked when the webhook was saved).
    fn answer_readers(
        &self,
        webhook: &Webhook,
    ) -> (Option<Arc<LoadedPlugin>>, Option<ResponsePath>) {
        let hook = self
            .plugin(&webhook.module_id)
            .ok()
            .filter(|p| p.has_response_hook());
        let response_path = webhook
            .response_value
            .as_ref()
            .and_then(|r| r.path.as_deref())
            .and_then(|p| ResponsePath::parse(p).ok());
        (hook, response_path)
    }

    /// How `webhook` retries: its own schedule or the host's, with the host's bounds.
    fn retry_rules<'a>(&'a self, webhook: &'a Webhook) -> RetryRules<'a> {
        let delivery = &self.config.delivery;
        RetryRules {
            schedule: webhook
                .retry_schedule
                .as_deref()
                .unwrap_or(&delivery.retry_schedule),
            jitter: delivery.jitter,
            slow_down_wait: delivery.slow_down_wait,
            max_retry_after: delivery.max_retry_after,
        }
    }

    /// What an answer means for its request: the status judged against the webhook, then
    /// the response hook's say (its state changes added to `state`, written with the
    /// delivery's outcome; its logs on the delivery), and on success the
    /// value kept from the answer (the hook's, or the webhook's `response_value` path).
    async fn judge_answer(
        &self,
        webhook: &Webhook,
        delivery: &mut Delivery,
        state: &mut Vec<StateChange>,
        answer: Answered<'_>,
        result: &SendResult,
    ) -> Judged {
        let mut judged = outcome::judge(result.status, result.error.as_ref(), |s| {
            webhook.is_success(s)
        });
        let mut hook_value = None;
        if let (Some(plugin), Some(status)) = (answer.hook, result.status) {
            let response = wit::Response {
                request_index: answer.index as u32,
                status,
                headers: result.headers.clone(),
                body: result.body.clone(),
            };
            let ctx = self.plugin_context(webhook);
            let call = Call::Response(response);
            let evaluation = self
                .run_plugin(webhook, delivery, plugin.clone(), ctx, call)
                .await;
            if evaluation.result.is_ok() {
                state.extend(evaluation.state_changes);
            }
            delivery.logs.extend(evaluation.logs);
            hook_value = outcome::apply_hook(&mut judged, &evaluation.result);
        }
        if judged.outcome == AttemptOutcome::Success {
            if hook_value.is_some() {
                delivery.extracted_value = hook_value;
            } else if let Some(path) = answer.response_path {
                match extract_value(path, &result.body) {
                    Ok(value) => delivery.extracted_value = Some(value),
                    Err(why) => delivery.logs.push(LogLine {
                        level: crate::model::LogLevel::Warn,
                        message: format!("response value: {why}"),
                    }),
                }
            }
        }
        judged
    }

    /// Sends one request with its Standard Webhooks timestamp and signature for `at`, through
    /// `webhook` and `connection` as they are now (see [`Pipeline::gate`]): a stored request
    /// keeps only what its plugin built; the connection's and webhook's headers, auth and
    /// signing secret are added here.
    pub(super) async fn send_signed(
        &self,
        webhook: &Webhook,
        connection: Option<&Connection>,
        request: &OutboundRequest,
        at: Millis,
    ) -> SendResult {
        let headers = request::compose_headers(
            &request::base_headers(webhook, connection),
            &request.headers,
        );
        let timestamp = (at.as_i64() / 1000).to_string();
        let message_id = request
            .headers
            .iter()
            .find(|(name, _)| name == "webhook-id")
            .map_or("", |(_, value)| value.as_str());
        let signature = self.catalog.signature(
            webhook,
            connection,
            message_id,
            at.as_i64() / 1000,
            &request.body,
        );
        let mut extra = vec![("webhook-timestamp", timestamp.as_str())];
        if let Some(signature) = &signature {
            extra.push(("webhook-signature", signature.as_str()));
        }
        self.sender
            .send(request, &headers, &extra, connection, webhook.timeout)
            .await
    }
}

/// The span of one HTTP attempt; its `status` is recorded when the answer comes.
fn attempt_span(delivery: &Delivery, webhook: &Webhook, index: usize, round: u32) -> tracing::Span {
    tracing::info_span!(
        "wasmhooks.attempt",
        delivery = %delivery.id,
        webhook = %webhook.id,
        request = index,
        round,
        status = tracing::field::Empty,
    )
}

/// Counts an attempt's outcome in the round's facts and report.
fn tally(judged: Judged, facts: &mut RoundFacts, report: &mut Round) {
    match judged.outcome {
        AttemptOutcome::Success => report.any_success = true,
        AttemptOutcome::Retry => {
            facts.last_failure = Some(judged.note);
            report.any_failure = true;
        }
        AttemptOutcome::Fail => {
            facts.failed_for_good = Some(judged.note);
            report.any_failure = true;
        }
    }
}

/// What `sending` answers, or `None` once the host hands the delivery back (shutdown).
async fn until_handed_back(
    sending: impl std::future::Future<Output = SendResult>,
    hand_back: &mut watch::Receiver<bool>,
) -> Option<SendResult> {
    tokio::select! {
        result = sending => Some(result),
        _ = hand_back.wait_for(|now| *now) => None,
    }
}

/// Which request an answer is for, and what reads it besides its status.
struct Answered<'a> {
    /// The request's index in the delivery.
    index: usize,
    /// The webhook's plugin, when it has a response hook.
    hook: Option<&'a Arc<LoadedPlugin>>,
    /// Where the webhook keeps a value from the answer.
    response_path: Option<&'a ResponsePath>,
}

/// The attempt recorded for a request that was sent.
fn sent(
    round: u32,
    index: usize,
    at: Millis,
    result: SendResult,
    outcome: AttemptOutcome,
) -> Attempt {
    Attempt {
        number: round,
        request_index: index as u32,
        started_at: at,
        duration_ms: result.duration.as_millis() as u64,
        status: result.status,
        error: result.error.map(|e| e.to_string()),
        response_headers: result.headers,
        response_body: String::from_utf8_lossy(&result.body).into_owned(),
        outcome,
    }
}

/// The attempt recorded for a request the host would not send as stored.
fn unsent(round: u32, index: usize, at: Millis, why: String) -> Attempt {
    Attempt {
        number: round,
        request_index: index as u32,
        started_at: at,
        duration_ms: 0,
        status: None,
        error: Some(why),
        response_headers: Vec::new(),
        response_body: String::new(),
        outcome: AttemptOutcome::Fail,
    }
}

/// The value at `path` in a JSON response body, or why there is none.
fn extract_value(path: &ResponsePath, body: &[u8]) -> Result<String, String> {
    let document: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the response is not JSON ({e}), so `{}` has no value",
            path.as_str()
        )
    })?;
    path.extract(&document)
        .ok_or_else(|| format!("`{}` is not in the response (or is null)", path.as_str()))
}
