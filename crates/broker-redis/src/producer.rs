//! Enqueue: one script call per queue per group commit; idempotency keys checked and set in
//! the same script, so a duplicate is never half-written.

use ferry_core::broker::{BrokerError, BrokerResult, EnqueueOutcome};
use ferry_core::{JobEnvelope, JobId};
use redis::Value;
use uuid::Uuid;

use crate::scripts::ENQUEUE;
use crate::shared::Shared;
use crate::value::{array, bytes};

/// Writes `jobs` (possibly from several callers and queues); one outcome per job, in order.
pub(crate) async fn write(
    shared: &Shared,
    jobs: Vec<JobEnvelope>,
    idempotency_ttl_ms: u64,
) -> BrokerResult<Vec<EnqueueOutcome>> {
    let mut out: Vec<Option<EnqueueOutcome>> = vec![None; jobs.len()];
    // Group by queue, keeping each job's position.
    let mut groups: Vec<(ferry_core::QueueName, Vec<usize>)> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        match groups.iter_mut().find(|(q, _)| *q == j.queue) {
            Some((_, idx)) => idx.push(i),
            None => groups.push((j.queue.clone(), vec![i])),
        }
    }
    for (queue, idx) in groups {
        shared.register(&queue).await?;
        let keys = shared.keys(&queue);
        let mut extra = Vec::new();
        let mut args: Vec<(Vec<u8>, Vec<u8>, i16, i64, usize)> = Vec::with_capacity(idx.len());
        for &i in &idx {
            let j = &jobs[i];
            let env = serde_json::to_vec(j)
                .map_err(|e| BrokerError::Rejected(format!("cannot encode job {}: {e}", j.id)))?;
            let key_index = match &j.idempotency_key {
                Some(k) => {
                    extra.push(keys.idempotency(k));
                    keys.keys.len() + extra.len()
                }
                None => 0,
            };
            args.push((
                j.id.as_uuid().as_bytes().to_vec(),
                env,
                j.priority,
                j.run_at.0,
                key_index,
            ));
        }
        let reply = shared
            .run(&ENQUEUE, &keys, &extra, |inv| {
                inv.arg(queue.as_str()).arg(idempotency_ttl_ms);
                for (id, env, prio, run_at, ki) in &args {
                    inv.arg(id.as_slice())
                        .arg(env.as_slice())
                        .arg(*prio)
                        .arg(*run_at)
                        .arg(*ki);
                }
            })
            .await?;
        let results = array(reply, "enqueue")?;
        if results.len() != idx.len() {
            return Err(BrokerError::Unavailable(format!(
                "redis: enqueue answered {} results for {} jobs",
                results.len(),
                idx.len()
            )));
        }
        for (&i, r) in idx.iter().zip(results) {
            out[i] = Some(match r {
                Value::Int(_) => EnqueueOutcome {
                    id: jobs[i].id,
                    duplicate: false,
                },
                other => {
                    let raw = bytes(other, "enqueue duplicate")?;
                    let uuid = Uuid::from_slice(&raw).map_err(|_| {
                        BrokerError::Unavailable("redis: idempotency key holds no job id".into())
                    })?;
                    EnqueueOutcome {
                        id: JobId::from_uuid(uuid),
                        duplicate: true,
                    }
                }
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}
