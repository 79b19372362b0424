//! The built-in `http` handler against a real local HTTP server: retries on 5xx, honours
//! `429` + `Retry-After`, times out a hanging target, signs requests so receivers can verify
//! them, and stops calling a failing host while its circuit is open.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use ferry_core::store::JobRecord;
use ferry_core::{JobEnvelope, JobId, JobKind, JobState, QueueName};
use ferry_worker::{HttpOptions, Registry};
use serde_json::value::RawValue;
use support::Rig;

async fn rig(http: HttpOptions) -> Rig {
    support::rig(Registry::with_builtins_and(http), support::fast()).await
}

async fn submit(r: &Rig, url: &str, max_attempts: u32, timeout_ms: Option<u64>) -> JobId {
    let payload = serde_json::json!({ "url": url, "order": 42 }).to_string();
    let mut j = JobEnvelope::new(
        QueueName::parse("default").unwrap(),
        JobKind::parse("http").unwrap(),
        Arc::from(RawValue::from_string(payload).unwrap()),
    );
    j.max_attempts = max_attempts;
    j.timeout = timeout_ms.map(Duration::from_millis);
    let id = j.id;
    r.broker.enqueue(vec![j]).await.unwrap();
    id
}

async fn final_record(r: &Rig, id: JobId, within: Duration) -> JobRecord {
    let start = Instant::now();
    loop {
        if let Some(rec) = r.store.job(id).await.unwrap()
            && rec.state.is_final()
        {
            return rec;
        }
        assert!(start.elapsed() < within, "job {id} did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A target that answers each request with the next of `answers` (the last one repeats),
/// and remembers when each request came and its headers and body.
#[derive(Clone, Default)]
struct Target {
    seen: Arc<Mutex<Vec<(Instant, HeaderMap, String)>>>,
}

impl Target {
    async fn serve(&self, answers: Vec<(u16, Option<&'static str>, Duration)>) -> String {
        let seen = self.seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let seen = seen.clone();
                let answers = answers.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.push((Instant::now(), headers, body));
                        s.len() - 1
                    };
                    let (code, retry_after, hold) = answers[n.min(answers.len() - 1)];
                    tokio::time::sleep(hold).await;
                    let mut resp =
                        (StatusCode::from_u16(code).unwrap(), "{\"ok\":true}").into_response();
                    if let Some(v) = retry_after {
                        resp.headers_mut().insert("retry-after", v.parse().unwrap());
                    }
                    resp
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn at(&self, i: usize) -> Instant {
        self.seen.lock().unwrap()[i].0
    }
}

const NOW: Duration = Duration::ZERO;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_until_success() {
    let r = rig(HttpOptions::default()).await;
    let t = Target::default();
    let url = t
        .serve(vec![(500, None, NOW), (502, None, NOW), (200, None, NOW)])
        .await;
    let rec = final_record(&r, submit(&r, &url, 5, None).await, Duration::from_secs(10)).await;
    assert_eq!(
        (rec.state, rec.attempts, t.count()),
        (JobState::Succeeded, 3, 3)
    );
    assert_eq!(
        rec.result.unwrap().get(),
        r#"{"body":{"ok":true},"status":200}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_429_retry_after() {
    let r = rig(HttpOptions::default()).await;
    let t = Target::default();
    let url = t.serve(vec![(429, Some("1"), NOW), (200, None, NOW)]).await;
    let rec = final_record(&r, submit(&r, &url, 3, None).await, Duration::from_secs(10)).await;
    assert_eq!((rec.state, rec.attempts), (JobState::Succeeded, 2));
    let gap = t.at(1) - t.at(0);
    assert!(
        gap >= Duration::from_millis(950),
        "the retry came {gap:?} after a 429 with Retry-After: 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_times_out_and_retries_then_dead_letters() {
    let r = rig(HttpOptions::default()).await;
    let t = Target::default();
    let url = t.serve(vec![(200, None, Duration::from_secs(3600))]).await;
    let started = Instant::now();
    let rec = final_record(
        &r,
        submit(&r, &url, 2, Some(300)).await,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!((rec.state, rec.attempts, t.count()), (JobState::Dead, 2, 2));
    assert!(rec.error.unwrap().contains("timed out"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_can_verify_the_signature() {
    let r = rig(HttpOptions {
        signing_secret: Some("shared-secret".into()),
        ..HttpOptions::default()
    })
    .await;
    let t = Target::default();
    let url = t.serve(vec![(200, None, NOW)]).await;
    let rec = final_record(&r, submit(&r, &url, 1, None).await, Duration::from_secs(10)).await;
    assert_eq!(rec.state, JobState::Succeeded);
    let (_, headers, body) = t.seen.lock().unwrap()[0].clone();
    let header = headers["ferry-signature"].to_str().unwrap().to_owned();
    // What a receiver does: take t from the header, recompute over "<t>.<body>", compare.
    let ts: u64 = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(header, ferry_worker::signature("shared-secret", ts, &body));
    assert_ne!(header, ferry_worker::signature("wrong-secret", ts, &body));
    assert!(
        body.contains("\"order\":42"),
        "the payload is the body: {body}"
    );
}

/// Two failures open the circuit for a second: jobs keep coming and retrying, but the host
/// sees nothing until the cooldown ends; then one probe goes through and, on success, the
/// circuit closes and the waiting jobs get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_waits_then_probes() {
    let cooldown = Duration::from_secs(1);
    let r = rig(HttpOptions {
        breaker_failures: 2,
        breaker_cooldown: cooldown,
        ..HttpOptions::default()
    })
    .await;
    let t = Target::default();
    let url = t
        .serve(vec![(500, None, NOW), (500, None, NOW), (200, None, NOW)])
        .await;
    let first = submit(&r, &url, 10, None).await;
    let start = Instant::now();
    while t.count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the host was not called twice"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let opened = t.at(1);
    let second = submit(&r, &url, 10, None).await;
    // While open, nothing reaches the host (retries back off 10-50 ms, so without the
    // breaker it would have seen many more requests by now).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(t.count(), 2, "requests reached an open circuit's host");
    let a = final_record(&r, first, Duration::from_secs(10)).await;
    let b = final_record(&r, second, Duration::from_secs(10)).await;
    assert_eq!(
        (a.state, b.state),
        (JobState::Succeeded, JobState::Succeeded)
    );
    assert!(
        t.at(2) - opened >= cooldown - Duration::from_millis(50),
        "the probe came {:?} after the circuit opened, cooldown {cooldown:?}",
        t.at(2) - opened
    );
    assert_eq!(t.count(), 4, "one probe, then the other job: {}", t.count());
}
