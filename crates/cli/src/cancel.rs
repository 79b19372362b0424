//! `ferry cancel ID`: cancels a job through the API (`POST /v1/jobs/{id}/cancel`). A waiting
//! job is removed; a running one is stopped by its worker within a second.

use clap::Args;

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
    let req = reqwest::Client::new().post(format!("{base}/v1/jobs/{}/cancel", a.id));
    let answer = crate::client::call(req, base, "cannot cancel").await?;
    println!("{answer}");
    Ok(())
}
