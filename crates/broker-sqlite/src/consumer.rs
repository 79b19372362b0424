//! Lease, extend and settle: one statement per batch, every change conditional on the
//! fencing token.

use std::collections::HashSet;
use std::time::Duration;

use ferry_core::broker::{
    BrokerResult, Lease, LeaseRef, QueueSelector, Settle, SettleOutcome, Settlement,
};
use ferry_core::{QueueName, UnixMillis};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::row::{JOB_COLUMNS, decode_lease, id_bytes};
use crate::unavailable;

/// Most leases or settlements per statement (two or four parameters each).
const MAX_PER_STATEMENT: usize = 2_000;

pub(crate) async fn lease(
    pool: &SqlitePool,
    limited: &[crate::limits::Limited],
    queues: &QueueSelector,
    max: usize,
    lease_for: Duration,
    worker: &str,
) -> BrokerResult<Vec<Lease>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    if let QueueSelector::Only(qs) = queues
        && qs.is_empty()
    {
        return Ok(Vec::new());
    }
    let now = UnixMillis::now();
    // Jobs whose holder stopped heartbeating are due again. The next lease bumps the fence,
    // so the old holder's token goes stale.
    sqlx::query(
        "UPDATE ferry_jobs SET state = 0, worker = NULL, lease_until = NULL
         WHERE state = 1 AND lease_until <= ?",
    )
    .bind(now.0)
    .execute(pool)
    .await
    .map_err(|e| unavailable(&e))?;

    // Queues with queue-level limits lease on their own, within them; the rest together.
    let excluded: Vec<&QueueName> = limited.iter().map(|l| &l.queue).collect();
    let mut leases = lease_rows(pool, queues, &excluded, max, None, now, lease_for, worker).await?;
    for l in limited.iter().filter(|l| queues.includes(&l.queue)) {
        let want = max.saturating_sub(leases.len());
        if want == 0 {
            break;
        }
        let (allowed, gcra) = crate::limits::rate_allowance(pool, l, want, now).await?;
        if allowed == 0 {
            continue;
        }
        let only = QueueSelector::Only(vec![l.queue.clone()]);
        let got = lease_rows(
            pool,
            &only,
            &[],
            allowed,
            l.limits.concurrency.map(|c| (&l.queue, c)),
            now,
            lease_for,
            worker,
        )
        .await?;
        if let Some(g) = gcra {
            crate::limits::take_rate(pool, &l.queue, &g, got.len()).await?;
        }
        leases.extend(got);
    }
    // RETURNING order is unspecified; hand jobs out in the order they were chosen.
    leases.sort_by(|a, b| {
        b.job
            .priority
            .cmp(&a.job.priority)
            .then(a.job.run_at.cmp(&b.job.run_at))
            .then(a.job.id.cmp(&b.job.id))
    });
    Ok(leases)
}

/// One leasing statement: up to `max` due jobs of the selected queues (minus `excluded`),
/// with `concurrency` (queue, limit) counting the queue's leased jobs inside the statement,
/// so that two leasers can never both take the last slot.
#[allow(clippy::too_many_arguments)]
async fn lease_rows(
    pool: &SqlitePool,
    queues: &QueueSelector,
    excluded: &[&QueueName],
    max: usize,
    concurrency: Option<(&QueueName, u32)>,
    now: UnixMillis,
    lease_for: Duration,
    worker: &str,
) -> BrokerResult<Vec<Lease>> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
        "UPDATE ferry_jobs SET state = 1, fence = fence + 1, attempt = attempt + 1, lease_until = ",
    );
    q.push_bind(now.plus(lease_for).0)
        .push(", worker = ")
        .push_bind(worker)
        .push(" WHERE rowid IN (SELECT rowid FROM ferry_jobs WHERE ");
    if let QueueSelector::Only(qs) = queues {
        q.push("queue IN (");
        let mut sep = q.separated(", ");
        for name in qs {
            sep.push_bind(name.as_str());
        }
        q.push(") AND ");
    }
    if !excluded.is_empty() {
        q.push("queue NOT IN (");
        let mut sep = q.separated(", ");
        for name in excluded {
            sep.push_bind(name.as_str());
        }
        q.push(") AND ");
    }
    let max = i64::try_from(max.min(MAX_PER_STATEMENT)).unwrap_or(1);
    q.push("state = 0 AND run_at <= ")
        .push_bind(now.0)
        .push(" AND queue NOT IN (SELECT queue FROM ferry_paused)")
        .push(" ORDER BY priority DESC, run_at LIMIT ");
    match concurrency {
        Some((queue, limit)) => {
            q.push("max(0, min(")
                .push_bind(max)
                .push(", ")
                .push_bind(i64::from(limit))
                .push(" - (SELECT count(*) FROM ferry_jobs WHERE queue = ")
                .push_bind(queue.as_str())
                .push(" AND state = 1)))");
        }
        None => {
            q.push_bind(max);
        }
    }
    q.push(") RETURNING ")
        .push(JOB_COLUMNS)
        .push(", fence, lease_until");
    let rows = q
        .build()
        .fetch_all(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    rows.iter().map(decode_lease).collect()
}

fn push_lease_refs(q: &mut QueryBuilder<Sqlite>, leases: &[LeaseRef]) {
    q.push("(id, fence) IN (VALUES ");
    let mut sep = q.separated(", ");
    for l in leases {
        sep.push("(")
            .push_bind_unseparated(id_bytes(l.id))
            .push_unseparated(", ")
            .push_bind_unseparated(i64::try_from(l.token.0).unwrap_or(i64::MAX))
            .push_unseparated(")");
    }
    q.push(")");
}

async fn matched_ids(
    pool: &SqlitePool,
    mut q: QueryBuilder<Sqlite>,
) -> BrokerResult<HashSet<Vec<u8>>> {
    let ids: Vec<Vec<u8>> = q
        .build_query_scalar()
        .fetch_all(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(ids.into_iter().collect())
}

pub(crate) async fn extend(
    pool: &SqlitePool,
    leases: &[LeaseRef],
    lease_for: Duration,
) -> BrokerResult<Vec<bool>> {
    let until = UnixMillis::now().plus(lease_for).0;
    let mut held = Vec::with_capacity(leases.len());
    for chunk in leases.chunks(MAX_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE ferry_jobs SET lease_until = ");
        q.push_bind(until).push(" WHERE state = 1 AND ");
        push_lease_refs(&mut q, chunk);
        q.push(" RETURNING id");
        let ok = matched_ids(pool, q).await?;
        held.extend(chunk.iter().map(|l| ok.contains(&id_bytes(l.id))));
    }
    // A job holding a concurrency key holds it as long as its lease.
    for chunk in leases.chunks(MAX_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("UPDATE ferry_key_holders SET until = ");
        q.push_bind(until).push(" WHERE job_id IN (");
        let mut sep = q.separated(", ");
        for l in chunk {
            sep.push_bind(id_bytes(l.id));
        }
        q.push(")");
        q.build().execute(pool).await.map_err(|e| unavailable(&e))?;
    }
    Ok(held)
}

pub(crate) async fn settle(
    pool: &SqlitePool,
    batch: &[Settle],
) -> BrokerResult<Vec<SettleOutcome>> {
    let mut applied: HashSet<Vec<u8>> = HashSet::new();
    let acks: Vec<LeaseRef> = batch
        .iter()
        .filter(|s| s.settlement == Settlement::Ack)
        .map(|s| s.lease)
        .collect();
    for chunk in acks.chunks(MAX_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("DELETE FROM ferry_jobs WHERE state = 1 AND ");
        push_lease_refs(&mut q, chunk);
        q.push(" RETURNING id");
        applied.extend(matched_ids(pool, q).await?);
    }
    // Retries and dead letters carry a time and an error each: update through a VALUES table.
    let others: Vec<&Settle> = batch
        .iter()
        .filter(|s| s.settlement != Settlement::Ack)
        .collect();
    for chunk in others.chunks(MAX_PER_STATEMENT / 3) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "UPDATE ferry_jobs SET state = v.column3, run_at = COALESCE(v.column4, ferry_jobs.run_at), \
             last_error = COALESCE(v.column5, ferry_jobs.last_error), \
             attempt = ferry_jobs.attempt - v.column6, lease_until = NULL, worker = NULL FROM (VALUES ",
        );
        let mut sep = q.separated(", ");
        for s in chunk {
            // (state, due, error, attempts to give back)
            let (state, at, error, undo) = match &s.settlement {
                Settlement::Retry { at, error } => (0i64, Some(at.0), Some(error.as_str()), 0i64),
                Settlement::Dead { error } => (2i64, None, Some(error.as_str()), 0),
                Settlement::Release { at } => (0, Some(at.0), None, 1),
                Settlement::Ack => unreachable!("acks were filtered out above"),
            };
            sep.push("(")
                .push_bind_unseparated(id_bytes(s.lease.id))
                .push_unseparated(", ")
                .push_bind_unseparated(i64::try_from(s.lease.token.0).unwrap_or(i64::MAX))
                .push_unseparated(", ")
                .push_bind_unseparated(state)
                .push_unseparated(", ")
                .push_bind_unseparated(at)
                .push_unseparated(", ")
                .push_bind_unseparated(error)
                .push_unseparated(", ")
                .push_bind_unseparated(undo)
                .push_unseparated(")");
        }
        q.push(
            ") AS v WHERE ferry_jobs.id = v.column1 AND ferry_jobs.fence = v.column2 \
                AND ferry_jobs.state = 1 RETURNING ferry_jobs.id",
        );
        applied.extend(matched_ids(pool, q).await?);
    }
    Ok(batch
        .iter()
        .map(|s| {
            if applied.contains(&id_bytes(s.lease.id)) {
                SettleOutcome::Applied
            } else {
                SettleOutcome::Stale
            }
        })
        .collect())
}
