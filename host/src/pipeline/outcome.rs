//! What a send round means, as pure functions: how one attempt's response is judged (with
//! the response hook's verdict over the default), what the receiver asked about retrying,
//! the delivery's next state once every request of the round was tried, and what the round
//! changes on its webhook (the failure streak, auto-disable). No I/O: the worker sends and
//! writes, these decide.

use std::time::Duration;

use crate::model::{AttemptOutcome, Delivery, DeliveryStatus, Millis, OutboundRequest, Webhook};
use crate::runtime::{wit, Answer, PluginError};
use crate::sender::TransportError;

use super::retry;

/// One attempt's response as judged so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Judged {
    /// What the attempt counts as.
    pub outcome: AttemptOutcome,
    /// Why it failed, for the delivery's `error` (unused on success).
    pub note: String,
    /// The receiver answered 410 Gone (the webhook is to be disabled).
    pub gone: bool,
}

/// The default judgement of a response: a success status without a transport error
/// succeeds; 410 Gone fails for good; anything else is retried.
pub(super) fn judge(
    status: Option<u16>,
    error: Option<&TransportError>,
    is_success: impl Fn(u16) -> bool,
) -> Judged {
    let note = match (status, error) {
        (_, Some(e)) => e.to_string(),
        (Some(s), None) => format!("receiver answered {s}"),
        (None, None) => "no response".into(),
    };
    match status {
        Some(s) if is_success(s) && error.is_none() => Judged {
            outcome: AttemptOutcome::Success,
            note,
            gone: false,
        },
        // Gone: the receiver asks us to stop (Standard Webhooks).
        Some(410) => Judged {
            outcome: AttemptOutcome::Fail,
            note: "receiver answered 410 Gone; the webhook was disabled".into(),
            gone: true,
        },
        _ => Judged {
            outcome: AttemptOutcome::Retry,
            note,
            gone: false,
        },
    }
}

/// Applies the response hook's answer to a judgement. Returns the value the hook gave with
/// a success (`None`: it gave none, and the webhook's response path may extract one).
pub(super) fn apply_hook(
    judged: &mut Judged,
    answer: &Result<Answer, PluginError>,
) -> Option<String> {
    match answer {
        Ok(Answer::Verdict(wit::Verdict::Success(value))) => {
            judged.outcome = AttemptOutcome::Success;
            return value.clone();
        }
        Ok(Answer::Verdict(wit::Verdict::Retry(why))) => {
            judged.outcome = AttemptOutcome::Retry;
            judged.note = format!("response hook asked to retry: {why}");
        }
        Ok(Answer::Verdict(wit::Verdict::Fail(why))) => {
            judged.outcome = AttemptOutcome::Fail;
            judged.note = format!("response hook failed the delivery: {why}");
        }
        Ok(Answer::Verdict(wit::Verdict::UseDefault) | Answer::Decision(_)) => {}
        Err(e) => {
            judged.outcome = AttemptOutcome::Retry;
            judged.note = format!("response hook: {e}");
        }
    }
    None
}

/// What failing receivers of a round asked about the next try.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RetrySignals {
    /// The longest `Retry-After` asked for.
    pub retry_after: Option<Duration>,
    /// Some receiver was overloaded (429, 502–504, or too slow to answer).
    pub slow_down: bool,
}

impl RetrySignals {
    /// Takes note of one attempt that is to be retried.
    pub fn note(
        &mut self,
        status: Option<u16>,
        error: Option<&TransportError>,
        headers: &[(String, String)],
        now: Millis,
    ) {
        if matches!(status, Some(429 | 502 | 503 | 504)) || error.is_some_and(|e| e.is_timeout()) {
            self.slow_down = true;
        }
        if let Some(wait) = retry_after_of(headers, now) {
            self.retry_after = Some(self.retry_after.map_or(wait, |w| w.max(wait)));
        }
    }
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date.
pub(super) fn retry_after_of(headers: &[(String, String)], now: Millis) -> Option<Duration> {
    let value = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))?
        .1
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let ms = at.as_millisecond() - now.as_i64();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// How a webhook retries.
#[derive(Clone, Copy, Debug)]
pub(super) struct RetryRules<'a> {
    /// The waits before each retry.
    pub schedule: &'a [Duration],
    /// Random spread of each wait (a fraction).
    pub jitter: f64,
    /// The least wait after an overloaded receiver.
    pub slow_down_wait: Duration,
    /// The most a `Retry-After` is honoured.
    pub max_retry_after: Duration,
}

/// How a round's requests fared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RoundFacts {
    /// Every request of the delivery has been accepted (in this round or before).
    pub all_delivered: bool,
    /// Why a request failed for good, if one did.
    pub failed_for_good: Option<String>,
    /// Why the last retryable failure failed.
    pub last_failure: Option<String>,
    /// What the receivers asked about the next try.
    pub signals: RetrySignals,
}

/// The delivery's state after round `delivery.rounds`: delivered, failed, due again after
/// the schedule's wait (stretched by what receivers asked, within bounds), or dead once the
/// schedule is used up.
pub(super) fn settle(delivery: &mut Delivery, facts: RoundFacts, rules: &RetryRules, now: Millis) {
    let round = delivery.rounds;
    if facts.all_delivered {
        delivery.status = DeliveryStatus::Delivered;
        delivery.next_attempt_at = None;
        delivery.error = None;
    } else if let Some(why) = facts.failed_for_good {
        end(delivery, DeliveryStatus::Failed, why);
    } else {
        let why = facts.last_failure.unwrap_or_default();
        let signals = facts.signals;
        let next = retry::next_delay(rules.schedule, rules.jitter, round + 1).map(|wait| {
            let wait = if signals.slow_down {
                wait.max(rules.slow_down_wait)
            } else {
                wait
            };
            match signals.retry_after {
                Some(asked) => wait.max(asked.min(rules.max_retry_after)),
                None => wait,
            }
        });
        match next {
            Some(wait) => {
                delivery.status = DeliveryStatus::Pending;
                delivery.next_attempt_at = Some(now.saturating_add(wait));
                delivery.error = Some(why);
            }
            None => end(
                delivery,
                DeliveryStatus::Dead,
                format!(
                    "gave up after {round} attempt{}; last: {why}",
                    if round == 1 { "" } else { "s" }
                ),
            ),
        }
    }
    delivery.updated_at = now;
}

/// What a look at a delivery before sending, or its plugin, decided.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Verdict {
    /// Send these requests.
    Send(Vec<OutboundRequest>),
    /// Not sent: the plugin chose so, for this reason.
    Skip(String),
    /// Failed for good, for this reason.
    Fail(String),
    /// Not decided now: due again at this time.
    WaitUntil(Millis),
}

/// Writes a verdict into its delivery: the one place a delivery is skipped, failed or put
/// off before it is sent (a send round settles the rest, [`settle`]).
pub(super) fn apply(delivery: &mut Delivery, verdict: Verdict) {
    match verdict {
        Verdict::Send(requests) => delivery.requests = Some(requests),
        Verdict::Skip(reason) => {
            delivery.status = DeliveryStatus::Skipped;
            delivery.skip_reason = Some(reason);
            delivery.next_attempt_at = None;
        }
        Verdict::Fail(why) => end(delivery, DeliveryStatus::Failed, why),
        Verdict::WaitUntil(at) => delivery.next_attempt_at = Some(at),
    }
}

/// Ends a delivery with a final status and why.
pub(super) fn end(delivery: &mut Delivery, status: DeliveryStatus, error: String) {
    delivery.status = status;
    delivery.next_attempt_at = None;
    delivery.error = Some(error);
}

/// What one send round showed about the receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Round {
    /// Some request was accepted.
    pub any_success: bool,
    /// Some request failed.
    pub any_failure: bool,
    /// The receiver answered 410 Gone.
    pub gone: bool,
}

/// What a round changes on its webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct WebhookChange {
    /// The new start of its failure streak (`Some(None)`: the streak ended).
    pub failing_since: Option<Option<Millis>>,
    /// Disable it, for this reason.
    pub disable: Option<String>,
}

impl WebhookChange {
    /// Whether nothing changes.
    pub fn is_none(&self) -> bool {
        self.failing_since.is_none() && self.disable.is_none()
    }
}

/// A success ends a failure streak; the first failure starts one; 410 Gone, or a delivery
/// dying after its webhook failed for longer than `auto_disable_after`, disables the webhook.
pub(super) fn after_round(
    webhook: &Webhook,
    delivery: &Delivery,
    round: &Round,
    auto_disable_after: Duration,
    now: Millis,
) -> WebhookChange {
    let streak = if round.any_success {
        None
    } else {
        webhook.failing_since
    };
    let disable = if round.gone {
        Some("the receiver answered 410 Gone".to_string())
    } else {
        streak
            .filter(|since| {
                delivery.status == DeliveryStatus::Dead
                    && now.as_i64() - since.as_i64() >= auto_disable_after.as_millis() as i64
            })
            .map(|since| format!("every delivery has failed since {since}"))
    };
    let failing_since = if round.any_success {
        webhook.failing_since.map(|_| None)
    } else if round.any_failure && webhook.failing_since.is_none() {
        Some(Some(now))
    } else {
        None
    };
    WebhookChange {
        failing_since,
        disable,
    }
}

/// After `streak` evaluations in a row hit a sandbox limit (the last with `error`), why the
/// webhook is disabled, once the streak reaches `disable_after` (0: never).
pub(super) fn limit_streak(streak: u32, disable_after: u32, error: &PluginError) -> Option<String> {
    (disable_after > 0 && streak >= disable_after).then(|| {
        format!("its plugin hit a limit in {streak} evaluations in a row (the last: {error})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_enough_run_of_limit_hits_disables_the_webhook() {
        let error = PluginError::CpuLimit(50);
        assert_eq!(limit_streak(49, 50, &error), None);
        assert_eq!(
            limit_streak(50, 50, &error).as_deref(),
            Some(
                "its plugin hit a limit in 50 evaluations in a row \
                 (the last: plugin exceeded 50 ms cpu limit)"
            )
        );
        assert_eq!(limit_streak(1_000, 0, &error), None, "0: never");
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let header = |v: &str| vec![("Retry-After".to_string(), v.to_string())];
        let now = Millis(1_445_412_480_000); // 2015-10-21T07:28:00Z
        assert_eq!(
            retry_after_of(&header("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after_of(&header("Wed, 21 Oct 2015 07:30:00 GMT"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after_of(&header("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after_of(&header("soon"), now), None);
        assert_eq!(retry_after_of(&[], now), None);
    }

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn two_xx(status: u16) -> bool {
        (200..300).contains(&status)
    }

    fn timed_out() -> TransportError {
        TransportError::TimedOut {
            detail: ": operation timed out".into(),
        }
    }

    #[test]
    fn a_response_is_judged_by_its_status_and_transport_error() {
        let ok = judge(Some(204), None, two_xx);
        assert_eq!(ok.outcome, AttemptOutcome::Success);
        let server_error = judge(Some(500), None, two_xx);
        assert_eq!(server_error.outcome, AttemptOutcome::Retry);
        assert_eq!(server_error.note, "receiver answered 500");
        let slow = judge(None, Some(&timed_out()), two_xx);
        assert_eq!(
            (slow.outcome, slow.note.as_str()),
            (AttemptOutcome::Retry, "timed out: operation timed out")
        );
        // A success status whose body broke off is retried.
        let cut = TransportError::ReadingBody(Box::new(timed_out()));
        assert_eq!(
            judge(Some(200), Some(&cut), two_xx).outcome,
            AttemptOutcome::Retry
        );
        // The webhook's own success statuses decide.
        assert_eq!(
            judge(Some(302), None, |s| s == 302).outcome,
            AttemptOutcome::Success
        );
        assert_eq!(
            judge(Some(200), None, |s| s == 302).outcome,
            AttemptOutcome::Retry
        );
        let gone = judge(Some(410), None, two_xx);
        assert_eq!(gone.outcome, AttemptOutcome::Fail);
        assert!(gone.gone);
        assert!(
            !judge(Some(410), None, |s| s == 410).gone,
            "410 as a chosen success"
        );
        assert_eq!(judge(None, None, two_xx).note, "no response");
    }

    #[test]
    fn the_response_hook_overrides_the_default_judgement() {
        let verdict = |v: wit::Verdict| Ok(Answer::Verdict(v));
        let mut judged = judge(Some(500), None, two_xx);
        let value = apply_hook(
            &mut judged,
            &verdict(wit::Verdict::Success(Some("42".into()))),
        );
        assert_eq!(
            (judged.outcome, value),
            (AttemptOutcome::Success, Some("42".into()))
        );

        let mut judged = judge(Some(200), None, two_xx);
        apply_hook(&mut judged, &verdict(wit::Verdict::Retry("not yet".into())));
        assert_eq!(judged.outcome, AttemptOutcome::Retry);
        assert_eq!(judged.note, "response hook asked to retry: not yet");

        let mut judged = judge(Some(200), None, two_xx);
        apply_hook(&mut judged, &verdict(wit::Verdict::Fail("refused".into())));
        assert_eq!(judged.outcome, AttemptOutcome::Fail);
        assert_eq!(judged.note, "response hook failed the delivery: refused");

        let mut judged = judge(Some(503), None, two_xx);
        let before = judged.clone();
        assert_eq!(
            apply_hook(&mut judged, &verdict(wit::Verdict::UseDefault)),
            None
        );
        assert_eq!(judged, before);

        let mut judged = judge(Some(200), None, two_xx);
        apply_hook(&mut judged, &Err(PluginError::CpuLimit(50)));
        assert_eq!(judged.outcome, AttemptOutcome::Retry);
        assert_eq!(
            judged.note,
            "response hook: plugin exceeded 50 ms cpu limit"
        );
    }

    #[test]
    fn overload_and_retry_after_are_noted() {
        let now = Millis(0);
        for status in [429, 502, 503, 504] {
            let mut signals = RetrySignals::default();
            signals.note(Some(status), None, &[], now);
            assert!(signals.slow_down, "{status}");
        }
        let mut signals = RetrySignals::default();
        signals.note(Some(500), None, &[], now);
        assert_eq!(signals, RetrySignals::default());
        signals.note(None, Some(&timed_out()), &[], now);
        assert!(signals.slow_down);
        let after = |v: &str| vec![("retry-after".to_string(), v.to_string())];
        signals.note(Some(500), None, &after("30"), now);
        signals.note(Some(500), None, &after("10"), now);
        assert_eq!(signals.retry_after, Some(s(30)), "the longest asked");
    }

    fn rules(schedule: &[Duration]) -> RetryRules<'_> {
        RetryRules {
            schedule,
            jitter: 0.0,
            slow_down_wait: s(60),
            max_retry_after: s(3600),
        }
    }

    fn after_round_one() -> Delivery {
        let event = crate::model::Event {
            id: crate::model::EventId::parse("e").unwrap(),
            kind: "k".into(),
            tenant: None,
            occurred_at: Millis(0),
            received_at: Millis(0),
            attributes: vec![],
            payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        };
        let mut d = Delivery::pending(&webhook(), &event, Millis(0), Millis(0));
        d.rounds = 1;
        d
    }

    fn webhook() -> Webhook {
        serde_json::from_value(serde_json::json!({
            "id": crate::model::WebhookId::generate(), "name": "w", "enabled": true,
            "event_kinds": ["*"], "module_id": "mod_00000000000000000000000000000000",
            "config": {}, "method": "POST", "headers": {},
            "created_at": "1970-01-01T00:00:00Z", "updated_at": "1970-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    fn retrying(signals: RetrySignals) -> RoundFacts {
        RoundFacts {
            last_failure: Some("receiver answered 500".into()),
            signals,
            ..RoundFacts::default()
        }
    }

    #[test]
    fn a_round_settles_delivered_failed_due_again_or_dead() {
        let now = Millis(1_000_000);
        let schedule = [s(5), s(300)];
        let mut d = after_round_one();
        settle(
            &mut d,
            RoundFacts {
                all_delivered: true,
                ..RoundFacts::default()
            },
            &rules(&schedule),
            now,
        );
        assert_eq!(
            (d.status, d.next_attempt_at, d.error),
            (DeliveryStatus::Delivered, None, None)
        );

        let mut d = after_round_one();
        let failed = RoundFacts {
            failed_for_good: Some("receiver answered 410 Gone".into()),
            ..RoundFacts::default()
        };
        settle(&mut d, failed, &rules(&schedule), now);
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert_eq!(d.next_attempt_at, None);

        // The schedule's wait, stretched by overload and by Retry-After within its bound.
        let due_after = |signals: RetrySignals, rules: &RetryRules| {
            let mut d = after_round_one();
            settle(&mut d, retrying(signals), rules, now);
            assert_eq!(d.status, DeliveryStatus::Pending);
            assert_eq!(d.error.as_deref(), Some("receiver answered 500"));
            d.next_attempt_at.unwrap().as_i64() - now.as_i64()
        };
        let plain = RetrySignals::default();
        assert_eq!(due_after(plain, &rules(&schedule)), 5_000);
        let busy = RetrySignals {
            slow_down: true,
            ..plain
        };
        assert_eq!(due_after(busy, &rules(&schedule)), 60_000);
        let asked = RetrySignals {
            retry_after: Some(s(120)),
            ..plain
        };
        assert_eq!(due_after(asked, &rules(&schedule)), 120_000);
        let too_long = RetrySignals {
            retry_after: Some(s(86_400)),
            ..plain
        };
        assert_eq!(due_after(too_long, &rules(&schedule)), 3_600_000);
        let shorter = RetrySignals {
            retry_after: Some(s(1)),
            ..plain
        };
        assert_eq!(
            due_after(shorter, &rules(&schedule)),
            5_000,
            "never sooner than the schedule"
        );

        // Used up: dead, saying how many attempts and the last failure.
        let mut d = after_round_one();
        d.rounds = 3;
        settle(&mut d, retrying(plain), &rules(&schedule), now);
        assert_eq!(d.status, DeliveryStatus::Dead);
        assert_eq!(
            d.error.as_deref(),
            Some("gave up after 3 attempts; last: receiver answered 500")
        );
        let mut d = after_round_one();
        settle(&mut d, retrying(plain), &rules(&[]), now);
        assert_eq!(
            d.error.as_deref(),
            Some("gave up after 1 attempt; last: receiver answered 500")
        );
        assert_eq!(d.updated_at, now);
    }

    #[test]
    fn rounds_keep_the_failure_streak_and_disable_a_webhook_that_keeps_failing() {
        let day = s(86_400);
        let now = Millis(10 * 86_400_000);
        let mut w = webhook();
        let pending = after_round_one();
        let failure = Round {
            any_failure: true,
            ..Round::default()
        };
        let success = Round {
            any_success: true,
            ..Round::default()
        };

        // The first failure starts the streak; more failures change nothing.
        let change = after_round(&w, &pending, &failure, day, now);
        assert_eq!(
            change,
            WebhookChange {
                failing_since: Some(Some(now)),
                disable: None
            }
        );
        w.failing_since = Some(Millis(now.as_i64() - 1_000));
        assert!(after_round(&w, &pending, &failure, day, now).is_none());
        // A success ends it; with no streak, a success changes nothing.
        assert_eq!(
            after_round(&w, &pending, &success, day, now).failing_since,
            Some(None)
        );
        // A delivery dying after the streak outlasted the limit disables the webhook.
        let mut dead = after_round_one();
        dead.status = DeliveryStatus::Dead;
        assert_eq!(
            after_round(&w, &dead, &failure, day, now).disable,
            None,
            "streak too short"
        );
        w.failing_since = Some(Millis(now.as_i64() - 86_400_000));
        let change = after_round(&w, &dead, &failure, day, now);
        assert!(change
            .disable
            .unwrap()
            .starts_with("every delivery has failed since"));
        // 410 Gone disables at once.
        let gone = Round {
            any_failure: true,
            gone: true,
            ..Round::default()
        };
        let mut fresh = webhook();
        fresh.failing_since = None;
        assert_eq!(
            after_round(&fresh, &pending, &gone, day, now)
                .disable
                .as_deref(),
            Some("the receiver answered 410 Gone")
        );
        fresh.failing_since = None;
        assert!(after_round(&fresh, &pending, &success, day, now).is_none());
    }
}
