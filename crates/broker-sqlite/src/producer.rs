//! Enqueue: one transaction per group commit.

use ferry_core::broker::EnqueueOutcome;
use ferry_core::{JobEnvelope, JobId, UnixMillis};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::row::{encode_headers, encode_tags, id_bytes};

/// Rows per INSERT statement: 17 parameters each stays far below SQLite's 32,766 limit.
const ROWS_PER_INSERT: usize = 500;

/// How long an idempotency key keeps returning the original job.
const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

pub(crate) async fn insert(
    pool: &SqlitePool,
    jobs: Vec<JobEnvelope>,
) -> Result<Vec<EnqueueOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let now = UnixMillis::now();
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut fresh: Vec<&JobEnvelope> = Vec::with_capacity(jobs.len());
    let mut swept = false;
    for job in &jobs {
        // Keys are unique per tenant: the scope carries both.
        let Some(key) = job.idempotency_scope() else {
            outcomes.push(EnqueueOutcome {
                id: job.id,
                duplicate: false,
            });
            fresh.push(job);
            continue;
        };
        if !swept {
            sqlx::query("DELETE FROM ferry_idempotency WHERE created_at < ?")
                .bind(now.0 - IDEMPOTENCY_WINDOW_MS)
                .execute(&mut *tx)
                .await?;
            swept = true;
        }
        let claimed: Option<Vec<u8>> = sqlx::query_scalar(
            "INSERT INTO ferry_idempotency (queue, key, job_id, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (queue, key) DO NOTHING RETURNING job_id",
        )
        .bind(job.queue.as_str())
        .bind(&key)
        .bind(id_bytes(job.id))
        .bind(now.0)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_some() {
            outcomes.push(EnqueueOutcome {
                id: job.id,
                duplicate: false,
            });
            fresh.push(job);
        } else {
            let original: Vec<u8> = sqlx::query_scalar(
                "SELECT job_id FROM ferry_idempotency WHERE queue = ? AND key = ?",
            )
            .bind(job.queue.as_str())
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
            let id = uuid::Uuid::from_slice(&original)
                .map(JobId::from_uuid)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            outcomes.push(EnqueueOutcome {
                id,
                duplicate: true,
            });
        }
    }
    for chunk in fresh.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO ferry_jobs (id, queue, kind, payload, priority, run_at, created_at, \
             attempt, max_attempts, timeout_ms, idempotency_key, tenant, concurrency_key, rate_key, tags, headers, state) ",
        );
        q.push_values(chunk, |mut b, job| {
            b.push_bind(id_bytes(job.id))
                .push_bind(job.queue.as_str())
                .push_bind(job.kind.as_str())
                .push_bind(job.payload.get())
                .push_bind(i64::from(job.priority))
                .push_bind(job.run_at.0)
                .push_bind(job.created_at.0)
                .push_bind(i64::from(job.attempt))
                .push_bind(i64::from(job.max_attempts))
                .push_bind(
                    job.timeout
                        .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
                )
                .push_bind(job.idempotency_key.as_ref().map(|k| k.as_str()))
                .push_bind(job.tenant.as_ref().map(|t| t.as_str()))
                .push_bind(job.concurrency_key.as_ref().map(|k| k.as_str()))
                .push_bind(job.rate_key.as_ref().map(|k| k.as_str()))
                .push_bind(encode_tags(&job.tags))
                .push_bind(encode_headers(&job.headers))
                .push_bind(0i64);
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}
