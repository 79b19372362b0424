#![doc = include_str!("../README.md")]

mod admin;
mod config;
mod consumer;
mod limits;
mod producer;
mod row;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_batch::Batcher;
use ferry_core::broker::{
    Broker, BrokerError, BrokerResult, CancelOutcome, Capabilities, DeadJob, EnqueueOutcome, Lease,
    LeaseRef, QueueSelector, QueueStats, Settle, SettleOutcome,
};
use ferry_core::{JobEnvelope, JobId, QueueName};
use sqlx::SqlitePool;
use tokio::sync::Notify;

pub use config::SqliteBrokerConfig;

/// The embedded SQLite broker. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// The only connection in this process that writes, so writers here never contend.
    writer: SqlitePool,
    reader: SqlitePool,
    enqueuer: Batcher<JobEnvelope, EnqueueOutcome, Arc<str>>,
    pushed: Notify,
    /// Cancel requests for running jobs. The embedded broker belongs to one process, so
    /// they reach that process's workers only (`ferry dev`).
    cancels: tokio::sync::broadcast::Sender<JobId>,
    /// Queues with queue-level limits, as last read and when: reread every
    /// [`LIMITS_FRESH_FOR`] (a change made here clears it at once).
    limited: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<limits::Limited>>)>>,
    config: SqliteBrokerConfig,
}

/// How long the list of limited queues is trusted: a limit set by another process using the
/// same file applies within this long; one set here applies at once.
const LIMITS_FRESH_FOR: Duration = Duration::from_millis(250);

pub(crate) fn unavailable(e: &sqlx::Error) -> BrokerError {
    BrokerError::Unavailable(format!("sqlite: {e}"))
}

impl SqliteBroker {
    /// Opens (creating if needed) the broker database and brings its schema up to date.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated.
    pub async fn open(config: SqliteBrokerConfig) -> BrokerResult<Self> {
        let opened = ferry_sqlite::open_writer(
            &config.path,
            "broker",
            &[("cache_size", "-65536"), ("temp_store", "memory")],
        )
        .await
        .map_err(BrokerError::Unavailable)?;
        let writer = opened.writer.clone();
        schema::migrate(&writer).await?;
        let reader = opened.readers(2).await.map_err(|e| unavailable(&e))?;
        let w = writer.clone();
        let enqueuer = Batcher::spawn(config.max_enqueue_batch, 4096, move |jobs| {
            let w = w.clone();
            async move {
                producer::insert(&w, jobs)
                    .await
                    .map_err(|e| Arc::<str>::from(e.to_string()))
            }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                reader,
                enqueuer,
                pushed: Notify::new(),
                cancels: tokio::sync::broadcast::channel(1024).0,
                limited: std::sync::Mutex::new(None),
                config,
            }),
        })
    }

    fn wake_consumers(&self) {
        // Wake everyone waiting now, and leave a permit for a consumer that is between an
        // empty lease and its wait, so that push is not missed.
        self.inner.pushed.notify_waiters();
        self.inner.pushed.notify_one();
    }
}

impl SqliteBroker {
    /// The queues with queue-level limits, from the cache while it is fresh.
    async fn limited(&self) -> BrokerResult<Arc<Vec<limits::Limited>>> {
        let cached = self
            .inner
            .limited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some((at, list)) = cached
            && at.elapsed() < LIMITS_FRESH_FOR
        {
            return Ok(list);
        }
        let list = Arc::new(limits::limited(&self.inner.reader).await?);
        *self
            .inner
            .limited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::Instant::now(), list.clone()));
        Ok(list)
    }
}

#[async_trait]
impl Broker for SqliteBroker {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delay: true,
            priority: true,
            per_message_lease: true,
            pause: true,
            cross_process_wakeup: false,
            // Kept in the database file: shared by everything that leases from it.
            limits: true,
            idempotency: true,
            cancel: true,
        }
    }

    async fn enqueue(&self, jobs: Vec<JobEnvelope>) -> BrokerResult<Vec<EnqueueOutcome>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .inner
            .enqueuer
            .submit(jobs)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        self.wake_consumers();
        Ok(out)
    }

    async fn lease(
        &self,
        queues: &QueueSelector,
        max: usize,
        lease_for: Duration,
        worker: &str,
    ) -> BrokerResult<Vec<Lease>> {
        let limited = self.limited().await?;
        consumer::lease(&self.inner.writer, &limited, queues, max, lease_for, worker).await
    }

    async fn extend(&self, leases: &[LeaseRef], lease_for: Duration) -> BrokerResult<Vec<bool>> {
        consumer::extend(&self.inner.writer, leases, lease_for).await
    }

    async fn settle(&self, batch: &[Settle]) -> BrokerResult<Vec<SettleOutcome>> {
        let out = consumer::settle(&self.inner.writer, batch).await?;
        if batch.iter().any(|s| {
            matches!(
                s.settlement,
                ferry_core::broker::Settlement::Retry { .. }
                    | ferry_core::broker::Settlement::Release { .. }
            )
        }) {
            self.wake_consumers();
        }
        Ok(out)
    }

    async fn wait_for_jobs(&self, _queues: &QueueSelector, max_wait: Duration) {
        let wait = max_wait.min(self.inner.config.poll_interval);
        let _ = tokio::time::timeout(wait, self.inner.pushed.notified()).await;
    }

    async fn stats(&self, queue: &QueueName) -> BrokerResult<QueueStats> {
        admin::stats(&self.inner.reader, queue).await
    }

    async fn pause(&self, queue: &QueueName) -> BrokerResult<()> {
        admin::set_paused(&self.inner.writer, queue, true).await
    }

    async fn resume(&self, queue: &QueueName) -> BrokerResult<()> {
        admin::set_paused(&self.inner.writer, queue, false).await?;
        self.wake_consumers();
        Ok(())
    }

    async fn dead_jobs(&self, queue: &QueueName, limit: usize) -> BrokerResult<Vec<DeadJob>> {
        admin::dead_jobs(&self.inner.reader, queue, limit).await
    }

    async fn retry_dead(&self, queue: &QueueName, ids: Option<&[JobId]>) -> BrokerResult<u64> {
        let n = admin::retry_dead(&self.inner.writer, queue, ids).await?;
        self.wake_consumers();
        Ok(n)
    }

    async fn cancel(&self, queue: &QueueName, id: JobId) -> BrokerResult<CancelOutcome> {
        admin::cancel(&self.inner.writer, queue, id).await
    }

    async fn announce_cancel(&self, id: JobId) -> BrokerResult<()> {
        let _ = self.inner.cancels.send(id);
        Ok(())
    }

    fn cancel_requests(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.inner.cancels.subscribe()
    }

    async fn set_limits(
        &self,
        queue: &QueueName,
        limits: &ferry_core::limits::QueueLimits,
    ) -> BrokerResult<()> {
        limits::set(&self.inner.writer, queue, limits).await?;
        *self
            .inner
            .limited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        Ok(())
    }

    async fn limits(&self, queue: &QueueName) -> BrokerResult<ferry_core::limits::QueueLimits> {
        limits::get(&self.inner.reader, queue).await
    }

    async fn enter_keys(
        &self,
        job: &JobEnvelope,
        hold_for: Duration,
    ) -> BrokerResult<ferry_core::limits::KeyGate> {
        limits::enter(&self.inner.writer, job, hold_for).await
    }

    async fn leave_keys(&self, job: &JobEnvelope) -> BrokerResult<()> {
        limits::leave(&self.inner.writer, job).await
    }

    async fn ping(&self) -> BrokerResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.reader)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }
}
