//! The tower service apalis calls for each leased job: runs the handler under its timeout,
//! catches panics, decides retry or dead-letter, and hands the outcome to the settler.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::task::Task;
use ferry_core::broker::{Broker, Lease, Settlement};
use ferry_core::limits::KeyGate;
use ferry_core::store::{JobEvent, JobEventKind};
use ferry_core::{RetryPolicy, UnixMillis};
use ferry_telemetry::Outcome;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::handler::{JobContext, JobError, Registry};
use crate::settle::{Msg, Settler};

#[derive(Clone)]
pub(crate) struct Dispatch {
    pub(crate) registry: Arc<Registry>,
    pub(crate) settler: Settler,
    pub(crate) retry: RetryPolicy,
    pub(crate) default_timeout: Duration,
    pub(crate) worker: Arc<str>,
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Cancelled when the shutdown grace period is over.
    pub(crate) abort: CancellationToken,
    /// Jobs running here, for cancel requests.
    pub(crate) running: Running,
    /// For per-key limits (`concurrency_key`, `rate_key`).
    pub(crate) broker: Arc<dyn Broker>,
    /// The lease length: a held concurrency key lives as long as the lease.
    pub(crate) lease_for: Duration,
}

/// How one call of a handler ended.
enum Ran {
    Done(Result<Option<ferry_core::Payload>, JobError>),
    /// Stopped by the end of the shutdown grace period: the job goes back undone.
    Stopped,
    /// Stopped because someone cancelled the job (API, CLI).
    Cancelled,
}

/// The jobs running in this process, each with the token that stops it when the job is
/// cancelled.
#[derive(Clone, Default)]
pub(crate) struct Running {
    inner: Arc<std::sync::Mutex<std::collections::HashMap<ferry_core::JobId, CancellationToken>>>,
}

impl Running {
    fn start(&self, id: ferry_core::JobId) -> CancellationToken {
        let t = CancellationToken::new();
        self.lock().insert(id, t.clone());
        t
    }

    fn end(&self, id: ferry_core::JobId) {
        self.lock().remove(&id);
    }

    /// Stops `id` if it runs here.
    pub(crate) fn cancel(&self, id: ferry_core::JobId) -> bool {
        self.lock()
            .get(&id)
            .map(CancellationToken::cancel)
            .is_some()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<ferry_core::JobId, CancellationToken>>
    {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl tower::Service<Task<Lease>> for Dispatch {
    type Response = ();
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<(), Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Lease>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.run(task.args).await;
            Ok(())
        })
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

impl Dispatch {
    async fn run(&self, lease: Lease) {
        // Registered from the start, so that a cancel request that arrives while the job is
        // still being prepared is not missed.
        let cancelled = self.running.start(lease.job.id);
        self.run_registered(&lease, &cancelled).await;
        self.running.end(lease.job.id);
    }

    async fn run_registered(&self, lease: &Lease, cancelled: &CancellationToken) {
        let job = lease.job.clone();
        let event = |attempt: u32, kind: JobEventKind| JobEvent {
            job: job.clone(),
            attempt,
            fence: lease.token.0,
            at: UnixMillis::now(),
            kind,
        };
        let keyed = job.concurrency_key.is_some() || job.rate_key.is_some();
        if keyed && job.attempt <= job.max_attempts {
            let wait = match self.broker.enter_keys(&job, self.lease_for).await {
                Ok(KeyGate::Go) => None,
                Ok(KeyGate::Wait(d)) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, job = %job.id, "per-key limits unavailable; giving the job back");
                    Some(Duration::from_secs(1))
                }
            };
            if let Some(d) = wait {
                // Not an attempt: back to the queue, due when the limit may let it through
                // (with jitter, so that waiting jobs do not all come back at once).
                let jitter = Duration::from_millis(rand::random::<u64>() % 50);
                ferry_telemetry::key_limit_delayed(job.queue.as_str(), d + jitter);
                self.settler
                    .send(Msg::Unstarted {
                        lease: lease.to_ref(),
                        settlement: Settlement::Release {
                            at: UnixMillis::now().plus(d + jitter),
                        },
                    })
                    .await;
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
        let started = Instant::now();
        let (settlement, kind, outcome, attempt) = if job.attempt > job.max_attempts {
            // The previous holder's lease expired on the last allowed attempt.
            let error = format!(
                "attempt {} of {} was lost (its worker stopped heartbeating) and no attempts remain",
                job.max_attempts, job.max_attempts
            );
            (
                Settlement::Dead {
                    error: error.clone(),
                },
                JobEventKind::Dead { error },
                Outcome::Dead,
                job.max_attempts,
            )
        } else {
            ferry_telemetry::job_started(job.queue.as_str(), job.run_at.until(UnixMillis::now()));
            self.settler
                .send(Msg::Started(event(
                    job.attempt,
                    JobEventKind::Started {
                        worker: self.worker.clone(),
                    },
                )))
                .await;
            match self.call_handler(lease, cancelled).await {
                Ran::Done(result) => {
                    let (s, k, o) = self.decide(lease, result);
                    (s, k, o, job.attempt)
                }
                Ran::Stopped => {
                    let at = UnixMillis::now();
                    (
                        Settlement::Release { at },
                        JobEventKind::Released { at },
                        Outcome::Released,
                        job.attempt.saturating_sub(1),
                    )
                }
                Ran::Cancelled => (
                    Settlement::Ack,
                    JobEventKind::Cancelled,
                    Outcome::Cancelled,
                    job.attempt,
                ),
            }
        };
        if keyed && let Err(e) = self.broker.leave_keys(&job).await {
            // The holder expires with the lease anyway.
            tracing::warn!(error = %e, job = %job.id, "could not give back a concurrency key");
        }
        ferry_telemetry::job_finished(job.queue.as_str(), outcome, started.elapsed());
        self.settler
            .send(Msg::Finished {
                lease: lease.to_ref(),
                settlement,
                event: event(attempt, kind),
            })
            .await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    async fn call_handler(&self, lease: &Lease, cancelled: &CancellationToken) -> Ran {
        let ctx = JobContext {
            job: lease.job.clone(),
            worker: self.worker.clone(),
        };
        let Some(fut) = self.registry.call(ctx) else {
            return Ran::Done(Err(JobError::Retry(format!(
                "no handler for kind '{}' in worker {}",
                lease.job.kind, self.worker
            ))));
        };
        let limit = lease.job.timeout.unwrap_or(self.default_timeout);
        let run = tokio::time::timeout(limit, AssertUnwindSafe(fut).catch_unwind());
        // Dropping the handler's future is how it is stopped: on timeout, on shutdown, on
        // cancel.
        let ran = tokio::select! {
            biased;
            r = run => Some(r),
            () = cancelled.cancelled() => None,
            () = self.abort.cancelled() => return Ran::Stopped,
        };
        let Some(ran) = ran else {
            return Ran::Cancelled;
        };
        Ran::Done(match ran {
            Err(_) => Err(JobError::Retry(format!(
                "timed out after {} ms",
                limit.as_millis()
            ))),
            Ok(Err(panic)) => Err(JobError::Retry(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            ))),
            Ok(Ok(r)) => r,
        })
    }

    fn decide(
        &self,
        lease: &Lease,
        result: Result<Option<ferry_core::Payload>, JobError>,
    ) -> (Settlement, JobEventKind, Outcome) {
        let job = &lease.job;
        match result {
            Ok(result) => (
                Settlement::Ack,
                JobEventKind::Succeeded { result },
                Outcome::Succeeded,
            ),
            Err(JobError::Cancel(why)) => {
                tracing::info!(job = %job.id, reason = %why, "the handler cancelled its job");
                (Settlement::Ack, JobEventKind::Cancelled, Outcome::Cancelled)
            }
            Err(e) => {
                let permanent = matches!(e, JobError::Permanent(_));
                let error = e.message().to_owned();
                if permanent || job.attempt >= job.max_attempts {
                    (
                        Settlement::Dead {
                            error: error.clone(),
                        },
                        JobEventKind::Dead { error },
                        Outcome::Dead,
                    )
                } else {
                    let delay = match e {
                        JobError::RetryAfter(d, _) => d,
                        _ => self.retry.backoff(job.attempt, &mut rand::rng()),
                    };
                    let at = UnixMillis::now().plus(delay);
                    (
                        Settlement::Retry {
                            at,
                            error: error.clone(),
                        },
                        JobEventKind::Failed {
                            error,
                            retry_at: at,
                        },
                        Outcome::Retried,
                    )
                }
            }
        }
    }
}
