//! The broker abstraction: how jobs are dispatched. A broker enqueues in batches, leases in
//! batches (each lease carrying a fencing token), extends leases, settles them (ack, retry at a
//! time, dead-letter) and says honestly which optional capabilities it has.
//!
//! Every broker crate implements [`Broker`] and runs the shared conformance suite
//! (`ferry-broker-conformance`) against a real server.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::limits::{KeyGate, QueueLimits};
use crate::{JobEnvelope, JobId, QueueName, UnixMillis};

/// Increases every time a job is leased. A settlement or extension carrying an older token
/// than the job's current one is refused, so a worker whose lease expired cannot overwrite
/// what a newer attempt did.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A job leased to one worker until `expires_at`.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The job, with `attempt` already counting this delivery.
    pub job: Arc<JobEnvelope>,
    pub token: FencingToken,
    pub expires_at: UnixMillis,
}

impl Lease {
    #[must_use]
    pub fn to_ref(&self) -> LeaseRef {
        LeaseRef {
            id: self.job.id,
            token: self.token,
        }
    }
}

/// What an ack, nack or heartbeat names: the job and the lease it holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LeaseRef {
    pub id: JobId,
    pub token: FencingToken,
}

/// How an attempt ended, as far as dispatch is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done: the broker forgets the job (its history lives in the store).
    Ack,
    /// Deliver again, not before `at`.
    Retry { at: UnixMillis, error: String },
    /// Park in the dead-letter queue with the last error.
    Dead { error: String },
    /// Give the job back undone, due at `at`: it did not run to an outcome (its worker is
    /// shutting down, or a pool-wide limit said "not yet"), so this delivery does not count
    /// as an attempt.
    Release { at: UnixMillis },
}

/// One settlement of one lease.
#[derive(Clone, Debug)]
pub struct Settle {
    pub lease: LeaseRef,
    pub settlement: Settlement,
}

impl Settle {
    /// Acks for all of `leases`, in order.
    #[must_use]
    pub fn acks(leases: &[Lease]) -> Vec<Self> {
        leases
            .iter()
            .map(|l| Self {
                lease: l.to_ref(),
                settlement: Settlement::Ack,
            })
            .collect()
    }
}

/// What became of a settlement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SettleOutcome {
    Applied,
    /// The token was not current (the lease expired and the job moved on): nothing changed.
    Stale,
}

/// What a submission became.
/// What [`Broker::cancel`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CancelOutcome {
    /// The job was waiting (ready, scheduled or dead) and is gone: it will not run.
    Cancelled,
    /// A worker holds it; [`Broker::announce_cancel`] asks that worker to stop it.
    Running,
    /// The broker does not hold it (finished, or never enqueued here).
    NotFound,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EnqueueOutcome {
    /// The job's id: the new one, or the original's when `duplicate`.
    pub id: JobId,
    /// An earlier job in the same queue had this idempotency key; nothing was enqueued.
    pub duplicate: bool,
}

impl EnqueueOutcome {
    /// Every job enqueued as new: the outcome of brokers that do not deduplicate.
    #[must_use]
    pub fn all_new(jobs: &[JobEnvelope]) -> Vec<Self> {
        jobs.iter()
            .map(|j| Self {
                id: j.id,
                duplicate: false,
            })
            .collect()
    }
}

/// Which queues a worker takes jobs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueSelector {
    All,
    Only(Vec<QueueName>),
}

impl QueueSelector {
    #[must_use]
    pub fn includes(&self, q: &QueueName) -> bool {
        match self {
            Self::All => true,
            Self::Only(qs) => qs.contains(q),
        }
    }
}

/// Optional abilities. The conformance suite skips (loudly) the cases a broker does not claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct Capabilities {
    /// Honours `run_at` in the future.
    pub delay: bool,
    /// Delivers higher priorities first.
    pub priority: bool,
    /// Each leased job has its own expiry that can be extended one by one.
    pub per_message_lease: bool,
    /// Queues can be paused and resumed.
    pub pause: bool,
    /// A push wakes an idle consumer in another process at once (not just in this one).
    pub cross_process_wakeup: bool,
    /// Pool-wide queue and per-key limits ([`Broker::set_limits`]).
    pub limits: bool,
    /// The broker itself deduplicates submissions by idempotency key (atomically, per queue,
    /// for a window). Without it, keys are checked in the store by the API only.
    pub idempotency: bool,
    /// A waiting job can be removed ([`Broker::cancel`]) and cancel requests reach workers
    /// ([`Broker::announce_cancel`]).
    pub cancel: bool,
}

/// Exact counts for one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Due now, waiting for a worker.
    pub ready: u64,
    /// Waiting for a future `run_at` (delayed or backing off).
    pub scheduled: u64,
    /// Held by a worker's lease.
    pub leased: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    pub paused: bool,
}

/// A dead-lettered job and why it died.
#[derive(Clone, Debug)]
pub struct DeadJob {
    pub job: JobEnvelope,
    pub error: String,
}

/// Broker failures, by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker cannot be reached or answered with a fault; trying again later may work.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (e.g. too large for this broker); retrying won't help.
    #[error("broker refused the request: {0}")]
    Rejected(String),
    /// The broker does not have this optional capability.
    #[error("this broker does not support {0}")]
    Unsupported(&'static str),
}

pub type BrokerResult<T> = Result<T, BrokerError>;

/// A job broker. Implementations must be cheap to share (`Arc<dyn Broker>`).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Short name for logs, metrics and bench output (`sqlite`, `redis`).
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Enqueues all of `jobs` atomically or none of them; returns one outcome per job, in order.
    async fn enqueue(&self, jobs: Vec<JobEnvelope>) -> BrokerResult<Vec<EnqueueOutcome>>;

    /// Leases up to `max` due jobs for `lease_for`, highest priority first then oldest first.
    /// Jobs whose lease expired count as due again. Returns at once, possibly empty.
    async fn lease(
        &self,
        queues: &QueueSelector,
        max: usize,
        lease_for: Duration,
        worker: &str,
    ) -> BrokerResult<Vec<Lease>>;

    /// Heartbeat: pushes the expiry of each still-current lease to now + `lease_for`. Returns,
    /// per lease, whether it is still held.
    async fn extend(&self, leases: &[LeaseRef], lease_for: Duration) -> BrokerResult<Vec<bool>>;

    /// Settles leases; one outcome per item, in order. Stale tokens change nothing.
    async fn settle(&self, batch: &[Settle]) -> BrokerResult<Vec<SettleOutcome>>;

    /// Waits until jobs may be due in `queues`, or `max_wait` passes. Brokers that can be told
    /// about pushes return as soon as one happens; others return after a short poll interval.
    async fn wait_for_jobs(&self, queues: &QueueSelector, max_wait: Duration);

    async fn stats(&self, queue: &QueueName) -> BrokerResult<QueueStats>;

    /// Stops leasing from `queue` (jobs can still be enqueued).
    async fn pause(&self, queue: &QueueName) -> BrokerResult<()>;

    async fn resume(&self, queue: &QueueName) -> BrokerResult<()>;

    /// Up to `limit` dead-lettered jobs of `queue`, oldest first.
    async fn dead_jobs(&self, queue: &QueueName, limit: usize) -> BrokerResult<Vec<DeadJob>>;

    /// Moves dead jobs (these ids, or all of the queue's when `ids` is `None`) back to ready
    /// with a fresh attempt budget. Returns how many moved.
    async fn retry_dead(&self, queue: &QueueName, ids: Option<&[JobId]>) -> BrokerResult<u64>;

    /// Cheap liveness check for readiness probes.
    async fn ping(&self) -> BrokerResult<()>;

    /// Cancels a job that is not running: removes it from the queue (or the dead letters).
    async fn cancel(&self, queue: &QueueName, id: JobId) -> BrokerResult<CancelOutcome>;

    /// Asks whichever worker runs `id` to stop it (it then settles the job as cancelled).
    async fn announce_cancel(&self, id: JobId) -> BrokerResult<()>;

    /// Cancel requests announced by any process, for a worker to stop the jobs it runs.
    fn cancel_requests(&self) -> tokio::sync::broadcast::Receiver<JobId>;

    /// Gives back jobs fetched ahead of any lease (a prefetch window), so that other workers
    /// get them without an attempt counted against them. A worker calls this once it has
    /// stopped leasing; brokers that fetch nothing ahead do nothing.
    async fn release_prefetched(&self) {}

    /// Sets a queue's pool-wide limits (replacing all four). Brokers without shared limits
    /// refuse with [`BrokerError::Unsupported`]; [`Capabilities::limits`] says which.
    async fn set_limits(&self, _queue: &QueueName, _limits: &QueueLimits) -> BrokerResult<()> {
        Err(BrokerError::Unsupported("queue limits"))
    }

    /// A queue's limits (all `None` when none are set).
    async fn limits(&self, _queue: &QueueName) -> BrokerResult<QueueLimits> {
        Ok(QueueLimits::default())
    }

    /// Asks the job's per-key limits (`concurrency_key`, `rate_key`) whether it may start
    /// now. On `Go` its concurrency key is held (the holder lives as long as the lease,
    /// renewed by `extend`) until [`Broker::leave_keys`]. Brokers without limits say `Go`.
    async fn enter_keys(&self, _job: &JobEnvelope, _hold_for: Duration) -> BrokerResult<KeyGate> {
        Ok(KeyGate::Go)
    }

    /// Gives back what [`Broker::enter_keys`] held for the job.
    async fn leave_keys(&self, _job: &JobEnvelope) -> BrokerResult<()> {
        Ok(())
    }

    /// Acknowledges one lease.
    async fn ack(&self, lease: LeaseRef) -> BrokerResult<SettleOutcome> {
        self.settle_one(lease, Settlement::Ack).await
    }

    /// Gives one lease back for another attempt, not before `at`.
    async fn nack(
        &self,
        lease: LeaseRef,
        at: UnixMillis,
        error: String,
    ) -> BrokerResult<SettleOutcome> {
        self.settle_one(lease, Settlement::Retry { at, error })
            .await
    }

    /// Moves one leased job to the dead-letter queue.
    async fn dead_letter(&self, lease: LeaseRef, error: String) -> BrokerResult<SettleOutcome> {
        self.settle_one(lease, Settlement::Dead { error }).await
    }

    #[doc(hidden)]
    async fn settle_one(
        &self,
        lease: LeaseRef,
        settlement: Settlement,
    ) -> BrokerResult<SettleOutcome> {
        let out = self.settle(&[Settle { lease, settlement }]).await?;
        out.into_iter()
            .next()
            .ok_or_else(|| BrokerError::Unavailable("settle returned no outcome".into()))
    }
}
