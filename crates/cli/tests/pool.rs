//! A pool of `ferry worker` processes on Redis, with history in Postgres: every job runs
//! exactly once; a SIGKILLed worker's in-flight jobs (and only those) run again; SIGTERM
//! drains within the grace period and a rolling restart loses nothing.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use support::{Dev, start_role};

fn redis_url() -> String {
    std::env::var("FERRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A queue of this run's own on the shared Redis.
fn fresh_queue(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &id[id.len() - 12..])
}

/// A `ferry worker` process, killed when dropped, so that a failing test leaves none behind
/// polling the shared Redis.
struct Worker(Child);

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pool {
    env: Vec<(&'static str, String)>,
    dir: tempfile::TempDir,
    api: Dev,
    db: String,
}

impl Pool {
    async fn start(queue: &str, extra: &[(&'static str, &str)]) -> Self {
        Self::start_on(redis_url(), queue, extra).await
    }

    async fn start_on(redis: String, queue: &str, extra: &[(&'static str, &str)]) -> Self {
        let db = support::fresh_database().await;
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("FERRY_BROKER_URL", redis),
            ("FERRY_DATABASE_URL", db.clone()),
            ("FERRY_QUEUES", queue.to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let api = start_role("api", dir.path(), &env);
        Self { env, dir, api, db }
    }

    fn worker(&self) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.arg("worker")
            .env("FERRY_DATA_DIR", self.dir.path())
            // Short enough that a killed worker's jobs come back within seconds, long enough
            // that heartbeats on a loaded 2-core CI machine (every test and server shares it)
            // keep live workers' leases.
            .env("FERRY_LEASE_MS", "4000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map(Worker)
            .expect("spawn ferry worker")
    }

    /// Submits `n` jobs of `kind` with `payload` in batches of 1,000.
    async fn submit(&self, queue: &str, n: usize, kind: &str, payload: &Value) {
        self.submit_as(queue, n, json!({"kind": kind, "payload": payload}))
            .await;
    }

    /// Submits `n` copies of the job `job` in batches of 1,000.
    async fn submit_as(&self, queue: &str, n: usize, job: Value) {
        let client = reqwest::Client::new();
        let mut left = n;
        while left > 0 {
            let take = left.min(1000);
            let jobs: Vec<Value> = (0..take).map(|_| job.clone()).collect();
            let resp = client
                .post(format!("{}/v1/queues/{queue}/jobs/batch", self.api.base))
                .json(&json!({ "jobs": jobs }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
            left -= take;
        }
    }

    async fn db(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.db).await.unwrap()
    }

    /// Waits until `n` jobs succeeded in history.
    async fn wait_succeeded(&self, n: i64, within: Duration) {
        let mut conn = self.db().await;
        let start = Instant::now();
        loop {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ferry_jobs WHERE state = 'succeeded'")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            if done == n {
                return;
            }
            assert!(
                start.elapsed() < within,
                "{done} of {n} jobs succeeded after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many jobs ran (were started) once, twice, ...: (runs, jobs).
    async fn runs_per_job(&self) -> Vec<(i64, i64)> {
        sqlx::query_as(
            "SELECT runs, count(*) FROM (SELECT job_id, count(*) AS runs FROM ferry_job_events \
             WHERE kind = 'started' GROUP BY job_id) t GROUP BY runs ORDER BY runs",
        )
        .fetch_all(&mut self.db().await)
        .await
        .unwrap()
    }
}

fn stop(workers: Vec<Worker>) {
    drop(workers);
}

fn sigterm(child: &Worker) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {}", child.id());
}

/// Waits for a child to exit, at most `within`; returns its exit code and when it exited.
fn wait_exit(child: &mut Worker, within: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "worker still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const JOBS: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_every_job_exactly_once() {
    let queue = fresh_queue("pool");
    let pool = Pool::start(&queue, &[("FERRY_WORKER_CONCURRENCY", "200")]).await;
    pool.submit(&queue, JOBS, "noop", &json!({})).await;
    let workers: Vec<Worker> = (0..3).map(|_| pool.worker()).collect();
    pool.wait_succeeded(JOBS as i64, Duration::from_secs(300))
        .await;
    assert_eq!(
        pool.runs_per_job().await,
        vec![(1, JOBS as i64)],
        "each job ran once"
    );
    stop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_loses_nothing_and_only_its_in_flight_jobs_run_twice() {
    // A worker holds at most CONCURRENCY running jobs plus WINDOW finished ones waiting for
    // their history write and ack: those, and only those, run again after a SIGKILL. (Without
    // the window's bound, a kill during a 4,096-event history batch re-ran 2,114 jobs.)
    const CONCURRENCY: i64 = 200;
    const WINDOW: i64 = 200;
    let queue = fresh_queue("kill");
    let pool = Pool::start(
        &queue,
        &[
            ("FERRY_WORKER_CONCURRENCY", "200"),
            ("FERRY_WORKER_SETTLE_WINDOW", "200"),
        ],
    )
    .await;
    // Jobs of a few ms each, so that every worker always has jobs in flight.
    pool.submit(&queue, JOBS, "sleep", &json!({"ms": 2})).await;
    let mut workers: Vec<Worker> = (0..3).map(|_| pool.worker()).collect();
    let mut conn = pool.db().await;
    let start = Instant::now();
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ferry_jobs WHERE state = 'succeeded'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if done >= JOBS as i64 / 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "pool too slow: {done} done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut victim = workers.remove(0);
    victim.kill().unwrap();
    victim.wait().unwrap();
    pool.wait_succeeded(JOBS as i64, Duration::from_secs(300))
        .await;
    let runs = pool.runs_per_job().await;
    let twice: i64 = runs.iter().filter(|(r, _)| *r == 2).map(|(_, n)| n).sum();
    assert!(
        runs.iter().all(|(r, _)| *r <= 2),
        "no job ran more than twice: {runs:?}"
    );
    assert!(
        twice <= CONCURRENCY + WINDOW,
        "only the killed worker's leases (at most {CONCURRENCY} running + {WINDOW} awaiting \
         settlement) ran twice: {runs:?}"
    );
    stop(workers);
}

/// SIGTERM under load: the worker stops leasing, finishes short jobs, releases the long ones
/// when the grace period ends, and exits 0 within it; a rolling restart (each worker in turn
/// replaced) loses nothing, and a released run does not count as an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_grace_and_a_rolling_restart_loses_nothing() {
    const GRACE_MS: u64 = 1500;
    let queue = fresh_queue("term");
    let pool = Pool::start(
        &queue,
        &[
            ("FERRY_WORKER_CONCURRENCY", "20"),
            ("FERRY_SHUTDOWN_GRACE_MS", "1500"),
        ],
    )
    .await;
    pool.submit(&queue, 400, "sleep", &json!({"ms": 50})).await;
    // Longer than the grace period: these are in flight at each SIGTERM and get released.
    pool.submit(&queue, 10, "sleep", &json!({"ms": 4000})).await;
    let mut workers: Vec<Worker> = (0..2).map(|_| pool.worker()).collect();
    let mut conn = pool.db().await;
    for round in 0..2 {
        // Wait until some worker runs a long job, then replace that worker (worker ids are
        // `w-<pid>-<random>`).
        let start = Instant::now();
        let pid: u32 = loop {
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT e.worker FROM ferry_jobs j JOIN ferry_job_events e \
                   ON e.job_id = j.id AND e.fence = (SELECT max(fence) FROM ferry_job_events \
                                                     WHERE job_id = j.id) \
                 WHERE j.state = 'running' AND j.payload->>'ms' = '4000' AND e.kind = 'started' \
                 LIMIT 1",
            )
            .fetch_optional(&mut conn)
            .await
            .unwrap();
            if let Some(pid) = holder.and_then(|w| w.split('-').nth(1)?.parse().ok())
                && workers.iter().any(|w| w.id() == pid)
            {
                break pid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "round {round}: no long job running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let at = workers.iter().position(|w| w.id() == pid).unwrap();
        let mut old = workers.remove(at);
        sigterm(&old);
        let (code, took) = wait_exit(&mut old, Duration::from_millis(GRACE_MS + 5000));
        assert_eq!(code, Some(0), "round {round}: a SIGTERMed worker exits 0");
        assert!(
            took >= Duration::from_millis(GRACE_MS - 200)
                && took < Duration::from_millis(GRACE_MS + 2000),
            "round {round}: exited {took:?} after SIGTERM with a {GRACE_MS} ms grace period \
             and a 4 s job running"
        );
        workers.push(pool.worker());
    }
    pool.wait_succeeded(410, Duration::from_secs(120)).await;
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ferry_jobs WHERE state <> 'succeeded' OR attempts <> 1",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(bad, 0, "every job succeeded on its first counted attempt");
    let released: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ferry_job_events WHERE kind = 'released'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(
        released > 0,
        "long jobs were in flight at a SIGTERM and were released"
    );
    stop(workers);
}

/// Jobs started per 10-second window from the first start, from history.
async fn started_in_first_10s(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM ferry_job_events, \
           (SELECT min(at) AS t0 FROM ferry_job_events WHERE kind = 'started') f \
         WHERE kind = 'started' AND at < f.t0 + interval '10 seconds'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// `ferry limits` sets 200 jobs/s (bursts of 20) on a queue; three workers (concurrency 50
/// each) start at most 210/s over 10 s between them, and not much fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rate_limit_holds_across_three_workers() {
    let queue = fresh_queue("rate");
    let pool = Pool::start(&queue, &[("FERRY_WORKER_CONCURRENCY", "50")]).await;
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["limits", &queue, "--rate", "200/s", "--burst", "20"])
        .args(["--url", &pool.api.base])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, json!({"rate": "200/1000ms", "burst": 20}));
    pool.submit(&queue, 2_500, "noop", &json!({})).await;
    let workers: Vec<Worker> = (0..3).map(|_| pool.worker()).collect();
    pool.wait_succeeded(2_500, Duration::from_secs(60)).await;
    let in_10s = started_in_first_10s(&mut pool.db().await).await;
    assert!(
        in_10s <= 2_100,
        "{in_10s} jobs started in 10 s at 200/s: more than 210/s"
    );
    assert!(
        in_10s >= 1_800,
        "only {in_10s} jobs started in 10 s: the pool idled under a 200/s limit"
    );
    stop(workers);
}

/// A key limit of 2 across three workers: a local target counts requests in flight per key
/// and never sees a third, while it does see two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_concurrency_limit_is_never_exceeded() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen {
        now: HashMap<String, u32>,
        max: HashMap<String, u32>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let target = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let key = v["key"].as_str().unwrap().to_owned();
                    {
                        let mut s = seen.lock().unwrap();
                        let n = s.now.entry(key.clone()).or_default();
                        *n += 1;
                        let n = *n;
                        let m = s.max.entry(key.clone()).or_default();
                        *m = (*m).max(n);
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    *seen.lock().unwrap().now.get_mut(&key).unwrap() -= 1;
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, target).await });

    let queue = fresh_queue("keys");
    let pool = Pool::start(&queue, &[("FERRY_WORKER_CONCURRENCY", "20")]).await;
    let client = reqwest::Client::new();
    let resp = client
        .put(format!("{}/v1/queues/{queue}/limits", pool.api.base))
        .json(&json!({"key_concurrency": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let jobs: Vec<Value> = (0..120)
        .map(|i| {
            let key = format!("customer-{}", i % 3);
            json!({"kind": "http", "payload": {"url": url, "key": key}, "concurrency_key": key})
        })
        .collect();
    let resp = client
        .post(format!("{}/v1/queues/{queue}/jobs/batch", pool.api.base))
        .json(&json!({ "jobs": jobs }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let workers: Vec<Worker> = (0..3).map(|_| pool.worker()).collect();
    pool.wait_succeeded(120, Duration::from_secs(120)).await;
    let max = seen.lock().unwrap().max.clone();
    assert_eq!(max.len(), 3);
    for (key, m) in &max {
        assert!(*m <= 2, "{key}: {m} requests in flight at once, limit 2");
    }
    assert!(
        max.values().any(|m| *m == 2),
        "the limit allowed 2 at once: {max:?}"
    );
    stop(workers);
}

/// Fairness: a tenant's 10 jobs submitted behind another tenant's 100,000 all finish before
/// 1% of that backlog has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_tenant_is_not_starved_by_a_big_backlog() {
    let queue = fresh_queue("fair");
    // The big backlog is left behind when the test ends: on a server of its own.
    let redis = support::RedisServer::scratch();
    let pool = Pool::start_on(redis.url(), &queue, &[("FERRY_WORKER_CONCURRENCY", "50")]).await;
    pool.submit_as(&queue, JOBS, json!({"kind": "noop", "tenant": "big"}))
        .await;
    pool.submit_as(&queue, 10, json!({"kind": "noop", "tenant": "small"}))
        .await;
    let worker = pool.worker();
    let mut conn = pool.db().await;
    let start = Instant::now();
    loop {
        let small: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ferry_jobs WHERE tenant = 'small' AND state = 'succeeded'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if small == 10 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "small tenant: {small} of 10 done"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let big_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ferry_jobs WHERE tenant = 'big' AND state = 'succeeded' \
         AND finished_at <= (SELECT max(finished_at) FROM ferry_jobs WHERE tenant = 'small')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        big_before < (JOBS / 100) as i64,
        "{big_before} of the big tenant's {JOBS} jobs finished before the small tenant's 10"
    );
    stop(vec![worker]);
}

/// On Kafka: a second worker joins the group mid-run (partitions move to it; the first
/// finishes the moved partitions' running jobs before giving them up), then the first
/// leaves on SIGTERM (the second takes everything). Every job succeeds, both workers ran
/// jobs, and a job runs twice at most, only around a handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_workers_join_and_leave_mid_run_and_lose_nothing() {
    const N: i64 = 6_000;
    let kafka =
        std::env::var("FERRY_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());
    let queue = fresh_queue("kpool");
    let group = format!("ferry-{queue}");
    let pool = Pool::start_on(
        kafka,
        &queue,
        &[
            ("FERRY_WORKER_CONCURRENCY", "20"),
            ("FERRY_KAFKA_GROUP", &group),
            ("FERRY_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("FERRY_SHUTDOWN_GRACE_MS", "3000"),
        ],
    )
    .await;
    pool.submit(&queue, N as usize, "sleep", &json!({"ms": 10}))
        .await;
    let mut conn = pool.db().await;
    let wait_for = async |conn: &mut sqlx::PgConnection, n: i64| {
        let start = Instant::now();
        loop {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ferry_jobs WHERE state = 'succeeded'")
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
            if done >= n {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "fewer than {n} succeeded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut first = pool.worker();
    wait_for(&mut conn, N / 6).await;
    let second = pool.worker();
    wait_for(&mut conn, N / 2).await;
    sigterm(&first);
    let (code, _) = wait_exit(&mut first, Duration::from_secs(15));
    assert_eq!(code, Some(0), "the first worker leaves cleanly");
    pool.wait_succeeded(N, Duration::from_secs(120)).await;
    let workers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT worker) FROM ferry_job_events WHERE kind = 'started'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(workers, 2, "both workers ran jobs");
    let runs = pool.runs_per_job().await;
    let twice: i64 = runs.iter().filter(|(r, _)| *r > 1).map(|(_, n)| n).sum();
    assert!(
        runs.iter().all(|(r, _)| *r <= 2) && twice <= 40,
        "a job runs twice at most, and only around a handover: {runs:?}"
    );
    stop(vec![second]);
}
