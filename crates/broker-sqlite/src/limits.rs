//! Queue and per-key limits on the embedded broker, kept in the database file: queue limits
//! are applied by the lease (concurrency inside the leasing statement itself), key limits
//! when a job is about to start. Everything that leases from this file shares them.

use std::time::Duration;

use ferry_core::broker::BrokerResult;
use ferry_core::limits::{Gcra, KeyGate, QueueLimits, Rate};
use ferry_core::{JobEnvelope, QueueName, UnixMillis};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use crate::row::id_bytes;
use crate::unavailable;

#[allow(clippy::cast_possible_wrap)]
fn rate_cols(r: Option<Rate>) -> (Option<i64>, Option<i64>, Option<i64>) {
    match r {
        Some(r) => (
            Some(i64::from(r.count)),
            Some(i64::try_from(r.period.as_millis()).unwrap_or(i64::MAX)),
            Some(i64::from(r.burst)),
        ),
        None => (None, None, None),
    }
}

fn rate_of(row: &SqliteRow, prefix: &str) -> Option<Rate> {
    let get = |c: &str| -> Option<i64> { row.try_get(format!("{prefix}{c}").as_str()).ok()? };
    let small = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Some(Rate {
        count: small(get("rate_count")?),
        period: Duration::from_millis(u64::try_from(get("rate_period_ms")?).unwrap_or(0)),
        burst: small(get("rate_burst").unwrap_or(1)),
    })
}

fn limits_of(row: &SqliteRow) -> QueueLimits {
    let n = |c: &str| -> Option<u32> {
        row.try_get::<Option<i64>, _>(c)
            .ok()
            .flatten()
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
    };
    QueueLimits {
        rate: rate_of(row, ""),
        concurrency: n("concurrency"),
        key_rate: rate_of(row, "key_"),
        key_concurrency: n("key_concurrency"),
    }
}

pub(crate) async fn set(pool: &SqlitePool, queue: &QueueName, l: &QueueLimits) -> BrokerResult<()> {
    if *l == QueueLimits::default() {
        sqlx::query("DELETE FROM ferry_limits WHERE queue = ?")
            .bind(queue.as_str())
            .execute(pool)
            .await
            .map_err(|e| unavailable(&e))?;
        return Ok(());
    }
    let (rc, rp, rb) = rate_cols(l.rate);
    let (kc, kp, kb) = rate_cols(l.key_rate);
    // A changed rate starts from a clean slate rather than a debt run up under the old one.
    sqlx::query(
        "INSERT INTO ferry_limits (queue, rate_count, rate_period_ms, rate_burst, concurrency, \
         key_rate_count, key_rate_period_ms, key_rate_burst, key_concurrency, tat) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0) \
         ON CONFLICT (queue) DO UPDATE SET rate_count = excluded.rate_count, \
         rate_period_ms = excluded.rate_period_ms, rate_burst = excluded.rate_burst, \
         concurrency = excluded.concurrency, key_rate_count = excluded.key_rate_count, \
         key_rate_period_ms = excluded.key_rate_period_ms, \
         key_rate_burst = excluded.key_rate_burst, key_concurrency = excluded.key_concurrency, \
         tat = 0",
    )
    .bind(queue.as_str())
    .bind(rc)
    .bind(rp)
    .bind(rb)
    .bind(l.concurrency.map(i64::from))
    .bind(kc)
    .bind(kp)
    .bind(kb)
    .bind(l.key_concurrency.map(i64::from))
    .execute(pool)
    .await
    .map_err(|e| unavailable(&e))?;
    Ok(())
}

pub(crate) async fn get(pool: &SqlitePool, queue: &QueueName) -> BrokerResult<QueueLimits> {
    let row = sqlx::query("SELECT * FROM ferry_limits WHERE queue = ?")
        .bind(queue.as_str())
        .fetch_optional(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(row.as_ref().map(limits_of).unwrap_or_default())
}

/// A queue with a queue-level limit.
#[derive(Clone)]
pub(crate) struct Limited {
    pub(crate) queue: QueueName,
    pub(crate) limits: QueueLimits,
}

/// The queues with queue-level limits (few rows). The broker caches this list briefly; the
/// rate's arrival time is always read fresh ([`rate_allowance`]).
pub(crate) async fn limited(pool: &SqlitePool) -> BrokerResult<Vec<Limited>> {
    let rows = sqlx::query(
        "SELECT * FROM ferry_limits WHERE rate_count IS NOT NULL OR concurrency IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| unavailable(&e))?;
    rows.iter()
        .map(|row| {
            let queue: String = row.try_get("queue").map_err(|e| unavailable(&e))?;
            Ok(Limited {
                queue: QueueName::parse(&queue).map_err(|e| {
                    ferry_core::broker::BrokerError::Unavailable(format!("sqlite: {e}"))
                })?,
                limits: limits_of(row),
            })
        })
        .collect()
}

/// How many jobs a limited queue may lease now (its rate; its concurrency is applied by the
/// leasing statement), and the decision to store once leased.
#[allow(clippy::cast_precision_loss)]
pub(crate) async fn rate_allowance(
    pool: &SqlitePool,
    l: &Limited,
    want: usize,
    now: UnixMillis,
) -> BrokerResult<(usize, Option<Gcra>)> {
    let Some(r) = &l.limits.rate else {
        return Ok((want, None));
    };
    let tat: f64 = sqlx::query_scalar("SELECT tat FROM ferry_limits WHERE queue = ?")
        .bind(l.queue.as_str())
        .fetch_optional(pool)
        .await
        .map_err(|e| unavailable(&e))?
        .unwrap_or(0.0);
    let g = Gcra::decide(r, tat, now.0 as f64, want as u64);
    Ok((usize::try_from(g.allowed).unwrap_or(want), Some(g)))
}

pub(crate) async fn take_rate(
    pool: &SqlitePool,
    queue: &QueueName,
    g: &Gcra,
    used: usize,
) -> BrokerResult<()> {
    if used == 0 {
        return Ok(());
    }
    sqlx::query("UPDATE ferry_limits SET tat = ? WHERE queue = ?")
        .bind(g.tat_after(used as u64))
        .bind(queue.as_str())
        .execute(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}

/// A slot under a key's concurrency frees when a holder finishes: look again soon.
const HOLDER_POLL: Duration = Duration::from_millis(100);

#[allow(clippy::cast_precision_loss)]
pub(crate) async fn enter(
    pool: &SqlitePool,
    job: &JobEnvelope,
    hold_for: Duration,
) -> BrokerResult<KeyGate> {
    if job.concurrency_key.is_none() && job.rate_key.is_none() {
        return Ok(KeyGate::Go);
    }
    let l = get(pool, &job.queue).await?;
    let now = UnixMillis::now();
    let q = job.queue.as_str();
    let mut took = false;
    if let (Some(key), Some(limit)) = (&job.concurrency_key, l.key_concurrency) {
        sqlx::query("DELETE FROM ferry_key_holders WHERE queue = ? AND key = ? AND until <= ?")
            .bind(q)
            .bind(key.as_str())
            .bind(now.0)
            .execute(pool)
            .await
            .map_err(|e| unavailable(&e))?;
        // One statement, so that two workers cannot both take the last slot.
        let n = sqlx::query(
            "INSERT INTO ferry_key_holders (queue, key, job_id, until) \
             SELECT ?1, ?2, ?3, ?4 WHERE (SELECT count(*) FROM ferry_key_holders \
               WHERE queue = ?1 AND key = ?2 AND job_id <> ?3) < ?5 \
             ON CONFLICT (queue, key, job_id) DO UPDATE SET until = excluded.until",
        )
        .bind(q)
        .bind(key.as_str())
        .bind(id_bytes(job.id))
        .bind(now.plus(hold_for).0)
        .bind(i64::from(limit))
        .execute(pool)
        .await
        .map_err(|e| unavailable(&e))?
        .rows_affected();
        if n == 0 {
            return Ok(KeyGate::Wait(HOLDER_POLL));
        }
        took = true;
    }
    if let (Some(key), Some(rate)) = (&job.rate_key, l.key_rate) {
        let tat: f64 =
            sqlx::query_scalar("SELECT tat FROM ferry_key_rates WHERE queue = ? AND key = ?")
                .bind(q)
                .bind(key.as_str())
                .fetch_optional(pool)
                .await
                .map_err(|e| unavailable(&e))?
                .unwrap_or(0.0);
        let g = Gcra::decide(&rate, tat, now.0 as f64, 1);
        if g.allowed == 0 {
            if took {
                leave(pool, job).await?;
            }
            return Ok(KeyGate::Wait(
                g.wait_after(0, now.0 as f64).max(Duration::from_millis(1)),
            ));
        }
        sqlx::query(
            "INSERT INTO ferry_key_rates (queue, key, tat) VALUES (?, ?, ?) \
             ON CONFLICT (queue, key) DO UPDATE SET tat = excluded.tat",
        )
        .bind(q)
        .bind(key.as_str())
        .bind(g.tat_after(1))
        .execute(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    }
    Ok(KeyGate::Go)
}

pub(crate) async fn leave(pool: &SqlitePool, job: &JobEnvelope) -> BrokerResult<()> {
    if job.concurrency_key.is_none() {
        return Ok(());
    }
    sqlx::query("DELETE FROM ferry_key_holders WHERE job_id = ?")
        .bind(id_bytes(job.id))
        .execute(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}
