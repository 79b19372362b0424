//! `GET` and `PUT /v1/queues/{queue}/limits`: a queue's pool-wide limits, readable and
//! replaceable at run time (workers apply a change to their next lease or start).

use ferry_core::broker::BrokerError;
use ferry_core::limits::{QueueLimits, Rate};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The wire shape, both ways. Every field is optional; a `PUT` replaces all of them, so an
/// absent field removes that limit.
#[derive(Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsBody {
    /// Jobs started per period across the pool: `200/s`, `10/500ms`, `1000/1m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<String>,
    /// Starts allowed back to back under `rate` (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u32>,
    /// Jobs running at once across the pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
    /// Per `rate_key`: starts per period across the pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_burst: Option<u32>,
    /// Per `concurrency_key`: jobs running at once across the pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_concurrency: Option<u32>,
}

fn rate(text: Option<&String>, burst: Option<u32>, what: &str) -> Result<Option<Rate>, ApiError> {
    match (text, burst) {
        (Some(t), b) => Rate::parse(t, b.unwrap_or(1))
            .map(Some)
            .map_err(|e| ApiError::Invalid(format!("{what}: {e}"))),
        (None, Some(_)) => Err(ApiError::Invalid(format!(
            "a burst for {what} needs {what} itself"
        ))),
        (None, None) => Ok(None),
    }
}

fn positive(n: Option<u32>, what: &str) -> Result<Option<u32>, ApiError> {
    match n {
        Some(0) => Err(ApiError::Invalid(format!(
            "{what} must be at least 1 (leave it out for no limit)"
        ))),
        n => Ok(n),
    }
}

impl LimitsBody {
    pub(crate) fn parse(&self) -> Result<QueueLimits, ApiError> {
        Ok(QueueLimits {
            rate: rate(self.rate.as_ref(), self.burst, "rate")?,
            concurrency: positive(self.concurrency, "concurrency")?,
            key_rate: rate(self.key_rate.as_ref(), self.key_burst, "key_rate")?,
            key_concurrency: positive(self.key_concurrency, "key_concurrency")?,
        })
    }

    pub(crate) fn from_limits(l: &QueueLimits) -> Self {
        let text = |r: &Rate| format!("{}/{}ms", r.count, r.period.as_millis());
        Self {
            rate: l.rate.as_ref().map(text),
            burst: l.rate.map(|r| r.burst),
            concurrency: l.concurrency,
            key_rate: l.key_rate.as_ref().map(text),
            key_burst: l.key_rate.map(|r| r.burst),
            key_concurrency: l.key_concurrency,
        }
    }
}

/// A broker error as the API answers it: a capability the broker lacks is a 501, anything
/// else a 503.
pub(crate) fn broker_error(e: BrokerError) -> ApiError {
    match e {
        BrokerError::Unsupported(what) => {
            ApiError::Unsupported(format!("this deployment's broker does not support {what}"))
        }
        e => ApiError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip_through_the_wire_shape() {
        let body: LimitsBody = serde_json::from_str(
            r#"{"rate":"200/s","burst":10,"concurrency":5,"key_rate":"3/500ms","key_concurrency":2}"#,
        )
        .unwrap();
        let limits = body.parse().unwrap();
        assert_eq!(limits.rate.unwrap().count, 200);
        assert_eq!(limits.key_rate.unwrap().burst, 1);
        let back = LimitsBody::from_limits(&limits);
        assert_eq!(back.rate.as_deref(), Some("200/1000ms"));
        assert_eq!(back.parse().unwrap(), limits);
        for bad in [
            r#"{"rate":"fast"}"#,
            r#"{"burst":3}"#,
            r#"{"concurrency":0}"#,
            r#"{"rate":"5/s","burst":0}"#,
        ] {
            let b: LimitsBody = serde_json::from_str(bad).unwrap();
            assert!(b.parse().is_err(), "{bad} should be refused");
        }
    }
}
