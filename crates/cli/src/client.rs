//! What the API client commands (`submit`, `limits`, `cancel`) share: one request, its
//! answer as JSON, and a refusal turned into one line naming the status and the detail.

use anyhow::Context;
use serde_json::Value;

/// Sends `req` to the API at `base`; returns the JSON answer of a 2xx. Otherwise the error
/// reads "`refused` (STATUS): DETAIL".
pub(crate) async fn call(
    req: reqwest::RequestBuilder,
    base: &str,
    refused: &str,
) -> anyhow::Result<Value> {
    let resp = req
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
            "{refused} ({status}): {}",
            answer["detail"].as_str().unwrap_or("no detail")
        );
    }
    Ok(answer)
}
