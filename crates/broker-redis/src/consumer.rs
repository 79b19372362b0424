//! Lease, extend and settle: one script call per queue per batch, every change conditional
//! on the fencing token held in the queue's `tok` hash.
//!
//! A `LeaseRef` names a job and a token but not its queue, and a queue's keys are what a
//! script needs. The broker therefore remembers the queue of each lease it handed out until
//! that lease is settled or found lost (decision 0005). A settlement for a lease this process
//! never handed out is refused as stale, never applied blindly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_core::broker::{
    BrokerError, BrokerResult, FencingToken, Lease, LeaseRef, Settle, SettleOutcome, Settlement,
};
use ferry_core::{QueueName, UnixMillis};

use crate::keys::{QueueKeys, decode_job, id_bytes, lease_member};
use crate::scripts::{EXTEND, LEASE, SETTLE};
use crate::shared::Shared;
use crate::value::{array, bytes, int, unsigned};

/// Leases handed out by this process, with the queue they belong to.
#[derive(Default)]
pub(crate) struct Held {
    map: Mutex<HashMap<LeaseRef, Entry>>,
}

struct Entry {
    keys: Arc<QueueKeys>,
    /// The job's `concurrency_key` holder set, renewed with the lease (`flow.lua`).
    holders: Option<String>,
    /// Last lease or extension: entries untouched for an hour belong to leases that expired
    /// long ago and were abandoned by their caller, and are pruned.
    touched: UnixMillis,
}

const PRUNE_ABOVE: usize = 200_000;

/// Tokens are `lease_no * TOKEN_SPLIT + attempts` (see `lua/common.lua`).
const TOKEN_SPLIT: u64 = 65_536;
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseRef, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, leases: &[Lease], keys: &Arc<QueueKeys>) {
        let now = UnixMillis::now();
        let mut map = self.lock();
        if map.len() > PRUNE_ABOVE {
            let cutoff =
                UnixMillis(now.0 - i64::try_from(ABANDONED_AFTER.as_millis()).unwrap_or(0));
            map.retain(|_, e| e.touched > cutoff);
        }
        for l in leases {
            map.insert(
                l.to_ref(),
                Entry {
                    keys: keys.clone(),
                    holders: l.job.concurrency_key.as_ref().map(|k| keys.key_holders(k)),
                    touched: now,
                },
            );
        }
    }

    /// Groups `refs` by queue: (queue keys, positions in `refs`). Unknown refs are left out.
    fn group(
        &self,
        refs: impl Iterator<Item = LeaseRef>,
        touch: bool,
    ) -> Vec<(Arc<QueueKeys>, Vec<usize>)> {
        let now = UnixMillis::now();
        let mut map = self.lock();
        let mut groups: Vec<(Arc<QueueKeys>, Vec<usize>)> = Vec::new();
        for (i, r) in refs.enumerate() {
            let Some(e) = map.get_mut(&r) else { continue };
            if touch {
                e.touched = now;
            }
            match groups.iter_mut().find(|(k, _)| Arc::ptr_eq(k, &e.keys)) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((e.keys.clone(), vec![i])),
            }
        }
        groups
    }

    /// The concurrency-key holder sets of `refs` that have one: (set, job id).
    fn holders(&self, refs: impl Iterator<Item = LeaseRef>) -> Vec<(String, ferry_core::JobId)> {
        let map = self.lock();
        refs.filter_map(|r| Some((map.get(&r)?.holders.clone()?, r.id)))
            .collect()
    }

    fn remove(&self, refs: impl Iterator<Item = LeaseRef>) {
        let mut map = self.lock();
        for r in refs {
            map.remove(&r);
        }
    }
}

/// State for leasing across several queues.
#[derive(Default)]
pub(crate) struct Cursor {
    /// Rotates which queue is asked first, so one busy queue cannot starve the others.
    next: AtomicUsize,
    /// Earliest known time (Redis clock, ms) at which more work falls due; 0 when unknown.
    pub(crate) next_due: AtomicI64,
}

pub(crate) async fn lease(
    shared: &Shared,
    held: &Held,
    cursor: &Cursor,
    queues: &[QueueName],
    max: usize,
    lease_for: Duration,
) -> BrokerResult<Vec<Lease>> {
    let mut out = Vec::new();
    if queues.is_empty() || max == 0 {
        return Ok(out);
    }
    let start = cursor.next.fetch_add(1, Ordering::Relaxed);
    let lease_ms = u64::try_from(lease_for.as_millis()).unwrap_or(u64::MAX);
    let mut next_due = 0i64;
    for n in 0..queues.len() {
        let queue = &queues[(start + n) % queues.len()];
        let want = max - out.len();
        let keys = shared.keys(queue);
        let reply = shared
            .run(&LEASE, &keys, &[], |inv| {
                // Even when this queue is not asked for jobs (`want` is 0), the call promotes
                // due work and reports when more falls due.
                inv.arg(lease_ms).arg(want);
            })
            .await?;
        let mut items = array(reply, "lease")?.into_iter();
        let (Some(until), Some(due), Some(lease_no), Some(limit)) =
            (items.next(), items.next(), items.next(), items.next())
        else {
            return Err(BrokerError::Unavailable("redis: short lease reply".into()));
        };
        match int(&limit, "lease limit")? {
            0 => {}
            held => {
                if held & 1 == 1 {
                    ferry_telemetry::queue_limit_held(queue.as_str(), "rate");
                }
                if held & 2 == 2 {
                    ferry_telemetry::queue_limit_held(queue.as_str(), "concurrency");
                }
            }
        }
        let expires_at = UnixMillis(int(&until, "lease expiry")?);
        let due = int(&due, "next due")?;
        let lease_no = unsigned(&lease_no, "lease number")?;
        if due > 0 && (next_due == 0 || due < next_due) {
            next_due = due;
        }
        let mut got = Vec::with_capacity(items.len() / 2);
        while let (Some(env), Some(att)) = (items.next(), items.next()) {
            let attempt = unsigned(&att, "attempt")?;
            let job = decode_job(&bytes(env, "leased job")?, attempt)?;
            got.push(Lease {
                job: Arc::new(job),
                // Must match the member the script stored (see lua/common.lua).
                token: FencingToken(lease_no * TOKEN_SPLIT + attempt.min(TOKEN_SPLIT - 1)),
                expires_at,
            });
        }
        held.insert(&got, &keys);
        out.extend(got);
    }
    cursor.next_due.store(next_due, Ordering::Relaxed);
    Ok(out)
}

pub(crate) async fn extend(
    shared: &Shared,
    held: &Held,
    leases: &[LeaseRef],
    lease_for: Duration,
) -> BrokerResult<Vec<bool>> {
    let mut out = vec![false; leases.len()];
    let lease_ms = u64::try_from(lease_for.as_millis()).unwrap_or(u64::MAX);
    for (keys, idx) in held.group(leases.iter().copied(), true) {
        let reply = shared
            .run(&EXTEND, &keys, &[], |inv| {
                inv.arg(lease_ms);
                for &i in &idx {
                    inv.arg(lease_member(&leases[i]));
                }
            })
            .await?;
        for (&i, v) in idx.iter().zip(array(reply, "extend")?) {
            out[i] = int(&v, "extend")? == 1;
        }
    }
    // A job holding a concurrency key holds it as long as its lease (flow.lua).
    let holders = held.holders(
        leases
            .iter()
            .zip(&out)
            .filter(|(_, ok)| **ok)
            .map(|(l, _)| *l),
    );
    if !holders.is_empty() {
        let until = UnixMillis::now().plus(lease_for).0;
        let mut pipe = redis::pipe();
        for (set, id) in &holders {
            pipe.cmd("ZADD")
                .arg(set)
                .arg("XX")
                .arg(until)
                .arg(id_bytes(*id).as_slice())
                .ignore();
        }
        let mut conn = shared.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| crate::shared::unavailable(&e))?;
    }
    // A lost lease will never be settled by its holder: forget it now.
    held.remove(
        leases
            .iter()
            .zip(&out)
            .filter(|(_, ok)| !**ok)
            .map(|(l, _)| *l),
    );
    Ok(out)
}

pub(crate) async fn settle(
    shared: &Shared,
    held: &Held,
    batch: &[Settle],
    dead_max: u64,
) -> BrokerResult<Vec<SettleOutcome>> {
    let mut out = vec![SettleOutcome::Stale; batch.len()];
    for (keys, idx) in held.group(batch.iter().map(|s| s.lease), false) {
        // Acks first, as two blocks (members, then ids) the script can hand to Redis as they
        // are; then retries, releases and dead letters, four values each.
        let (acks, others): (Vec<usize>, Vec<usize>) = idx
            .iter()
            .partition(|&&i| batch[i].settlement == Settlement::Ack);
        let reply = shared
            .run(&SETTLE, &keys, &[], |inv| {
                inv.arg(keys.queue.as_str()).arg(dead_max).arg(acks.len());
                for &i in &acks {
                    inv.arg(lease_member(&batch[i].lease));
                }
                for &i in &acks {
                    inv.arg(id_bytes(batch[i].lease.id).as_slice());
                }
                for &i in &others {
                    let s = &batch[i];
                    let (kind, at, error) = match &s.settlement {
                        Settlement::Retry { at, error } => ("r", at.0, error.as_str()),
                        Settlement::Dead { error } => ("d", 0, error.as_str()),
                        Settlement::Release { at } => ("l", at.0, ""),
                        Settlement::Ack => unreachable!("acks were partitioned out"),
                    };
                    inv.arg(kind).arg(lease_member(&s.lease)).arg(at).arg(error);
                }
            })
            .await?;
        let results = array(reply, "settle")?;
        if results.len() != idx.len() {
            return Err(BrokerError::Unavailable(format!(
                "redis: settle answered {} results for {} settlements",
                results.len(),
                idx.len()
            )));
        }
        for (&i, v) in acks.iter().chain(&others).zip(results) {
            if int(&v, "settle")? == 1 {
                out[i] = SettleOutcome::Applied;
            }
        }
    }
    // Settled or stale, either way this process is done with these leases.
    held.remove(batch.iter().map(|s| s.lease));
    Ok(out)
}
