//! The handler SDK: register an async function for a job kind, with a typed payload and a
//! typed result. The runtime knows nothing about what handlers do (STYLE habit 1).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{JobEnvelope, JobKind, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a handler sees besides its payload.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub job: Arc<JobEnvelope>,
    /// This process's worker id.
    pub worker: Arc<str>,
}

impl JobContext {
    /// 1 on the first run.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.job.attempt
    }
}

/// Why an attempt failed, and what should happen next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Try again after the retry policy's backoff (dead-lettered once attempts run out).
    Retry(String),
    /// Try again, not before this long (still bounded by `max_attempts`).
    RetryAfter(Duration, String),
    /// Retrying cannot help (bad payload, 4xx from a target): dead-letter now.
    Permanent(String),
    /// The job should not happen at all any more: it ends `cancelled`, not dead.
    Cancel(String),
}

impl JobError {
    pub fn retry(e: impl std::fmt::Display) -> Self {
        Self::Retry(e.to_string())
    }

    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }

    #[must_use]
    pub fn message(&self) -> &str {
        match self {
            Self::Retry(m) | Self::RetryAfter(_, m) | Self::Permanent(m) | Self::Cancel(m) => m,
        }
    }
}

impl From<anyhow::Error> for JobError {
    fn from(e: anyhow::Error) -> Self {
        Self::Retry(format!("{e:#}"))
    }
}

pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Option<Payload>, JobError>> + Send>>;

trait ErasedHandler: Send + Sync {
    fn call(&self, ctx: JobContext) -> HandlerFuture;
}

struct Typed<F, P> {
    f: F,
    _p: std::marker::PhantomData<fn(P)>,
}

impl<F, P, R, Fut> ErasedHandler for Typed<F, P>
where
    F: Fn(JobContext, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, JobError>> + Send + 'static,
    P: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn call(&self, ctx: JobContext) -> HandlerFuture {
        let payload: P = match serde_json::from_str(ctx.job.payload.get()) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("payload does not fit kind '{}': {e}", ctx.job.kind);
                return Box::pin(async move { Err(JobError::Permanent(msg)) });
            }
        };
        let fut = (self.f)(ctx, payload);
        Box::pin(async move {
            let out = fut.await?;
            let raw = serde_json::value::to_raw_value(&out)
                .map_err(|e| JobError::Permanent(format!("result is not JSON: {e}")))?;
            Ok(Some(Arc::from(raw)))
        })
    }
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<JobKind, Arc<dyn ErasedHandler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` for jobs of `kind`. The payload is decoded into `P` (a payload that
    /// does not fit fails the job permanently); the result is stored as JSON.
    ///
    /// ```
    /// # use ferry_worker::{Registry, JobContext, JobError};
    /// #[derive(serde::Deserialize)]
    /// struct Email { to: String }
    /// let mut r = Registry::new();
    /// r.register("email.send", |_ctx: JobContext, e: Email| async move {
    ///     Ok::<_, JobError>(format!("sent to {}", e.to))
    /// });
    /// ```
    ///
    /// # Panics
    /// When `kind` is not a valid job kind: that is a programming error.
    pub fn register<P, R, F, Fut>(&mut self, kind: &str, f: F) -> &mut Self
    where
        F: Fn(JobContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
        P: DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        let kind = JobKind::parse(kind).unwrap_or_else(|e| panic!("handler kind {kind:?}: {e}"));
        self.handlers.insert(
            kind,
            Arc::new(Typed {
                f,
                _p: std::marker::PhantomData,
            }),
        );
        self
    }

    #[must_use]
    pub fn kinds(&self) -> Vec<&JobKind> {
        self.handlers.keys().collect()
    }

    pub(crate) fn call(&self, ctx: JobContext) -> Option<HandlerFuture> {
        self.handlers.get(&ctx.job.kind).map(|h| h.call(ctx))
    }
}
