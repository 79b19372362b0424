//! The worker runtime end to end on the embedded broker and store (real SQLite files).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_core::store::{JobEvent, JobEventKind, JobRecord};
use ferry_core::{JobEnvelope, JobId, JobKind, JobState, QueueName, UnixMillis};
use ferry_worker::{JobContext, JobError, Registry, WorkerOptions};
use serde_json::value::RawValue;
use support::{Rig, fast, rig};

async fn submit(r: &Rig, kind: &str, payload: &str, max_attempts: u32) -> JobId {
    let mut j = JobEnvelope::new(
        QueueName::parse("default").unwrap(),
        JobKind::parse(kind).unwrap(),
        Arc::from(RawValue::from_string(payload.into()).unwrap()),
    );
    j.max_attempts = max_attempts;
    let id = j.id;
    r.store
        .record(vec![JobEvent {
            job: Arc::new(j.clone()),
            attempt: 0,
            fence: 0,
            at: UnixMillis::now(),
            kind: JobEventKind::Enqueued,
        }])
        .await
        .unwrap();
    r.broker.enqueue(vec![j]).await.unwrap();
    id
}

async fn final_record(r: &Rig, id: JobId) -> JobRecord {
    let start = Instant::now();
    loop {
        if let Some(rec) = r.store.job(id).await.unwrap()
            && rec.state.is_final()
        {
            return rec;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "job {id} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_reach_their_terminal_states() {
    let r = rig(Registry::with_builtins(), fast()).await;
    let noop = submit(&r, "noop", "{}", 3).await;
    let echo = submit(&r, "echo", r#"{"hello":"world"}"#, 3).await;
    let fail2 = submit(&r, "fail", r#"{"times":2}"#, 3).await;
    let fail_forever = submit(&r, "fail", r#"{"times":5}"#, 2).await;
    let bad_payload = submit(&r, "sleep", r#"{"seconds":1}"#, 3).await;
    let unknown = submit(&r, "no.such.kind", "{}", 2).await;

    let rec = final_record(&r, noop).await;
    assert_eq!((rec.state, rec.attempts), (JobState::Succeeded, 1));
    let rec = final_record(&r, echo).await;
    assert_eq!(rec.result.unwrap().get(), r#"{"hello":"world"}"#);
    let rec = final_record(&r, fail2).await;
    assert_eq!((rec.state, rec.attempts), (JobState::Succeeded, 3));
    assert_eq!(rec.result.unwrap().get(), r#"{"succeeded_on_attempt":3}"#);
    let rec = final_record(&r, fail_forever).await;
    assert_eq!(
        (rec.state, rec.attempts),
        (JobState::Dead, 2),
        "max_attempts=2 means exactly 2 runs"
    );
    assert!(rec.error.unwrap().contains("failing on purpose (attempt 2"));
    let rec = final_record(&r, bad_payload).await;
    assert_eq!(
        (rec.state, rec.attempts),
        (JobState::Dead, 1),
        "a payload that does not fit is not retried"
    );
    assert!(rec.error.unwrap().contains("missing field `ms`"));
    let rec = final_record(&r, unknown).await;
    assert_eq!(rec.state, JobState::Dead);
    assert!(
        rec.error
            .unwrap()
            .contains("no handler for kind 'no.such.kind'")
    );

    let q = QueueName::parse("default").unwrap();
    let stats = r.broker.stats(&q).await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 3));
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_panics_and_typed_handlers() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut reg = Registry::with_builtins();
    #[derive(serde::Deserialize)]
    struct Add {
        a: i64,
        b: i64,
    }
    reg.register("add", |_ctx: JobContext, p: Add| async move {
        Ok::<_, JobError>(p.a + p.b)
    });
    reg.register("boom", move |_ctx: JobContext, _: serde_json::Value| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if true {
                panic!("kaboom");
            }
            Ok::<_, JobError>(())
        }
    });
    let r = rig(
        reg,
        WorkerOptions {
            default_timeout: Duration::from_millis(100),
            ..fast()
        },
    )
    .await;
    let add = submit(&r, "add", r#"{"a":2,"b":40}"#, 1).await;
    let slow = submit(&r, "sleep", r#"{"ms":5000}"#, 2).await;
    let boom = submit(&r, "boom", "{}", 2).await;
    assert_eq!(final_record(&r, add).await.result.unwrap().get(), "42");
    let rec = final_record(&r, slow).await;
    assert_eq!((rec.state, rec.attempts), (JobState::Dead, 2));
    assert_eq!(rec.error.as_deref(), Some("timed out after 100 ms"));
    let rec = final_record(&r, boom).await;
    assert_eq!(rec.state, JobState::Dead);
    assert_eq!(rec.error.as_deref(), Some("handler panicked: kaboom"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a panicking handler still gets exactly max_attempts runs"
    );
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_handler_retries_5xx_and_succeeds_on_2xx() {
    use axum::routing::post;
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move |body: String| {
                let n = h.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "try later".to_owned(),
                        )
                    } else {
                        (axum::http::StatusCode::OK, body)
                    }
                }
            }),
        )
        .route(
            "/reject",
            post(|| async { axum::http::StatusCode::BAD_REQUEST }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let r = rig(Registry::with_builtins(), fast()).await;
    let ok = submit(
        &r,
        "http",
        &format!(r#"{{"url":"http://{addr}/hook","x":1}}"#),
        3,
    )
    .await;
    let rejected = submit(
        &r,
        "http",
        &format!(r#"{{"url":"http://{addr}/reject"}}"#),
        3,
    )
    .await;
    let rec = final_record(&r, ok).await;
    assert_eq!((rec.state, rec.attempts), (JobState::Succeeded, 2));
    let result: serde_json::Value = serde_json::from_str(rec.result.unwrap().get()).unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["body"]["x"], 1, "the target received the payload");
    let rec = final_record(&r, rejected).await;
    assert_eq!(
        (rec.state, rec.attempts),
        (JobState::Dead, 1),
        "4xx is not retried"
    );
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

/// Shutdown: no new leases; a job that ends within the grace period finishes and is
/// recorded; one still running when it ends is stopped and released (back in the queue,
/// the attempt not counted, `released` in its timeline), and `run` returns Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_within_grace_then_releases() {
    let started = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::with_builtins();
    let s = started.clone();
    registry.register("slow", move |_ctx: JobContext, ms: u64| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, JobError>(())
        }
    });
    let r = rig(
        registry,
        WorkerOptions {
            shutdown_grace: Duration::from_millis(500),
            ..fast()
        },
    )
    .await;
    let short = submit(&r, "slow", "100", 3).await;
    let long = submit(&r, "slow", "60000", 3).await;
    let t = Instant::now();
    while started.load(Ordering::SeqCst) < 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "jobs did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "returned {took:?} after shutdown, grace 500 ms"
    );
    let rec = r.store.job(short).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempts), (JobState::Succeeded, 1));
    let rec = r.store.job(long).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempts), (JobState::Queued, 0));
    let kinds: Vec<String> = r
        .store
        .events(long)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["enqueued", "started", "released"]);
    // Back in the broker, due now, its attempt not spent.
    let again = r
        .broker
        .lease(
            &ferry_core::broker::QueueSelector::All,
            10,
            Duration::from_secs(30),
            "next",
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].job.id, again[0].job.attempt), (long, 1));
}

/// Cancelling a running job stops it within a second and ends it `cancelled` (not retried);
/// a handler can cancel its own job too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_cancelled_within_a_second() {
    let mut registry = Registry::with_builtins();
    registry.register("give-up", |_ctx: JobContext, _: serde_json::Value| async {
        Err::<(), _>(JobError::Cancel("the order was withdrawn".into()))
    });
    let r = rig(registry, fast()).await;
    let long = submit(&r, "sleep", r#"{"ms":60000}"#, 3).await;
    let own = submit(&r, "give-up", "{}", 3).await;
    let t = Instant::now();
    while r.store.job(long).await.unwrap().unwrap().state != JobState::Running {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the job did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    r.broker.announce_cancel(long).await.unwrap();
    let rec = final_record(&r, long).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!((rec.state, rec.attempts), (JobState::Cancelled, 1));
    let rec = final_record(&r, own).await;
    assert_eq!((rec.state, rec.attempts), (JobState::Cancelled, 1));
    let stats = r
        .broker
        .stats(&QueueName::parse("default").unwrap())
        .await
        .unwrap();
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 0));
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

/// While history cannot be written, finished jobs wait for their settlement; the worker
/// then stops leasing at concurrency + settle window (what a crash would run again), and
/// catches up once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_leases_stop_at_concurrency_plus_settle_window() {
    use sqlx::Connection;
    const CONCURRENCY: usize = 4;
    const WINDOW: usize = 6;
    let r = rig(
        Registry::with_builtins(),
        WorkerOptions {
            concurrency: CONCURRENCY,
            settle_window: WINDOW,
            ..fast()
        },
    )
    .await;
    let queue = QueueName::parse("default").unwrap();
    // A second writer holds the store's write lock, as a stalled database would.
    let mut blocker =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", r.store_path().display()))
            .await
            .unwrap();
    // History first (as the API does), then the store stalls, then the broker gets the jobs.
    let jobs: Vec<JobEnvelope> = (0..100)
        .map(|_| {
            JobEnvelope::new(
                queue.clone(),
                JobKind::parse("noop").unwrap(),
                Arc::from(RawValue::from_string("{}".into()).unwrap()),
            )
        })
        .collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    r.store
        .record(
            jobs.iter()
                .map(|j| JobEvent {
                    job: Arc::new(j.clone()),
                    attempt: 0,
                    fence: 0,
                    at: UnixMillis::now(),
                    kind: JobEventKind::Enqueued,
                })
                .collect(),
        )
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut blocker)
        .await
        .unwrap();
    r.broker.enqueue(jobs).await.unwrap();
    let t = Instant::now();
    loop {
        let leased = r.broker.stats(&queue).await.unwrap().leased;
        assert!(
            leased <= (CONCURRENCY + WINDOW) as u64,
            "{leased} leases held"
        );
        if leased == (CONCURRENCY + WINDOW) as u64 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{leased} leases held: {:?}",
            r.broker.stats(&queue).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The bound holds for as long as the store is stalled, not just when first reached.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(300) {
        let s = r.broker.stats(&queue).await.unwrap();
        assert_eq!(
            (s.leased, s.ready),
            (
                (CONCURRENCY + WINDOW) as u64,
                100 - (CONCURRENCY + WINDOW) as u64
            )
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    for id in ids {
        assert_eq!(final_record(&r, id).await.state, JobState::Succeeded);
    }
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}
