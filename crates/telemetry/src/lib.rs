#![doc = include_str!("../README.md")]

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;

/// Every metric name Ferry exports.
pub mod names {
    pub const JOBS_ENQUEUED: &str = "ferry_jobs_enqueued_total";
    pub const JOBS_FINISHED: &str = "ferry_jobs_finished_total";
    pub const JOB_DURATION: &str = "ferry_job_duration_seconds";
    pub const LEASES: &str = "ferry_leases_total";
    pub const STALE_SETTLEMENTS: &str = "ferry_stale_settlements_total";
    pub const JOBS_STARTED: &str = "ferry_jobs_started_total";
    pub const QUEUE_WAIT: &str = "ferry_job_queue_wait_seconds";
    pub const IN_FLIGHT: &str = "ferry_jobs_in_flight";
    pub const KEY_LIMIT_DELAYS: &str = "ferry_key_limit_delays_total";
    pub const KEY_LIMIT_DELAY: &str = "ferry_key_limit_delay_seconds";
    pub const QUEUE_LIMIT_HELD: &str = "ferry_queue_limit_held_total";
    pub const HTTP_TARGET_REQUESTS: &str = "ferry_http_target_requests_total";
    pub const HTTP_BREAKERS_OPEN: &str = "ferry_http_target_breakers_open";
    pub const HTTP_REQUESTS: &str = "ferry_http_requests_total";
    pub const HTTP_DURATION: &str = "ferry_http_request_duration_seconds";
}

/// How an attempt ended, as a bounded label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Retried,
    Dead,
    /// Given back undone at shutdown (not an attempt).
    Released,
    /// Stopped on request (API, CLI) or by its handler; it will not run again.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in discriminant order.
    pub const ALL: [Self; 5] = [
        Self::Succeeded,
        Self::Retried,
        Self::Dead,
        Self::Released,
        Self::Cancelled,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Dead => "dead",
            Self::Released => "released",
            Self::Cancelled => "cancelled",
        }
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns the handle that renders
/// `/metrics`. Later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding Ferry); then ours
            // still renders, it just sees nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Sets up `tracing` output to stderr, filtered by `RUST_LOG` (default `info`, with the
/// AMQP client's own logging off).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // lapin logs every connection failure at ERROR on its own; Ferry reports the ones
        // that matter in one line of its own (a broker that cannot be reached at start-up).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn jobs_enqueued(queue: &str, n: u64) {
    metrics::counter!(names::JOBS_ENQUEUED, "queue" => queue.to_owned()).increment(n);
}

pub fn job_finished(queue: &str, outcome: Outcome, ran_for: Duration) {
    with_queue(queue, |h| {
        h.finished[outcome as usize].increment(1);
        h.duration.record(ran_for.as_secs_f64());
    });
}

pub fn leased(n: u64) {
    metrics::counter!(names::LEASES).increment(n);
}

pub fn stale_settlements(n: u64) {
    metrics::counter!(names::STALE_SETTLEMENTS).increment(n);
}

/// An attempt starts after waiting `waited` since the job was due.
pub fn job_started(queue: &str, waited: Duration) {
    with_queue(queue, |h| {
        h.started.increment(1);
        h.wait.record(waited.as_secs_f64());
    });
}

/// The per-job metrics of one queue, registered once: looking a labelled metric up in the
/// registry on every job (allocating its label) cost a measurable share of a drain.
struct QueueHandles {
    started: metrics::Counter,
    wait: metrics::Histogram,
    /// By [`Outcome`] discriminant.
    finished: [metrics::Counter; Outcome::ALL.len()],
    duration: metrics::Histogram,
}

static QUEUES: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<QueueHandles>>>,
> = std::sync::LazyLock::new(Default::default);

fn with_queue(queue: &str, f: impl FnOnce(&QueueHandles)) {
    let found = QUEUES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(queue)
        .cloned();
    let h = found.unwrap_or_else(|| {
        let q = queue.to_owned();
        let h = std::sync::Arc::new(QueueHandles {
            started: metrics::counter!(names::JOBS_STARTED, "queue" => q.clone()),
            wait: metrics::histogram!(names::QUEUE_WAIT, "queue" => q.clone()),
            finished: Outcome::ALL.map(|o| {
                metrics::counter!(names::JOBS_FINISHED, "queue" => q.clone(), "outcome" => o.as_str())
            }),
            duration: metrics::histogram!(names::JOB_DURATION, "queue" => q.clone()),
        });
        QUEUES
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(q, h.clone());
        h
    });
    f(&h);
}

/// Jobs this process holds (leased, running or being settled).
pub fn in_flight(n: usize) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(names::IN_FLIGHT).set(n as f64);
}

/// How a call of the `http` handler ended, as a bounded label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpOutcome {
    Success,
    Retry,
    RetryAfter,
    Permanent,
    BreakerOpen,
}

impl HttpOutcome {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Retry => "retry",
            Self::RetryAfter => "retry_after",
            Self::Permanent => "permanent",
            Self::BreakerOpen => "breaker_open",
        }
    }
}

pub fn http_target_request(outcome: HttpOutcome) {
    metrics::counter!(names::HTTP_TARGET_REQUESTS, "outcome" => outcome.as_str()).increment(1);
}

/// Target hosts whose circuit is open: +1 when one opens, -1 when one half-opens.
pub fn http_breakers_open(delta: i32) {
    metrics::gauge!(names::HTTP_BREAKERS_OPEN).increment(f64::from(delta));
}

/// A queue's pool-wide `limit` (`rate` or `concurrency`) leased fewer jobs than a worker
/// asked for while jobs were ready: the limit is holding work back.
pub fn queue_limit_held(queue: &str, limit: &'static str) {
    metrics::counter!(names::QUEUE_LIMIT_HELD, "queue" => queue.to_owned(), "limit" => limit)
        .increment(1);
}

/// A per-key limit gave a job back to wait `delay`.
pub fn key_limit_delayed(queue: &str, delay: Duration) {
    metrics::counter!(names::KEY_LIMIT_DELAYS, "queue" => queue.to_owned()).increment(1);
    metrics::histogram!(names::KEY_LIMIT_DELAY, "queue" => queue.to_owned())
        .record(delay.as_secs_f64());
}

pub fn http_request(route: &str, method: &str, status: u16, took: Duration) {
    metrics::counter!(
        names::HTTP_REQUESTS,
        "route" => route.to_owned(),
        "method" => method.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(names::HTTP_DURATION, "route" => route.to_owned())
        .record(took.as_secs_f64());
}
