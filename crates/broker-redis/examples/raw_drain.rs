//! The broker's own ceiling, without the worker: fills a queue with 200,000 jobs, then
//! `LOOPS` concurrent loops each lease `BATCH` jobs and ack them until the queue is empty.
//!
//! ```sh
//! cargo run --release -p ferry-broker-redis --example raw_drain -- [LOOPS=1] [BATCH=1000] [URL]
//! ```
//! Prints one JSON line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_broker_redis::{RedisBroker, RedisBrokerConfig};
use ferry_core::broker::{Broker, QueueSelector, Settle};
use ferry_core::{JobEnvelope, JobKind, QueueName};

const JOBS: usize = 200_000;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let loops: usize = args
        .next()
        .map_or(1, |a| a.parse().expect("LOOPS: a number"));
    let batch: usize = args
        .next()
        .map_or(1000, |a| a.parse().expect("BATCH: a number"));
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let b = Arc::new(
        RedisBroker::connect(RedisBrokerConfig::new(url))
            .await
            .expect("connect"),
    );
    let q = QueueName::parse(&format!("raw-{}", std::process::id())).expect("queue name");
    let kind = JobKind::parse("noop").expect("kind");
    for _ in 0..JOBS / 1000 {
        let jobs: Vec<_> = (0..1000)
            .map(|_| JobEnvelope::new(q.clone(), kind.clone(), JobEnvelope::empty_payload()))
            .collect();
        b.enqueue(jobs).await.expect("enqueue");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..loops {
        let b = b.clone();
        let sel = QueueSelector::Only(vec![q.clone()]);
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let leases = b
                    .lease(&sel, batch, Duration::from_secs(30), "raw")
                    .await
                    .expect("lease");
                if leases.is_empty() {
                    return done;
                }
                let acks = Settle::acks(&leases);
                b.settle(&acks).await.expect("ack");
                done += leases.len();
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("loop");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"bench":"raw_lease_ack","broker":"redis","loops":loops,"batch":batch,"jobs":total,"seconds":secs,"jobs_per_s":total as f64 / secs})
    );
}
