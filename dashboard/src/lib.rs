#![doc = include_str!("../README.md")]

use axum::Router;
use axum::response::Html;
use axum::routing::get;

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ferry</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem}code{background:#eee;padding:0 .2rem}</style>
</head><body>
<h1>Ferry</h1>
<p>The dashboard is not built yet. Until it is, the API answers:</p>
<ul>
<li><code>POST /v1/queues/{queue}/jobs</code> to submit a job</li>
<li><code>GET /v1/jobs/{id}</code> for a job's state, attempts and result</li>
<li><code>GET /v1/queues/{queue}</code> for a queue's counts</li>
<li><a href="/metrics"><code>/metrics</code></a> for Prometheus</li>
</ul>
</body></html>"#;

/// The dashboard's routes, mounted at `/`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(|| async { Html(PAGE) }))
}
