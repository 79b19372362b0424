//! End to end: the real `ferry dev` binary on a free port with a temp data dir, driven over
//! HTTP, then killed with SIGKILL mid-run and restarted on the same data: nothing accepted
//! is lost.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Dev {
    child: Child,
    base: String,
}

fn start(data: &std::path::Path) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("dev")
        .env("FERRY_LISTEN", "127.0.0.1:0")
        .env("FERRY_DATA_DIR", data)
        .env("FERRY_RETRY_BASE_MS", "10")
        .env("FERRY_RETRY_CAP_MS", "50")
        .env("FERRY_LEASE_MS", "1500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry dev");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("ferry: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Dev { child, base }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
async fn thousand_jobs_then_sigkill_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    // Phase 1: 1,000 jobs of four kinds, each reaching its expected end.
    let dev = start(dir.path());
    let submitted = submit_all(&client, &dev.base, 1000, 0).await;
    let ids: HashMap<String, usize> = submitted
        .into_iter()
        .map(|(i, r)| (r.unwrap_or_else(|e| panic!("job {i} refused: {e}")), i))
        .collect();
    assert_eq!(ids.len(), 1000);
    let finals = wait_final(&client, &dev.base, &ids, Duration::from_secs(120)).await;
    for (id, job) in &finals {
        let (kind, _, _, attempts, result) = spec(ids[id]);
        assert_eq!(job["state"], "succeeded", "{kind} job {id}: {job}");
        assert_eq!(job["attempts"], attempts, "{kind} job {id}: {job}");
        assert_eq!(job["result"], result.unwrap(), "{kind} job {id}: {job}");
    }

    // Phase 2: submit while jobs run, SIGKILL mid-stream, restart on the same data dir.
    let mut dev = dev;
    let base = dev.base.clone();
    let submitting = {
        let client = client.clone();
        tokio::spawn(async move { submit_all(&client, &base, 1000, 1000).await })
    };
    // Kill once a few hundred have been accepted (the work queue is non-empty and running).
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
            >= 100
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

    let dev2 = start(dir.path());
    let finals = wait_final(&client, &dev2.base, &accepted, Duration::from_secs(120)).await;
    assert_eq!(finals.len(), accepted.len(), "0 lost");
    for (id, job) in &finals {
        assert_eq!(job["state"], "succeeded", "job {id} after restart: {job}");
    }
}
