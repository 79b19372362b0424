//! History the API must not lose while the store is away: an accepted job is already safe in
//! the broker, so its `enqueued` event is written at once if the store answers, and otherwise
//! kept and retried in the background until it does, instead of being dropped.
//!
//! Only for callers that need no answer about the write (the API). The worker's settler uses
//! the store directly: it must know history was recorded before it settles a lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::store::{
    EventRecord, JobEvent, JobQuery, JobRecord, Store, StoreError, StoreResult,
};
use ferry_core::{IdempotencyKey, JobId, Tenant};
use tokio::sync::mpsc;

/// Batches waiting for the store before `record` makes callers wait (back-pressure).
const QUEUE: usize = 1024;

/// A store whose `record` succeeds once the events are written or queued for retry.
#[derive(Clone)]
pub struct RetryingStore {
    inner: Arc<dyn Store>,
    retry: mpsc::Sender<Vec<JobEvent>>,
    /// Set while the store is failing: writes go straight to the retry queue instead of each
    /// caller waiting out a connection timeout first.
    degraded: Arc<AtomicBool>,
}

impl RetryingStore {
    /// Wraps `inner` and starts the retry task (it ends when every clone is dropped).
    #[must_use]
    pub fn new(inner: Arc<dyn Store>) -> Self {
        let (retry, rx) = mpsc::channel(QUEUE);
        let degraded = Arc::new(AtomicBool::new(false));
        tokio::spawn(retry_until_written(inner.clone(), rx, degraded.clone()));
        Self {
            inner,
            retry,
            degraded,
        }
    }
}

async fn retry_until_written(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Vec<JobEvent>>,
    degraded: Arc<AtomicBool>,
) {
    while let Some(events) = rx.recv().await {
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = store.record(events.clone()).await {
            tracing::warn!(error = %e, count = events.len(), retry_in = ?backoff, "history store unavailable; keeping events to retry");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        if rx.is_empty() {
            // Caught up: callers may write directly again.
            degraded.store(false, Ordering::Release);
        }
    }
}

#[async_trait]
impl Store for RetryingStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn record(&self, events: Vec<JobEvent>) -> StoreResult<()> {
        if !self.degraded.load(Ordering::Acquire) {
            match self.inner.record(events.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, count = events.len(), "history store unavailable; events queued for retry");
                    self.degraded.store(true, Ordering::Release);
                }
            }
        }
        // Only fails once the retry task is gone, which is at shutdown.
        let _ = self.retry.send(events).await;
        Ok(())
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        self.inner.job(id).await
    }

    async fn events(&self, id: JobId) -> StoreResult<Vec<EventRecord>> {
        self.inner.events(id).await
    }

    async fn search(&self, query: &JobQuery) -> StoreResult<Vec<JobRecord>> {
        self.inner.search(query).await
    }

    async fn jobs_by_key(
        &self,
        keys: &[(Option<Tenant>, IdempotencyKey)],
    ) -> StoreResult<Vec<Option<JobId>>> {
        // Asked on the submission path: while the store is known to be failing, answer at
        // once rather than make each submission wait out a connection timeout.
        if self.degraded.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "store degraded; keys checked by the broker only".into(),
            ));
        }
        self.inner.jobs_by_key(keys).await
    }

    async fn refresh_statistics(&self) -> StoreResult<()> {
        self.inner.refresh_statistics().await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}
