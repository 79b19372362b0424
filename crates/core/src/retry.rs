//! Retry backoff: exponential, capped, with full jitter (the delay is drawn uniformly from
//! zero to the capped exponential), so that a burst of failures does not come back as a burst.

use std::time::Duration;

use rand::Rng;

/// How long to wait before the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceiling after the first failure.
    pub base: Duration,
    /// No delay is ever longer than this.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay after failed attempt number `attempt` (1-based):
    /// `min(cap, base * 2^(attempt-1))`, without overflow for any attempt.
    #[must_use]
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63);
        let factor = 1u64 << exp;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }

    /// A delay drawn uniformly from `[0, ceiling(attempt)]`.
    pub fn backoff<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn backoff_stays_within_bounds(
            base_ms in 1u64..10_000,
            cap_ms in 1u64..10_000_000,
            attempt in 0u32..200,
            seed in any::<u64>(),
        ) {
            let p = RetryPolicy { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms) };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let d = p.backoff(attempt, &mut rng);
            prop_assert!(d <= p.cap);
            prop_assert!(d <= p.ceiling(attempt));
            let exp = attempt.saturating_sub(1).min(63);
            let uncapped = u128::from(base_ms) << exp;
            prop_assert_eq!(p.ceiling(attempt).as_millis(), uncapped.min(u128::from(cap_ms)));
        }

        #[test]
        fn ceiling_never_shrinks(base_ms in 1u64..10_000, cap_ms in 1u64..10_000_000, attempt in 1u32..200) {
            let p = RetryPolicy { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms) };
            prop_assert!(p.ceiling(attempt + 1) >= p.ceiling(attempt));
        }
    }

    #[test]
    fn jitter_is_spread_over_the_whole_range() {
        // Full jitter: draws cover both halves of [0, ceiling], not just near the top.
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(60),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws: Vec<u128> = (0..2_000)
            .map(|_| p.backoff(4, &mut rng).as_millis())
            .collect();
        let low = draws.iter().filter(|&&d| d < 400).count();
        assert!(draws.iter().all(|&d| d <= 800));
        assert!(
            (800..1200).contains(&low),
            "about half below the midpoint, got {low}"
        );
    }
}
