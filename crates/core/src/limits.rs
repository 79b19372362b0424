//! Flow control a whole worker pool shares: per queue (a rate and a concurrency across every
//! worker) and per key (jobs carrying the same `concurrency_key` or `rate_key` share a limit).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `count` jobs per `period`, of which up to `burst` may start back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub count: u32,
    #[serde(with = "millis")]
    pub period: Duration,
    pub burst: u32,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Rate {
    /// Parses `N/PERIOD` (`200/s`, `200/1s`, `10/500ms`, `1000/1m`, `5000/h`) with a burst of
    /// `burst` (at least 1).
    ///
    /// # Errors
    /// A message saying what is wrong, fit for an operator.
    pub fn parse(text: &str, burst: u32) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not a rate: write N/PERIOD, e.g. 200/s, 10/500ms, 1000/1m");
        let (n, period) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let digits = period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len());
        let amount: u64 = if digits == 0 {
            1
        } else {
            period[..digits].parse().map_err(|_| bad())?
        };
        let unit_ms = match &period[digits..] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let period = Duration::from_millis(amount.saturating_mul(unit_ms));
        if count == 0 || period.is_zero() {
            return Err(format!(
                "{text:?}: the count and the period must be positive"
            ));
        }
        if burst == 0 {
            return Err("a burst must be at least 1".into());
        }
        Ok(Self {
            count,
            period,
            burst,
        })
    }
}

/// A GCRA decision: of `want` starts at `now_ms`, how many the rate allows given the stored
/// theoretical arrival time `tat_ms`, and the arrival time to store after taking `used`.
/// (The Redis broker does the same arithmetic in Lua, `gcra` in its `common.lua`.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gcra {
    pub allowed: u64,
    tat: f64,
    interval: f64,
    tolerance: f64,
}

impl Gcra {
    #[must_use]
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn decide(rate: &Rate, tat_ms: f64, now_ms: f64, want: u64) -> Self {
        let interval = rate.period.as_millis() as f64 / f64::from(rate.count);
        let tolerance = interval * f64::from(rate.burst.saturating_sub(1));
        let tat = tat_ms.max(now_ms);
        let allowed = if now_ms + tolerance >= tat {
            ((now_ms + tolerance - tat) / interval).floor() as u64 + 1
        } else {
            0
        };
        Self {
            allowed: allowed.min(want),
            tat,
            interval,
            tolerance,
        }
    }

    /// The arrival time to store once `used` starts were made.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn tat_after(&self, used: u64) -> f64 {
        self.tat + used as f64 * self.interval
    }

    /// How long until one more start is allowed after `used` were made.
    #[must_use]
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn wait_after(&self, used: u64, now_ms: f64) -> Duration {
        let next = self.tat_after(used) - self.tolerance;
        Duration::from_millis((next - now_ms).max(0.0).ceil() as u64)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}ms (burst {})",
            self.count,
            self.period.as_millis(),
            self.burst
        )
    }
}

/// A queue's limits; `None` means unlimited. Changed at run time (`ferry limits`, `PUT
/// /v1/queues/{queue}/limits`); workers see a change within a second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLimits {
    /// Jobs started per period across the pool.
    pub rate: Option<Rate>,
    /// Jobs running at once across the pool.
    pub concurrency: Option<u32>,
    /// Per `rate_key`: jobs started per period across the pool for each key.
    pub key_rate: Option<Rate>,
    /// Per `concurrency_key`: jobs running at once across the pool for each key.
    pub key_concurrency: Option<u32>,
}

/// What a per-key limit says about starting a job now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyGate {
    /// Run it; its keys are held until [`crate::broker::Broker::leave_keys`].
    Go,
    /// Not now: give it back (not an attempt) and try again after this long.
    Wait(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let r = Rate::parse("10/s", 3).unwrap();
        let g = Gcra::decide(&r, 0.0, 1_000.0, 10);
        assert_eq!(g.allowed, 3, "a fresh limiter allows the burst");
        let tat = g.tat_after(3);
        let g = Gcra::decide(&r, tat, 1_000.0, 10);
        assert_eq!(g.allowed, 0);
        assert_eq!(g.wait_after(0, 1_000.0), Duration::from_millis(100));
        assert_eq!(Gcra::decide(&r, tat, 1_100.0, 10).allowed, 1);
        assert_eq!(Gcra::decide(&r, tat, 1_250.0, 10).allowed, 2);
    }

    #[test]
    fn rates_parse() {
        let r = Rate::parse("200/s", 1).unwrap();
        assert_eq!(
            (r.count, r.period, r.burst),
            (200, Duration::from_secs(1), 1)
        );
        assert_eq!(
            Rate::parse("10/500ms", 3).unwrap().period,
            Duration::from_millis(500)
        );
        assert_eq!(
            Rate::parse("1000/2m", 1).unwrap().period,
            Duration::from_secs(120)
        );
        for bad in ["200", "0/s", "5/0s", "5/fortnight", "x/s", "5/"] {
            assert!(Rate::parse(bad, 1).is_err(), "{bad} should not parse");
        }
        assert!(Rate::parse("5/s", 0).is_err());
    }
}
