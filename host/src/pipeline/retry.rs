//! When to try again: the configured schedule with random spread.

use std::time::Duration;

use rand::Rng;

/// The wait before round `next_round` (2 = the first retry), or `None` when the schedule is
/// exhausted. `jitter` is a fraction: 0.2 spreads each wait over ±20%.
pub fn next_delay(schedule: &[Duration], jitter: f64, next_round: u32) -> Option<Duration> {
    let base = *schedule.get(next_round.checked_sub(2)? as usize)?;
    if jitter <= 0.0 || base.is_zero() {
        return Some(base);
    }
    let factor = 1.0 + rand::thread_rng().gen_range(-jitter..=jitter);
    Some(base.mul_f64(factor.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_schedule_then_stops() {
        let s = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(next_delay(&s, 0.0, 2), Some(Duration::from_secs(5)));
        assert_eq!(next_delay(&s, 0.0, 3), Some(Duration::from_secs(300)));
        assert_eq!(next_delay(&s, 0.0, 4), None);
        assert_eq!(next_delay(&s, 0.0, 1), None);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let s = [Duration::from_secs(100)];
        for _ in 0..1000 {
            let d = next_delay(&s, 0.2, 2).unwrap();
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
        }
    }
}
