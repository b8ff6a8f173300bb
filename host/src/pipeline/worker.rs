//! The scheduler and the life of one delivery.
//!
//! The scheduler sweeps the due queue in due order, stages due deliveries in memory per
//! endpoint, and starts them as their endpoint and `max_in_flight` allow. A delivery keeps
//! its queue entry until its new state is written: the new entry goes in before the record
//! and the old one comes out after it (in one transaction for in-order and collecting
//! deliveries), so a crash at any point leaves it queued (at-least-once).
//!
//! One delivery: evaluate the plugin once (its requests are stored with the first round, so
//! retries resend the same bytes and the plugin never runs again), then send every request
//! not yet accepted, then decide in one place: delivered, failed, dead, or pending with the
//! next retry time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use super::outcome::{self, RetryRules, Round, RoundFacts};
use super::staging::{Endpoint, QueueView};
use super::{endpoints, request, to_wit_event, Pipeline};
use crate::model::{
    Attempt, AttemptOutcome, Delivery, DeliveryId, DeliveryStatus, EventId, LogLine, Millis,
    OutboundRequest, ResponsePath, Webhook, WebhookId,
};
use crate::runtime::{wit, Answer, Call};
use crate::storage::{Claim, QueueEntry, StorageError};

/// How long the scheduler sleeps at most when nothing wakes it.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How long a paused webhook's delivery waits before it is looked at again.
const PAUSED_WAIT: Duration = Duration::from_secs(60);
/// How long an in-order delivery waits at least before it looks again at the delivery ahead.
const IN_ORDER_WAIT: Duration = Duration::from_millis(200);
/// Added to the longest a step of a delivery can take, for how long a claim lasts.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);
/// How long a delivery waits after a storage error before it is tried again.
const STORAGE_ERROR_WAIT: Duration = Duration::from_secs(5);

fn plus(t: Millis, d: Duration) -> Millis {
    t.saturating_add(d)
}

/// The queue as the staging reads it: the store's, with the pipeline's webhooks and the
/// deliveries in flight.
struct StoreView<'a>(&'a Pipeline);

impl QueueView for StoreView<'_> {
    fn entries<'a>(
        &'a self,
        from: std::ops::Bound<&[u8]>,
    ) -> Box<dyn Iterator<Item = Result<QueueEntry, StorageError>> + 'a> {
        Box::new(self.0.store.due_from(from))
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StorageError> {
        self.0.store.queue_contains(key)
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

impl Pipeline {
    /// Runs the scheduler until `shutdown` turns true; then waits for deliveries in flight.
    pub async fn run_scheduler(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let max = self.config.delivery.max_in_flight;
        let permits = Arc::new(Semaphore::new(max));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = match self.start_due(&permits) {
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
        // Let deliveries in flight finish their current step.
        let _ = permits.acquire_many(max as u32).await;
    }

    /// Starts every due delivery there is room for — overall (`max_in_flight`) and at its
    /// endpoint (concurrency and rate) — and returns how long to wait before looking again.
    ///
    /// Due deliveries are first *staged*: read from the queue into an in-memory line per
    /// endpoint (see [`staging`](super::staging): each queue entry is read about once, however
    /// long the backlog). Starting work then pops from the lines of endpoints with room, so
    /// one slow receiver holds back only its own line.
    fn start_due(self: &Arc<Self>, permits: &Arc<Semaphore>) -> Result<Duration, StorageError> {
        let now = self.now();
        let mut wait = IDLE_WAIT;
        let mut staging = self.staging.lock().unwrap();
        staging.stage(&StoreView(self), now, std::time::Instant::now(), &mut wait)?;

        let mut started = Vec::new();
        'lines: for (endpoint, line) in staging.lines_mut() {
            while let Some((due, id)) = line.front().cloned() {
                if permits.available_permits() == 0 {
                    break 'lines;
                }
                if let Some(endpoint) = endpoint {
                    match self
                        .endpoints
                        .try_start(endpoint, std::time::Instant::now())
                    {
                        Ok(()) => {}
                        Err(endpoints::Busy::Full) => continue 'lines,
                        Err(endpoints::Busy::RateLimited(token)) => {
                            wait = wait.min(token.max(Duration::from_millis(1)));
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
                line.pop_front();
                self.in_flight.lock().unwrap().insert(id.clone(), due);
                started.push(id.clone());
                self.spawn_delivery(due, id, endpoint.clone(), permit);
            }
        }
        staging.started(&started);
        Ok(wait)
    }

    /// Runs one delivery on its own task; when it ends, frees its endpoint and permit and
    /// wakes the scheduler.
    fn spawn_delivery(
        self: &Arc<Self>,
        due: Millis,
        id: DeliveryId,
        endpoint: Option<Arc<str>>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        let span = tracing::info_span!("wasmhooks.delivery", delivery = %id);
        tokio::spawn(
            async move {
                if let Err(e) = this.process(due, &id).await {
                    tracing::error!("storage error, will retry: {e}");
                    this.postpone(due, &id);
                }
                if let Some(endpoint) = &endpoint {
                    this.endpoints.finish(endpoint);
                }
                this.in_flight.lock().unwrap().remove(&id);
                drop(permit);
                this.wake.notify_one();
            }
            .instrument(span),
        );
    }

    /// Forgets the endpoints worked out per webhook (after a webhook or connection changed).
    pub(super) fn forget_endpoints(&self) {
        self.staging.lock().unwrap().forget_endpoints();
    }

    fn postpone(&self, due: Millis, id: &DeliveryId) {
        let result = self.store.delivery(id).and_then(|d| match d {
            Some(mut d) if !d.status.is_final() => {
                d.next_attempt_at = Some(plus(self.now(), STORAGE_ERROR_WAIT));
                self.store.update_delivery(&d, Some(due))
            }
            _ => self.store.remove_queue_entry(due, id),
        });
        if let Err(e) = result {
            // Its queue entry stays where it was; the next sweep from the head of the queue
            // (within `staging::FULL_SWEEP_EVERY`) finds it again.
            tracing::error!("could not postpone: {e}");
        }
    }

    /// Moves one delivery a step forward, under a claim: nothing is written for it unless
    /// the claim still holds.
    async fn process(&self, due: Millis, id: &DeliveryId) -> Result<(), StorageError> {
        let now = self.now();
        let until = plus(now, self.claim_for());
        let Some((claim, mut delivery)) = self.store.claim(id, due, self.holder, until, now)?
        else {
            // Gone, finished, moved on (its stale entry is dropped), or another holder's.
            return Ok(());
        };
        delivery.updated_at = now;
        let Some(webhook) = self.webhook_cached(&delivery.webhook_id) else {
            outcome::end(
                &mut delivery,
                DeliveryStatus::Failed,
                "the webhook was deleted".into(),
            );
            return self.finish_claimed(&claim, &delivery);
        };
        if !webhook.enabled {
            delivery.next_attempt_at = Some(plus(now, PAUSED_WAIT));
            return self.finish_claimed(&claim, &delivery);
        }
        if let Some(schedule) = &webhook.schedule {
            // Checked when the webhook was saved; a zone that no longer resolves sends now.
            let opening = schedule.check().ok().and_then(|s| s.next_opening(now));
            if let Some(opening) = opening {
                delivery.next_attempt_at = Some(opening);
                return self.finish_claimed(&claim, &delivery);
            }
        }

        if delivery.in_order {
            if let Some(first) = self.store.first_in_line(&delivery)? {
                if first != delivery.id {
                    // An earlier delivery of the entity is unfinished: go after its next
                    // attempt (and look again soon while it is in flight).
                    let earlier = self.store.delivery(&first)?;
                    let after = earlier
                        .and_then(|d| d.next_attempt_at)
                        .map_or(now, |t| plus(t, Duration::from_millis(1)));
                    delivery.next_attempt_at = Some(after.max(plus(now, IN_ORDER_WAIT)));
                    return self.finish_claimed(&claim, &delivery);
                }
            }
        }
        if delivery.requests.is_none() {
            let collecting =
                (delivery.entity.is_some() && !delivery.in_order) || delivery.batch_limit > 1;
            if collecting && !self.store.close(&claim, &delivery)? {
                // A newer event changed it meanwhile; it is queued again as it is now.
                return Ok(());
            }
            match self.evaluate(&webhook, &mut delivery).await? {
                Some((requests, wrote_state)) => {
                    delivery.requests = Some(requests);
                    // When the evaluation changed plugin state, keep the built bytes before
                    // sending: after a crash the plugin would decide anew on state that
                    // already holds this event's change. Without state changes deciding
                    // again gives the same requests, and the write is saved.
                    if wrote_state && !self.store.finish(&claim, &delivery, true)? {
                        self.claim_lost(&delivery);
                        return Ok(());
                    }
                }
                None => return self.finish_claimed(&claim, &delivery),
            }
        }

        let round = self.send_round(&webhook, &mut delivery).await;
        if delivery.status == DeliveryStatus::Delivered {
            // Emitted before the delivery is recorded as delivered, under an id made from
            // the delivery's: a crash in between resends, and the event is not doubled.
            self.emit_response_event(&webhook, &mut delivery).await?;
        }
        self.finish_claimed(&claim, &delivery)?;
        self.after_round(&webhook, &delivery, &round).await;
        Ok(())
    }

    /// How long a claim lasts: longer than a delivery's round can take (the plugin's time,
    /// then each request it may build, one after another, up to its timeout), with room to
    /// spare.
    fn claim_for(&self) -> Duration {
        let limits = &self.config.plugin.max_limits;
        let requests = u32::try_from(limits.requests).unwrap_or(u32::MAX);
        CLAIM_MARGIN
            .saturating_add(limits.cpu_time)
            .saturating_add(self.config.delivery.timeout.saturating_mul(requests))
    }

    /// Writes a claimed delivery's new state and ends the claim.
    fn finish_claimed(&self, claim: &Claim, delivery: &Delivery) -> Result<(), StorageError> {
        if !self.store.finish(claim, delivery, false)? {
            self.claim_lost(delivery);
        }
        Ok(())
    }

    /// Another holder claimed the delivery after this one's claim lapsed: its work stands.
    fn claim_lost(&self, delivery: &Delivery) {
        tracing::warn!(
            delivery = %delivery.id,
            "the claim lapsed and another holder took the delivery; this result is dropped"
        );
    }

    /// What a round means for its webhook: a success ends a failure streak; the first
    /// failure starts one; 410 Gone, or a delivery dying after failing for longer than
    /// `auto_disable_after`, disables the webhook and emits `webhook.disabled`.
    async fn after_round(&self, webhook: &Webhook, delivery: &Delivery, round: &Round) {
        let limit = self.config.delivery.auto_disable_after;
        let change = outcome::after_round(webhook, delivery, round, limit, self.now());
        // The common case changes nothing: skip the webhook lock and copy.
        if change.is_none() {
            return;
        }
        let result = self.change_webhook(&webhook.id, |w| {
            if let Some(failing_since) = change.failing_since {
                w.failing_since = failing_since;
            }
            if let Some(reason) = &change.disable {
                if w.enabled {
                    w.enabled = false;
                    w.disabled_reason = Some(reason.clone());
                }
            }
        });
        match result {
            Ok(Some(changed)) if !changed.enabled && webhook.enabled => {
                let reason = changed.disabled_reason.clone().unwrap_or_default();
                tracing::warn!(webhook = %changed.id, "disabled: {reason}");
                self.emit_webhook_disabled(&changed, &reason).await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(webhook = %webhook.id, "recording the failure streak: {e}"),
        }
    }

    /// Emits `webhook.response` for a delivered delivery with a value, when its webhook
    /// asks for it. Attributes `webhook_id`, `delivery_id` and `depth` (how many follow-ups
    /// led here); a chain stops at [`MAX_RESPONSE_DEPTH`] with a log line.
    async fn emit_response_event(
        &self,
        webhook: &Webhook,
        delivery: &mut Delivery,
    ) -> Result<(), StorageError> {
        let emit = webhook
            .response_value
            .as_ref()
            .is_some_and(|r| r.emit_event);
        let Some(value) = delivery.extracted_value.clone().filter(|_| emit) else {
            return Ok(());
        };
        let cause = self
            .store
            .event(delivery.events_tenant(), &delivery.event_id)?;
        let depth = cause
            .as_ref()
            .filter(|e| e.kind == RESPONSE_EVENT)
            .and_then(|e| {
                e.attributes
                    .iter()
                    .find(|(k, _)| k == "depth")
                    .map(|(_, v)| v.as_str())
            })
            .and_then(|d| d.parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        if depth > MAX_RESPONSE_DEPTH {
            delivery.logs.push(LogLine {
                level: "warn".into(),
                message: format!(
                    "{RESPONSE_EVENT} not emitted: {MAX_RESPONSE_DEPTH} follow-ups in a row \
                     (a loop of webhooks answering each other?)"
                ),
            });
            return Ok(());
        }
        let payload = serde_json::json!({
            "webhook_id": webhook.id,
            "webhook_name": webhook.name,
            "delivery_id": delivery.id,
            "event_id": delivery.event_id,
            "event_kind": cause.as_ref().map(|e| e.kind.as_str()),
            "value": value,
        });
        let id = EventId::parse(&format!("evt_response_{}", delivery.id))
            .expect("delivery ids make valid event ids");
        let attributes = [
            ("webhook_id", webhook.id.to_string()),
            ("delivery_id", delivery.id.to_string()),
            ("depth", depth.to_string()),
        ];
        let input = super::EventInput {
            id: Some(id.to_string()),
            kind: RESPONSE_EVENT.into(),
            tenant: webhook.tenant.clone(),
            occurred_at: None,
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect(),
            payload: serde_json::value::to_raw_value(&payload).expect("payload serialises"),
        };
        match self
            .emit_from(vec![input], super::ingest::Origin::Host)
            .await
        {
            Ok(_) => Ok(()),
            Err(super::Error::Store(e)) => Err(e),
            Err(e) => {
                // A value too large for an event, say: the delivery keeps it; say why.
                delivery.logs.push(LogLine {
                    level: "warn".into(),
                    message: format!("{RESPONSE_EVENT} not emitted: {e}"),
                });
                Ok(())
            }
        }
    }

    /// Emits `webhook.disabled` (attribute `webhook_id`; payload id, name, reason) so host
    /// applications and other webhooks can react.
    async fn emit_webhook_disabled(&self, webhook: &Webhook, reason: &str) {
        let payload = serde_json::json!({
            "webhook_id": webhook.id,
            "name": webhook.name,
            "reason": reason,
        });
        let input = super::EventInput {
            id: None,
            kind: "webhook.disabled".into(),
            tenant: webhook.tenant.clone(),
            occurred_at: None,
            attributes: [("webhook_id".to_string(), webhook.id.to_string().into())]
                .into_iter()
                .collect(),
            payload: serde_json::value::to_raw_value(&payload).expect("payload serialises"),
        };
        if let Err(e) = self
            .emit_from(vec![input], super::ingest::Origin::Host)
            .await
        {
            tracing::error!(webhook = %webhook.id, "emitting webhook.disabled: {e}");
        }
    }

    /// Runs the plugin on the delivery's event. Returns the built requests, or `None` when the
    /// delivery ended here (skipped or failed; its status says which).
    async fn evaluate(
        &self,
        webhook: &Webhook,
        delivery: &mut Delivery,
    ) -> Result<Option<(Vec<OutboundRequest>, bool)>, StorageError> {
        let call = if delivery.batch_events.is_empty() {
            let tenant = delivery.events_tenant();
            let Some(event) = self.store.event(tenant, &delivery.event_id)? else {
                outcome::end(
                    delivery,
                    DeliveryStatus::Failed,
                    "the event is missing".into(),
                );
                return Ok(None);
            };
            Call::Event(to_wit_event(&event))
        } else {
            let mut events = Vec::with_capacity(delivery.batch_events.len());
            for id in &delivery.batch_events {
                let Some(event) = self.store.event(delivery.events_tenant(), id)? else {
                    outcome::end(
                        delivery,
                        DeliveryStatus::Failed,
                        format!("event {id} of the batch is missing"),
                    );
                    return Ok(None);
                };
                events.push(to_wit_event(&event));
            }
            Call::Batch(events)
        };
        let module = &webhook.module_id;
        let plugin = match self.plugin(module) {
            Ok(plugin) => plugin,
            Err(e) => {
                outcome::end(
                    delivery,
                    DeliveryStatus::Failed,
                    format!("loading module {module}: {e}"),
                );
                return Ok(None);
            }
        };
        let ctx = self.plugin_context(webhook);
        let evaluation = self
            .run_plugin(plugin, ctx, call)
            .instrument(tracing::info_span!("wasmhooks.plugin", module = %webhook.module_id))
            .await;
        self.keep_state(webhook, &evaluation);
        let wrote_state = evaluation.result.is_ok() && !evaluation.state_changes.is_empty();
        delivery.logs = evaluation.logs;
        match evaluation.result {
            Err(e) => {
                outcome::end(delivery, DeliveryStatus::Failed, e.to_string());
                Ok(None)
            }
            Ok(Answer::Verdict(_)) => {
                outcome::end(
                    delivery,
                    DeliveryStatus::Failed,
                    "plugin answered a verdict to an event".into(),
                );
                Ok(None)
            }
            Ok(Answer::Decision(wit::Decision::Skip(reason))) => {
                delivery.skip_reason = Some(reason);
                delivery.status = DeliveryStatus::Skipped;
                delivery.next_attempt_at = None;
                Ok(None)
            }
            Ok(Answer::Decision(wit::Decision::Send(requests))) => {
                if requests.is_empty() {
                    delivery.skip_reason = Some("the plugin sent no requests".into());
                    delivery.status = DeliveryStatus::Skipped;
                    delivery.next_attempt_at = None;
                    return Ok(None);
                }
                let built: Result<Vec<_>, String> = self.target(webhook).and_then(|target| {
                    requests
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| request::build(&target, &delivery.id, i, r))
                        .collect()
                });
                match built {
                    Ok(built) => Ok(Some((built, wrote_state))),
                    Err(e) => {
                        outcome::end(delivery, DeliveryStatus::Failed, e);
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Evaluates on this thread when the plugin has proven quick, else on a blocking thread
    /// (see [`crate::runtime::Runtime::quick_slot`]).
    async fn run_plugin(
        &self,
        plugin: Arc<crate::runtime::LoadedPlugin>,
        ctx: crate::runtime::PluginContext,
        call: Call,
    ) -> crate::runtime::Evaluation {
        if let Some(slot) = self.runtime.quick_slot(&plugin) {
            return self.runtime.evaluate_quick(slot, &plugin, ctx, call);
        }
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.evaluate(&plugin, ctx, call))
            .await
            .expect("plugin evaluation does not panic")
    }

    /// Sends every request not yet accepted and decides the delivery's next state.
    async fn send_round(&self, webhook: &Webhook, delivery: &mut Delivery) -> Round {
        let mut report = Round::default();
        let mut facts = RoundFacts::default();
        delivery.rounds += 1;
        let round = delivery.rounds;
        let hook = self
            .plugin(&webhook.module_id)
            .ok()
            .filter(|p| p.has_response_hook());
        // Checked when the webhook was saved.
        let response_path = webhook
            .response_value
            .as_ref()
            .and_then(|r| r.path.as_deref())
            .and_then(|p| ResponsePath::parse(p).ok());
        let mut requests = delivery.requests.take().unwrap_or_default();
        for (index, request) in requests.iter_mut().enumerate() {
            if request.delivered {
                continue;
            }
            let started_at = self.now();
            let result = self.send_signed(webhook, request, started_at).await;
            let mut judged = outcome::judge(result.status, result.error.as_ref(), |s| {
                webhook.is_success(s)
            });
            report.gone |= judged.gone;
            let mut hook_value = None;
            if let (Some(plugin), Some(status)) = (&hook, result.status) {
                let response = wit::Response {
                    request_index: index as u32,
                    status,
                    headers: result.headers.clone(),
                    body: result.body.clone(),
                };
                let ctx = self.plugin_context(webhook);
                let evaluation = self
                    .run_plugin(plugin.clone(), ctx, Call::Response(response))
                    .await;
                self.keep_state(webhook, &evaluation);
                delivery.logs.extend(evaluation.logs);
                hook_value = outcome::apply_hook(&mut judged, &evaluation.result);
            }
            if judged.outcome == AttemptOutcome::Success {
                if hook_value.is_some() {
                    delivery.extracted_value = hook_value;
                } else if let Some(path) = response_path.as_ref() {
                    match extract_value(path, &result.body) {
                        Ok(value) => delivery.extracted_value = Some(value),
                        Err(why) => delivery.logs.push(LogLine {
                            level: "warn".into(),
                            message: format!("response value: {why}"),
                        }),
                    }
                }
            }
            if judged.outcome == AttemptOutcome::Retry {
                facts.signals.note(
                    result.status,
                    result.error.as_ref(),
                    &result.headers,
                    self.now(),
                );
            }
            delivery.attempts.push(Attempt {
                number: round,
                request_index: index as u32,
                started_at,
                duration_ms: result.duration.as_millis() as u64,
                status: result.status,
                error: result.error.map(|e| e.to_string()),
                response_headers: result.headers,
                response_body: String::from_utf8_lossy(&result.body).into_owned(),
                outcome: judged.outcome,
            });
            match judged.outcome {
                AttemptOutcome::Success => {
                    request.delivered = true;
                    report.any_success = true;
                }
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
        facts.all_delivered = requests.iter().all(|r| r.delivered);
        delivery.requests = Some(requests);
        let delivery_config = &self.config.delivery;
        let rules = RetryRules {
            schedule: webhook
                .retry_schedule
                .as_deref()
                .unwrap_or(&delivery_config.retry_schedule),
            jitter: delivery_config.jitter,
            slow_down_wait: delivery_config.slow_down_wait,
            max_retry_after: delivery_config.max_retry_after,
        };
        outcome::settle(delivery, facts, &rules, self.now());
        report
    }

    /// Sends one request with its Standard Webhooks timestamp and signature for `at`.
    async fn send_signed(
        &self,
        webhook: &Webhook,
        request: &OutboundRequest,
        at: Millis,
    ) -> crate::sender::SendResult {
        let timestamp = (at.as_i64() / 1000).to_string();
        let connection = request
            .connection_id
            .as_ref()
            .and_then(|id| self.connection_cached(id));
        let message_id = request
            .headers
            .iter()
            .find(|(name, _)| name == "webhook-id")
            .map_or("", |(_, value)| value.as_str());
        let signature = self.signature(
            webhook,
            connection.as_deref(),
            message_id,
            at.as_i64() / 1000,
            &request.body,
        );
        let mut extra = vec![("webhook-timestamp", timestamp.as_str())];
        if let Some(signature) = &signature {
            extra.push(("webhook-signature", signature.as_str()));
        }
        self.sender
            .send(request, &extra, connection.as_deref(), webhook.timeout)
            .await
    }
}

/// The kind of the follow-up event carrying a response value.
pub const RESPONSE_EVENT: &str = "webhook.response";
/// Most `webhook.response` events in a row, each caused by the one before.
pub const MAX_RESPONSE_DEPTH: u32 = 8;

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
