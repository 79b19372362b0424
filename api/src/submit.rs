//! Job submission: the request body, parsed once into an envelope.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use ferry_core::{
    FlowKey, IdempotencyKey, JobEnvelope, JobKind, QueueName, Tag, Tenant, UnixMillis,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// `POST /v1/queues/{queue}/jobs` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitJob {
    kind: JobKind,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    max_attempts: Option<u32>,
    delay_ms: Option<u64>,
    priority: Option<i16>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    tags: Vec<Tag>,
    /// For batch submissions; single submissions may use the `Idempotency-Key` header.
    idempotency_key: Option<IdempotencyKey>,
    /// Who the job belongs to: idempotency keys are unique per tenant, and history can be
    /// searched by it.
    tenant: Option<Tenant>,
    /// Jobs sharing this key in the queue share its `key_concurrency` limit.
    concurrency_key: Option<FlowKey>,
    /// Jobs sharing this key in the queue share its `key_rate` limit.
    rate_key: Option<FlowKey>,
}

/// `POST /v1/queues/{queue}/jobs/batch` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBatch {
    pub(crate) jobs: Vec<SubmitJob>,
}

pub(crate) const MAX_ATTEMPTS_LIMIT: u32 = 1_000;
pub(crate) const MAX_BATCH: usize = 10_000;
const MAX_DELAY_MS: u64 = 366 * 24 * 3600 * 1000;

pub(crate) fn parse_queue(raw: &str) -> Result<QueueName, ApiError> {
    QueueName::parse(raw).map_err(|e| ApiError::Invalid(e.to_string()))
}

/// Content type, size and JSON syntax, in that order; the first failure wins.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(ApiError::UnsupportedMediaType(if ct.is_empty() {
            "none".into()
        } else {
            ct.to_owned()
        }));
    }
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::MalformedJson(r.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            ApiError::Invalid(e.to_string())
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })
}

impl SubmitJob {
    pub(crate) fn into_envelope(
        self,
        queue: &QueueName,
        header_key: Option<IdempotencyKey>,
        traceparent: Option<&str>,
    ) -> Result<JobEnvelope, ApiError> {
        let payload = match self.payload {
            Some(p) => Arc::from(p),
            None => JobEnvelope::empty_payload(),
        };
        let mut job = JobEnvelope::new(queue.clone(), self.kind, payload);
        if let Some(n) = self.max_attempts {
            if n == 0 || n > MAX_ATTEMPTS_LIMIT {
                return Err(ApiError::Invalid(format!(
                    "max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {n}"
                )));
            }
            job.max_attempts = n;
        }
        if let Some(ms) = self.delay_ms {
            if ms > MAX_DELAY_MS {
                return Err(ApiError::Invalid(format!(
                    "delay_ms may be at most {MAX_DELAY_MS} (366 days), got {ms}"
                )));
            }
            job.run_at = UnixMillis(job.created_at.0 + i64::try_from(ms).unwrap_or(0));
        }
        if let Some(ms) = self.timeout_ms {
            if ms == 0 {
                return Err(ApiError::Invalid("timeout_ms must be at least 1".into()));
            }
            job.timeout = Some(Duration::from_millis(ms));
        }
        job.priority = self.priority.unwrap_or(0);
        job.tags = self.tags;
        job.idempotency_key = self.idempotency_key.or(header_key);
        job.tenant = self.tenant;
        job.concurrency_key = self.concurrency_key;
        job.rate_key = self.rate_key;
        if let Some(tp) = traceparent {
            job.headers.insert("traceparent".into(), tp.to_owned());
        }
        Ok(job)
    }
}
