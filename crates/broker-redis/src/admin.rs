//! Operator-facing calls: exact stats, pause and resume, the dead-letter set.

use ferry_core::broker::{BrokerError, BrokerResult, CancelOutcome, DeadJob, QueueStats};
use ferry_core::{JobId, QueueName};

use crate::keys::{decode_job, id_bytes};
use crate::scripts::{CANCEL, DEAD_JOBS, PAUSE, RETRY_DEAD, STATS};
use crate::shared::Shared;
use crate::value::{array, bytes, unsigned};

pub(crate) async fn stats(shared: &Shared, queue: &QueueName) -> BrokerResult<QueueStats> {
    let keys = shared.keys(queue);
    let reply = shared.run(&STATS, &keys, &[], |_| {}).await?;
    let v = array(reply, "stats")?;
    if v.len() != 5 {
        return Err(BrokerError::Unavailable("redis: short stats reply".into()));
    }
    Ok(QueueStats {
        ready: unsigned(&v[0], "stats")?,
        scheduled: unsigned(&v[1], "stats")?,
        leased: unsigned(&v[2], "stats")?,
        dead: unsigned(&v[3], "stats")?,
        paused: unsigned(&v[4], "stats")? == 1,
    })
}

pub(crate) async fn set_paused(
    shared: &Shared,
    queue: &QueueName,
    paused: bool,
) -> BrokerResult<()> {
    shared.register(queue).await?;
    let keys = shared.keys(queue);
    shared
        .run(&PAUSE, &keys, &[], |inv| {
            inv.arg(queue.as_str()).arg(if paused { "1" } else { "0" });
        })
        .await
        .map(|_| ())
}

pub(crate) async fn dead_jobs(
    shared: &Shared,
    queue: &QueueName,
    limit: usize,
) -> BrokerResult<Vec<DeadJob>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let keys = shared.keys(queue);
    let reply = shared
        .run(&DEAD_JOBS, &keys, &[], |inv| {
            inv.arg(limit);
        })
        .await?;
    let mut items = array(reply, "dead jobs")?.into_iter();
    let mut out = Vec::new();
    while let (Some(env), Some(att), Some(err)) = (items.next(), items.next(), items.next()) {
        let job = decode_job(&bytes(env, "dead job")?, unsigned(&att, "attempts")?)?;
        let error = String::from_utf8_lossy(&bytes(err, "dead error")?).into_owned();
        out.push(DeadJob { job, error });
    }
    Ok(out)
}

pub(crate) async fn retry_dead(
    shared: &Shared,
    queue: &QueueName,
    ids: Option<&[JobId]>,
) -> BrokerResult<u64> {
    if ids.is_some_and(<[JobId]>::is_empty) {
        return Ok(0);
    }
    let keys = shared.keys(queue);
    let reply = shared
        .run(&RETRY_DEAD, &keys, &[], |inv| {
            inv.arg(queue.as_str());
            for id in ids.unwrap_or_default() {
                inv.arg(id_bytes(*id).as_slice());
            }
        })
        .await?;
    unsigned(&reply, "retry dead")
}

pub(crate) async fn cancel(
    shared: &Shared,
    queue: &QueueName,
    id: JobId,
) -> BrokerResult<CancelOutcome> {
    let keys = shared.keys(queue);
    let reply = shared
        .run(&CANCEL, &keys, &[], |inv| {
            inv.arg(id_bytes(id).as_slice());
        })
        .await?;
    Ok(match unsigned(&reply, "cancel")? {
        1 => CancelOutcome::Cancelled,
        2 => CancelOutcome::Running,
        _ => CancelOutcome::NotFound,
    })
}

pub(crate) async fn announce_cancel(shared: &Shared, id: JobId) -> BrokerResult<()> {
    let mut conn = shared.conn.clone();
    redis::cmd("PUBLISH")
        .arg(crate::keys::CANCEL_CHANNEL)
        .arg(id_bytes(id).as_slice())
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| crate::shared::unavailable(&e))
}
