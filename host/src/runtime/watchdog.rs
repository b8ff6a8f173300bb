//! Ends evaluations that outrun their time limit, waking only when one is due to.
//!
//! wasmtime interrupts running wasm once the engine's epoch passes the store's deadline. A
//! thread advancing the epoch on a fixed tick woke hundreds of times a second whether or not
//! anything ran, while evaluations last microseconds and their limits are milliseconds to
//! seconds. The watchdog instead knows the deadline of every running evaluation, sleeps
//! until the earliest, and advances the epoch only when one has passed. Every store checks
//! its own deadline when the epoch advances ([`Watchdog::guard`]), so one evaluation's
//! deadline ends no other, and none ends before its limit.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use wasmtime::{Engine, Store, UpdateDeadline};

/// A running evaluation: its deadline, and a number telling equal deadlines apart.
type Key = (Instant, u64);

pub(super) struct Watchdog {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the watchdog thread: a deadline earlier than it is waiting for, or stop.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    running: BTreeSet<Key>,
    next: u64,
    /// When the thread next looks by itself; `None` while it sleeps until woken.
    looks_at: Option<Instant>,
    stop: bool,
}

/// Keeps an evaluation's deadline watched until dropped (with its store).
pub(super) struct Armed {
    shared: Arc<Shared>,
    key: Key,
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().running.remove(&self.key);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().stop = true;
        self.shared.wake.notify_one();
    }
}

impl Watchdog {
    /// Starts the watchdog thread for `engine` (whose stores use epoch interruption).
    pub(super) fn start(engine: &Engine) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let engine = engine.weak();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("wasmhooks-epoch".into())
            .spawn(move || {
                thread_shared.run(|| match engine.upgrade() {
                    Some(engine) => {
                        engine.increment_epoch();
                        true
                    }
                    None => false,
                });
            })?;
        Ok(Watchdog { shared })
    }

    /// Makes `store` stop with an interrupt trap once `deadline` has passed: watched until the
    /// returned guard is dropped, and checked by the store each time the epoch advances.
    pub(super) fn guard<T>(&self, store: &mut Store<T>, deadline: Instant) -> Armed {
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        self.arm(deadline)
    }

    fn arm(&self, deadline: Instant) -> Armed {
        let mut state = self.shared.state.lock().unwrap();
        let key = (deadline, state.next);
        state.next += 1;
        state.running.insert(key);
        // Wake the thread only when it would look too late; usually it already waits for an
        // earlier deadline (or for the time that deadline was), and this costs no wake-up.
        if state.looks_at.is_none_or(|at| deadline < at) {
            state.looks_at = Some(deadline);
            self.shared.wake.notify_one();
        }
        Armed {
            shared: self.shared.clone(),
            key,
        }
    }
}

impl Shared {
    /// The watchdog thread: advances the epoch (`advance`, false once the engine is gone)
    /// each time a running evaluation's deadline has passed.
    fn run(&self, mut advance: impl FnMut() -> bool) {
        // Deadlines up to here have had their epoch advance.
        let mut done: Option<Key> = None;
        let mut state = self.state.lock().unwrap();
        while !state.stop {
            let lower = done.map_or(Bound::Unbounded, Bound::Excluded);
            let next = state
                .running
                .range((lower, Bound::Unbounded))
                .next()
                .copied();
            let now = Instant::now();
            match next {
                Some(key) if key.0 <= now => {
                    // Every deadline passed by now is served by this one advance.
                    done = state.running.range(..=(now, u64::MAX)).next_back().copied();
                    drop(state);
                    if !advance() {
                        return;
                    }
                    state = self.state.lock().unwrap();
                }
                Some((deadline, _)) => {
                    state.looks_at = Some(deadline);
                    state = self.wake.wait_timeout(state, deadline - now).unwrap().0;
                }
                None => {
                    state.looks_at = None;
                    state = self.wake.wait(state).unwrap();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn watchdog_counting() -> (Watchdog, Arc<AtomicUsize>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let advances = Arc::new(AtomicUsize::new(0));
        let (thread_shared, counter) = (shared.clone(), advances.clone());
        std::thread::spawn(move || {
            thread_shared.run(|| {
                counter.fetch_add(1, Ordering::SeqCst);
                true
            });
        });
        (Watchdog { shared }, advances)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < give_up, "gave up waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn advances_only_when_a_running_evaluation_passes_its_deadline() {
        let (watchdog, advances) = watchdog_counting();
        // Evaluations that end long before their deadlines: no advance, ever.
        for _ in 0..100 {
            drop(watchdog.arm(Instant::now() + Duration::from_secs(3600)));
        }
        let far = watchdog.arm(Instant::now() + Duration::from_secs(3600));
        // One that runs past its deadline: the epoch advances once for it...
        let late = watchdog.arm(Instant::now() + Duration::from_millis(5));
        wait_for("the advance", || advances.load(Ordering::SeqCst) == 1);
        // ...and not again while it is still winding down.
        let soon = watchdog.arm(Instant::now() + Duration::from_millis(20));
        wait_for("the second advance", || {
            advances.load(Ordering::SeqCst) == 2
        });
        drop((late, soon));
        // Earlier than the one the thread waits for (the hour): it is woken for it.
        let earlier = watchdog.arm(Instant::now() + Duration::from_millis(5));
        wait_for("the third advance", || advances.load(Ordering::SeqCst) == 3);
        drop(earlier);
        assert_eq!(advances.load(Ordering::SeqCst), 3);
        assert_eq!(watchdog.shared.state.lock().unwrap().running.len(), 1);
        drop(far);
        assert!(watchdog.shared.state.lock().unwrap().running.is_empty());
    }
}
