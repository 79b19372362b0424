//! `ferry cancel ID`: cancels a job through the API (`POST /v1/jobs/{id}/cancel`). A waiting
//! job is removed; a running one is stopped by its worker within a second.

use anyhow::Context;
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub(crate) struct CancelArgs {
    /// The job's id.
    id: String,
    /// Base URL of the API.
    #[arg(long, env = "FERRY_API_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

pub(crate) async fn run(a: CancelArgs) -> anyhow::Result<()> {
    let base = a.url.trim_end_matches('/');
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/jobs/{}/cancel", a.id))
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {base}"))?;
    let status = resp.status();
    let answer: Value = resp
        .json()
        .await
        .context("the API answered with something other than JSON")?;
    if !status.is_success() {
        anyhow::bail!(
            "cannot cancel ({status}): {}",
            answer["detail"].as_str().unwrap_or("no detail")
        );
    }
    println!("{answer}");
    Ok(())
}
