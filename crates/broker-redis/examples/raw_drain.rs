use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_broker_redis::{RedisBroker, RedisBrokerConfig};
use ferry_core::broker::{Broker, QueueSelector, Settle, Settlement};
use ferry_core::{JobEnvelope, JobKind, QueueName};

#[tokio::main]
async fn main() {
    let loops: usize = std::env::args()
        .nth(1)
        .unwrap_or("1".into())
        .parse()
        .unwrap();
    let batch: usize = std::env::args()
        .nth(2)
        .unwrap_or("1000".into())
        .parse()
        .unwrap();
    let b = Arc::new(
        RedisBroker::connect(RedisBrokerConfig::new("redis://127.0.0.1:6379"))
            .await
            .unwrap(),
    );
    let q = QueueName::parse(&format!("raw-{}", std::process::id())).unwrap();
    let n = 200_000;
    for _ in 0..(n / 1000) {
        let jobs: Vec<_> = (0..1000)
            .map(|_| {
                JobEnvelope::new(
                    q.clone(),
                    JobKind::parse("noop").unwrap(),
                    JobEnvelope::empty_payload(),
                )
            })
            .collect();
        b.enqueue(jobs).await.unwrap();
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..loops {
        let b = b.clone();
        let sel = QueueSelector::Only(vec![q.clone()]);
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let ls = b
                    .lease(&sel, batch, Duration::from_secs(30), "raw")
                    .await
                    .unwrap();
                if ls.is_empty() {
                    return done;
                }
                let s: Vec<_> = ls
                    .iter()
                    .map(|l| Settle {
                        lease: l.to_ref(),
                        settlement: Settlement::Ack,
                    })
                    .collect();
                b.settle(&s).await.unwrap();
                done += ls.len();
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "loops={loops} batch={batch} jobs={total} {:.0} jobs/s",
        total as f64 / secs
    );
}
