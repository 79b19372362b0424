//! `ferry submit`: a small client for the HTTP API.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::UsageError;

#[derive(Args)]
pub(crate) struct SubmitArgs {
    /// The job's kind (the handler that runs it).
    kind: String,
    /// The payload, as JSON text.
    #[arg(long, default_value = "{}")]
    payload: String,
    #[arg(long, default_value = "default")]
    queue: String,
    #[arg(long)]
    max_attempts: Option<u32>,
    #[arg(long)]
    delay_ms: Option<u64>,
    #[arg(long)]
    priority: Option<i16>,
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Base URL of the API.
    #[arg(long, env = "FERRY_API_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Wait for the job to finish and print its final record.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

pub(crate) async fn run(a: SubmitArgs) -> anyhow::Result<()> {
    let payload: Value = serde_json::from_str(&a.payload)
        .map_err(|e| UsageError(format!("--payload is not JSON: {e}")))?;
    let mut body = serde_json::json!({ "kind": a.kind, "payload": payload });
    if let Some(n) = a.max_attempts {
        body["max_attempts"] = n.into();
    }
    if let Some(n) = a.delay_ms {
        body["delay_ms"] = n.into();
    }
    if let Some(n) = a.priority {
        body["priority"] = n.into();
    }
    let client = reqwest::Client::new();
    let base = a.url.trim_end_matches('/');
    let mut req = client
        .post(format!("{base}/v1/queues/{}/jobs", a.queue))
        .json(&body);
    if let Some(k) = &a.idempotency_key {
        req = req.header("idempotency-key", k);
    }
    let answer = crate::client::call(req, base, "the API refused the job").await?;
    if !a.wait {
        println!("{answer}");
        return Ok(());
    }
    let id = answer["id"]
        .as_str()
        .context("the API's answer has no id")?;
    let deadline = Instant::now() + Duration::from_secs(a.wait_secs);
    loop {
        let job: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {base}"))?
            .json()
            .await?;
        if matches!(
            job["state"].as_str(),
            Some("succeeded" | "dead" | "cancelled")
        ) {
            println!("{job}");
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("job {id} is still {} after {} s", job["state"], a.wait_secs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
