//! End to end: the real `ferry dev` binary on a free port with a temp data dir, driven over
//! HTTP, then killed with SIGKILL mid-run and restarted on the same data: nothing accepted
//! is lost. The same scenario runs on the embedded broker and on a private Redis server; on
//! Redis, the server itself is also killed and restarted mid-run.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::{Dev, start_role};

fn start(data: &std::path::Path, env: &[(&str, String)]) -> Dev {
    start_role("dev", data, env)
}

/// What a job should end as: (kind, payload, max_attempts, expected attempts, expected result).
/// Jobs from 1000 on (phase 2) sleep long enough that many are in flight at the kill.
fn spec(i: usize) -> (&'static str, Value, u32, u32, Option<Value>) {
    if i >= 1000 {
        return (
            "sleep",
            json!({"ms": 100 + i % 300}),
            3,
            1,
            Some(Value::Null),
        );
    }
    match i % 4 {
        0 => ("noop", json!({}), 3, 1, Some(Value::Null)),
        1 => ("echo", json!({"i": i}), 3, 1, Some(json!({"i": i}))),
        2 => (
            "fail",
            json!({"times": 2}),
            3,
            3,
            Some(json!({"succeeded_on_attempt": 3})),
        ),
        _ => ("sleep", json!({"ms": 5 + i % 20}), 3, 1, Some(Value::Null)),
    }
}

/// Every accepted job reaches the end and succeeds: 0 lost.
async fn assert_all_succeed(
    client: &reqwest::Client,
    base: &str,
    accepted: &HashMap<String, usize>,
) {
    let finals = wait_final(client, base, accepted, Duration::from_secs(120)).await;
    assert_eq!(finals.len(), accepted.len(), "0 lost");
    for (id, job) in &finals {
        assert_eq!(job["state"], "succeeded", "job {id}: {job}");
    }
}

/// Every job succeeded with the attempts and result its `spec` promises.
fn assert_as_specified(ids: &HashMap<String, usize>, finals: &HashMap<String, Value>) {
    for (id, job) in finals {
        let (kind, _, _, attempts, result) = spec(ids[id]);
        assert_eq!(job["state"], "succeeded", "{kind} job {id}: {job}");
        assert_eq!(job["attempts"], attempts, "{kind} job {id}: {job}");
        assert_eq!(job["result"], result.unwrap(), "{kind} job {id}: {job}");
    }
}

async fn submit_all(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    offset: usize,
) -> Vec<(usize, Result<String, String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for i in offset..offset + n {
        let (kind, payload, max, _, _) = spec(i);
        let client = client.clone();
        let url = format!("{base}/v1/queues/e2e/jobs");
        let sem = sem.clone();
        tasks.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let r = client
                .post(url)
                .json(&json!({"kind": kind, "payload": payload, "max_attempts": max}))
                .send()
                .await;
            let r = match r {
                Ok(resp) if resp.status() == 202 => {
                    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
                    Ok(v["id"].as_str().unwrap().to_owned())
                }
                Ok(resp) => Err(format!("status {}", resp.status())),
                Err(e) => Err(e.to_string()),
            };
            Ok::<_, String>((i, r))
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap().unwrap());
    }
    out
}

async fn wait_final(
    client: &reqwest::Client,
    base: &str,
    ids: &HashMap<String, usize>,
    within: Duration,
) -> HashMap<String, Value> {
    let start = Instant::now();
    let mut done = HashMap::new();
    while done.len() < ids.len() {
        for id in ids.keys() {
            if done.contains_key(id) {
                continue;
            }
            let resp = client
                .get(format!("{base}/v1/jobs/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                200,
                "accepted job {id} is unknown to the API"
            );
            let job: Value = resp.json().await.unwrap();
            if matches!(
                job["state"].as_str(),
                Some("succeeded" | "dead" | "cancelled")
            ) {
                done.insert(id.clone(), job);
            }
        }
        assert!(
            start.elapsed() < within,
            "{} of {} jobs still unfinished",
            ids.len() - done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_thousand_jobs_then_sigkill_loses_nothing() {
    thousand_jobs_then_sigkill_loses_nothing(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_thousand_jobs_then_sigkill_loses_nothing() {
    let redis = support::RedisServer::start();
    thousand_jobs_then_sigkill_loses_nothing(&[("FERRY_BROKER_URL", redis.url())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_thousand_jobs_then_sigkill_loses_nothing() {
    let redis = support::RedisServer::start();
    let db = support::fresh_database().await;
    thousand_jobs_then_sigkill_loses_nothing(&[
        ("FERRY_BROKER_URL", redis.url()),
        ("FERRY_DATABASE_URL", db),
    ])
    .await;
}

/// The same on RabbitMQ (`FERRY_TEST_AMQP_URL`, default the local server): unacked
/// deliveries of the killed process come back when its connection drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_thousand_jobs_then_sigkill_loses_nothing() {
    let url = std::env::var("FERRY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    thousand_jobs_then_sigkill_loses_nothing(&[
        ("FERRY_BROKER_URL", url),
        ("FERRY_QUEUES", "e2e".into()),
    ])
    .await;
}

/// The same on Kafka (`FERRY_TEST_KAFKA_URL`, default the local tansu): the killed process's
/// uncommitted offsets go to its successor in the group once its session times out. One
/// group across runs, so each run starts where the last one committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_thousand_jobs_then_sigkill_loses_nothing() {
    let url =
        std::env::var("FERRY_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());
    thousand_jobs_then_sigkill_loses_nothing(&[
        ("FERRY_BROKER_URL", url),
        ("FERRY_QUEUES", "e2e".into()),
        ("FERRY_KAFKA_GROUP", "ferry-e2e".into()),
        ("FERRY_KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
    ])
    .await;
}

async fn thousand_jobs_then_sigkill_loses_nothing(env: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    // Phase 1: 1,000 jobs of four kinds, each reaching its expected end.
    let dev = start(dir.path(), env);
    let submitted = submit_all(&client, &dev.base, 1000, 0).await;
    let ids: HashMap<String, usize> = submitted
        .into_iter()
        .map(|(i, r)| (r.unwrap_or_else(|e| panic!("job {i} refused: {e}")), i))
        .collect();
    assert_eq!(ids.len(), 1000);
    let finals = wait_final(&client, &dev.base, &ids, Duration::from_secs(120)).await;
    assert_as_specified(&ids, &finals);
    // A job that failed twice has the whole story in its timeline.
    let (fail_id, _) = ids.iter().find(|(_, i)| **i % 4 == 2).unwrap();
    let timeline: Value = client
        .get(format!("{}/v1/jobs/{fail_id}/events", dev.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "enqueued",
            "started",
            "failed",
            "started",
            "failed",
            "started",
            "succeeded"
        ],
        "{timeline}"
    );

    // Phase 2: submit while jobs run, SIGKILL mid-stream, restart on the same data dir.
    let mut dev = dev;
    let base = dev.base.clone();
    let submitting = {
        let client = client.clone();
        tokio::spawn(async move { submit_all(&client, &base, 1000, 1000).await })
    };
    // Kill once the backlog is well built up (the work queue is non-empty and running). Up to
    // 16 of those jobs may still have their 202 on the wire when the process dies, so the
    // client has seen at least 134 accepted.
    let start_kill = Instant::now();
    loop {
        let q: Value = client
            .get(format!("{}/v1/queues/e2e", dev.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let s = &q["stats"];
        if s["ready"].as_u64().unwrap()
            + s["leased"].as_u64().unwrap()
            + s["scheduled"].as_u64().unwrap()
            >= 150
        {
            break;
        }
        assert!(
            start_kill.elapsed() < Duration::from_secs(30),
            "backlog never built up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    dev.child.kill().unwrap(); // SIGKILL
    dev.child.wait().unwrap();
    let results = submitting.await.unwrap();
    let accepted: HashMap<String, usize> = results
        .iter()
        .filter_map(|(i, r)| r.as_ref().ok().map(|id| (id.clone(), *i)))
        .collect();
    let refused = results.len() - accepted.len();
    assert!(
        accepted.len() >= 100,
        "only {} accepted before the kill",
        accepted.len()
    );
    eprintln!(
        "phase 2: {} accepted before SIGKILL, {refused} refused by the dying process",
        accepted.len()
    );

    let dev2 = start(dir.path(), env);
    assert_all_succeed(&client, &dev2.base, &accepted).await;
}

/// Redis with AOF (`appendfsync always`) is SIGKILLed and restarted while `ferry dev` takes
/// submissions and runs jobs: submissions during the outage get 503 (never a 2xx that is then
/// lost), workers back off and resume when Redis returns, and every accepted job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_loses_no_accepted_job() {
    let mut redis = support::RedisServer::start();
    let env = [("FERRY_BROKER_URL", redis.url())];
    broker_restart_loses_no_accepted_job(&env, &mut redis, "Redis").await;
}

/// The same with a private RabbitMQ node `kill -9`ed and restarted on its data: publisher
/// confirms mean a 202 only for messages RabbitMQ has on disk, and durable queues with
/// persistent messages come back with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_loses_no_accepted_job() {
    let mut node = support::RabbitNode::start();
    let env = [
        ("FERRY_BROKER_URL", node.url()),
        ("FERRY_QUEUES", "restart".to_owned()),
    ];
    broker_restart_loses_no_accepted_job(&env, &mut node, "RabbitMQ").await;
}

/// The same on Kafka: a private tansu keeping its topics in a SQLite file is `kill -9`ed
/// and restarted; a 202 comes only after every record is acknowledged (`acks=all`), and the
/// consumer group's committed offsets survive with the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restart_loses_no_accepted_job() {
    let mut tansu = support::Tansu::start_durable();
    let env = [
        ("FERRY_BROKER_URL", tansu.url()),
        ("FERRY_QUEUES", "restart".to_owned()),
    ];
    broker_restart_loses_no_accepted_job(&env, &mut tansu, "Kafka").await;
}

/// A broker a test can kill and start again on the same data.
trait Restartable {
    fn kill(&mut self);
    fn restart(&mut self);
    /// How long it stays down: long enough that submissions meanwhile are refused.
    fn outage(&self) -> Duration {
        Duration::from_millis(1500)
    }
}

impl Restartable for support::RedisServer {
    fn kill(&mut self) {
        support::RedisServer::kill(self);
    }
    fn restart(&mut self) {
        support::RedisServer::restart(self);
    }
}

impl Restartable for support::Tansu {
    fn kill(&mut self) {
        support::Tansu::kill(self);
    }
    fn restart(&mut self) {
        support::Tansu::restart(self);
    }
    /// The producer retries for 5 s before the API gives up with a 503: a shorter outage
    /// only delays the 202s.
    fn outage(&self) -> Duration {
        Duration::from_secs(7)
    }
}

impl Restartable for support::RabbitNode {
    fn kill(&mut self) {
        support::RabbitNode::kill(self);
    }
    fn restart(&mut self) {
        support::RabbitNode::restart(self);
    }
}

async fn broker_restart_loses_no_accepted_job(
    env: &[(&str, String)],
    broker: &mut impl Restartable,
    what: &str,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let dev = start(dir.path(), env);
    let client = reqwest::Client::new();

    // Eight submitters post until told to stop: noop and short sleeps, all expected to succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, stop, count, next) = (
            client.clone(),
            stop.clone(),
            accepted_count.clone(),
            next.clone(),
        );
        let url = format!("{}/v1/queues/restart/jobs", dev.base);
        submitters.spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = if i % 2 == 0 {
                    json!({"kind": "noop"})
                } else {
                    json!({"kind": "sleep", "payload": {"ms": 20}})
                };
                let r = match client.post(&url).json(&body).send().await {
                    Ok(resp) if resp.status() == 202 => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let v: Value = resp.json().await.unwrap();
                        Ok(v["id"].as_str().unwrap().to_owned())
                    }
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let text = resp.text().await.unwrap_or_default();
                        Err((status, text))
                    }
                    Err(e) => Err((0, e.to_string())),
                };
                if r.is_err() {
                    // Refused while Redis is away: don't spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                mine.push((i, r));
            }
            mine
        });
    }
    let wait_accepted = |n: usize| {
        let count = accepted_count.clone();
        async move {
            let start = Instant::now();
            while count.load(Ordering::Relaxed) < n {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "stuck below {n} accepted"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_accepted(300).await;
    broker.kill();
    let at_kill = accepted_count.load(Ordering::Relaxed);
    tokio::time::sleep(broker.outage()).await;
    broker.restart();
    // Submissions resume once Redis is back.
    wait_accepted(at_kill + 300).await;
    stop.store(true, Ordering::Relaxed);

    let mut accepted = HashMap::new();
    let mut refused = 0;
    while let Some(r) = submitters.join_next().await {
        for (i, r) in r.unwrap() {
            match r {
                Ok(id) => {
                    accepted.insert(id, i);
                }
                Err((status, body)) => {
                    refused += 1;
                    assert_eq!(status, 503, "refusals are 503, got {status}: {body}");
                    assert!(body.contains("urn:ferry:problem:"), "problem+json: {body}");
                }
            }
        }
    }
    assert!(
        refused > 0,
        "the outage refused nothing: did {what} really go away?"
    );
    eprintln!(
        "{what} restart: {} accepted, {refused} refused with 503 during the outage",
        accepted.len()
    );
    assert_all_succeed(&client, &dev.base, &accepted).await;
}

/// The split deployment on Redis: one `ferry api` and two `ferry worker` processes (sharing
/// the history store's directory). Jobs submitted to the API are run by the worker pool and
/// each reaches its expected end, retries included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_api_and_two_worker_processes() {
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = [("FERRY_BROKER_URL", redis.url())];
    let api = start_role("api", dir.path(), &env);
    let workers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .arg("worker")
                .env("FERRY_DATA_DIR", dir.path())
                .env("FERRY_BROKER_URL", redis.url())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn ferry worker")
        })
        .collect();
    let client = reqwest::Client::new();
    let submitted = submit_all(&client, &api.base, 400, 0).await;
    let ids: HashMap<String, usize> = submitted
        .into_iter()
        .map(|(i, r)| (r.unwrap_or_else(|e| panic!("job {i} refused: {e}")), i))
        .collect();
    let finals = wait_final(&client, &api.base, &ids, Duration::from_secs(120)).await;
    assert_as_specified(&ids, &finals);
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// Postgres (history) stopped for 10 s in the middle of 10,000 jobs: the API keeps accepting,
/// workers keep running jobs up to their bound of held leases, and once Postgres is back
/// every job's history is complete (enqueued, started, succeeded) and every job succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_no_history() {
    use sqlx::Connection;

    const HELD_MAX: u64 = 200 + 300;
    let pg = support::PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = start(
        dir.path(),
        &[
            ("FERRY_DATABASE_URL", pg.url()),
            ("FERRY_WORKER_CONCURRENCY", "200".into()),
            ("FERRY_WORKER_SETTLE_WINDOW", "300".into()),
        ],
    );
    let client = reqwest::Client::new();
    let batch = |n: usize| {
        let jobs: Vec<Value> = (0..n)
            .map(|i| json!({"kind": "sleep", "payload": {"ms": 1 + i % 3}}))
            .collect();
        json!({ "jobs": jobs })
    };
    let submit = |body: Value| {
        let client = client.clone();
        let url = format!("{}/v1/queues/outage/jobs/batch", dev.base);
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
            let v: Value = resp.json().await.unwrap();
            v["jobs"].as_array().unwrap().len()
        }
    };
    let leased = || {
        let client = client.clone();
        let url = format!("{}/v1/queues/outage", dev.base);
        async move {
            let q: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            q["stats"]["leased"].as_u64().unwrap()
        }
    };
    let mut accepted = 0;
    for _ in 0..5 {
        accepted += submit(batch(1000)).await;
    }
    pg.stop();
    // The API still accepts (the broker has the jobs; their history waits for Postgres).
    for _ in 0..5 {
        accepted += submit(batch(1000)).await;
    }
    assert_eq!(accepted, 10_000);
    // Workers keep running jobs while Postgres is away, until they hold concurrency +
    // settle window leases (finished jobs whose acks wait for their history); then they
    // lease no more, so that a crash during the outage re-runs at most that many.
    let start = Instant::now();
    loop {
        let held = leased().await;
        assert!(
            held <= HELD_MAX,
            "{held} leases held while postgres was down"
        );
        if held == HELD_MAX {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "workers stalled while postgres was down: {held} leases held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = start + Duration::from_secs(10);
    while Instant::now() < until {
        let held = leased().await;
        assert!(
            held <= HELD_MAX,
            "{held} leases held while postgres was down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg.restart();

    // Every job's history completes once Postgres is back.
    let mut conn = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    let start = Instant::now();
    loop {
        let (succeeded, events): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ferry_jobs WHERE state = 'succeeded'), \
                    (SELECT count(*) FROM ferry_job_events)",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if succeeded == 10_000 && events == 30_000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "after postgres came back: {succeeded} of 10000 jobs succeeded, {events} of 30000 events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let incomplete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM ferry_job_events GROUP BY job_id \
         HAVING array_agg(kind ORDER BY fence, step) <> ARRAY['enqueued','started','succeeded']) t",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        incomplete, 0,
        "every job's timeline is enqueued, started, succeeded"
    );
    drop(dev);
}

/// `ferry cancel` and `POST /v1/jobs/{id}/cancel` on `ferry dev`: a running job stops within
/// a second, a waiting one is removed at once, a finished one is a 409, an unknown one a 404
/// (and the CLI says so in one line, exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_running_and_waiting_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let submit = |body: Value| {
        let client = client.clone();
        let url = format!("{}/v1/queues/cancel/jobs", dev.base);
        async move {
            let v: Value = client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["id"].as_str().unwrap().to_owned()
        }
    };
    let state = |id: String| {
        let client = client.clone();
        let url = format!("{}/v1/jobs/{id}", dev.base);
        async move {
            let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            v["state"].as_str().unwrap().to_owned()
        }
    };
    let running = submit(json!({"kind": "sleep", "payload": {"ms": 60000}})).await;
    let waiting = submit(json!({"kind": "noop", "delay_ms": 3_600_000})).await;
    let t = Instant::now();
    while state(running.clone()).await != "running" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the job did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cli = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["cancel", id, "--url", &dev.base])
            .output()
            .unwrap()
    };
    let asked = Instant::now();
    let out = cli(&running);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["state"], "cancelling");
    while state(running.clone()).await != "cancelled" {
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "not cancelled within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let resp = client
        .post(format!("{}/v1/jobs/{waiting}/cancel", dev.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(state(waiting.clone()).await, "cancelled");
    let again = client
        .post(format!("{}/v1/jobs/{waiting}/cancel", dev.base))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.headers()["content-type"], "application/problem+json");
    let q: Value = client
        .get(format!("{}/v1/queues/cancel", dev.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        q["stats"]["scheduled"], 0,
        "the waiting job is gone from the broker"
    );

    let out = cli("01a20b41-0000-7000-8000-000000000000");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("404"), "{err}");
}

/// RabbitMQ goes away mid-run (a proxy in front of it cuts every connection for 2 s): the
/// API answers 503 problem+json for new submissions, never a 2xx it cannot keep; the worker
/// backs off and resumes; every accepted job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_outage_gets_503_and_loses_nothing() {
    let proxy = support::TcpProxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    broker_outage_gets_503_and_loses_nothing(&proxy, &[("FERRY_BROKER_URL", url)]).await;
}

/// The same on Kafka: a private tansu advertises the proxy's port, so that every connection
/// of the clients (bootstrap and broker alike) goes through the proxy and is cut with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_gets_503_and_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = support::TcpProxy::start(&format!("127.0.0.1:{port}")).await;
    let _tansu = support::Tansu::start(port, proxy.port);
    let url = format!("kafka://127.0.0.1:{}", proxy.port);
    broker_outage_gets_503_and_loses_nothing(&proxy, &[("FERRY_BROKER_URL", url)]).await;
}

async fn broker_outage_gets_503_and_loses_nothing(
    proxy: &support::TcpProxy,
    env: &[(&str, String)],
) {
    let queue = format!(
        "outage-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let dir = tempfile::tempdir().unwrap();
    let mut env = env.to_vec();
    env.push(("FERRY_QUEUES", queue.clone()));
    let dev = start(dir.path(), &env);
    let client = reqwest::Client::new();
    let submit = |n: usize| {
        let client = client.clone();
        let url = format!("{}/v1/queues/{queue}/jobs/batch", dev.base);
        async move {
            let jobs: Vec<Value> = (0..n)
                .map(|_| json!({"kind": "sleep", "payload": {"ms": 20}}))
                .collect();
            let resp = client
                .post(url)
                .json(&json!({ "jobs": jobs }))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
            let body: Value = resp.json().await.unwrap();
            (status, ctype, body)
        }
    };
    let ids_of = |body: &Value| -> Vec<String> {
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, _, body) = submit(200).await;
    assert_eq!(status, 202);
    let mut accepted = ids_of(&body);
    // Let the worker get going, then take the broker away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.down();
    let (status, ctype, body) = submit(10).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(ctype, "application/problem+json");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up();
    // Accepted again once it is back (the broker reconnects on the next call).
    let start_up = Instant::now();
    loop {
        let (status, _, body) = submit(50).await;
        if status == 202 {
            accepted.extend(ids_of(&body));
            break;
        }
        assert!(
            start_up.elapsed() < Duration::from_secs(20),
            "still refused after the broker came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: HashMap<String, usize> = accepted
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    assert_eq!(ids.len(), 250);
    assert_all_succeed(&client, &dev.base, &ids).await;
}
