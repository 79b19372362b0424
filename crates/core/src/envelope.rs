//! The job envelope: everything a broker carries for one job.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{FlowKey, IdempotencyKey, JobId, JobKind, QueueName, Tag, Tenant, UnixMillis};

/// A job's payload, kept as the JSON text the producer sent: brokers and stores pass it through
/// without parsing it again, and only the handler decodes it into its own type.
pub type Payload = Arc<RawValue>;

/// One job as brokers carry it and workers receive it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub id: JobId,
    pub queue: QueueName,
    pub kind: JobKind,
    pub payload: Payload,
    /// Higher runs first where the broker declares priority support.
    pub priority: i16,
    /// Not delivered before this instant.
    pub run_at: UnixMillis,
    pub created_at: UnixMillis,
    /// Deliveries so far, counting the current one once leased (1 on the first run).
    pub attempt: u32,
    /// Deliveries allowed in all; after the last one fails the job is dead-lettered.
    pub max_attempts: u32,
    /// How long one attempt may run before it is failed; `None` means the worker's default.
    #[serde(default, with = "opt_millis")]
    pub timeout: Option<Duration>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// Who the job belongs to; idempotency keys are unique per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Tenant>,
    /// Jobs with the same key in a queue run at most the queue's `key_concurrency` at once
    /// across the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<FlowKey>,
    /// Jobs with the same key in a queue start at most at the queue's `key_rate` across the
    /// pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_key: Option<FlowKey>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Trace context and other carrier headers (`traceparent`, ...).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl JobEnvelope {
    /// The defaults: due now, priority 0, 3 attempts, no timeout override.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

    #[must_use]
    pub fn new(queue: QueueName, kind: JobKind, payload: Payload) -> Self {
        let id = JobId::new();
        // The id says when it was made: creation time is that instant exactly, so that
        // filtering by creation time can be filtering by id.
        let now = id.created_at();
        Self {
            id,
            queue,
            kind,
            payload,
            priority: 0,
            run_at: now,
            created_at: now,
            attempt: 0,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            idempotency_key: None,
            tenant: None,
            concurrency_key: None,
            rate_key: None,
            tags: Vec::new(),
            headers: BTreeMap::new(),
        }
    }

    /// A `null`-free empty object payload, for jobs whose kind says it all.
    #[must_use]
    pub fn empty_payload() -> Payload {
        Arc::from(RawValue::from_string("{}".to_owned()).expect("'{}' is JSON"))
    }

    /// The string a broker deduplicates submissions by: the idempotency key, prefixed by the
    /// tenant and a space when there is one (keys hold no spaces and tenants no spaces, so two
    /// different (tenant, key) pairs never give the same scope).
    #[must_use]
    pub fn idempotency_scope(&self) -> Option<String> {
        let key = self.idempotency_key.as_ref()?;
        Some(match &self.tenant {
            Some(t) => format!("{} {}", t.as_str(), key.as_str()),
            None => key.as_str().to_owned(),
        })
    }

    /// True when this job is held back until later rather than due now.
    #[must_use]
    pub fn is_scheduled(&self, now: UnixMillis) -> bool {
        self.run_at > now
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_raw_payload() {
        let payload: Payload =
            Arc::from(RawValue::from_string(r#"{"to":"a@b.c","n":[1,2]}"#.into()).unwrap());
        let mut job = JobEnvelope::new(
            QueueName::parse("emails").unwrap(),
            JobKind::parse("email.send").unwrap(),
            payload,
        );
        job.timeout = Some(Duration::from_millis(1500));
        let text = serde_json::to_string(&job).unwrap();
        let back: JobEnvelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id, job.id);
        assert_eq!(back.payload.get(), r#"{"to":"a@b.c","n":[1,2]}"#);
        assert_eq!(back.timeout, Some(Duration::from_millis(1500)));
        assert!(!back.is_scheduled(back.run_at));
        assert!(!text.contains("tenant"), "no tenant, no field: {text}");
    }

    #[test]
    fn idempotency_scope_separates_tenants() {
        let mut job = JobEnvelope::new(
            QueueName::parse("q").unwrap(),
            JobKind::parse("k").unwrap(),
            JobEnvelope::empty_payload(),
        );
        assert_eq!(job.idempotency_scope(), None);
        job.idempotency_key = Some(IdempotencyKey::parse("acme:order-1").unwrap());
        assert_eq!(job.idempotency_scope().as_deref(), Some("acme:order-1"));
        job.idempotency_key = Some(IdempotencyKey::parse("order-1").unwrap());
        job.tenant = Some(Tenant::parse("acme").unwrap());
        assert_eq!(job.idempotency_scope().as_deref(), Some("acme order-1"));
    }
}
