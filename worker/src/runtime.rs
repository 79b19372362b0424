//! Wiring: one apalis worker per process, fed by the lease adapter, with the settler and
//! heartbeat beside it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use apalis_core::worker::builder::WorkerBuilder;
use ferry_core::RetryPolicy;
use ferry_core::broker::{Broker, QueueSelector};
use ferry_core::store::Store;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;

use crate::dispatch::Dispatch;
use crate::handler::Registry;
use crate::heartbeat;
use crate::settle::Settler;
use crate::source::{FerryBackend, Held, LeaseSource};

/// How a worker process behaves.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Jobs run at once.
    pub concurrency: usize,
    /// Finished jobs that may wait for their history write and acknowledgement at once.
    /// A worker holds at most `concurrency + settle_window` leases; if it dies, those are
    /// the jobs that run again (at-least-once), so this bounds a crash's duplicates. Larger
    /// windows let the settler write bigger batches.
    pub settle_window: usize,
    pub queues: QueueSelector,
    /// Lease length; heartbeats renew at a third of it.
    pub lease: Duration,
    /// Attempt timeout for jobs that set none.
    pub default_timeout: Duration,
    pub retry: RetryPolicy,
    /// This process's id in leases and history (default: `w-<pid>-<random>`).
    pub worker_id: Option<String>,
    /// After shutdown is asked for, how long running jobs may take to finish; then they are
    /// stopped and released to the broker (their attempt does not count).
    pub shutdown_grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 50,
            settle_window: 1000,
            queues: QueueSelector::All,
            lease: Duration::from_secs(30),
            default_timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            worker_id: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A worker process's runtime.
pub struct Worker {
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    registry: Registry,
    options: WorkerOptions,
}

impl Worker {
    #[must_use]
    pub fn new(
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        registry: Registry,
        options: WorkerOptions,
    ) -> Self {
        Self {
            broker,
            store,
            registry,
            options,
        }
    }

    /// Runs until `shutdown` is cancelled, then stops leasing, lets running jobs finish
    /// within the grace period, stops and releases those still running after it, records
    /// and settles everything, and returns.
    ///
    /// # Errors
    /// When apalis reports a worker error.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let o = self.options;
        let worker_id: Arc<str> = o
            .worker_id
            .unwrap_or_else(|| {
                format!(
                    "w-{}-{:06x}",
                    std::process::id(),
                    rand::random::<u32>() & 0xff_ffff
                )
            })
            .into();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let held = Held::default();
        let (settler, settler_task) =
            Settler::spawn(self.broker.clone(), self.store.clone(), held.clone());
        let stop_heartbeat = CancellationToken::new();
        let heartbeat_task = heartbeat::spawn(
            self.broker.clone(),
            held.clone(),
            o.lease,
            stop_heartbeat.clone(),
        );
        let source = LeaseSource {
            broker: self.broker.clone(),
            queues: o.queues,
            lease_for: o.lease,
            concurrency: o.concurrency,
            max_held: o.concurrency + o.settle_window.max(1),
            worker_id: worker_id.clone(),
            in_flight: in_flight.clone(),
            held,
            shutdown: shutdown.clone(),
        };
        // Fires `shutdown_grace` after `shutdown`: running handlers are dropped and their jobs
        // released.
        let abort = CancellationToken::new();
        let grace_timer = {
            let (shutdown, abort, grace) = (shutdown.clone(), abort.clone(), o.shutdown_grace);
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                tracing::warn!(grace = ?grace, "grace period over: releasing jobs still running");
                abort.cancel();
            })
        };
        let running = crate::dispatch::Running::default();
        // Cancel requests from any process: stop the job if it runs here.
        let cancel_listener = {
            let running = running.clone();
            let mut requests = self.broker.cancel_requests();
            tokio::spawn(async move {
                loop {
                    match requests.recv().await {
                        Ok(id) => {
                            if running.cancel(id) {
                                tracing::info!(job = %id, "cancel requested: stopping the job");
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "cancel requests arrived faster than handled"
                            );
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        };
        let dispatch = Dispatch {
            abort,
            running,
            broker: self.broker.clone(),
            lease_for: o.lease,
            registry: Arc::new(self.registry),
            settler,
            retry: o.retry,
            default_timeout: o.default_timeout,
            worker: worker_id.clone(),
            in_flight,
        };
        tracing::info!(worker = %worker_id, broker = self.broker.name(), concurrency = o.concurrency, "worker started");
        let worker = WorkerBuilder::new(&*worker_id)
            .backend(FerryBackend::new(source))
            .layer(ConcurrencyLimitLayer::new(o.concurrency))
            .build(dispatch);
        let result = worker
            .run_until(async move {
                shutdown.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await;
        grace_timer.abort();
        cancel_listener.abort();
        // The worker (and every settler handle in it) is gone: the settler flushes and exits.
        let _ = settler_task.await;
        // Nothing is leased from here on: what the broker fetched ahead goes back untouched.
        self.broker.release_prefetched().await;
        stop_heartbeat.cancel();
        let _ = heartbeat_task.await;
        tracing::info!(worker = %worker_id, "worker stopped");
        result.map_err(|e| anyhow::anyhow!("worker {worker_id}: {e}"))
    }
}
