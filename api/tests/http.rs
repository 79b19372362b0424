//! The API in-process (router + oneshot) on the real embedded broker and store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ferry_api::{AppState, router};
use ferry_broker_sqlite::{SqliteBroker, SqliteBrokerConfig};
use ferry_core::QueueName;
use ferry_core::broker::Broker;
use ferry_core::store::Store;
use ferry_store::{SqliteStore, SqliteStoreConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    router: axum::Router,
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn app(body_limit: usize) -> App {
    let dir = tempfile::tempdir().unwrap();
    let broker: Arc<dyn Broker> = Arc::new(
        SqliteBroker::open(SqliteBrokerConfig::new(dir.path().join("b.db")))
            .await
            .unwrap(),
    );
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(SqliteStoreConfig::new(dir.path().join("s.db")))
            .await
            .unwrap(),
    );
    let state = AppState {
        broker: broker.clone(),
        store: store.clone(),
        metrics: ferry_telemetry::install(),
        body_limit,
    };
    App {
        router: router(state),
        broker,
        store,
        _dir: dir,
    }
}

async fn call(app: &App, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn assert_problem(app: &App, req: Request<Body>, status: StatusCode, detail_has: &str) {
    let (got, headers, body) = call(app, req).await;
    assert_eq!(got, status, "body: {body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:ferry:problem:")
    );
    assert!(body["title"].is_string());
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_has),
        "detail {detail:?} lacks {detail_has:?}"
    );
}

#[tokio::test]
async fn submit_then_get() {
    let app = app(1 << 20).await;
    let (status, headers, body) = call(
        &app,
        post("/v1/queues/emails/jobs", r#"{"kind":"email.send","payload":{"to":"a@b.c"},"max_attempts":5,"priority":2,"tags":["tenant:7"]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["state"], "queued");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(headers[header::LOCATION], format!("/v1/jobs/{id}"));

    let (status, _, job) = call(
        &app,
        Request::get(format!("/v1/jobs/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["id"], id);
    assert_eq!(job["queue"], "emails");
    assert_eq!(job["kind"], "email.send");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["max_attempts"], 5);
    assert_eq!(job["priority"], 2);
    assert_eq!(job["payload"], json!({"to": "a@b.c"}));
    assert_eq!(job["tags"], json!(["tenant:7"]));
    assert_eq!(job["result"], Value::Null);

    // The timeline so far: the API recorded the enqueue.
    let (status, _, timeline) = call(
        &app,
        Request::get(format!("/v1/jobs/{id}/events"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(timeline["id"], id);
    let events = timeline["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "enqueued");
    assert_eq!(events[0]["attempt"], 0);

    let (status, _, body) = call(
        &app,
        post(
            "/v1/queues/emails/jobs",
            r#"{"kind":"noop","delay_ms":60000}"#,
        ),
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::ACCEPTED, Some("scheduled"))
    );
    let stats = app
        .broker
        .stats(&QueueName::parse("emails").unwrap())
        .await
        .unwrap();
    assert_eq!((stats.ready, stats.scheduled), (1, 1));
}

#[tokio::test]
async fn idempotency_key_returns_the_original() {
    let app = app(1 << 20).await;
    let req = || {
        Request::post("/v1/queues/orders/jobs")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "order-42")
            .body(Body::from(r#"{"kind":"noop"}"#))
            .unwrap()
    };
    let (s1, h1, b1) = call(&app, req()).await;
    let (s2, h2, b2) = call(&app, req()).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(b1["id"], b2["id"]);
    assert!(h1.get("idempotent-replayed").is_none());
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(
        app.broker
            .stats(&QueueName::parse("orders").unwrap())
            .await
            .unwrap()
            .ready,
        1
    );
}

/// Keys are unique per tenant: another tenant's same key is a new job; the same tenant's key
/// replays the first job even from another queue, because history (not only the broker's
/// per-queue window) remembers it.
#[tokio::test]
async fn idempotency_keys_are_unique_per_tenant() {
    let app = app(1 << 20).await;
    let submit = |queue: &str, tenant: &str| {
        Request::post(format!("/v1/queues/{queue}/jobs"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "order-42")
            .body(Body::from(format!(
                r#"{{"kind":"noop","tenant":"{tenant}"}}"#
            )))
            .unwrap()
    };
    let (_, h1, acme) = call(&app, submit("orders", "acme")).await;
    let (_, h2, globex) = call(&app, submit("orders", "globex")).await;
    let (s3, h3, again) = call(&app, submit("refunds", "acme")).await;
    assert!(h1.get("idempotent-replayed").is_none());
    assert!(h2.get("idempotent-replayed").is_none());
    assert_ne!(acme["id"], globex["id"]);
    assert_eq!(s3, StatusCode::ACCEPTED);
    assert_eq!(again["id"], acme["id"]);
    assert_eq!(h3["idempotent-replayed"], "true");
    let ready = |q: &str| {
        let b = app.broker.clone();
        let q = QueueName::parse(q).unwrap();
        async move { b.stats(&q).await.unwrap().ready }
    };
    assert_eq!((ready("orders").await, ready("refunds").await), (2, 0));
    // Within one batch, a key's second job is a replay of its first.
    let (status, _, batch) = call(
        &app,
        post(
            "/v1/queues/orders/jobs/batch",
            r#"{"jobs":[{"kind":"noop","tenant":"initech","idempotency_key":"k1"},
                        {"kind":"noop","tenant":"initech","idempotency_key":"k1"}]}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(batch["jobs"][0]["id"], batch["jobs"][1]["id"]);
    assert_eq!(
        (&batch["jobs"][0]["replayed"], &batch["jobs"][1]["replayed"]),
        (&serde_json::json!(false), &serde_json::json!(true))
    );
    assert_eq!(ready("orders").await, 3);

    let (_, _, job) = call(
        &app,
        get(&format!("/v1/jobs/{}", acme["id"].as_str().unwrap())),
    )
    .await;
    assert_eq!(
        (job["tenant"].as_str(), job["idempotency_key"].as_str()),
        (Some("acme"), Some("order-42"))
    );
    let (_, _, hits) = call(&app, get("/v1/jobs?tenant=globex")).await;
    assert_eq!(hits["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(hits["jobs"][0]["id"], globex["id"]);
    assert_problem(
        &app,
        get("/v1/jobs?tenant=no%20spaces"),
        StatusCode::BAD_REQUEST,
        "tenant",
    )
    .await;
    assert_problem(
        &app,
        post(
            "/v1/queues/orders/jobs",
            r#"{"kind":"noop","tenant":"a b"}"#,
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "tenant",
    )
    .await;
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let app = app(1 << 20).await;
    let (status, _, body) = call(
        &app,
        post(
            "/v1/queues/bulk/jobs/batch",
            r#"{"jobs":[{"kind":"noop"},{"kind":"echo","payload":[1]}]}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 2);
    assert_problem(
        &app,
        post(
            "/v1/queues/bulk/jobs/batch",
            r#"{"jobs":[{"kind":"noop"},{"kind":"bad kind"}]}"#,
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "job kind",
    )
    .await;
    assert_problem(
        &app,
        post(
            "/v1/queues/bulk/jobs/batch",
            r#"{"jobs":[{"kind":"noop"},{"kind":"noop","max_attempts":0}]}"#,
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "jobs[1]: max_attempts",
    )
    .await;
    assert_problem(
        &app,
        post("/v1/queues/bulk/jobs/batch", r#"{"jobs":[]}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "1 to 10000",
    )
    .await;
    assert_eq!(
        app.broker
            .stats(&QueueName::parse("bulk").unwrap())
            .await
            .unwrap()
            .ready,
        2,
        "failed batches enqueue nothing"
    );
}

#[tokio::test]
async fn bad_input_gets_problem_json_and_writes_nothing() {
    let app = app(1024).await;
    assert_problem(
        &app,
        post("/v1/queues/q/jobs", r#"{"kind": "noop""#),
        StatusCode::BAD_REQUEST,
        "EOF",
    )
    .await;
    assert_problem(
        &app,
        post("/v1/queues/q/jobs", "not json"),
        StatusCode::BAD_REQUEST,
        "expected",
    )
    .await;
    assert_problem(
        &app,
        post("/v1/queues/q/jobs", r#"{"payload":{}}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing field `kind`",
    )
    .await;
    assert_problem(
        &app,
        post("/v1/queues/q/jobs", r#"{"kind":"has space"}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "job kind may only contain",
    )
    .await;
    assert_problem(
        &app,
        post("/v1/queues/q/jobs", r#"{"kind":"noop","max_attempts":0}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "max_attempts",
    )
    .await;
    assert_problem(
        &app,
        post("/v1/queues/q/jobs", r#"{"kind":"noop","colour":"red"}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field `colour`",
    )
    .await;
    assert_problem(
        &app,
        post("/v1/queues/Bad%20Queue/jobs", r#"{"kind":"noop"}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "queue name may only contain",
    )
    .await;
    let big = format!(r#"{{"kind":"noop","payload":"{}"}}"#, "x".repeat(2048));
    assert_problem(
        &app,
        post("/v1/queues/q/jobs", &big),
        StatusCode::PAYLOAD_TOO_LARGE,
        "1024 bytes",
    )
    .await;
    let form = Request::post("/v1/queues/q/jobs")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("kind=noop"))
        .unwrap();
    assert_problem(
        &app,
        form,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/x-www-form-urlencoded",
    )
    .await;
    let none = Request::post("/v1/queues/q/jobs")
        .body(Body::from(r#"{"kind":"noop"}"#))
        .unwrap();
    assert_problem(&app, none, StatusCode::UNSUPPORTED_MEDIA_TYPE, "got none").await;
    let bad_key = Request::post("/v1/queues/q/jobs")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "has space")
        .body(Body::from(r#"{"kind":"noop"}"#))
        .unwrap();
    assert_problem(
        &app,
        bad_key,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency key",
    )
    .await;
    let unknown = format!("/v1/jobs/{}", ferry_core::JobId::new());
    assert_problem(
        &app,
        Request::get(&unknown).body(Body::empty()).unwrap(),
        StatusCode::NOT_FOUND,
        "no job with id",
    )
    .await;
    assert_problem(
        &app,
        Request::get(format!("{unknown}/events"))
            .body(Body::empty())
            .unwrap(),
        StatusCode::NOT_FOUND,
        "no job with id",
    )
    .await;
    assert_problem(
        &app,
        Request::get("/v1/jobs/not-an-id")
            .body(Body::empty())
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not-an-id",
    )
    .await;
    assert_problem(
        &app,
        Request::get("/nope").body(Body::empty()).unwrap(),
        StatusCode::NOT_FOUND,
        "no such route",
    )
    .await;

    let s = app
        .broker
        .stats(&QueueName::parse("q").unwrap())
        .await
        .unwrap();
    assert_eq!(
        (s.ready, s.scheduled, s.leased, s.dead),
        (0, 0, 0, 0),
        "nothing half-written"
    );
}

#[tokio::test]
async fn health_ready_metrics() {
    let app = app(1 << 20).await;
    let (s, _, _) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    call(&app, post("/v1/queues/m/jobs", r#"{"kind":"noop"}"#)).await;
    let (s, h, body) = call(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = body.as_str().unwrap();
    assert!(
        text.contains("ferry_jobs_enqueued_total{queue=\"m\"}"),
        "{text}"
    );
    assert!(text.contains("ferry_http_requests_total"));
}

#[tokio::test]
async fn wait_long_polls_until_the_job_is_final_or_the_wait_ends() {
    let app = app(1 << 20).await;
    let (_, _, body) = call(&app, post("/v1/queues/lp/jobs", r#"{"kind":"noop"}"#)).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let get = |q: &str| {
        Request::get(format!("/v1/jobs/{id}{q}"))
            .body(Body::empty())
            .unwrap()
    };

    // Nothing runs the job here: the wait ends and the job comes back as it is.
    let started = std::time::Instant::now();
    let (status, _, job) = call(&app, get("?wait=300ms")).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    // The job finishes while the request waits: the answer comes then, not at the end.
    let store = app.store.clone();
    let job_id = ferry_core::JobId::parse(&id).unwrap();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let job = Arc::new(ferry_core::JobEnvelope {
            id: job_id,
            ..ferry_core::JobEnvelope::new(
                QueueName::parse("lp").unwrap(),
                ferry_core::JobKind::parse("noop").unwrap(),
                ferry_core::JobEnvelope::empty_payload(),
            )
        });
        store
            .record(vec![ferry_core::store::JobEvent {
                job,
                attempt: 1,
                fence: 1,
                at: ferry_core::UnixMillis::now(),
                kind: ferry_core::store::JobEventKind::Succeeded { result: None },
            }])
            .await
            .unwrap();
    });
    let started = std::time::Instant::now();
    let (status, _, job) = call(&app, get("?wait=30s")).await;
    finisher.await.unwrap();
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // Bad parameters: 400 problem+json naming the parameter.
    assert_problem(&app, get("?wait=soon"), StatusCode::BAD_REQUEST, "\"wait\"").await;
    assert_problem(&app, get("?wait=61s"), StatusCode::BAD_REQUEST, "60s limit").await;
    assert_problem(
        &app,
        get("?colour=red"),
        StatusCode::BAD_REQUEST,
        "\"colour\"",
    )
    .await;
}

#[tokio::test]
async fn search_filters_and_pages_with_a_next_link() {
    let app = app(1 << 20).await;
    for body in [
        r#"{"kind":"email.send","payload":{"user_id":42},"tags":["tenant:7"]}"#,
        r#"{"kind":"email.send","payload":{"user_id":7}}"#,
        r#"{"kind":"report.build","payload":{"user_id":42}}"#,
    ] {
        let (status, _, _) = call(&app, post("/v1/queues/search/jobs", body)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, _, page) = call(&app, get("/v1/jobs?queue=search&limit=2")).await;
    assert_eq!(status, StatusCode::OK);
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["kind"], "report.build", "newest first");
    let next = page["next"].as_str().unwrap().to_owned();
    assert!(
        next.contains("queue=search") && next.contains("cursor="),
        "{next}"
    );
    let (_, _, page2) = call(&app, get(&next)).await;
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page2["jobs"][0]["payload"], json!({"user_id": 42}));
    assert_eq!(page2["next"], Value::Null);

    let (_, _, hits) = call(
        &app,
        get("/v1/jobs?queue=search&kind=email.send&payload.user_id=42&state=queued"),
    )
    .await;
    assert_eq!(hits["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(hits["jobs"][0]["tags"], json!(["tenant:7"]));
    let (_, _, by_tag) = call(&app, get("/v1/jobs?tag=tenant:7&queue=search")).await;
    assert_eq!(by_tag["jobs"].as_array().unwrap().len(), 1);

    for (uri, names) in [
        ("/v1/jobs?state=bogus", "\"state\""),
        ("/v1/jobs?cursor=not-a-cursor", "\"cursor\""),
        ("/v1/jobs?limit=0", "\"limit\""),
        ("/v1/jobs?created_after=noon", "\"created_after\""),
        ("/v1/jobs?payload.a%20b=1", "\"payload.a b\""),
        ("/v1/jobs?colour=red", "\"colour\""),
        ("/v1/jobs?queue=a&queue=b", "\"queue\""),
    ] {
        assert_problem(&app, get(uri), StatusCode::BAD_REQUEST, names).await;
    }
}

/// Limits are read and replaced over HTTP (the embedded broker keeps them in its file); a
/// bad limit or an unknown field is a 422 naming it.
#[tokio::test]
async fn limits_round_trip_over_http_and_bad_ones_are_refused() {
    let app = app(1 << 20).await;
    let put = |body: &str| {
        Request::put("/v1/queues/orders/limits")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let (status, _, body) = call(&app, get("/v1/queues/orders/limits")).await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!({})));
    let (status, _, body) = call(
        &app,
        put(r#"{"rate":"200/s","burst":20,"key_concurrency":2}"#),
    )
    .await;
    let want = serde_json::json!({"rate":"200/1000ms","burst":20,"key_concurrency":2});
    assert_eq!((status, &body), (StatusCode::OK, &want));
    let (_, _, body) = call(&app, get("/v1/queues/orders/limits")).await;
    assert_eq!(body, want);
    assert_problem(
        &app,
        put(r#"{"rate":"lots"}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "rate",
    )
    .await;
    assert_problem(
        &app,
        put(r#"{"speed":"200/s"}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
        "speed",
    )
    .await;
    let (_, _, body) = call(&app, get("/v1/queues/orders/limits")).await;
    assert_eq!(
        body, want,
        "a refused change leaves the limits as they were"
    );
}
