//! The store abstraction: where history lives. Every state change of every job is recorded
//! as a [`JobEvent`]; the store keeps a per-job projection ([`JobRecord`]) that the API reads.
//!
//! Events are recorded in batches off the hot path. They carry the job's envelope so the
//! store can create the job's record from whichever event reaches it first, and the fencing
//! token so a late event from an expired lease never overwrites a newer attempt's outcome.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::{
    IdempotencyKey, JobEnvelope, JobId, JobKind, JobState, Payload, QueueName, Tag, Tenant,
    UnixMillis,
};

/// What happened to a job.
#[derive(Clone, Debug)]
pub enum JobEventKind {
    Enqueued,
    Started {
        worker: Arc<str>,
    },
    Succeeded {
        result: Option<Payload>,
    },
    /// The attempt failed; another comes at `retry_at`.
    Failed {
        error: String,
        retry_at: UnixMillis,
    },
    Dead {
        error: String,
    },
    Cancelled,
    /// The attempt was given back undone (worker shutdown); the job is due again at `at`
    /// and the attempt does not count.
    Released {
        at: UnixMillis,
    },
}

impl JobEventKind {
    /// The event's name in history (`enqueued`, `started`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::Started { .. } => "started",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Dead { .. } => "dead",
            Self::Cancelled => "cancelled",
            Self::Released { .. } => "released",
        }
    }

    /// Order within one lease (fencing token): enqueued, started, finished, cancelled. With
    /// the token it orders a job's events and keys them, so a repeat is recorded once.
    #[must_use]
    pub fn step(&self) -> i16 {
        match self {
            Self::Enqueued => 0,
            Self::Started { .. } => 1,
            Self::Succeeded { .. }
            | Self::Failed { .. }
            | Self::Dead { .. }
            | Self::Released { .. } => 2,
            Self::Cancelled => 3,
        }
    }

    /// What the event itself carries: (worker, error, result).
    #[must_use]
    pub fn details(&self) -> (Option<&str>, Option<&str>, Option<&Payload>) {
        match self {
            Self::Started { worker } => (Some(worker), None, None),
            Self::Failed { error, .. } | Self::Dead { error } => (None, Some(error), None),
            Self::Succeeded { result } => (None, None, result.as_ref()),
            Self::Enqueued | Self::Cancelled | Self::Released { .. } => (None, None, None),
        }
    }

    /// The state the job is in after this event.
    #[must_use]
    pub fn state_after(&self, job: &JobEnvelope) -> JobState {
        match self {
            Self::Enqueued if job.run_at > job.created_at => JobState::Scheduled,
            Self::Enqueued => JobState::Queued,
            Self::Started { .. } => JobState::Running,
            Self::Succeeded { .. } => JobState::Succeeded,
            Self::Failed { .. } => JobState::Retrying,
            Self::Dead { .. } => JobState::Dead,
            Self::Cancelled => JobState::Cancelled,
            Self::Released { .. } => JobState::Queued,
        }
    }
}

/// One event in a job's life.
#[derive(Clone, Debug)]
pub struct JobEvent {
    pub job: Arc<JobEnvelope>,
    /// The attempt this event belongs to (0 before the first run).
    pub attempt: u32,
    /// The lease's fencing token (0 before the first lease).
    pub fence: u64,
    pub at: UnixMillis,
    pub kind: JobEventKind,
}

/// A job as history knows it: the projection of its events.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub queue: QueueName,
    pub kind: JobKind,
    pub state: JobState,
    pub payload: Payload,
    pub result: Option<Payload>,
    pub error: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub priority: i16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Tenant>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    pub tags: Vec<Tag>,
    pub created_at: UnixMillis,
    pub run_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
}

/// One recorded event, as a job's timeline shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    /// `enqueued`, `started`, `succeeded`, `failed`, `dead` or `cancelled`.
    pub kind: String,
    pub attempt: u32,
    /// The lease's fencing token (0 before the first lease).
    pub fence: u64,
    pub at: UnixMillis,
    /// The worker, for `started`.
    pub worker: Option<String>,
    /// The error, for `failed` and `dead`.
    pub error: Option<String>,
    /// The handler's result, for `succeeded`.
    pub result: Option<Payload>,
}

/// A search over job history. Every filter present must match; results come newest first
/// (by id, which is creation order), a page at a time.
#[derive(Clone, Debug, Default)]
pub struct JobQuery {
    pub queue: Option<QueueName>,
    pub state: Option<JobState>,
    pub kind: Option<JobKind>,
    pub tenant: Option<Tenant>,
    pub tag: Option<Tag>,
    /// Created at or after.
    pub created_from: Option<UnixMillis>,
    /// Created before.
    pub created_to: Option<UnixMillis>,
    /// Payload containment: each (path, JSON value) must hold, e.g. (`["user_id"]`, `42`).
    pub payload: Vec<(Vec<String>, serde_json::Value)>,
    /// Keyset cursor: only jobs older than this one (the last id of the previous page).
    pub before: Option<JobId>,
    /// Page size.
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store holds data it cannot read: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Job history.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Records events, idempotently: recording the same event twice leaves one effect.
    async fn record(&self, events: Vec<JobEvent>) -> StoreResult<()>;

    async fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>>;

    /// A job's events, oldest first (by fencing token, then step); empty for an unknown job.
    async fn events(&self, id: JobId) -> StoreResult<Vec<EventRecord>>;

    /// Jobs matching `query`, newest first, at most `query.limit`.
    async fn search(&self, query: &JobQuery) -> StoreResult<Vec<JobRecord>>;

    /// For each (tenant, idempotency key), the job that first used it, if history still
    /// holds one. Keys are unique per tenant across all queues; the first job recorded with
    /// a key keeps it.
    async fn jobs_by_key(
        &self,
        keys: &[(Option<Tenant>, IdempotencyKey)],
    ) -> StoreResult<Vec<Option<JobId>>>;

    async fn ping(&self) -> StoreResult<()>;

    /// Refreshes the query planner's statistics (after a bulk load, say). Stores without a
    /// planner to tell do nothing.
    async fn refresh_statistics(&self) -> StoreResult<()> {
        Ok(())
    }
}
