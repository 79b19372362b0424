//! Enqueue: one script call per queue per group commit; idempotency keys checked and set in
//! the same script, so a duplicate is never half-written.

use ferry_core::broker::{BrokerError, BrokerResult, EnqueueOutcome};
use ferry_core::{JobEnvelope, JobId};
use redis::Value;
use uuid::Uuid;

use crate::keys::id_bytes;
use crate::scripts::ENQUEUE;
use crate::shared::Shared;
use crate::value::{array, bytes};

/// One job as the enqueue script takes it.
struct Encoded {
    id: [u8; 16],
    env: Vec<u8>,
    priority: i16,
    run_at: i64,
    /// Position of its idempotency key in KEYS (1-based), or 0 for none.
    key_index: usize,
}

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
        // Plain jobs (priority 0, no delay, no idempotency key) travel as two values each and
        // the script stores them without making a string per job; the rest carry five.
        let (plain, full): (Vec<usize>, Vec<usize>) = idx.iter().partition(|&&i| {
            let j = &jobs[i];
            j.priority == 0 && j.idempotency_key.is_none() && j.run_at <= j.created_at
        });
        let mut args: Vec<Encoded> = Vec::with_capacity(idx.len());
        for &i in plain.iter().chain(&full) {
            let j = &jobs[i];
            // The stored value is `priority "\n" JSON`: scripts read the priority without
            // decoding JSON when a job goes back to ready.
            let mut env = format!("{}\n", j.priority).into_bytes();
            serde_json::to_writer(&mut env, j)
                .map_err(|e| BrokerError::Rejected(format!("cannot encode job {}: {e}", j.id)))?;
            let key_index = match &j.idempotency_key {
                Some(k) => {
                    extra.push(keys.idempotency(k));
                    keys.keys.len() + extra.len()
                }
                None => 0,
            };
            args.push(Encoded {
                id: id_bytes(j.id),
                env,
                priority: j.priority,
                run_at: j.run_at.0,
                key_index,
            });
        }
        let reply = shared
            .run(&ENQUEUE, &keys, &extra, |inv| {
                inv.arg(queue.as_str())
                    .arg(idempotency_ttl_ms)
                    .arg(plain.len());
                for (n, a) in args.iter().enumerate() {
                    inv.arg(a.id.as_slice()).arg(a.env.as_slice());
                    if n >= plain.len() {
                        inv.arg(a.priority).arg(a.run_at).arg(a.key_index);
                    }
                }
            })
            .await?;
        for &i in &plain {
            out[i] = Some(EnqueueOutcome {
                id: jobs[i].id,
                duplicate: false,
            });
        }
        let results = array(reply, "enqueue")?;
        if results.len() != full.len() {
            return Err(BrokerError::Unavailable(format!(
                "redis: enqueue answered {} results for {} jobs",
                results.len(),
                full.len()
            )));
        }
        for (&i, r) in full.iter().zip(results) {
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
