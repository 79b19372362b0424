//! Operator-facing queries: exact stats, pause and resume, the dead-letter queue.

use ferry_core::broker::{BrokerResult, CancelOutcome, DeadJob, QueueStats};
use ferry_core::{JobId, QueueName, UnixMillis};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::row::{JOB_COLUMNS, decode_job, id_bytes};
use crate::unavailable;

pub(crate) async fn stats(pool: &SqlitePool, queue: &QueueName) -> BrokerResult<QueueStats> {
    let now = UnixMillis::now().0;
    let row = sqlx::query(
        "SELECT
            COALESCE(SUM(state = 0 AND run_at <= ?1), 0) AS ready,
            COALESCE(SUM(state = 0 AND run_at > ?1), 0) AS scheduled,
            COALESCE(SUM(state = 1), 0) AS leased,
            COALESCE(SUM(state = 2), 0) AS dead,
            EXISTS (SELECT 1 FROM ferry_paused WHERE queue = ?2) AS paused
         FROM ferry_jobs WHERE queue = ?2",
    )
    .bind(now)
    .bind(queue.as_str())
    .fetch_one(pool)
    .await
    .map_err(|e| unavailable(&e))?;
    let n = |c: &str| -> BrokerResult<u64> {
        let v: i64 = row.try_get(c).map_err(|e| unavailable(&e))?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    Ok(QueueStats {
        ready: n("ready")?,
        scheduled: n("scheduled")?,
        leased: n("leased")?,
        dead: n("dead")?,
        paused: row
            .try_get::<bool, _>("paused")
            .map_err(|e| unavailable(&e))?,
    })
}

pub(crate) async fn set_paused(
    pool: &SqlitePool,
    queue: &QueueName,
    paused: bool,
) -> BrokerResult<()> {
    let sql = if paused {
        "INSERT INTO ferry_paused (queue) VALUES (?) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM ferry_paused WHERE queue = ?"
    };
    sqlx::query(sql)
        .bind(queue.as_str())
        .execute(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}

pub(crate) async fn dead_jobs(
    pool: &SqlitePool,
    queue: &QueueName,
    limit: usize,
) -> BrokerResult<Vec<DeadJob>> {
    // JOB_COLUMNS is a constant list of column names, not input.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS}, last_error FROM ferry_jobs
         WHERE queue = ? AND state = 2 ORDER BY id LIMIT ?"
    )))
    .bind(queue.as_str())
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(|e| unavailable(&e))?;
    rows.iter()
        .map(|r| {
            Ok(DeadJob {
                job: decode_job(r)?,
                error: r
                    .try_get::<Option<String>, _>("last_error")
                    .map_err(|e| unavailable(&e))?
                    .unwrap_or_default(),
            })
        })
        .collect()
}

pub(crate) async fn retry_dead(
    pool: &SqlitePool,
    queue: &QueueName,
    ids: Option<&[JobId]>,
) -> BrokerResult<u64> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
        "UPDATE ferry_jobs SET state = 0, attempt = 0, last_error = NULL, run_at = ",
    );
    q.push_bind(UnixMillis::now().0)
        .push(" WHERE state = 2 AND queue = ")
        .push_bind(queue.as_str());
    if let Some(ids) = ids {
        if ids.is_empty() {
            return Ok(0);
        }
        q.push(" AND id IN (");
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(id_bytes(*id));
        }
        q.push(")");
    }
    let done = q.build().execute(pool).await.map_err(|e| unavailable(&e))?;
    Ok(done.rows_affected())
}

/// Removes a job that is waiting (state 0) or dead (2); reports a leased one as running.
pub(crate) async fn cancel(
    pool: &SqlitePool,
    queue: &QueueName,
    id: JobId,
) -> BrokerResult<CancelOutcome> {
    let gone = sqlx::query("DELETE FROM ferry_jobs WHERE id = ? AND queue = ? AND state IN (0, 2)")
        .bind(id_bytes(id))
        .bind(queue.as_str())
        .execute(pool)
        .await
        .map_err(|e| unavailable(&e))?
        .rows_affected();
    if gone > 0 {
        return Ok(CancelOutcome::Cancelled);
    }
    let leased: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM ferry_jobs WHERE id = ? AND queue = ? AND state = 1")
            .bind(id_bytes(id))
            .bind(queue.as_str())
            .fetch_optional(pool)
            .await
            .map_err(|e| unavailable(&e))?;
    Ok(if leased.is_some() {
        CancelOutcome::Running
    } else {
        CancelOutcome::NotFound
    })
}
