//! Deliveries RabbitMQ pushed ahead of any lease (the prefetch window) are jobs waiting to
//! run: stats count them as ready, and a worker that stops gives them back as fresh
//! messages, so that the next worker runs them without an attempt counted against them.

use std::time::{Duration, Instant};

use ferry_broker_amqp::{AmqpBroker, AmqpBrokerConfig};
use ferry_broker_conformance::fresh_queue;
use ferry_core::broker::{Broker, QueueSelector, Settle};
use ferry_core::{JobEnvelope, JobKind};

fn url() -> String {
    std::env::var("FERRY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn broker() -> AmqpBroker {
    AmqpBroker::connect(AmqpBrokerConfig::new(url()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_go_back_without_an_attempt() {
    let first = broker().await;
    let q = fresh_queue("prefetch");
    let only = QueueSelector::Only(vec![q.clone()]);
    let jobs: Vec<JobEnvelope> = (0..10)
        .map(|_| {
            JobEnvelope::new(
                q.clone(),
                JobKind::parse("noop").unwrap(),
                JobEnvelope::empty_payload(),
            )
        })
        .collect();
    first.enqueue(jobs).await.unwrap();
    let leased = first
        .lease(&only, 5, Duration::from_secs(30), "w1")
        .await
        .unwrap();
    assert_eq!(leased.len(), 5);
    // Acking opens the window again: RabbitMQ pushes the other five here, ahead of a lease.
    first.settle(&Settle::acks(&leased)).await.unwrap();
    let t = Instant::now();
    loop {
        let s = first.stats(&q).await.unwrap();
        assert_eq!((s.ready, s.leased), (5, 0), "buffered jobs count as ready");
        // The stats fence drains what arrived; wait until all five sit in this process.
        let stats_of_server = broker().await.stats(&q).await.unwrap();
        if stats_of_server.ready == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the window never refilled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.release_prefetched().await;
    let second = broker().await;
    let again = second
        .lease(&only, 10, Duration::from_secs(30), "w2")
        .await
        .unwrap();
    assert_eq!(again.len(), 5, "every prefetched job came back");
    assert!(
        again.iter().all(|l| l.job.attempt == 1),
        "given back, not redelivered: {:?}",
        again.iter().map(|l| l.job.attempt).collect::<Vec<_>>()
    );
    assert!(
        first
            .lease(&only, 10, Duration::from_secs(30), "w1")
            .await
            .unwrap()
            .is_empty()
    );
}
