//! Fetching with full buffers against a real Kafka-protocol broker: every partition's
//! buffer holds 50 jobs, so fetching stops and restarts many times while 5,000 jobs are
//! leased in small batches. Each job comes out exactly once and none is stranded (pausing
//! partitions once restarted them inside a batch, where tansu serves nothing, and the drain
//! stalled).

use std::collections::HashSet;
use std::time::Duration;

use ferry_broker_conformance::fresh_queue;
use ferry_broker_kafka::{KafkaBroker, KafkaBrokerConfig};
use ferry_core::broker::{Broker, QueueSelector, Settle};
use ferry_core::{JobEnvelope, JobKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffers_stop_and_restart_fetching_without_losing_a_job() {
    let url =
        std::env::var("FERRY_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());
    let mut config = KafkaBrokerConfig::new(url);
    config.group = format!("ferry-test-{}", uuid::Uuid::now_v7().simple());
    config.buffer_per_partition = 50;
    let b = KafkaBroker::connect(config).await.unwrap();
    let q = fresh_queue("flow");
    let n = 5_000;
    let kind = JobKind::parse("noop").unwrap();
    let jobs: Vec<_> = (0..n)
        .map(|_| JobEnvelope::new(q.clone(), kind.clone(), JobEnvelope::empty_payload()))
        .collect();
    let ids: HashSet<_> = jobs.iter().map(|j| j.id).collect();
    b.enqueue(jobs).await.unwrap();
    let only = QueueSelector::Only(vec![q.clone()]);
    let mut seen = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled at {} of {n} jobs",
            seen.len()
        );
        let leases = b
            .lease(&only, 37, Duration::from_secs(30), "w")
            .await
            .unwrap();
        if leases.is_empty() {
            b.wait_for_jobs(&only, Duration::from_millis(50)).await;
            continue;
        }
        let acks = Settle::acks(&leases);
        for l in &leases {
            assert!(seen.insert(l.job.id), "job {} leased twice", l.job.id);
        }
        b.settle(&acks).await.unwrap();
    }
    assert_eq!(seen, ids);
    let s = b.stats(&q).await.unwrap();
    assert_eq!((s.ready, s.leased), (0, 0));
}
