//! The built-in `http` handler: POSTs the job's payload to `{"url": ...}`, signed, under a
//! timeout, with retries decided by the answer and a circuit breaker per host.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_telemetry::HttpOutcome;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::Value;

use crate::circuit::{Admit, Breakers};
use crate::handler::{JobContext, JobError};

/// How the `http` handler behaves (`ferry-config`'s `HttpTargetConfig` fills it from
/// `FERRY_HTTP_*`).
#[derive(Clone)]
pub struct HttpOptions {
    /// Key of the `Ferry-Signature` header; `None` sends no signature.
    pub signing_secret: Option<String>,
    /// Per request, for jobs without a timeout of their own.
    pub timeout: Duration,
    /// Consecutive failures to one host that open its circuit.
    pub breaker_failures: u32,
    /// How long an open circuit waits before one probe.
    pub breaker_cooldown: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            signing_secret: None,
            timeout: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("signed", &self.signing_secret.is_some())
            .field("timeout", &self.timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .finish()
    }
}

#[derive(Deserialize)]
pub(crate) struct Http {
    url: String,
}

/// One per worker: the client (connection pool) and the breakers are shared by all jobs.
pub(crate) struct HttpTarget {
    client: reqwest::Client,
    breakers: Breakers,
    options: HttpOptions,
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
#[must_use]
pub fn signature(secret: &str, unix_secs: u64, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl HttpTarget {
    pub(crate) fn new(options: HttpOptions) -> Arc<Self> {
        Arc::new(Self {
            client: reqwest::Client::builder()
                .build()
                .expect("a client without TLS always builds"),
            breakers: Breakers::new(options.breaker_failures, options.breaker_cooldown),
            options,
        })
    }

    pub(crate) async fn call(&self, ctx: &JobContext, h: &Http) -> Result<Value, JobError> {
        let (outcome, result) = self.post(ctx, &h.url).await;
        ferry_telemetry::http_target_request(outcome);
        result
    }

    async fn post(&self, ctx: &JobContext, url: &str) -> (HttpOutcome, Result<Value, JobError>) {
        let permanent = |m: String| (HttpOutcome::Permanent, Err(JobError::permanent(m)));
        if !url.starts_with("http://") {
            return permanent(format!(
                "http handler: only http:// targets are supported in this build, got {url:?}"
            ));
        }
        let host = match reqwest::Url::parse(url) {
            Ok(u) => format!(
                "{}:{}",
                u.host_str().unwrap_or(""),
                u.port_or_known_default().unwrap_or(80)
            ),
            Err(e) => return permanent(format!("http handler: bad url {url:?}: {e}")),
        };
        if let Admit::Wait(d) = self.breakers.admit(&host, Instant::now()) {
            return (
                HttpOutcome::BreakerOpen,
                Err(JobError::RetryAfter(
                    d,
                    format!("http handler: circuit open for {host}: it kept failing"),
                )),
            );
        }
        let body = ctx.job.payload.get().to_owned();
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("ferry-job-id", ctx.job.id.to_string())
            .header("ferry-attempt", ctx.attempt().to_string())
            .timeout(ctx.job.timeout.unwrap_or(self.options.timeout));
        if let Some(secret) = &self.options.signing_secret {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            req = req.header("ferry-signature", signature(secret, now, &body));
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                self.breakers.record(&host, false, Instant::now());
                let why = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                return (
                    HttpOutcome::Retry,
                    Err(JobError::retry(format!("http handler: {url} {why}: {e}"))),
                );
            }
        };
        let status = resp.status();
        let code = status.as_u16();
        // A 429 is the host protecting itself, not failing; a 5xx is failing.
        self.breakers
            .record(&host, !status.is_server_error(), Instant::now());
        if (code == 429 || code == 503)
            && let Some(d) = retry_after(&resp)
        {
            return (
                HttpOutcome::RetryAfter,
                Err(JobError::RetryAfter(
                    d,
                    format!("http handler: {url} answered {status}, retry after {d:?}"),
                )),
            );
        }
        let text = resp.text().await.unwrap_or_default();
        let body_json = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            (
                HttpOutcome::Success,
                Ok(serde_json::json!({ "status": code, "body": body_json })),
            )
        } else if status.is_server_error() || code == 429 {
            (
                HttpOutcome::Retry,
                Err(JobError::retry(format!(
                    "http handler: {url} answered {status}"
                ))),
            )
        } else {
            permanent(format!("http handler: {url} answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_stripe_style_hmac_sha256() {
        // Reference value computed independently: echo -n '1700000000.{"a":1}' |
        // openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature("secret", 1_700_000_000, r#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        assert_ne!(
            signature("other", 1_700_000_000, r#"{"a":1}"#),
            signature("secret", 1_700_000_000, r#"{"a":1}"#)
        );
    }
}
