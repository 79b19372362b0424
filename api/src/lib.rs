#![doc = include_str!("../README.md")]

mod error;
mod limits;
mod search;
mod submit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_core::broker::{Broker, CancelOutcome, EnqueueOutcome};
use ferry_core::store::{JobEvent, JobEventKind, JobRecord, Store};
use ferry_core::{IdempotencyKey, JobEnvelope, JobId, JobState, Tenant, UnixMillis};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

pub use error::ApiError;
use submit::{SubmitBatch, SubmitJob, parse_body, parse_queue};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn Store>,
    pub metrics: PrometheusHandle,
    /// Largest accepted request body in bytes.
    pub body_limit: usize,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/v1/queues/{queue}/jobs", post(submit_one))
        .route("/v1/queues/{queue}/jobs/batch", post(submit_batch))
        .route("/v1/queues/{queue}", get(queue_stats))
        .route("/v1/queues/{queue}/limits", get(get_limits).put(put_limits))
        .route("/v1/jobs", get(search_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/events", get(get_job_events))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    ferry_telemetry::http_request(&route, &method, resp.status().as_u16(), start.elapsed());
    resp
}

#[derive(Serialize)]
struct Accepted {
    id: JobId,
    state: JobState,
}

fn header_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            let s = v
                .to_str()
                .map_err(|_| ApiError::Invalid("Idempotency-Key must be printable ASCII".into()))?;
            IdempotencyKey::parse(s).map_err(|e| ApiError::Invalid(e.to_string()))
        })
        .transpose()
}

fn initial_state(job: &JobEnvelope) -> JobState {
    if job.is_scheduled(job.created_at) {
        JobState::Scheduled
    } else {
        JobState::Queued
    }
}

/// For each job with an idempotency key, the job history says first used its (tenant, key),
/// if any: keys are unique per tenant across queues and beyond the broker's dedup window. A
/// store that cannot answer is logged and skipped; the broker still deduplicates per queue.
async fn known_keys(state: &AppState, jobs: &[JobEnvelope]) -> Vec<Option<JobId>> {
    let keyed: Vec<(usize, (Option<Tenant>, IdempotencyKey))> = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| Some((i, (j.tenant.clone(), j.idempotency_key.clone()?))))
        .collect();
    let mut out = vec![None; jobs.len()];
    if keyed.is_empty() {
        return out;
    }
    let keys: Vec<_> = keyed.iter().map(|(_, k)| k.clone()).collect();
    match state.store.jobs_by_key(&keys).await {
        Ok(found) => {
            for ((i, _), id) in keyed.iter().zip(found) {
                out[*i] = id;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "idempotency keys checked by the broker only: the store did not answer");
        }
    }
    // Within one request, a key's later jobs are duplicates of its first (whether or not
    // the broker deduplicates keys itself).
    let mut first: HashMap<&(Option<Tenant>, IdempotencyKey), JobId> = HashMap::new();
    for (i, k) in &keyed {
        match first.get(k) {
            Some(id) if out[*i].is_none() => out[*i] = Some(*id),
            Some(_) => {}
            None => {
                first.insert(k, out[*i].unwrap_or(jobs[*i].id));
            }
        }
    }
    out
}

/// Enqueues, then records history for the new (non-duplicate) jobs. Returns, per job, its
/// id, state and whether it was a replay of an earlier submission.
async fn accept(
    state: &AppState,
    jobs: Vec<JobEnvelope>,
) -> Result<Vec<(Accepted, bool)>, ApiError> {
    let known = known_keys(state, &jobs).await;
    let to_broker: Vec<JobEnvelope> = jobs
        .iter()
        .zip(&known)
        .filter(|(_, k)| k.is_none())
        .map(|(j, _)| j.clone())
        .collect();
    let mut fresh_outcomes = if to_broker.is_empty() {
        Vec::new()
    } else {
        state
            .broker
            .enqueue(to_broker)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
    }
    .into_iter();
    let outcomes = known
        .into_iter()
        .map(|k| match k {
            Some(id) => Some(EnqueueOutcome {
                id,
                duplicate: true,
            }),
            None => fresh_outcomes.next(),
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::Unavailable("broker returned too few outcomes".into()))?;
    let mut events = Vec::new();
    let mut out = Vec::with_capacity(jobs.len());
    let mut fresh_by_queue = 0u64;
    for (job, o) in jobs.into_iter().zip(outcomes) {
        let mut st = initial_state(&job);
        if o.duplicate {
            if let Ok(Some(rec)) = state.store.job(o.id).await {
                st = rec.state;
            }
        } else {
            fresh_by_queue += 1;
            events.push(JobEvent {
                job: Arc::new(job),
                attempt: 0,
                fence: 0,
                at: UnixMillis::now(),
                kind: JobEventKind::Enqueued,
            });
        }
        out.push((
            Accepted {
                id: o.id,
                state: st,
            },
            o.duplicate,
        ));
    }
    if let Some(first) = events.first() {
        ferry_telemetry::jobs_enqueued(first.job.queue.as_str(), fresh_by_queue);
    }
    // The job is already safe in the broker; if history cannot be written now, the worker's
    // events create the record later (and `ferry` gives the API a `RetryingStore`, which keeps
    // these events until the store is back), so this is logged rather than failed.
    if let Err(e) = state.store.record(events).await {
        tracing::warn!(error = %e, "could not record enqueue events; history will catch up from the worker");
    }
    Ok(out)
}

async fn submit_one(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let queue = parse_queue(&queue)?;
    let req: SubmitJob = parse_body(&headers, body, state.body_limit)?;
    let key = header_key(&headers)?;
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let job = req.into_envelope(&queue, key, traceparent)?;
    let (accepted, replayed) = accept(&state, vec![job])
        .await?
        .pop()
        .ok_or_else(|| ApiError::Unavailable("broker returned no outcome".into()))?;
    let location = format!("/v1/jobs/{}", accepted.id);
    let mut resp = (StatusCode::ACCEPTED, axum::Json(accepted)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[derive(Serialize)]
struct BatchAccepted {
    jobs: Vec<BatchItem>,
}

#[derive(Serialize)]
struct BatchItem {
    id: JobId,
    state: JobState,
    replayed: bool,
}

async fn submit_batch(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let queue = parse_queue(&queue)?;
    let req: SubmitBatch = parse_body(&headers, body, state.body_limit)?;
    if req.jobs.is_empty() || req.jobs.len() > submit::MAX_BATCH {
        return Err(ApiError::Invalid(format!(
            "a batch holds 1 to {} jobs, got {}",
            submit::MAX_BATCH,
            req.jobs.len()
        )));
    }
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    // Validate every job before enqueuing any: a batch is accepted whole or not at all.
    let jobs = req
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            j.into_envelope(&queue, None, traceparent)
                .map_err(|e| match e {
                    ApiError::Invalid(d) => ApiError::Invalid(format!("jobs[{i}]: {d}")),
                    other => other,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = accept(&state, jobs).await?;
    let body = BatchAccepted {
        jobs: out
            .into_iter()
            .map(|(a, replayed)| BatchItem {
                id: a.id,
                state: a.state,
                replayed,
            })
            .collect(),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// `GET /v1/jobs/{id}` body.
#[derive(Serialize)]
struct JobView {
    id: JobId,
    queue: String,
    kind: String,
    state: JobState,
    attempts: u32,
    max_attempts: u32,
    priority: i16,
    payload: Arc<serde_json::value::RawValue>,
    result: Option<Arc<serde_json::value::RawValue>>,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    tags: Vec<String>,
    created_at: String,
    run_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
}

impl From<JobRecord> for JobView {
    fn from(r: JobRecord) -> Self {
        Self {
            id: r.id,
            queue: r.queue.to_string(),
            kind: r.kind.to_string(),
            state: r.state,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            priority: r.priority,
            payload: r.payload,
            result: r.result,
            error: r.error,
            tenant: r.tenant.map(|t| t.to_string()),
            idempotency_key: r.idempotency_key.map(|k| k.to_string()),
            tags: r.tags.iter().map(ToString::to_string).collect(),
            created_at: r.created_at.to_rfc3339(),
            run_at: r.run_at.to_rfc3339(),
            started_at: r.started_at.map(UnixMillis::to_rfc3339),
            finished_at: r.finished_at.map(UnixMillis::to_rfc3339),
        }
    }
}

/// `GET /v1/jobs`: filtered, newest first, a page at a time.
async fn search_jobs(
    State(state): State<AppState>,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = pairs.map_err(|e| ApiError::BadParameter {
        name: "query".into(),
        detail: e.body_text(),
    })?;
    let mut query = search::parse(&pairs)?;
    let page = query.limit;
    // One more than a page tells whether there is a next one.
    query.limit = page + 1;
    let mut found = state
        .store
        .search(&query)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next = (found.len() > page).then(|| {
        found.truncate(page);
        search::next_link(&pairs, found[page - 1].id)
    });
    let jobs: Vec<JobView> = found.into_iter().map(JobView::from).collect();
    Ok(axum::Json(serde_json::json!({ "jobs": jobs, "next": next })).into_response())
}

/// Longest `?wait=` a caller may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting request looks at the store again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// `30s`, `500ms` or a bare number of seconds, at most [`MAX_WAIT`].
fn parse_wait(v: &str) -> Result<Duration, ApiError> {
    let bad = |detail: &str| ApiError::BadParameter {
        name: "wait".into(),
        detail: format!("{v:?} {detail}"),
    };
    let (num, unit_ms) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else {
        (v, 1000)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| bad("is not a duration such as 30s or 500ms"))?;
    let d = Duration::from_millis(n.saturating_mul(unit_ms));
    if d > MAX_WAIT {
        return Err(bad("is longer than the 60s limit"));
    }
    Ok(d)
}

/// The job; with `?wait=30s`, holds the request until the job is final (succeeded, dead or
/// cancelled) or the wait ends, then answers with the job as it is.
async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadParameter {
        name: "query".into(),
        detail: e.body_text(),
    })?;
    if let Some(name) = params.keys().find(|k| *k != "wait") {
        return Err(ApiError::BadParameter {
            name: name.clone(),
            detail: "is not a parameter of this endpoint (only wait)".into(),
        });
    }
    let wait = params.get("wait").map(|v| parse_wait(v)).transpose()?;
    let not_found = || ApiError::NotFound(format!("no job with id {id:?}"));
    let job_id = JobId::parse(&id).map_err(|_| not_found())?;
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    loop {
        let rec = state
            .store
            .job(job_id)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .ok_or_else(not_found)?;
        if rec.state.is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(axum::Json(JobView::from(rec)).into_response());
        }
        tokio::time::sleep(WAIT_POLL.min(deadline - tokio::time::Instant::now())).await;
    }
}

/// The job's timeline: every recorded event, oldest first. 404 for an unknown job.
async fn get_job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no job with id {id:?}"));
    let job_id = JobId::parse(&id).map_err(|_| not_found())?;
    let (job, events) = tokio::try_join!(state.store.job(job_id), state.store.events(job_id))
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    job.ok_or_else(not_found)?;
    let events: Vec<_> = events
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "kind": e.kind,
                "attempt": e.attempt,
                "fence": e.fence,
                "at": e.at.to_rfc3339(),
                "worker": e.worker,
                "error": e.error,
                "result": e.result,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "id": job_id, "events": events })).into_response())
}

/// Fence for a cancel recorded by the API: above any lease's, so that it ends the job's
/// history whatever attempts came before (the broker no longer holds the job).
const API_CANCEL_FENCE: u64 = i64::MAX as u64;

/// The envelope history knows for a job: enough to record an event about it.
fn envelope_of(r: &JobRecord) -> JobEnvelope {
    let mut job = JobEnvelope::new(r.queue.clone(), r.kind.clone(), r.payload.clone());
    job.id = r.id;
    job.priority = r.priority;
    job.run_at = r.run_at;
    job.created_at = r.created_at;
    job.max_attempts = r.max_attempts;
    job.tags.clone_from(&r.tags);
    job.tenant.clone_from(&r.tenant);
    job.idempotency_key.clone_from(&r.idempotency_key);
    job
}

/// `POST /v1/jobs/{id}/cancel`: a waiting job is removed at once (`200`, `cancelled`); a
/// running one is stopped by its worker within a second (`202`, `cancelling`; poll the job);
/// a finished one is a `409`.
async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no job with id {id:?}"));
    let job_id = JobId::parse(&id).map_err(|_| not_found())?;
    let rec = state
        .store
        .job(job_id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(not_found)?;
    if rec.state.is_final() {
        return Err(ApiError::Conflict(format!(
            "job {job_id} already ended ({})",
            rec.state.as_str()
        )));
    }
    let outcome = state
        .broker
        .cancel(&rec.queue, job_id)
        .await
        .map_err(limits::broker_error)?;
    match outcome {
        CancelOutcome::Cancelled => {
            state
                .store
                .record(vec![JobEvent {
                    job: Arc::new(envelope_of(&rec)),
                    attempt: rec.attempts,
                    fence: API_CANCEL_FENCE,
                    at: UnixMillis::now(),
                    kind: JobEventKind::Cancelled,
                }])
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            Ok((
                StatusCode::OK,
                axum::Json(serde_json::json!({ "id": job_id, "state": "cancelled" })),
            )
                .into_response())
        }
        CancelOutcome::Running => {
            state
                .broker
                .announce_cancel(job_id)
                .await
                .map_err(limits::broker_error)?;
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "id": job_id, "state": "cancelling" })),
            )
                .into_response())
        }
        // History says it is not final, the broker no longer has it: its end is being
        // recorded right now.
        CancelOutcome::NotFound => Err(ApiError::Conflict(format!(
            "job {job_id} is finishing; see its state"
        ))),
    }
}

async fn queue_stats(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Response, ApiError> {
    let queue = parse_queue(&queue)?;
    let stats = state
        .broker
        .stats(&queue)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(axum::Json(serde_json::json!({ "queue": queue, "stats": stats })).into_response())
}

async fn get_limits(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Response, ApiError> {
    let queue = parse_queue(&queue)?;
    let l = state
        .broker
        .limits(&queue)
        .await
        .map_err(limits::broker_error)?;
    Ok(axum::Json(limits::LimitsBody::from_limits(&l)).into_response())
}

async fn put_limits(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let queue = parse_queue(&queue)?;
    let req: limits::LimitsBody = parse_body(&headers, body, state.body_limit)?;
    let l = req.parse()?;
    state
        .broker
        .set_limits(&queue, &l)
        .await
        .map_err(limits::broker_error)?;
    tracing::info!(queue = %queue, limits = ?l, "queue limits changed");
    Ok(axum::Json(limits::LimitsBody::from_limits(&l)).into_response())
}

async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state
        .broker
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok("ready")
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
