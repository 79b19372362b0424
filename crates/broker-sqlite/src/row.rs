//! Encoding to and decoding from `ferry_jobs` rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::broker::{BrokerError, FencingToken, Lease};
use ferry_core::{JobEnvelope, JobId, JobKind, QueueName, Tag, UnixMillis};
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

pub(crate) fn id_bytes(id: JobId) -> Vec<u8> {
    id.as_uuid().as_bytes().to_vec()
}

pub(crate) fn encode_tags(tags: &[Tag]) -> Option<String> {
    if tags.is_empty() {
        None
    } else {
        serde_json::to_string(tags).ok()
    }
}

pub(crate) fn encode_headers(h: &BTreeMap<String, String>) -> Option<String> {
    if h.is_empty() {
        None
    } else {
        serde_json::to_string(h).ok()
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("sqlite broker row has a bad {what}: {e}"))
}

/// The columns [`decode_job`] reads, for SELECT and RETURNING lists.
pub(crate) const JOB_COLUMNS: &str = "id, queue, kind, payload, priority, run_at, created_at, \
     attempt, max_attempts, timeout_ms, idempotency_key, tenant, concurrency_key, rate_key, tags, headers";

pub(crate) fn decode_job(row: &SqliteRow) -> Result<JobEnvelope, BrokerError> {
    let get = |e: sqlx::Error| corrupt("column", e);
    let id: Vec<u8> = row.try_get("id").map_err(get)?;
    let id = uuid::Uuid::from_slice(&id)
        .map(JobId::from_uuid)
        .map_err(|e| corrupt("id", e))?;
    let queue: String = row.try_get("queue").map_err(get)?;
    let kind: String = row.try_get("kind").map_err(get)?;
    let payload: String = row.try_get("payload").map_err(get)?;
    let tags: Option<String> = row.try_get("tags").map_err(get)?;
    let headers: Option<String> = row.try_get("headers").map_err(get)?;
    let key: Option<String> = row.try_get("idempotency_key").map_err(get)?;
    let tenant: Option<String> = row.try_get("tenant").map_err(get)?;
    let flow_key = |col: &str| -> Result<Option<ferry_core::FlowKey>, BrokerError> {
        row.try_get::<Option<String>, _>(col)
            .map_err(get)?
            .map(|k| ferry_core::FlowKey::parse(&k))
            .transpose()
            .map_err(|e| corrupt(col, e))
    };
    let timeout_ms: Option<i64> = row.try_get("timeout_ms").map_err(get)?;
    Ok(JobEnvelope {
        id,
        queue: QueueName::parse(&queue).map_err(|e| corrupt("queue", e))?,
        kind: JobKind::parse(&kind).map_err(|e| corrupt("kind", e))?,
        payload: Arc::from(RawValue::from_string(payload).map_err(|e| corrupt("payload", e))?),
        priority: i16::try_from(row.try_get::<i64, _>("priority").map_err(get)?).unwrap_or(0),
        run_at: UnixMillis(row.try_get("run_at").map_err(get)?),
        created_at: UnixMillis(row.try_get("created_at").map_err(get)?),
        attempt: u32::try_from(row.try_get::<i64, _>("attempt").map_err(get)?).unwrap_or(0),
        max_attempts: u32::try_from(row.try_get::<i64, _>("max_attempts").map_err(get)?)
            .unwrap_or(1),
        timeout: timeout_ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        idempotency_key: key
            .map(|k| ferry_core::IdempotencyKey::parse(&k))
            .transpose()
            .map_err(|e| corrupt("idempotency key", e))?,
        tenant: tenant
            .map(|t| ferry_core::Tenant::parse(&t))
            .transpose()
            .map_err(|e| corrupt("tenant", e))?,
        concurrency_key: flow_key("concurrency_key")?,
        rate_key: flow_key("rate_key")?,
        tags: tags
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| corrupt("tags", e))?
            .unwrap_or_default(),
        headers: headers
            .map(|h| serde_json::from_str(&h))
            .transpose()
            .map_err(|e| corrupt("headers", e))?
            .unwrap_or_default(),
    })
}

pub(crate) fn decode_lease(row: &SqliteRow) -> Result<Lease, BrokerError> {
    let job = decode_job(row)?;
    let fence: i64 = row.try_get("fence").map_err(|e| corrupt("fence", e))?;
    let until: i64 = row
        .try_get("lease_until")
        .map_err(|e| corrupt("lease_until", e))?;
    Ok(Lease {
        job: Arc::new(job),
        token: FencingToken(u64::try_from(fence).unwrap_or(0)),
        expires_at: UnixMillis(until),
    })
}
