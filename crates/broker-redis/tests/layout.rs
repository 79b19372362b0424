//! What the Redis layout promises beyond the shared suite: priorities survive a retry, dead
//! jobs report their attempts, and Redis keeps nothing for finished jobs and a bounded number
//! of dead ones. Runs against the real test server, like the conformance suite.

use std::time::Duration;

use ferry_broker_conformance::fresh_queue;
use ferry_broker_redis::{RedisBroker, RedisBrokerConfig};
use ferry_core::broker::{Broker, QueueSelector, SettleOutcome};
use ferry_core::{JobEnvelope, JobKind, QueueName, UnixMillis};

const LEASE: Duration = Duration::from_secs(30);

fn url() -> String {
    std::env::var("FERRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn broker(config: RedisBrokerConfig) -> RedisBroker {
    RedisBroker::connect(config).await.expect("connect")
}

fn job(q: &QueueName, priority: i16) -> JobEnvelope {
    let mut j = JobEnvelope::new(
        q.clone(),
        JobKind::parse("noop").unwrap(),
        JobEnvelope::empty_payload(),
    );
    j.priority = priority;
    j
}

fn only(q: &QueueName) -> QueueSelector {
    QueueSelector::Only(vec![q.clone()])
}

/// The queue's keys that exist right now, by their last part (`ready`, `jobs`, ...).
async fn live_keys(q: &QueueName) -> Vec<String> {
    let client = redis::Client::open(url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("ferry:{{{}}}:*", q.as_str());
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys.into_iter()
        .map(|k| k.rsplit(':').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_keeps_its_priority() {
    let b = broker(RedisBrokerConfig::new(url())).await;
    let q = fresh_queue("prio-retry");
    b.enqueue(vec![job(&q, 5)]).await.unwrap();
    let high = b
        .lease(&only(&q), 1, LEASE, "w")
        .await
        .unwrap()
        .pop()
        .unwrap();
    b.enqueue(vec![job(&q, 0)]).await.unwrap();
    assert_eq!(
        b.nack(high.to_ref(), UnixMillis::now(), "again".into())
            .await
            .unwrap(),
        SettleOutcome::Applied
    );
    let next = b
        .lease(&only(&q), 1, LEASE, "w")
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(next.job.id, high.job.id, "priority 5 still goes first");
    assert_eq!(next.job.priority, 5);
    assert_eq!(next.job.attempt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_report_their_attempts_and_the_set_is_bounded() {
    let mut config = RedisBrokerConfig::new(url());
    config.dead_max = 3;
    let b = broker(config).await;
    let q = fresh_queue("dead-bound");
    let jobs: Vec<_> = (0..5).map(|_| job(&q, 0)).collect();
    let first = jobs[0].id;
    b.enqueue(jobs).await.unwrap();
    // Job 0 fails once and is retried before it dies: two attempts.
    let l = b
        .lease(&only(&q), 1, LEASE, "w")
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(l.job.id, first);
    b.nack(l.to_ref(), UnixMillis::now(), "once".into())
        .await
        .unwrap();
    let mut leases = b.lease(&only(&q), 5, LEASE, "w").await.unwrap();
    assert_eq!(leases.len(), 5);
    // Dead-letter job 0 last, in a later millisecond (dead jobs are ordered by the time they
    // died, ties by id), so that it is the newest dead job and survives the bound.
    leases.sort_by_key(|l| l.job.id == first);
    for (n, l) in leases.iter().enumerate() {
        if n == leases.len() - 1 {
            let before = UnixMillis::now();
            while UnixMillis::now() <= before {
                tokio::task::yield_now().await;
            }
        }
        let out = b
            .dead_letter(l.to_ref(), format!("dead {}", l.job.id))
            .await
            .unwrap();
        assert_eq!(out, SettleOutcome::Applied);
    }
    assert_eq!(b.stats(&q).await.unwrap().dead, 3, "only dead_max are kept");
    let dead = b.dead_jobs(&q, 10).await.unwrap();
    assert_eq!(dead.len(), 3);
    let zero = dead.iter().find(|d| d.job.id == first).expect("job 0 kept");
    assert_eq!(zero.job.attempt, 2);
    assert_eq!(zero.error, format!("dead {first}"));
    // The two that fell out left nothing behind: three envelopes, three errors.
    let client = redis::Client::open(url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for part in ["jobs", "err"] {
        let n: u64 = redis::cmd("HLEN")
            .arg(format!("ferry:{{{}}}:{part}", q.as_str()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 3, "{part}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_leave_nothing_in_redis() {
    let b = broker(RedisBrokerConfig::new(url())).await;
    let q = fresh_queue("forget");
    b.enqueue((0..100).map(|_| job(&q, 0)).collect())
        .await
        .unwrap();
    let leases = b.lease(&only(&q), 100, LEASE, "w").await.unwrap();
    for l in &leases {
        assert_eq!(b.ack(l.to_ref()).await.unwrap(), SettleOutcome::Applied);
    }
    // Only the queue's lease counter remains (Redis drops emptied sets and hashes).
    assert_eq!(live_keys(&q).await, vec!["fence".to_owned()]);
}
