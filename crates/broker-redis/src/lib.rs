#![doc = include_str!("../README.md")]

mod admin;
mod config;
mod consumer;
mod flow;
mod keys;
mod producer;
mod scripts;
mod shared;
mod value;
mod wake;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_batch::Batcher;
use ferry_core::broker::{
    Broker, BrokerError, BrokerResult, CancelOutcome, Capabilities, DeadJob, EnqueueOutcome, Lease,
    LeaseRef, QueueSelector, QueueStats, Settle, SettleOutcome,
};
use ferry_core::limits::{KeyGate, QueueLimits};
use ferry_core::{JobEnvelope, JobId, QueueName, UnixMillis};
use redis::aio::ConnectionManagerConfig;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;

pub use config::RedisBrokerConfig;

use crate::consumer::{Cursor, Held};
use crate::shared::{Shared, unavailable};
use crate::wake::Wakeups;

/// Ferry's Redis broker. Cheap to clone; clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    enqueuer: Batcher<producer::Encoded, EnqueueOutcome, Arc<str>>,
    held: Held,
    cursor: Cursor,
    wakeups: Arc<Wakeups>,
    listener: JoinHandle<()>,
    /// The global queue list for `QueueSelector::All`, refreshed at most once a second.
    all_queues: AsyncMutex<(Vec<QueueName>, Option<Instant>)>,
    config: RedisBrokerConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Why the broker could not start: a URL that is not a Redis URL, or a server that does not
/// answer. The message is one line, fit for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("not a valid redis URL: {0}")]
    InvalidUrl(String),
    #[error("cannot reach redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

impl RedisBroker {
    /// Connects, checks the server answers, and starts the wake-up subscription.
    ///
    /// # Errors
    /// When the URL is not a Redis URL or the server does not answer within
    /// `connect_timeout`.
    pub async fn connect(config: RedisBrokerConfig) -> Result<Self, ConnectError> {
        let shown = ferry_core::redacted_url(&config.url);
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| ConnectError::InvalidUrl(format!("{shown}: {e}")))?;
        let unreachable = |reason: String| ConnectError::Unreachable {
            url: shown.clone(),
            reason,
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            config.connect_timeout,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", config.connect_timeout)))?
        .map_err(|e| unreachable(e.to_string()))?;
        let mut ping = conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut ping)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let shared = Arc::new(Shared::new(conn));
        let ttl_ms = u64::try_from(config.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
        let writer = shared.clone();
        let enqueuer = Batcher::spawn(config.max_enqueue_batch, 4096, move |jobs| {
            let writer = writer.clone();
            async move {
                producer::write(&writer, jobs, ttl_ms)
                    .await
                    .map_err(|e| match e {
                        BrokerError::Unavailable(m) | BrokerError::Rejected(m) => {
                            Arc::<str>::from(m)
                        }
                        other => Arc::<str>::from(other.to_string()),
                    })
            }
        });
        let wakeups = Arc::new(Wakeups::default());
        let listener = tokio::spawn(wake::listen(
            client,
            wakeups.clone(),
            config.connect_timeout,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                enqueuer,
                held: Held::default(),
                cursor: Cursor::default(),
                wakeups,
                listener,
                all_queues: AsyncMutex::new((Vec::new(), None)),
                config,
            }),
        })
    }

    async fn queues(&self, selector: &QueueSelector) -> BrokerResult<Vec<QueueName>> {
        match selector {
            QueueSelector::Only(qs) => Ok(qs.clone()),
            QueueSelector::All => {
                let mut cache = self.inner.all_queues.lock().await;
                if cache
                    .1
                    .is_none_or(|at| at.elapsed() > Duration::from_secs(1))
                {
                    let mut conn = self.inner.shared.conn.clone();
                    let names: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(keys::QUEUES)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| unavailable(&e))?;
                    let mut qs: Vec<QueueName> = names
                        .iter()
                        .filter_map(|n| QueueName::parse(n).ok())
                        .collect();
                    qs.sort();
                    *cache = (qs, Some(Instant::now()));
                }
                Ok(cache.0.clone())
            }
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delay: true,
            priority: true,
            per_message_lease: true,
            pause: true,
            cross_process_wakeup: true,
            limits: true,
            idempotency: true,
            cancel: true,
        }
    }

    async fn enqueue(&self, jobs: Vec<JobEnvelope>) -> BrokerResult<Vec<EnqueueOutcome>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = jobs
            .iter()
            .map(producer::encode)
            .collect::<BrokerResult<Vec<_>>>()?;
        self.inner
            .enqueuer
            .submit(encoded)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    async fn lease(
        &self,
        queues: &QueueSelector,
        max: usize,
        lease_for: Duration,
        _worker: &str,
    ) -> BrokerResult<Vec<Lease>> {
        let names = self.queues(queues).await?;
        consumer::lease(
            &self.inner.shared,
            &self.inner.held,
            &self.inner.cursor,
            &names,
            max,
            lease_for,
        )
        .await
    }

    async fn extend(&self, leases: &[LeaseRef], lease_for: Duration) -> BrokerResult<Vec<bool>> {
        consumer::extend(&self.inner.shared, &self.inner.held, leases, lease_for).await
    }

    async fn settle(&self, batch: &[Settle]) -> BrokerResult<Vec<SettleOutcome>> {
        consumer::settle(
            &self.inner.shared,
            &self.inner.held,
            batch,
            self.inner.config.dead_max,
        )
        .await
    }

    async fn wait_for_jobs(&self, _queues: &QueueSelector, max_wait: Duration) {
        let mut wait = max_wait.min(self.inner.config.poll_interval);
        if !self.inner.wakeups.subscribed() {
            // No wake-up messages can arrive: poll briskly until the subscription is back.
            wait = wait.min(Duration::from_millis(50));
        }
        let due = self.inner.cursor.next_due.load(Ordering::Relaxed);
        if due > 0 {
            // Wake when the next scheduled job or lease expiry falls due (at least a few ms
            // on, so that clock skew with the server cannot make this spin).
            let until_due = UnixMillis::now().until(UnixMillis(due));
            wait = wait.min(until_due.max(Duration::from_millis(5)));
        }
        self.inner.wakeups.wait(wait).await;
    }

    async fn stats(&self, queue: &QueueName) -> BrokerResult<QueueStats> {
        admin::stats(&self.inner.shared, queue).await
    }

    async fn pause(&self, queue: &QueueName) -> BrokerResult<()> {
        admin::set_paused(&self.inner.shared, queue, true).await
    }

    async fn resume(&self, queue: &QueueName) -> BrokerResult<()> {
        admin::set_paused(&self.inner.shared, queue, false).await
    }

    async fn dead_jobs(&self, queue: &QueueName, limit: usize) -> BrokerResult<Vec<DeadJob>> {
        admin::dead_jobs(&self.inner.shared, queue, limit).await
    }

    async fn retry_dead(&self, queue: &QueueName, ids: Option<&[JobId]>) -> BrokerResult<u64> {
        admin::retry_dead(&self.inner.shared, queue, ids).await
    }

    async fn cancel(&self, queue: &QueueName, id: JobId) -> BrokerResult<CancelOutcome> {
        admin::cancel(&self.inner.shared, queue, id).await
    }

    async fn announce_cancel(&self, id: JobId) -> BrokerResult<()> {
        admin::announce_cancel(&self.inner.shared, id).await
    }

    fn cancel_requests(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.inner.wakeups.cancels.subscribe()
    }

    async fn set_limits(&self, queue: &QueueName, limits: &QueueLimits) -> BrokerResult<()> {
        flow::set_limits(&self.inner.shared, queue, limits).await
    }

    async fn limits(&self, queue: &QueueName) -> BrokerResult<QueueLimits> {
        flow::limits(&self.inner.shared, queue).await
    }

    async fn enter_keys(&self, job: &JobEnvelope, hold_for: Duration) -> BrokerResult<KeyGate> {
        flow::enter(&self.inner.shared, job, hold_for).await
    }

    async fn leave_keys(&self, job: &JobEnvelope) -> BrokerResult<()> {
        flow::leave(&self.inner.shared, job).await
    }

    async fn ping(&self) -> BrokerResult<()> {
        let mut conn = self.inner.shared.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }
}
