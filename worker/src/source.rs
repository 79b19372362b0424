//! The ONE adapter from Ferry's [`Broker`] to apalis: a [`Persistence`] whose `fetch_next`
//! leases a batch, driven by apalis's [`Persisted`] and exposed as an apalis [`Backend`].
//! Every broker therefore runs on the same apalis runtime.
//!
//! Acks and heartbeats do not go through apalis's event channel: see
//! `docs/decisions/0002-apalis-adapter.md` for why they run beside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskEvent};
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::worker::context::WorkerContext;
use ferry_core::broker::{Broker, Lease, LeaseRef, QueueSelector, Settle, Settlement};
use ferry_core::{JobId, UnixMillis};
use tokio_util::sync::CancellationToken;
use tower::layer::util::Identity;

/// The leases this process holds: heartbeats extend them, settlement removes them.
#[derive(Clone, Default)]
pub(crate) struct Held {
    /// Each held lease, and whether its settlement has been handed to the broker.
    inner: Arc<Mutex<HashMap<JobId, (LeaseRef, bool)>>>,
    /// Signalled when leases are let go, for a lease call waiting for room.
    freed: Arc<tokio::sync::Notify>,
}

impl Held {
    pub(crate) fn add(&self, leases: &[Lease]) {
        let mut m = self.inner.lock().expect("held-leases lock");
        for l in leases {
            m.insert(l.job.id, (l.to_ref(), false));
        }
    }

    /// The settler is about to settle these: they are still extended until it is done, but a
    /// heartbeat that finds them gone raced with the settlement, not with another worker.
    pub(crate) fn settling(&self, refs: impl IntoIterator<Item = LeaseRef>) {
        let mut m = self.inner.lock().expect("held-leases lock");
        for r in refs {
            if let Some((held, settling)) = m.get_mut(&r.id)
                && *held == r
            {
                *settling = true;
            }
        }
    }

    pub(crate) fn remove(&self, refs: impl IntoIterator<Item = LeaseRef>) {
        let mut m = self.inner.lock().expect("held-leases lock");
        for r in refs {
            if m.get(&r.id).is_some_and(|(held, _)| *held == r) {
                m.remove(&r.id);
            }
        }
        drop(m);
        self.freed.notify_one();
    }

    /// How many leases this process holds (running, buffered or waiting to be settled).
    pub(crate) fn count(&self) -> usize {
        self.inner.lock().expect("held-leases lock").len()
    }

    /// Forgets leases a heartbeat found lost; returns those that were really lost (not just
    /// settled while the heartbeat was under way).
    pub(crate) fn lost(&self, refs: impl IntoIterator<Item = LeaseRef>) -> Vec<LeaseRef> {
        let mut m = self.inner.lock().expect("held-leases lock");
        let mut really = Vec::new();
        for r in refs {
            if let Some((held, settling)) = m.get(&r.id).copied()
                && held == r
                && !settling
            {
                m.remove(&r.id);
                really.push(r);
            }
        }
        drop(m);
        self.freed.notify_one();
        really
    }

    pub(crate) fn snapshot(&self) -> Vec<LeaseRef> {
        self.inner
            .lock()
            .expect("held-leases lock")
            .values()
            .map(|(r, _)| *r)
            .collect()
    }
}

/// Errors the adapter reports to apalis. Broker faults are retried inside the adapter, so
/// this only surfaces when apalis itself misbehaves.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(String);

/// Leases jobs for one worker process.
#[derive(Clone)]
pub(crate) struct LeaseSource {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) queues: QueueSelector,
    pub(crate) lease_for: Duration,
    pub(crate) concurrency: usize,
    /// Leases held at once, at most: `concurrency` running plus the settle window of
    /// finished ones not yet settled. A crash runs these again, so this bounds duplicates.
    pub(crate) max_held: usize,
    pub(crate) worker_id: Arc<str>,
    pub(crate) in_flight: Arc<AtomicUsize>,
    pub(crate) held: Held,
    pub(crate) shutdown: CancellationToken,
}

impl LeaseSource {
    async fn lease_some(&self) -> Vec<Lease> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutdown.is_cancelled() {
                return Vec::new();
            }
            // Armed before the count is read, so that a settlement in between still wakes us.
            let freed = self.held.freed.notified();
            let room = self.max_held.saturating_sub(self.held.count());
            if room == 0 {
                // Finished jobs wait for their settlement: lease more only when they are
                // settled, so that a crash re-runs at most `max_held` jobs.
                tokio::select! {
                    () = freed => {}
                    () = self.shutdown.cancelled() => {}
                }
                continue;
            }
            let free = self
                .concurrency
                .saturating_sub(self.in_flight.load(Ordering::Acquire))
                .clamp(1, room);
            match self
                .broker
                .lease(&self.queues, free, self.lease_for, &self.worker_id)
                .await
            {
                Ok(leases) if !leases.is_empty() => {
                    self.held.add(&leases);
                    // The gauge is set here, once per lease call, not once per job.
                    let now = self.in_flight.fetch_add(leases.len(), Ordering::AcqRel);
                    ferry_telemetry::in_flight(now + leases.len());
                    ferry_telemetry::leased(leases.len() as u64);
                    return leases;
                }
                Ok(_) => {
                    ferry_telemetry::in_flight(self.in_flight.load(Ordering::Acquire));
                    backoff = Duration::from_millis(50);
                    // Idle: wait for a push (or the broker's poll interval), not a heartbeat.
                    tokio::select! {
                        () = self.broker.wait_for_jobs(&self.queues, Duration::from_secs(1)) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "lease failed; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl Persistence for LeaseSource {
    type Compact = Lease;
    type Response = ();
    type Error = SourceError;

    async fn register(&mut self, _worker: &WorkerContext) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn heartbeat(&mut self, _worker: &WorkerContext) -> Result<(), Self::Error> {
        // Lease extension runs on its own timer (heartbeat.rs): apalis only calls this
        // between fetches, and a fetch may wait for work while long jobs run.
        Ok(())
    }

    async fn fetch_next(
        &mut self,
        _worker: &WorkerContext,
    ) -> Result<Vec<Task<Lease>>, Self::Error> {
        Ok(self
            .lease_some()
            .await
            .into_iter()
            .map(|l| {
                let id = TaskId::from_string(l.job.id.to_string());
                TaskBuilder::new(l).task_id(id).build()
            })
            .collect())
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Lease>>,
        _worker: &WorkerContext,
    ) -> Result<u64, Self::Error> {
        // Leased but never started (the worker is stopping): hand them back for now.
        let settles: Vec<Settle> = tasks
            .iter()
            .map(|t| Settle {
                lease: t.args.to_ref(),
                settlement: Settlement::Release {
                    at: UnixMillis::now(),
                },
            })
            .collect();
        self.in_flight.fetch_sub(settles.len(), Ordering::AcqRel);
        self.held.remove(settles.iter().map(|s| s.lease));
        self.broker
            .settle(&settles)
            .await
            .map(|o| o.len() as u64)
            .map_err(|e| SourceError(e.to_string()))
    }

    async fn handle_events(
        &mut self,
        _events: Vec<TaskEvent<()>>,
        _worker: &WorkerContext,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn push_tasks(&mut self, _tasks: Vec<Task<Lease>>) -> Result<(), Self::Error> {
        Err(SourceError(
            "push jobs through the broker (ferry API or Broker::enqueue), not the worker".into(),
        ))
    }
}

/// The apalis [`Backend`] every Ferry worker runs on.
pub(crate) struct FerryBackend {
    persisted: Persisted<LeaseSource>,
    heartbeat: Duration,
}

impl FerryBackend {
    pub(crate) fn new(source: LeaseSource) -> Self {
        Self {
            heartbeat: source.lease_for / 3,
            persisted: Persisted::new(source),
        }
    }
}

impl Backend for FerryBackend {
    type Task = Task<Lease>;
    type Error = SourceError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.persisted.poll_ready(cx, worker, self.heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.persisted.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.persisted.poll_close(cx, worker)
    }
}

impl BackendConfig for FerryBackend {
    type Args = Lease;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
