//! Built-in handlers: `noop`, `sleep`, `fail`, `echo` and `http`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::handler::{JobContext, JobError, Registry};

#[derive(Deserialize)]
struct Sleep {
    ms: u64,
}

#[derive(Deserialize)]
struct Fail {
    times: u32,
}

#[derive(Deserialize)]
struct Http {
    url: String,
}

impl Registry {
    /// A registry with every built-in handler.
    #[must_use]
    pub fn with_builtins() -> Self {
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
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client without TLS always builds");
        r.register("http", move |ctx: JobContext, h: Http| {
            let client = client.clone();
            async move { post(&client, &ctx, &h.url).await }
        });
        r
    }
}

/// POSTs the job's payload to `url`: 2xx succeeds, 5xx, 429 and transport errors retry,
/// other statuses fail permanently (the target rejected the request itself).
async fn post(client: &reqwest::Client, ctx: &JobContext, url: &str) -> Result<Value, JobError> {
    if !url.starts_with("http://") {
        return Err(JobError::permanent(format!(
            "http handler: only http:// targets are supported in this build, got {url:?}"
        )));
    }
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("ferry-job-id", ctx.job.id.to_string())
        .header("ferry-attempt", ctx.attempt().to_string())
        .body(ctx.job.payload.get().to_owned());
    if let Some(t) = ctx.job.timeout {
        req = req.timeout(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| JobError::retry(format!("http handler: {url}: {e}")))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body_json = serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body));
    if status.is_success() {
        Ok(serde_json::json!({ "status": status.as_u16(), "body": body_json }))
    } else if status.is_server_error() || status.as_u16() == 429 {
        Err(JobError::retry(format!(
            "http handler: {url} answered {status}"
        )))
    } else {
        Err(JobError::permanent(format!(
            "http handler: {url} answered {status}"
        )))
    }
}
