//! `ferry limits QUEUE [--rate ...]`: shows a queue's pool-wide limits, or replaces them,
//! through the API (`GET`/`PUT /v1/queues/{queue}/limits`). Workers apply a change to their
//! next lease or start; nothing restarts.

use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub(crate) struct LimitsArgs {
    queue: String,
    /// Jobs started per period across the pool: `200/s`, `10/500ms`, `1000/1m`.
    #[arg(long)]
    rate: Option<String>,
    /// Starts allowed back to back under `--rate` (default 1).
    #[arg(long)]
    burst: Option<u32>,
    /// Jobs running at once across the pool.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Per `rate_key`: starts per period across the pool.
    #[arg(long)]
    key_rate: Option<String>,
    /// Starts allowed back to back under `--key-rate` (default 1).
    #[arg(long)]
    key_burst: Option<u32>,
    /// Per `concurrency_key`: jobs running at once across the pool.
    #[arg(long)]
    key_concurrency: Option<u32>,
    /// Remove every limit of the queue.
    #[arg(long, conflicts_with_all = ["rate", "burst", "concurrency", "key_rate", "key_burst", "key_concurrency"])]
    clear: bool,
    /// Base URL of the API.
    #[arg(long, env = "FERRY_API_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

pub(crate) async fn run(a: LimitsArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = a.url.trim_end_matches('/');
    let url = format!("{base}/v1/queues/{}/limits", a.queue);
    let setting = a.clear
        || a.rate.is_some()
        || a.burst.is_some()
        || a.concurrency.is_some()
        || a.key_rate.is_some()
        || a.key_burst.is_some()
        || a.key_concurrency.is_some();
    let req = if setting {
        // A PUT replaces every limit: the flags given are the queue's limits from now on.
        let mut body = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                body.insert(k.to_owned(), v);
            }
        };
        put("rate", a.rate.into());
        put("burst", a.burst.into());
        put("concurrency", a.concurrency.into());
        put("key_rate", a.key_rate.into());
        put("key_burst", a.key_burst.into());
        put("key_concurrency", a.key_concurrency.into());
        client.put(&url).json(&body)
    } else {
        client.get(&url)
    };
    let answer = crate::client::call(req, base, "the API refused").await?;
    println!("{answer}");
    Ok(())
}
