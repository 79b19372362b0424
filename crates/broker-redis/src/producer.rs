//! Enqueue: one script call per queue per group commit; idempotency keys checked and set in
//! the same script, so a duplicate is never half-written.
//!
//! Jobs are encoded by [`encode`] in each caller's task (in parallel across callers), so the
//! single group-commit writer only assembles the script call.

use ferry_core::broker::{BrokerError, BrokerResult, EnqueueOutcome};
use ferry_core::{JobEnvelope, JobId, QueueName};
use redis::Value;
use uuid::Uuid;

use crate::keys::id_bytes;
use crate::scripts::ENQUEUE;
use crate::shared::Shared;
use crate::value::{array, bytes};

/// One job as the enqueue script takes it.
pub(crate) struct Encoded {
    id: JobId,
    queue: QueueName,
    /// `priority "\n" JSON`: scripts read the priority without decoding JSON when a job goes
    /// back to ready.
    value: Vec<u8>,
    priority: i16,
    run_at: i64,
    /// The tenant and idempotency key ([`JobEnvelope::idempotency_scope`]).
    idempotency_scope: Option<String>,
    /// Goes to its tenant's lane when ready (fairness, `lua/common.lua`).
    tenant: Option<String>,
    /// Priority 0, no delay, no idempotency key, no tenant: the script's fast path.
    plain: bool,
}

/// Encodes one job for [`write`].
///
/// # Errors
/// When the job cannot be serialised (it always can; the error is kept honest).
pub(crate) fn encode(j: &JobEnvelope) -> BrokerResult<Encoded> {
    let mut value = format!("{}\n", j.priority).into_bytes();
    serde_json::to_writer(&mut value, j)
        .map_err(|e| BrokerError::Rejected(format!("cannot encode job {}: {e}", j.id)))?;
    Ok(Encoded {
        id: j.id,
        queue: j.queue.clone(),
        value,
        priority: j.priority,
        run_at: j.run_at.0,
        idempotency_scope: j.idempotency_scope(),
        tenant: j.tenant.as_ref().map(|t| t.as_str().to_owned()),
        plain: j.priority == 0
            && j.idempotency_key.is_none()
            && j.tenant.is_none()
            && j.run_at <= j.created_at,
    })
}

/// Writes `jobs` (possibly from several callers and queues); one outcome per job, in order.
pub(crate) async fn write(
    shared: &Shared,
    jobs: Vec<Encoded>,
    idempotency_ttl_ms: u64,
) -> BrokerResult<Vec<EnqueueOutcome>> {
    let mut out: Vec<Option<EnqueueOutcome>> = vec![None; jobs.len()];
    // Group by queue, keeping each job's position.
    let mut groups: Vec<(QueueName, Vec<usize>)> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        match groups.iter_mut().find(|(q, _)| *q == j.queue) {
            Some((_, idx)) => idx.push(i),
            None => groups.push((j.queue.clone(), vec![i])),
        }
    }
    for (queue, idx) in groups {
        shared.register(&queue).await?;
        let keys = shared.keys(&queue);
        // Plain jobs travel as two values each and the script stores them without making a
        // string per job; the rest carry six.
        let (plain, full): (Vec<usize>, Vec<usize>) = idx.iter().partition(|&&i| jobs[i].plain);
        let mut extra = Vec::new();
        let mut key_index = Vec::with_capacity(full.len());
        for &i in &full {
            key_index.push(match &jobs[i].idempotency_scope {
                Some(k) => {
                    extra.push(keys.idempotency(k));
                    keys.keys.len() + extra.len()
                }
                None => 0,
            });
        }
        let reply = shared
            .run(&ENQUEUE, &keys, &extra, |inv| {
                inv.arg(queue.as_str())
                    .arg(idempotency_ttl_ms)
                    .arg(plain.len());
                for &i in &plain {
                    inv.arg(id_bytes(jobs[i].id).as_slice())
                        .arg(jobs[i].value.as_slice());
                }
                for (&i, ki) in full.iter().zip(&key_index) {
                    let j = &jobs[i];
                    inv.arg(id_bytes(j.id).as_slice())
                        .arg(j.value.as_slice())
                        .arg(j.priority)
                        .arg(j.run_at)
                        .arg(*ki)
                        .arg(j.tenant.as_deref().unwrap_or(""));
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
