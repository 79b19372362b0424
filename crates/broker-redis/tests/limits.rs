//! Pool-wide limits on the real Redis: every worker leases through the same scripts, so a
//! queue's rate and concurrency and each key's limits hold across processes. Two broker
//! instances stand in for two worker processes.

use std::time::{Duration, Instant};

use ferry_broker_conformance::fresh_queue;
use ferry_broker_redis::{RedisBroker, RedisBrokerConfig};
use ferry_core::broker::{Broker, QueueSelector, SettleOutcome};
use ferry_core::limits::{KeyGate, QueueLimits, Rate};
use ferry_core::{FlowKey, JobEnvelope, JobKind, QueueName};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_round_trip_and_clear() {
    let b = broker().await;
    let q = fresh_queue("lim");
    assert_eq!(b.limits(&q).await.unwrap(), QueueLimits::default());
    let set = QueueLimits {
        rate: Some(Rate::parse("200/s", 5).unwrap()),
        concurrency: Some(7),
        key_rate: Some(Rate::parse("3/500ms", 1).unwrap()),
        key_concurrency: Some(2),
    };
    b.set_limits(&q, &set).await.unwrap();
    assert_eq!(b.limits(&q).await.unwrap(), set);
    b.set_limits(&q, &QueueLimits::default()).await.unwrap();
    assert_eq!(b.limits(&q).await.unwrap(), QueueLimits::default());
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

fn keyed(q: &QueueName, ckey: Option<&str>, rkey: Option<&str>) -> JobEnvelope {
    let mut j = jobs(q, 1).pop().unwrap();
    j.concurrency_key = ckey.map(|k| FlowKey::parse(k).unwrap());
    j.rate_key = rkey.map(|k| FlowKey::parse(k).unwrap());
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_concurrency_holds_across_processes_and_expires_with_the_holder() {
    let (a, b) = (broker().await, broker().await);
    let q = fresh_queue("kc");
    a.set_limits(
        &q,
        &QueueLimits {
            key_concurrency: Some(2),
            ..QueueLimits::default()
        },
    )
    .await
    .unwrap();
    let j: Vec<JobEnvelope> = (0..4)
        .map(|_| keyed(&q, Some("customer-7"), None))
        .collect();
    let other = keyed(&q, Some("customer-8"), None);
    let hold = Duration::from_secs(30);
    assert_eq!(a.enter_keys(&j[0], hold).await.unwrap(), KeyGate::Go);
    assert_eq!(b.enter_keys(&j[1], hold).await.unwrap(), KeyGate::Go);
    assert!(matches!(
        a.enter_keys(&j[2], hold).await.unwrap(),
        KeyGate::Wait(_)
    ));
    assert_eq!(
        b.enter_keys(&other, hold).await.unwrap(),
        KeyGate::Go,
        "keys are separate"
    );
    // Entering again with a job that holds the key does not take a second slot.
    assert_eq!(a.enter_keys(&j[0], hold).await.unwrap(), KeyGate::Go);
    a.leave_keys(&j[0]).await.unwrap();
    assert_eq!(
        a.enter_keys(&j[2], Duration::from_millis(300))
            .await
            .unwrap(),
        KeyGate::Go
    );
    // j[2]'s holder is never renewed nor left (its worker "died"): it falls out with its lease.
    assert!(matches!(
        b.enter_keys(&j[3], hold).await.unwrap(),
        KeyGate::Wait(_)
    ));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(b.enter_keys(&j[3], hold).await.unwrap(), KeyGate::Go);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rate_meters_each_key() {
    let b = broker().await;
    let q = fresh_queue("kr");
    b.set_limits(
        &q,
        &QueueLimits {
            key_rate: Some(Rate::parse("10/s", 1).unwrap()),
            ..QueueLimits::default()
        },
    )
    .await
    .unwrap();
    let hold = Duration::from_secs(30);
    assert_eq!(
        b.enter_keys(&keyed(&q, None, Some("host-a")), hold)
            .await
            .unwrap(),
        KeyGate::Go
    );
    match b
        .enter_keys(&keyed(&q, None, Some("host-a")), hold)
        .await
        .unwrap()
    {
        KeyGate::Wait(d) => assert!(
            d > Duration::from_millis(50) && d <= Duration::from_millis(100),
            "the next start of host-a is ~100 ms away: {d:?}"
        ),
        KeyGate::Go => panic!("10/s with burst 1 lets two starts through at once"),
    }
    assert_eq!(
        b.enter_keys(&keyed(&q, None, Some("host-b")), hold)
            .await
            .unwrap(),
        KeyGate::Go
    );
}

/// A leased job's concurrency-key holder is renewed with its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_a_lease_renews_its_key_holder() {
    let (a, b) = (broker().await, broker().await);
    let q = fresh_queue("renew");
    a.set_limits(
        &q,
        &QueueLimits {
            key_concurrency: Some(1),
            ..QueueLimits::default()
        },
    )
    .await
    .unwrap();
    a.enqueue(vec![keyed(&q, Some("k"), None)]).await.unwrap();
    let lease_for = Duration::from_millis(400);
    let l = a
        .lease(&only(&q), 1, lease_for, "a")
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(a.enter_keys(&l.job, lease_for).await.unwrap(), KeyGate::Go);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            a.extend(&[l.to_ref()], lease_for).await.unwrap(),
            vec![true]
        );
    }
    let rival = keyed(&q, Some("k"), None);
    assert!(
        matches!(
            b.enter_keys(&rival, lease_for).await.unwrap(),
            KeyGate::Wait(_)
        ),
        "600 ms on, the renewed holder still holds the key"
    );
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
    let rest = b.lease(&only(&q), 20_000, LEASE, "w").await.unwrap();
    assert_eq!(rest.len(), 10_015 - 30 + 1);
    assert!(rest.iter().all(|l| tenant_of(l) == "big"));
    assert_eq!(b.stats(&q).await.unwrap().ready, 0);
}
