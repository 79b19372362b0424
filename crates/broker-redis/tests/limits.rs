//! What Redis adds to the shared limits cases (conformance suite): queue limits hold across
//! processes (two broker instances stand in for two workers), a held-back lease is counted,
//! and tenants take turns.

use std::time::{Duration, Instant};

use ferry_broker_conformance::fresh_queue;
use ferry_broker_redis::{RedisBroker, RedisBrokerConfig};
use ferry_core::broker::{Broker, QueueSelector, SettleOutcome};
use ferry_core::limits::{QueueLimits, Rate};
use ferry_core::{JobEnvelope, JobKind, QueueName};

const LEASE: Duration = Duration::from_secs(30);

fn url() -> String {
    std::env::var("FERRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn broker() -> RedisBroker {
    RedisBroker::connect(RedisBrokerConfig::new(url()))
        .await
        .expect("connect")
}

fn jobs(q: &QueueName, n: usize) -> Vec<JobEnvelope> {
    (0..n)
        .map(|_| {
            JobEnvelope::new(
                q.clone(),
                JobKind::parse("noop").unwrap(),
                JobEnvelope::empty_payload(),
            )
        })
        .collect()
}

fn only(q: &QueueName) -> QueueSelector {
    QueueSelector::Only(vec![q.clone()])
}

/// Two consumers share 40 starts per second (burst 1): over one second they get at most 41
/// jobs together, and each lease leaves the rest in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_rate_holds_across_consumers() {
    let (a, b) = (broker().await, broker().await);
    let q = fresh_queue("rate");
    a.set_limits(
        &q,
        &QueueLimits {
            rate: Some(Rate::parse("40/s", 1).unwrap()),
            ..QueueLimits::default()
        },
    )
    .await
    .unwrap();
    a.enqueue(jobs(&q, 200)).await.unwrap();
    let start = Instant::now();
    let mut got = 0;
    while start.elapsed() < Duration::from_secs(1) {
        for c in [&a, &b] {
            got += c.lease(&only(&q), 50, LEASE, "w").await.unwrap().len();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(got <= 41 + 1, "{got} starts in one second at 40/s");
    assert!(got >= 30, "the limit lets jobs through: {got}");
    // Raised at run time: the next leases see it.
    a.set_limits(
        &q,
        &QueueLimits {
            rate: Some(Rate::parse("1000/s", 100).unwrap()),
            ..QueueLimits::default()
        },
    )
    .await
    .unwrap();
    let more = b.lease(&only(&q), 100, LEASE, "w").await.unwrap().len();
    assert!(more >= 90, "a raised limit applies at once: {more}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_concurrency_holds_across_consumers() {
    let (a, b) = (broker().await, broker().await);
    let q = fresh_queue("conc");
    a.set_limits(
        &q,
        &QueueLimits {
            concurrency: Some(3),
            ..QueueLimits::default()
        },
    )
    .await
    .unwrap();
    a.enqueue(jobs(&q, 10)).await.unwrap();
    let first = a.lease(&only(&q), 2, LEASE, "a").await.unwrap();
    let second = b.lease(&only(&q), 10, LEASE, "b").await.unwrap();
    assert_eq!((first.len(), second.len()), (2, 1));
    let metrics = ferry_telemetry::install();
    assert!(b.lease(&only(&q), 10, LEASE, "b").await.unwrap().is_empty());
    let held = format!(
        "ferry_queue_limit_held_total{{queue=\"{}\",limit=\"concurrency\"}}",
        q.as_str()
    );
    assert!(
        metrics.render().contains(&held),
        "the held-back lease is counted: {held}"
    );
    assert_eq!(
        a.ack(first[0].to_ref()).await.unwrap(),
        SettleOutcome::Applied
    );
    assert_eq!(b.lease(&only(&q), 10, LEASE, "b").await.unwrap().len(), 1);
}

/// Fairness: one tenant's backlog of 10,000 does not starve another tenant's 10 jobs
/// submitted after it; jobs without a tenant take their turn too, and each tenant's own jobs
/// keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_take_turns() {
    use ferry_core::Tenant;
    let b = broker().await;
    let q = fresh_queue("fair");
    let of = |t: Option<&str>, n: usize| {
        let mut js = jobs(&q, n);
        for j in &mut js {
            j.tenant = t.map(|t| Tenant::parse(t).unwrap());
        }
        js
    };
    for _ in 0..10 {
        b.enqueue(of(Some("big"), 1_000)).await.unwrap();
    }
    let small = of(Some("small"), 10);
    let small_ids: Vec<_> = small.iter().map(|j| j.id).collect();
    b.enqueue(small).await.unwrap();
    b.enqueue(of(None, 5)).await.unwrap();
    assert_eq!(b.stats(&q).await.unwrap().ready, 10_015);

    let first = b.lease(&only(&q), 30, LEASE, "w").await.unwrap();
    let tenant_of = |l: &ferry_core::broker::Lease| {
        l.job
            .tenant
            .as_ref()
            .map_or("none", Tenant::as_str)
            .to_owned()
    };
    let count = |t: &str| first.iter().filter(|l| tenant_of(l) == t).count();
    assert_eq!((count("small"), count("none"), count("big")), (10, 5, 15));
    let got_small: Vec<_> = first
        .iter()
        .filter(|l| tenant_of(l) == "small")
        .map(|l| l.job.id)
        .collect();
    assert_eq!(got_small, small_ids, "a tenant's jobs keep their order");
    // A retried job goes back to its own lane.
    let big = first.iter().find(|l| tenant_of(l) == "big").unwrap();
    b.nack(big.to_ref(), ferry_core::UnixMillis::now(), "again".into())
        .await
        .unwrap();
    // Small leases take turns too: one job per lease rotates through the lanes.
    let q2 = fresh_queue("turns");
    for t in ["a", "b", "c"] {
        let mut js = jobs(&q2, 3);
        for j in &mut js {
            j.tenant = Some(Tenant::parse(t).unwrap());
        }
        b.enqueue(js).await.unwrap();
    }
    b.enqueue(jobs(&q2, 3)).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..8 {
        let l = b
            .lease(&only(&q2), 1, LEASE, "w")
            .await
            .unwrap()
            .pop()
            .unwrap();
        order.push(tenant_of(&l));
    }
    let mut first_four = order[..4].to_vec();
    first_four.sort();
    assert_eq!(
        first_four,
        ["a", "b", "c", "none"],
        "every tenant's turn comes: {order:?}"
    );
    assert_eq!(order[..4], order[4..], "in the same rotation: {order:?}");
    let rest = b.lease(&only(&q), 20_000, LEASE, "w").await.unwrap();
    assert_eq!(rest.len(), 10_015 - 30 + 1);
    assert!(rest.iter().all(|l| tenant_of(l) == "big"));
    assert_eq!(b.stats(&q).await.unwrap().ready, 0);
}
