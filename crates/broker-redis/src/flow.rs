//! Pool-wide limits: a queue's limits live in its `limits` hash, read by the lease script
//! (queue rate and concurrency) and by `flow.lua` (per-key rate and concurrency), so a change
//! applies to the next lease or start of every worker, with no restart.

use std::time::Duration;

use ferry_core::broker::{BrokerError, BrokerResult};
use ferry_core::limits::{KeyGate, QueueLimits, Rate};
use ferry_core::{JobEnvelope, QueueName};

use crate::keys::id_bytes;
use crate::scripts::{FLOW, SET_LIMITS};
use crate::shared::Shared;
use crate::value::{array, int};

const FIELDS: [&str; 8] = [
    "rate_count",
    "rate_period_ms",
    "rate_burst",
    "concurrency",
    "key_rate_count",
    "key_rate_period_ms",
    "key_rate_burst",
    "key_concurrency",
];

fn rate_fields(r: Option<Rate>) -> [String; 3] {
    match r {
        Some(r) => [
            r.count.to_string(),
            r.period.as_millis().to_string(),
            r.burst.to_string(),
        ],
        None => [String::new(), String::new(), String::new()],
    }
}

pub(crate) async fn set_limits(
    shared: &Shared,
    queue: &QueueName,
    limits: &QueueLimits,
) -> BrokerResult<()> {
    shared.register(queue).await?;
    let [rc, rp, rb] = rate_fields(limits.rate);
    let [kc, kp, kb] = rate_fields(limits.key_rate);
    let n = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
    let values = [
        rc,
        rp,
        rb,
        n(limits.concurrency),
        kc,
        kp,
        kb,
        n(limits.key_concurrency),
    ];
    let keys = shared.keys(queue);
    shared
        .run(&SET_LIMITS, &keys, &[], |inv| {
            for (f, v) in FIELDS.iter().zip(&values) {
                inv.arg(*f).arg(v);
            }
        })
        .await
        .map(|_| ())
}

pub(crate) async fn limits(shared: &Shared, queue: &QueueName) -> BrokerResult<QueueLimits> {
    let keys = shared.keys(queue);
    let mut conn = shared.conn.clone();
    let v: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(&keys.keys[8])
        .arg(&FIELDS[..])
        .query_async(&mut conn)
        .await
        .map_err(|e| crate::shared::unavailable(&e))?;
    let small = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
    let rate = |c: Option<u64>, p: Option<u64>, b: Option<u64>| match (c, p) {
        (Some(c), Some(p)) => Some(Rate {
            count: small(c),
            period: Duration::from_millis(p),
            burst: small(b.unwrap_or(1)),
        }),
        _ => None,
    };
    Ok(QueueLimits {
        rate: rate(v[0], v[1], v[2]),
        concurrency: v[3].map(small),
        key_rate: rate(v[4], v[5], v[6]),
        key_concurrency: v[7].map(small),
    })
}

/// Runs `flow.lua` for one job (`op`: enter or leave).
async fn flow(
    shared: &Shared,
    job: &JobEnvelope,
    op: &str,
    hold_for: Duration,
) -> BrokerResult<(bool, u64)> {
    let keys = shared.keys(&job.queue);
    // Unused slots still name keys of this queue's slot (Redis Cluster wants every key of a
    // script in one slot).
    let unused = || format!("ferry:{{{}}}:none", job.queue.as_str());
    let extra = [
        job.concurrency_key
            .as_ref()
            .map_or_else(unused, |k| keys.key_holders(k)),
        job.rate_key
            .as_ref()
            .map_or_else(unused, |k| keys.key_rate(k)),
    ];
    let reply = shared
        .run(&FLOW, &keys, &extra, |inv| {
            inv.arg(op)
                .arg(id_bytes(job.id).as_slice())
                .arg(u64::try_from(hold_for.as_millis()).unwrap_or(u64::MAX))
                .arg(if job.concurrency_key.is_some() {
                    "1"
                } else {
                    "0"
                })
                .arg(if job.rate_key.is_some() { "1" } else { "0" });
        })
        .await?;
    let v = array(reply, "flow")?;
    if v.len() != 2 {
        return Err(BrokerError::Unavailable("redis: short flow reply".into()));
    }
    let wait = int(&v[1], "flow wait")?;
    Ok((int(&v[0], "flow")? == 1, u64::try_from(wait).unwrap_or(0)))
}

pub(crate) async fn enter(
    shared: &Shared,
    job: &JobEnvelope,
    hold_for: Duration,
) -> BrokerResult<KeyGate> {
    if job.concurrency_key.is_none() && job.rate_key.is_none() {
        return Ok(KeyGate::Go);
    }
    let (go, wait_ms) = flow(shared, job, "enter", hold_for).await?;
    Ok(if go {
        KeyGate::Go
    } else {
        KeyGate::Wait(Duration::from_millis(wait_ms))
    })
}

pub(crate) async fn leave(shared: &Shared, job: &JobEnvelope) -> BrokerResult<()> {
    if job.concurrency_key.is_none() {
        return Ok(());
    }
    flow(shared, job, "leave", Duration::ZERO).await.map(|_| ())
}
