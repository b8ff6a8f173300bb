//! The fair queue on a hand-driven clock: who gets the next turn, budgets, back-off and
//! admission.

use super::*;
use tokio::sync::mpsc;

/// A fair share whose clock moves only when the test says.
struct Rig {
    share: Arc<FairShare>,
    clock: Arc<Mutex<Instant>>,
    wake: Arc<Notify>,
    granted: mpsc::UnboundedSender<(String, Turn)>,
    grants: mpsc::UnboundedReceiver<(String, Turn)>,
}

fn no_limits() -> FairShareConfig {
    FairShareConfig {
        webhook_cpu_per_second: Duration::ZERO,
        tenant_cpu_per_second: Duration::ZERO,
        backoff_after_limit_hits: 0,
        disable_after_limit_hits: 0,
    }
}

fn payer(webhook: &str, tenant: &str) -> Payer {
    Payer {
        webhook: WebhookId::parse(&format!("wh_{webhook}")).unwrap(),
        tenant: Some(tenant.to_string()),
    }
}

impl Rig {
    fn new(turns: usize, config: FairShareConfig) -> Rig {
        let clock = Arc::new(Mutex::new(Instant::now()));
        let read = clock.clone();
        let wake = Arc::new(Notify::new());
        let share = Arc::new(FairShare::with_clock(
            turns,
            config,
            wake.clone(),
            Box::new(move || *read.lock().unwrap()),
        ));
        let (granted, grants) = mpsc::unbounded_channel();
        Rig {
            share,
            clock,
            wake,
            granted,
            grants,
        }
    }

    fn advance(&self, by: Duration) {
        *self.clock.lock().unwrap() += by;
    }

    /// Starts a task that waits for a turn for `payer` and hands it over named `name`; returns
    /// once the waiter is queued.
    async fn queue(&self, name: &str, payer: &Payer) -> tokio::task::JoinHandle<()> {
        let waiting = self.share.summary().waiting;
        let (share, payer, name, granted) = (
            self.share.clone(),
            payer.clone(),
            name.to_string(),
            self.granted.clone(),
        );
        let task = tokio::spawn(async move {
            if let Some(turn) = share.turn(&payer).await {
                let _ = granted.send((name, turn));
            }
        });
        while self.share.summary().waiting == waiting {
            tokio::task::yield_now().await;
        }
        task
    }

    /// The next turn granted.
    async fn next(&mut self) -> (String, Turn) {
        tokio::time::timeout(Duration::from_secs(30), self.grants.recv())
            .await
            .expect("a turn is granted")
            .unwrap()
    }

    /// Runs `turn` for `took` and ends it within its limits.
    fn run(&self, turn: Turn, took: Duration) {
        self.advance(took);
        turn.finish(false);
    }
}

#[tokio::test]
async fn a_cheap_webhook_goes_before_a_queue_of_expensive_ones() {
    let mut rig = Rig::new(1, no_limits());
    let (a, b) = (payer("a", "ta"), payer("b", "tb"));
    let first = rig.share.turn(&a).await.unwrap();
    for _ in 0..3 {
        rig.queue("a", &a).await;
    }
    rig.run(first, Duration::from_millis(50));
    let (name, second) = rig.next().await;
    assert_eq!(name, "a", "only a waits");
    rig.queue("b", &b).await;
    rig.run(second, Duration::from_millis(50));
    let (name, turn) = rig.next().await;
    assert_eq!(
        name, "b",
        "b has used less than a, so it goes before a's queue"
    );
    rig.run(turn, Duration::from_millis(1));
    let (name, turn) = rig.next().await;
    assert_eq!(name, "a");
    rig.run(turn, Duration::from_millis(50));
    let usage = rig.share.usage(&a.webhook);
    assert_eq!(usage.evaluations, 3);
    assert_eq!(
        (usage.running, usage.waiting),
        (1, 0),
        "its last waiter runs"
    );
    assert!(usage.cpu_ms_per_second > 0.0);
}

#[tokio::test]
async fn tenants_share_equally_however_many_webhooks_each_has() {
    let mut rig = Rig::new(1, no_limits());
    let many: Vec<Payer> = (0..3).map(|i| payer(&format!("x{i}"), "x")).collect();
    let one = payer("y", "y");
    let blocker = rig.share.turn(&one).await.unwrap();
    for round in 0..20 {
        for p in &many {
            rig.queue(&format!("x-{round}"), p).await;
        }
        rig.queue(&format!("y-{round}"), &one).await;
    }
    rig.run(blocker, Duration::from_millis(10));
    let mut order = Vec::new();
    for _ in 0..40 {
        let (name, turn) = rig.next().await;
        order.push(name);
        rig.run(turn, Duration::from_millis(10));
    }
    let y = order.iter().filter(|n| n.starts_with('y')).count();
    assert!(
        (19..=21).contains(&y),
        "tenant y got {y} of 40 turns: {order:?}"
    );
    // Within x, its three webhooks take turns.
    let x_turns = order.iter().filter(|n| n.starts_with('x')).count();
    let most_of_one_webhook = many
        .iter()
        .map(|p| rig.share.usage(&p.webhook).evaluations)
        .max()
        .unwrap();
    assert!(most_of_one_webhook as usize <= x_turns / 3 + 1, "{order:?}");
}

#[tokio::test]
async fn a_webhook_over_its_budget_waits_while_others_run() {
    let config = FairShareConfig {
        webhook_cpu_per_second: Duration::from_millis(100),
        ..no_limits()
    };
    let mut rig = Rig::new(2, config);
    let (a, b) = (payer("a", "t"), payer("b", "t"));
    let turn = rig.share.turn(&a).await.unwrap();
    rig.run(turn, Duration::from_millis(1100));
    // 1.1 s spent against 100 ms per second with 100 ms saved up: 10 s to wait.
    let usage = rig.share.usage(&a.webhook);
    let throttle = usage.throttled.expect("a is over its budget");
    assert_eq!(throttle.reason, ThrottleReason::WebhookBudget);
    assert_eq!(throttle.for_ms, 10_000);
    let until = rig.share.admit(&a).err().expect("a is not admitted");
    assert!(until.is_some());
    rig.queue("a", &a).await;
    assert_eq!(
        rig.share.poke(),
        until,
        "the scheduler is told when a may run"
    );
    // b is not held back by a's debt, though a waits.
    let turn = rig.share.turn(&b).await.unwrap();
    rig.run(turn, Duration::from_millis(1));
    rig.advance(Duration::from_millis(9_000));
    assert!(rig.share.poke().is_some(), "a still waits");
    assert!(rig.grants.try_recv().is_err());
    rig.advance(Duration::from_millis(1_000));
    assert_eq!(rig.share.poke(), None);
    let (name, _turn) = rig.next().await;
    assert_eq!(name, "a");
}

#[tokio::test]
async fn a_tenant_over_its_budget_waits_whichever_webhook_asks() {
    let config = FairShareConfig {
        tenant_cpu_per_second: Duration::from_millis(100),
        ..no_limits()
    };
    let rig = Rig::new(2, config);
    let (a1, a2, b) = (payer("a1", "a"), payer("a2", "a"), payer("b", "b"));
    let turn = rig.share.turn(&a1).await.unwrap();
    rig.run(turn, Duration::from_millis(300));
    let refused = rig
        .share
        .admit(&a2)
        .err()
        .expect("a's tenant is over budget");
    assert!(refused.is_some());
    assert_eq!(
        rig.share.usage(&a2.webhook).throttled.unwrap().reason,
        ThrottleReason::TenantBudget
    );
    assert!(rig.share.admit(&b).is_ok(), "another tenant is not");
}

#[tokio::test]
async fn limit_hits_in_a_row_back_off_longer_each_time_and_a_success_ends_them() {
    assert_eq!(backoff(3, 2), None);
    assert_eq!(backoff(3, 3), Some(FIRST_BACKOFF));
    assert_eq!(backoff(3, 4), Some(FIRST_BACKOFF * 2));
    assert_eq!(backoff(3, 40), Some(MAX_BACKOFF));
    assert_eq!(backoff(0, 40), None, "0 turns back-off off");

    let config = FairShareConfig {
        backoff_after_limit_hits: 2,
        ..no_limits()
    };
    let rig = Rig::new(1, config);
    let a = payer("a", "t");
    for hits in 1..=3u32 {
        let turn = rig.share.turn(&a).await.unwrap();
        rig.advance(Duration::from_millis(50));
        assert_eq!(turn.finish(true), hits);
        if hits >= 2 {
            let throttle = rig.share.usage(&a.webhook).throttled.unwrap();
            assert_eq!(throttle.reason, ThrottleReason::Backoff);
            assert_eq!(
                throttle.for_ms,
                backoff(2, hits).unwrap().as_millis() as u64
            );
            rig.advance(backoff(2, hits).unwrap());
        }
    }
    let turn = rig.share.turn(&a).await.unwrap();
    assert_eq!(turn.finish(false), 0);
    let usage = rig.share.usage(&a.webhook);
    assert_eq!((usage.limit_hits, usage.limit_hits_in_a_row), (3, 0));
    assert_eq!(usage.throttled, None);
}

#[tokio::test]
async fn a_queued_webhook_is_admitted_only_so_far_and_the_scheduler_is_woken_after() {
    let rig = Rig::new(1, no_limits());
    let a = payer("a", "t");
    let running = rig.share.turn(&a).await.unwrap();
    rig.queue("a", &a).await;
    let first = rig.share.admit(&a).ok().unwrap();
    let _second = rig.share.admit(&a).ok().unwrap();
    assert_eq!(
        rig.share.admit(&a).err(),
        Some(None),
        "two per turn at most"
    );
    assert!(
        rig.share.admit(&payer("b", "t")).is_ok(),
        "another webhook is"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(30), rig.wake.notified())
        .await
        .expect("the scheduler is woken");
    assert!(rig.share.admit(&a).is_ok());
    drop(running);
}

#[tokio::test]
async fn a_waiter_that_gives_up_does_not_keep_a_turn() {
    let mut rig = Rig::new(1, no_limits());
    let a = payer("a", "t");
    let running = rig.share.turn(&a).await.unwrap();
    let gone = rig.queue("gone", &a).await;
    gone.abort();
    let _ = gone.await;
    rig.queue("next", &a).await;
    rig.run(running, Duration::from_millis(5));
    let (name, turn) = rig.next().await;
    assert_eq!(name, "next");
    drop(turn);
    assert_eq!(rig.share.summary().running, 0);
    assert_eq!(rig.share.summary().waiting, 0);
}

#[tokio::test]
async fn a_webhook_backing_off_runs_one_evaluation_at_a_time() {
    let config = FairShareConfig {
        backoff_after_limit_hits: 1,
        ..no_limits()
    };
    let mut rig = Rig::new(2, config);
    let a = payer("a", "t");
    let turn = rig.share.turn(&a).await.unwrap();
    rig.advance(Duration::from_millis(50));
    assert_eq!(turn.finish(true), 1);
    rig.advance(FIRST_BACKOFF);
    let probe = rig.share.turn(&a).await.unwrap();
    rig.queue("a", &a).await;
    assert!(rig.share.quick_turn(&a).is_none());
    assert_eq!(
        rig.share.summary().running,
        1,
        "a second turn is free, but not for a"
    );
    rig.advance(Duration::from_millis(5));
    assert_eq!(probe.finish(false), 0);
    let (name, _turn) = rig.next().await;
    assert_eq!(name, "a", "within its limits again, it runs as before");
}

#[tokio::test]
async fn a_quick_evaluation_does_not_wait_behind_long_ones_but_is_charged() {
    let rig = Rig::new(1, no_limits());
    let (slow, quick) = (payer("slow", "s"), payer("quick", "q"));
    let long = rig.share.turn(&slow).await.unwrap();
    rig.queue("slow", &slow).await;
    let turn = rig
        .share
        .quick_turn(&quick)
        .expect("a quick turn beside the counted one");
    rig.advance(Duration::from_micros(300));
    turn.finish(false);
    let usage = rig.share.usage(&quick.webhook);
    assert_eq!(usage.evaluations, 1);
    assert!(usage.cpu_ms_per_second > 0.0);
    assert_eq!(
        rig.share.summary().running,
        1,
        "the quick turn was not counted"
    );
    drop(long);
}

#[tokio::test]
async fn closed_it_turns_waiters_away_and_lets_running_turns_end() {
    let rig = Rig::new(1, no_limits());
    let a = payer("a", "t");
    let running = rig.share.turn(&a).await.unwrap();
    let (share, waiter) = (rig.share.clone(), a.clone());
    let waiting = tokio::spawn(async move { share.turn(&waiter).await.is_none() });
    while rig.share.summary().waiting == 0 {
        tokio::task::yield_now().await;
    }
    rig.share.close();
    assert!(waiting.await.unwrap(), "the waiter got no turn");
    assert!(rig.share.turn(&a).await.is_none());
    rig.run(running, Duration::from_millis(5));
    assert_eq!(rig.share.summary().running, 0);
}

#[tokio::test]
async fn a_busy_quick_webhook_does_not_push_comers_back_behind_the_queue() {
    let mut rig = Rig::new(1, no_limits());
    let (holder, slow, quick, back) = (
        payer("holder", "h"),
        payer("slow", "s"),
        payer("quick", "q"),
        payer("back", "b"),
    );
    let turn = rig.share.turn(&slow).await.unwrap();
    rig.run(turn, Duration::from_millis(10));
    let held = rig.share.turn(&holder).await.unwrap();
    rig.queue("slow", &slow).await;
    // Lots of quick evaluations meanwhile: their tenant's virtual time runs far ahead.
    for _ in 0..1_000 {
        let turn = rig.share.quick_turn(&quick).unwrap();
        rig.advance(Duration::from_millis(1));
        turn.finish(false);
    }
    rig.queue("back", &back).await;
    rig.run(held, Duration::from_millis(1));
    let (name, _turn) = rig.next().await;
    assert_eq!(
        name, "back",
        "a tenant coming back starts level with the queue, not behind the quick one"
    );
}
