//! Built-in handlers: `noop`, `sleep`, `fail`, `echo` and `http`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::handler::{JobContext, JobError, Registry};
use crate::http_target::{Http, HttpOptions, HttpTarget};

#[derive(Deserialize)]
struct Sleep {
    ms: u64,
}

#[derive(Deserialize)]
struct Fail {
    times: u32,
}

impl Registry {
    /// A registry with every built-in handler, the `http` one with default options.
    #[must_use]
    pub fn with_builtins() -> Self {
        Self::with_builtins_and(HttpOptions::default())
    }

    /// A registry with every built-in handler, the `http` one configured by `http`.
    #[must_use]
    pub fn with_builtins_and(http: HttpOptions) -> Self {
        let mut r = Self::new();
        r.register("noop", |_: JobContext, _: Value| async {
            Ok::<_, JobError>(())
        });
        r.register("echo", |_: JobContext, v: Value| async move {
            Ok::<_, JobError>(v)
        });
        r.register("sleep", |_: JobContext, s: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(s.ms)).await;
            Ok::<_, JobError>(())
        });
        // Fails its first `times` attempts, then succeeds: for testing retries.
        r.register("fail", |ctx: JobContext, f: Fail| async move {
            if ctx.attempt() <= f.times {
                Err(JobError::Retry(format!(
                    "failing on purpose (attempt {} of the first {})",
                    ctx.attempt(),
                    f.times
                )))
            } else {
                Ok(serde_json::json!({ "succeeded_on_attempt": ctx.attempt() }))
            }
        });
        let target = HttpTarget::new(http);
        r.register("http", move |ctx: JobContext, h: Http| {
            let target = target.clone();
            async move { target.call(&ctx, &h).await }
        });
        r
    }
}
