//! Wall-clock instants as milliseconds since the Unix epoch: what every broker and store can
//! hold natively and compare cheaply.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    #[must_use]
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    #[must_use]
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// How long from `self` until `later`; zero if `later` is not later.
    #[must_use]
    pub fn until(self, later: Self) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    /// Parses RFC 3339 text (`2026-11-23T12:00:00Z`) or whole milliseconds since the epoch.
    ///
    /// # Errors
    /// When `s` is neither.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(ms) = s.parse::<i64>() {
            return Ok(Self(ms));
        }
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time or epoch milliseconds ({e})"))?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map(Self)
            .map_err(|_| format!("{s:?} is out of range"))
    }

    /// RFC 3339 text, for people and JSON.
    #[must_use]
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_format() {
        let t = UnixMillis(1_000);
        assert_eq!(t.plus(Duration::from_millis(500)), UnixMillis(1_500));
        assert_eq!(t.until(UnixMillis(1_250)), Duration::from_millis(250));
        assert_eq!(UnixMillis(2_000).until(t), Duration::ZERO);
        assert_eq!(UnixMillis(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            UnixMillis::parse("2026-11-23T00:00:00.250Z").unwrap(),
            UnixMillis(1_795_392_000_250)
        );
        assert_eq!(UnixMillis::parse("1500").unwrap(), UnixMillis(1_500));
        assert!(UnixMillis::parse("noon").is_err());
    }
}
