//! Isolation between receivers: each endpoint (scheme, host and port of a webhook's
//! destination) gets at most `endpoint_concurrency` deliveries in flight and, when
//! `endpoint_rate` is set, a token bucket of `endpoint_burst` tokens refilled at that rate.
//! A slow or hung receiver then uses up its own share, never everyone's.
//!
//! The limits are for all hosts sharing the storage together: each host takes its share
//! ([`Endpoints::set_peers`]), an even part of the concurrency (the rest one each to the
//! first hosts) and of the rate. While hosts join or leave, for a second or so, their views
//! of who is there may differ.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a delivery to an endpoint cannot start now.
#[derive(Debug, PartialEq)]
pub enum Busy {
    /// The endpoint has its maximum in flight; one of them must finish first.
    Full,
    /// The rate limit allows the next request after this wait.
    RateLimited(Duration),
}

struct Endpoint {
    in_flight: usize,
    tokens: f64,
    refilled: Instant,
}

/// Per-endpoint concurrency and rate limits.
pub struct Endpoints {
    /// The limits for all hosts together.
    limits: Limits,
    /// This host's share of them.
    share: Mutex<Limits>,
    /// The hosts the share was taken among.
    peers: Mutex<crate::storage::Peers>,
    state: Mutex<HashMap<String, Endpoint>>,
}

/// Concurrency, rate (0: none) and burst of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Limits {
    concurrency: usize,
    rate: f64,
    burst: f64,
}

impl Endpoints {
    /// Limits: `concurrency` in flight per endpoint; `rate` requests per second with bursts
    /// of `burst` (no rate limit when `rate` is 0).
    pub fn new(concurrency: usize, rate: f64, burst: u32) -> Endpoints {
        let limits = Limits {
            concurrency,
            rate,
            burst: f64::from(burst.max(1)),
        };
        Endpoints {
            limits,
            share: Mutex::new(limits),
            peers: Mutex::new(crate::storage::Peers { rank: 0, count: 1 }),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Takes this host's share of the limits among `peers`.
    pub fn set_peers(&self, peers: crate::storage::Peers) {
        let count = peers.count.max(1) as f64;
        let share = Limits {
            concurrency: peers.share(self.limits.concurrency),
            rate: self.limits.rate / count,
            burst: (self.limits.burst / count).max(1.0),
        };
        *self.share.lock().unwrap() = share;
        *self.peers.lock().unwrap() = peers;
    }

    /// The hosts the limits are shared among, as last seen.
    pub fn peers(&self) -> crate::storage::Peers {
        *self.peers.lock().unwrap()
    }

    fn share(&self) -> Limits {
        *self.share.lock().unwrap()
    }

    /// Starts a delivery to `endpoint` if its limits allow, counting it in flight.
    ///
    /// # Errors
    /// [`Busy`] saying whether to wait for a finish or for a token.
    pub fn try_start(&self, endpoint: &str, now: Instant) -> Result<(), Busy> {
        let limits = self.share();
        let mut state = self.state.lock().unwrap();
        let e = state.entry(endpoint.to_string()).or_insert(Endpoint {
            in_flight: 0,
            tokens: limits.burst,
            refilled: now,
        });
        if e.in_flight >= limits.concurrency {
            return Err(Busy::Full);
        }
        if limits.rate > 0.0 {
            let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
            e.tokens = (e.tokens + elapsed * limits.rate).min(limits.burst);
            e.refilled = now;
            if e.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - e.tokens) / limits.rate);
                return Err(Busy::RateLimited(wait));
            }
            e.tokens -= 1.0;
        }
        e.in_flight += 1;
        Ok(())
    }

    /// A delivery to `endpoint` finished its step.
    pub fn finish(&self, endpoint: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(e) = state.get_mut(endpoint) {
            e.in_flight = e.in_flight.saturating_sub(1);
            // Forget idle endpoints without a rate to remember.
            if e.in_flight == 0 && self.limits.rate == 0.0 {
                state.remove(endpoint);
            }
        }
    }

    /// A delivery started at `endpoint` did not go ahead after all (its claim was refused):
    /// its place and the request token it took are given back.
    pub fn give_back(&self, endpoint: &str) {
        let limits = self.share();
        if limits.rate > 0.0 {
            if let Some(e) = self.state.lock().unwrap().get_mut(endpoint) {
                e.tokens = (e.tokens + 1.0).min(limits.burst);
            }
        }
        self.finish(endpoint);
    }

    /// Deliveries in flight per endpoint with any.
    pub fn all_in_flight(&self) -> Vec<(String, usize)> {
        self.state
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.in_flight > 0)
            .map(|(endpoint, e)| (endpoint.clone(), e.in_flight))
            .collect()
    }

    /// Deliveries in flight to `endpoint`.
    pub fn in_flight(&self, endpoint: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .get(endpoint)
            .map_or(0, |e| e.in_flight)
    }
}

/// The endpoint of a URL: its origin (`https://erp.example:443`).
pub fn endpoint_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    Some(parsed.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Peers;

    #[test]
    fn hosts_sharing_the_storage_take_shares_that_add_up_to_the_limit() {
        for (limit, count) in [(4, 3), (32, 5), (2, 3), (1, 1), (7, 7)] {
            let shares: Vec<usize> = (0..count)
                .map(|rank| Peers { rank, count }.share(limit))
                .collect();
            assert_eq!(shares.iter().sum::<usize>(), limit, "{limit} among {count}");
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
        let e = Endpoints::new(4, 0.0, 1);
        e.set_peers(Peers { rank: 1, count: 3 });
        let now = Instant::now();
        assert_eq!(e.try_start("a", now), Ok(()));
        assert_eq!(
            e.try_start("a", now),
            Err(Busy::Full),
            "one of four for the second of three"
        );
        // Alone again: the whole limit.
        e.set_peers(Peers { rank: 0, count: 1 });
        for _ in 0..3 {
            assert_eq!(e.try_start("a", now), Ok(()));
        }
        assert_eq!(e.try_start("a", now), Err(Busy::Full));
    }

    #[test]
    fn concurrency_is_per_endpoint() {
        let e = Endpoints::new(2, 0.0, 1);
        let now = Instant::now();
        assert_eq!(e.try_start("a", now), Ok(()));
        assert_eq!(e.try_start("a", now), Ok(()));
        assert_eq!(e.try_start("a", now), Err(Busy::Full));
        assert_eq!(
            e.try_start("b", now),
            Ok(()),
            "another endpoint is not affected"
        );
        e.finish("a");
        assert_eq!(e.try_start("a", now), Ok(()));
        assert_eq!(e.in_flight("a"), 2);
    }

    #[test]
    fn a_start_given_back_returns_its_place_and_its_token() {
        let e = Endpoints::new(1, 10.0, 1);
        let t0 = Instant::now();
        assert_eq!(e.try_start("a", t0), Ok(()));
        e.give_back("a");
        assert_eq!(e.in_flight("a"), 0);
        assert_eq!(e.try_start("a", t0), Ok(()), "the token came back too");
        e.finish("a");
        assert!(matches!(e.try_start("a", t0), Err(Busy::RateLimited(_))));
    }

    #[test]
    fn the_token_bucket_allows_bursts_then_the_rate() {
        let e = Endpoints::new(100, 10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(e.try_start("a", t0), Ok(()));
        }
        match e.try_start("a", t0) {
            Err(Busy::RateLimited(wait)) => {
                assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.try_start("a", t0 + Duration::from_millis(100)), Ok(()));
        assert!(e.try_start("a", t0 + Duration::from_millis(150)).is_err());
    }

    #[test]
    fn endpoints_are_origins() {
        assert_eq!(
            endpoint_of("https://erp.example/api/x?y=1").as_deref(),
            Some("https://erp.example")
        );
        assert_eq!(
            endpoint_of("http://127.0.0.1:8081/a").as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(endpoint_of("not a url"), None);
    }
}
