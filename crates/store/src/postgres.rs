//! The Postgres store: an append-only event log (`ferry_job_events`) and its per-job
//! projection (`ferry_jobs`), both partitioned by day of job creation, written in batches.
//!
//! Both tables are range-partitioned on the job id. Ids are UUIDv7, whose first 48 bits are
//! the creation time in milliseconds, so a range of ids is a range of creation times: one
//! day's jobs and events live in that day's partitions, a lookup by id touches one partition,
//! and the primary keys (`id`; `job_id, fence, step`) are legal on partitioned tables without
//! carrying a separate timestamp column. Retention can drop whole days.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_batch::Batcher;
use ferry_core::store::{
    EventRecord, JobEvent, JobEventKind, JobQuery, JobRecord, Store, StoreError, StoreResult,
};
use ferry_core::{IdempotencyKey, JobId, JobKind, JobState, QueueName, Tenant, UnixMillis};
use serde_json::value::RawValue;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

/// How to reach Postgres.
#[derive(Clone, Debug)]
pub struct PgStoreConfig {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=...]`.
    pub url: String,
    /// Connections in the pool (recorder and readers share it).
    pub max_connections: u32,
    /// Limit for connecting at start-up and for waiting on a pooled connection.
    pub connect_timeout: Duration,
    /// Most events per recorder flush.
    pub max_batch: usize,
    /// History older than this is dropped, a day's partitions at a time, once every job in
    /// them is final (succeeded, dead, cancelled). `None` keeps everything. Default 7 days.
    pub retention: Option<Duration>,
}

impl PgStoreConfig {
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            max_batch: 10_000,
            retention: Some(Duration::from_secs(7 * 86_400)),
        }
    }
}

/// Why the store could not start. One line each, fit for an operator.
#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("not a valid postgres URL: {0}")]
    InvalidUrl(String),
    #[error("cannot use postgres at {url}: {reason}")]
    Unavailable { url: String, reason: String },
}

/// Job history in Postgres. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    recorder: Batcher<JobEvent, (), Arc<str>>,
    retention: Option<Duration>,
    maintenance: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = &self.maintenance {
            t.abort();
        }
    }
}

/// How often partitions are prepared ahead and expired ones dropped.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

fn unavailable(e: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

/// Versioned schema steps; each runs once, in order, in a transaction.
const STEPS: &[&str] = &[
    // 1: the projection and the event log, partitioned by id (= creation time), each with a
    // default partition for ids outside the days prepared in advance.
    r"
    CREATE TABLE ferry_jobs (
        id              uuid NOT NULL PRIMARY KEY,
        queue           text NOT NULL,
        kind            text NOT NULL,
        state           text NOT NULL,
        priority        smallint NOT NULL,
        payload         jsonb NOT NULL,
        result          jsonb,
        error           text,
        attempts        integer NOT NULL,
        max_attempts    integer NOT NULL,
        tenant          text,
        idempotency_key text,
        tags            text[] NOT NULL DEFAULT '{}',
        trace_id        text,
        created_at      timestamptz NOT NULL,
        scheduled_at    timestamptz NOT NULL,
        started_at      timestamptz,
        finished_at     timestamptz,
        -- ordering of updates: newer lease first, then later step within a lease
        fence           bigint NOT NULL,
        step            smallint NOT NULL
    ) PARTITION BY RANGE (id);
    CREATE TABLE ferry_jobs_default PARTITION OF ferry_jobs DEFAULT;
    CREATE INDEX ferry_jobs_queue_state ON ferry_jobs (queue, state, id);
    CREATE TABLE ferry_job_events (
        job_id  uuid NOT NULL,
        fence   bigint NOT NULL,
        step    smallint NOT NULL,
        attempt integer NOT NULL,
        kind    text NOT NULL,
        worker  text,
        error   text,
        result  jsonb,
        at      timestamptz NOT NULL,
        PRIMARY KEY (job_id, fence, step)
    ) PARTITION BY RANGE (job_id);
    CREATE TABLE ferry_job_events_default PARTITION OF ferry_job_events DEFAULT;
    ",
    // 2: indexes for GET /v1/jobs (docs/store-queries.md explains each).
    r"
    CREATE INDEX ferry_jobs_kind ON ferry_jobs (kind, id);
    CREATE INDEX ferry_jobs_state ON ferry_jobs (state, id);
    CREATE INDEX ferry_jobs_tags ON ferry_jobs USING gin (tags);
    CREATE INDEX ferry_jobs_payload ON ferry_jobs USING gin (payload jsonb_path_ops);
    ",
    // 3: tenants. A unique index on a partitioned table must hold the partition key, so
    // idempotency keys, unique per tenant across all days and queues, get their own table;
    // retention deletes a day's keys with the day.
    r"
    CREATE INDEX ferry_jobs_tenant ON ferry_jobs (tenant, id);
    CREATE TABLE ferry_idempotency_keys (
        tenant text NOT NULL,
        key    text NOT NULL,
        job_id uuid NOT NULL,
        PRIMARY KEY (tenant, key)
    );
    CREATE INDEX ferry_idempotency_keys_job ON ferry_idempotency_keys (job_id);
    ",
];

const DAY_MS: i64 = 86_400_000;

/// The smallest UUIDv7 of the millisecond `ms`.
fn uuid_floor(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// `YYYYMMDD` of the UTC day starting at `day_ms`.
fn day_name(day_ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(day_ms / 1000)
        .map(time::OffsetDateTime::date)
        .unwrap_or(time::Date::MIN);
    format!(
        "{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

impl PgStore {
    /// Connects, brings the schema up to date, prepares partitions for the coming days, and
    /// starts the batched recorder.
    ///
    /// # Errors
    /// A malformed URL, or a server that cannot be reached or migrated.
    pub async fn connect(config: PgStoreConfig) -> Result<Self, PgOpenError> {
        let shown = ferry_core::redacted_url(&config.url);
        let options: PgConnectOptions = config
            .url
            .parse()
            .map_err(|e| PgOpenError::InvalidUrl(format!("{shown}: {e}")))?;
        // Searches bind their time and id bounds; a cached generic plan cannot prune
        // partitions or pick the right index for them (measured: 340 ms instead of a few).
        let options = options.options([("plan_cache_mode", "force_custom_plan")]);
        let fail = |e: &dyn std::fmt::Display| PgOpenError::Unavailable {
            url: shown.clone(),
            reason: e.to_string(),
        };
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| fail(&e))?;
        migrate(&pool).await.map_err(|e| fail(&e))?;
        prepare_partitions(&pool, UnixMillis::now())
            .await
            .map_err(|e| fail(&e))?;
        let writer = pool.clone();
        let recorder = Batcher::spawn(config.max_batch, 4096, move |events: Vec<JobEvent>| {
            let pool = writer.clone();
            async move {
                let n = events.len();
                write_events(&pool, &events)
                    .await
                    .map(|()| vec![(); n])
                    .map_err(|e| Arc::<str>::from(format!("postgres: {e}")))
            }
        });
        let maintenance = {
            let pool = pool.clone();
            let retention = config.retention;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(MAINTENANCE_EVERY).await;
                    if let Err(e) = maintain(&pool, retention, UnixMillis::now()).await {
                        tracing::warn!(error = %e, "history maintenance failed; will try again");
                    }
                }
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                recorder,
                retention: config.retention,
                maintenance: Some(maintenance),
            }),
        })
    }

    /// Prepares the coming days' partitions and drops expired ones as if it were `now`; the
    /// store does this by itself every hour. Returns the days dropped (`YYYYMMDD`).
    ///
    /// # Errors
    /// When Postgres fails.
    pub async fn maintain(&self, now: UnixMillis) -> StoreResult<Vec<String>> {
        maintain(&self.inner.pool, self.inner.retention, now)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// The pool, for tests and maintenance tasks.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

/// Brings the schema up to date. Concurrent callers (several processes starting at once)
/// serialise on an advisory lock.
async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7250001)")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS ferry_store_schema (version integer NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: Option<i32> = sqlx::query_scalar("SELECT MAX(version) FROM ferry_store_schema")
        .fetch_one(&mut *tx)
        .await?;
    let current = usize::try_from(current.unwrap_or(0)).unwrap_or(0);
    for (i, step) in STEPS.iter().enumerate().skip(current) {
        sqlx::raw_sql(*step).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO ferry_store_schema (version) VALUES ($1)")
            .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Prepares partitions around `now` and, with a retention, drops each day whose end is older
/// than `now - retention` and whose jobs are all final. Returns the days dropped.
async fn maintain(
    pool: &PgPool,
    retention: Option<Duration>,
    now: UnixMillis,
) -> Result<Vec<String>, sqlx::Error> {
    prepare_partitions(pool, now).await?;
    let Some(retention) = retention else {
        return Ok(Vec::new());
    };
    let cutoff = now.0 - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let days: Vec<String> = sqlx::query_scalar(
        "SELECT substr(c.relname, 13) FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'ferry_jobs' AND c.relname ~ '^ferry_jobs_p[0-9]{8}$' ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = Vec::new();
    for day in days {
        let Some(start) = day_start(&day) else {
            continue;
        };
        if start + DAY_MS > cutoff {
            continue;
        }
        let mut tx = pool.begin().await?;
        // Built only from a name Postgres listed and checked as 8 digits.
        let waiting: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM ferry_jobs_p{day} \
             WHERE state NOT IN ('succeeded', 'dead', 'cancelled'))"
        )))
        .fetch_one(&mut *tx)
        .await?;
        if waiting {
            tracing::info!(
                day,
                "history past retention kept: some of its jobs are not final yet"
            );
            continue;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE ferry_jobs_p{day}; DROP TABLE IF EXISTS ferry_job_events_p{day}"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM ferry_idempotency_keys WHERE job_id >= $1::uuid AND job_id < $2::uuid",
        )
        .bind(uuid_floor(start))
        .bind(uuid_floor(start + DAY_MS))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(day, "history past retention dropped");
        dropped.push(day);
    }
    Ok(dropped)
}

/// The start (epoch ms) of the UTC day named `YYYYMMDD`.
fn day_start(name: &str) -> Option<i64> {
    let n: u32 = name.parse().ok()?;
    let month = time::Month::try_from(u8::try_from(n / 100 % 100).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(n / 10_000).ok()?,
        month,
        u8::try_from(n % 100).ok()?,
    )
    .ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Creates the daily partitions of both tables from yesterday to a week ahead (idempotent).
async fn prepare_partitions(pool: &PgPool, now: UnixMillis) -> Result<(), sqlx::Error> {
    let today = now.0 - now.0.rem_euclid(DAY_MS);
    for d in -1..=7 {
        let from = today + d * DAY_MS;
        let (lo, hi, name) = (uuid_floor(from), uuid_floor(from + DAY_MS), day_name(from));
        for table in ["ferry_jobs", "ferry_job_events"] {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {table}_p{name} PARTITION OF {table} \
                 FOR VALUES FROM ('{lo}') TO ('{hi}')"
            );
            // Built only from computed dates and bounds, never from input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// The trace id from a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
fn trace_id(job: &ferry_core::JobEnvelope) -> Option<String> {
    let tp = job.headers.get("traceparent")?;
    tp.split('-').nth(1).map(str::to_owned)
}

/// One job's row as a batch of its events leaves it: the events applied in (fence, step)
/// order with the same rules the upsert applies against the stored row.
struct Folded<'a> {
    last: &'a JobEvent,
    error: Option<String>,
    started_at: Option<i64>,
}

fn fold(events: &[JobEvent]) -> Vec<Folded<'_>> {
    let mut by_job: HashMap<JobId, Vec<&JobEvent>> = HashMap::new();
    for e in events {
        by_job.entry(e.job.id).or_default().push(e);
    }
    by_job
        .into_values()
        .map(|mut evs| {
            evs.sort_by_key(|e| (e.fence, e.kind.step()));
            let mut error = None;
            let mut started_at = None;
            for e in &evs {
                match &e.kind {
                    // A start keeps the previous attempt's error visible until the job ends.
                    JobEventKind::Started { .. } => started_at = Some(e.at.0),
                    JobEventKind::Failed { error: m, .. } | JobEventKind::Dead { error: m } => {
                        error = Some(m.clone());
                    }
                    _ => error = None,
                }
            }
            Folded {
                last: evs[evs.len() - 1],
                error,
                started_at,
            }
        })
        .collect()
}

/// Records a batch in one transaction: the events (a repeat is ignored by its key) and the
/// projection (changed only by a newer fence, or a later step under the same fence).
async fn write_events(pool: &PgPool, events: &[JobEvent]) -> Result<(), sqlx::Error> {
    let mut ev_cols: EventCols = EventCols::default();
    for e in events {
        ev_cols.push(e);
    }
    let mut job_cols = JobCols::default();
    for f in fold(events) {
        job_cols.push(&f);
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO ferry_job_events (job_id, fence, step, attempt, kind, worker, error, result, at) \
         SELECT job_id, fence, step, attempt, kind, worker, error, result::jsonb, \
                to_timestamp(at_ms / 1000.0) \
         FROM UNNEST($1::uuid[], $2::int8[], $3::int2[], $4::int4[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::int8[]) \
              AS t(job_id, fence, step, attempt, kind, worker, error, result, at_ms) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&ev_cols.job_id)
    .bind(&ev_cols.fence)
    .bind(&ev_cols.step)
    .bind(&ev_cols.attempt)
    .bind(&ev_cols.kind)
    .bind(&ev_cols.worker)
    .bind(&ev_cols.error)
    .bind(&ev_cols.result)
    .bind(&ev_cols.at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ferry_jobs (id, queue, kind, state, priority, payload, result, error, \
             attempts, max_attempts, idempotency_key, tags, trace_id, created_at, scheduled_at, \
             started_at, finished_at, fence, step, tenant) \
         SELECT id, queue, kind, state, priority, payload::jsonb, result::jsonb, error, \
                attempts, max_attempts, idem, \
                ARRAY(SELECT jsonb_array_elements_text(tags::jsonb)), trace_id, \
                to_timestamp(created_ms / 1000.0), to_timestamp(scheduled_ms / 1000.0), \
                to_timestamp(started_ms / 1000.0), to_timestamp(finished_ms / 1000.0), fence, step, \
                tenant \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[], \
                     $7::text[], $8::text[], $9::int4[], $10::int4[], $11::text[], $12::text[], \
                     $13::text[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], \
                     $18::int8[], $19::int2[], $20::text[]) \
              AS t(id, queue, kind, state, priority, payload, result, error, attempts, \
                   max_attempts, idem, tags, trace_id, created_ms, scheduled_ms, started_ms, \
                   finished_ms, fence, step, tenant) \
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, result = EXCLUDED.result, \
             error = CASE WHEN EXCLUDED.step = 1 \
                          THEN COALESCE(EXCLUDED.error, ferry_jobs.error) \
                          ELSE EXCLUDED.error END, \
             attempts = EXCLUDED.attempts, scheduled_at = EXCLUDED.scheduled_at, \
             started_at = COALESCE(EXCLUDED.started_at, ferry_jobs.started_at), \
             finished_at = EXCLUDED.finished_at, fence = EXCLUDED.fence, step = EXCLUDED.step \
         WHERE (EXCLUDED.fence, EXCLUDED.step) > (ferry_jobs.fence, ferry_jobs.step)",
    )
    .bind(&job_cols.id)
    .bind(&job_cols.queue)
    .bind(&job_cols.kind)
    .bind(&job_cols.state)
    .bind(&job_cols.priority)
    .bind(&job_cols.payload)
    .bind(&job_cols.result)
    .bind(&job_cols.error)
    .bind(&job_cols.attempts)
    .bind(&job_cols.max_attempts)
    .bind(&job_cols.idem)
    .bind(&job_cols.tags)
    .bind(&job_cols.trace_id)
    .bind(&job_cols.created)
    .bind(&job_cols.scheduled)
    .bind(&job_cols.started)
    .bind(&job_cols.finished)
    .bind(&job_cols.fence)
    .bind(&job_cols.step)
    .bind(&job_cols.tenant)
    .execute(&mut *tx)
    .await?;
    if !job_cols.key_job.is_empty() {
        // The first job recorded with a (tenant, key) keeps it.
        sqlx::query(
            "INSERT INTO ferry_idempotency_keys (tenant, key, job_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(&job_cols.key_tenant)
        .bind(&job_cols.key)
        .bind(&job_cols.key_job)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

fn fence_i64(fence: u64) -> i64 {
    i64::try_from(fence).unwrap_or(i64::MAX)
}

fn attempt_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Column arrays for the event insert.
#[derive(Default)]
struct EventCols {
    job_id: Vec<uuid::Uuid>,
    fence: Vec<i64>,
    step: Vec<i16>,
    attempt: Vec<i32>,
    kind: Vec<&'static str>,
    worker: Vec<Option<String>>,
    error: Vec<Option<String>>,
    result: Vec<Option<String>>,
    at: Vec<i64>,
}

impl EventCols {
    fn push(&mut self, e: &JobEvent) {
        let (worker, error, result) = e.kind.details();
        self.job_id.push(e.job.id.as_uuid());
        self.fence.push(fence_i64(e.fence));
        self.step.push(e.kind.step());
        self.attempt.push(attempt_i32(e.attempt));
        self.kind.push(e.kind.name());
        self.worker.push(worker.map(str::to_owned));
        self.error.push(error.map(str::to_owned));
        self.result.push(result.map(|r| r.get().to_owned()));
        self.at.push(e.at.0);
    }
}

/// Column arrays for the projection upsert.
#[derive(Default)]
struct JobCols {
    id: Vec<uuid::Uuid>,
    queue: Vec<String>,
    kind: Vec<String>,
    state: Vec<&'static str>,
    priority: Vec<i16>,
    payload: Vec<String>,
    result: Vec<Option<String>>,
    error: Vec<Option<String>>,
    attempts: Vec<i32>,
    max_attempts: Vec<i32>,
    idem: Vec<Option<String>>,
    tags: Vec<String>,
    trace_id: Vec<Option<String>>,
    created: Vec<i64>,
    scheduled: Vec<i64>,
    started: Vec<Option<i64>>,
    finished: Vec<Option<i64>>,
    fence: Vec<i64>,
    step: Vec<i16>,
    tenant: Vec<Option<String>>,
    /// (tenant or '', key, job) for each job with an idempotency key.
    key_tenant: Vec<String>,
    key: Vec<String>,
    key_job: Vec<uuid::Uuid>,
}

impl JobCols {
    fn push(&mut self, f: &Folded<'_>) {
        let e = f.last;
        let job = &e.job;
        let (result, scheduled, finished) = match &e.kind {
            JobEventKind::Succeeded { result } => (
                Some(result.as_ref().map_or("null", |r| r.get()).to_owned()),
                job.run_at.0,
                Some(e.at.0),
            ),
            JobEventKind::Failed { retry_at, .. } => (None, retry_at.0, None),
            JobEventKind::Released { at } => (None, at.0, None),
            JobEventKind::Dead { .. } | JobEventKind::Cancelled => {
                (None, job.run_at.0, Some(e.at.0))
            }
            JobEventKind::Enqueued | JobEventKind::Started { .. } => (None, job.run_at.0, None),
        };
        self.id.push(job.id.as_uuid());
        self.queue.push(job.queue.as_str().to_owned());
        self.kind.push(job.kind.as_str().to_owned());
        self.state.push(e.kind.state_after(job).as_str());
        self.priority.push(job.priority);
        self.payload.push(job.payload.get().to_owned());
        self.result.push(result);
        self.error.push(f.error.clone());
        self.attempts.push(attempt_i32(e.attempt));
        self.max_attempts.push(attempt_i32(job.max_attempts));
        self.idem
            .push(job.idempotency_key.as_ref().map(|k| k.as_str().to_owned()));
        self.tags
            .push(serde_json::to_string(&job.tags).unwrap_or_else(|_| "[]".into()));
        self.trace_id.push(trace_id(job));
        self.created.push(job.created_at.0);
        self.scheduled.push(scheduled);
        self.started.push(f.started_at);
        self.finished.push(finished);
        self.fence.push(fence_i64(e.fence));
        self.step.push(e.kind.step());
        self.tenant
            .push(job.tenant.as_ref().map(|t| t.as_str().to_owned()));
        if let Some(k) = &job.idempotency_key {
            self.key_tenant
                .push(job.tenant.as_ref().map_or("", |t| t.as_str()).to_owned());
            self.key.push(k.as_str().to_owned());
            self.key_job.push(job.id.as_uuid());
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// The columns `decode` reads.
macro_rules! job_columns {
    () => {
        "id, queue, kind, state, priority, payload::text AS payload, \
         result::text AS result, error, attempts, max_attempts, tags, tenant, idempotency_key, \
         (EXTRACT(EPOCH FROM created_at) * 1000)::int8 AS created_ms, \
         (EXTRACT(EPOCH FROM scheduled_at) * 1000)::int8 AS scheduled_ms, \
         (EXTRACT(EPOCH FROM started_at) * 1000)::int8 AS started_ms, \
         (EXTRACT(EPOCH FROM finished_at) * 1000)::int8 AS finished_ms"
    };
}

const SELECT_JOB: &str = concat!("SELECT ", job_columns!(), " FROM ferry_jobs WHERE id = $1");

/// `{"a":{"b":v}}` from (`["a","b"]`, v), merged for every pair: one containment document.
fn containment(pairs: &[(Vec<String>, serde_json::Value)]) -> serde_json::Value {
    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut doc = serde_json::json!({});
    for (path, value) in pairs {
        let nested = path.iter().rev().fold(
            value.clone(),
            |inner, key| serde_json::json!({ key: inner }),
        );
        merge(&mut doc, nested);
    }
    doc
}

fn decode(row: &PgRow) -> StoreResult<JobRecord> {
    let get = |e: sqlx::Error| corrupt("column", e);
    let raw = |s: String| {
        RawValue::from_string(s)
            .map(Arc::from)
            .map_err(|e| corrupt("json", e))
    };
    let state: String = row.try_get("state").map_err(get)?;
    let tags: Vec<String> = row.try_get("tags").map_err(get)?;
    Ok(JobRecord {
        id: JobId::from_uuid(row.try_get("id").map_err(get)?),
        queue: QueueName::parse(&row.try_get::<String, _>("queue").map_err(get)?)
            .map_err(|e| corrupt("queue", e))?,
        kind: JobKind::parse(&row.try_get::<String, _>("kind").map_err(get)?)
            .map_err(|e| corrupt("kind", e))?,
        state: JobState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        payload: raw(row.try_get("payload").map_err(get)?)?,
        result: row
            .try_get::<Option<String>, _>("result")
            .map_err(get)?
            .map(raw)
            .transpose()?,
        error: row.try_get("error").map_err(get)?,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts").map_err(get)?).unwrap_or(0),
        max_attempts: u32::try_from(row.try_get::<i32, _>("max_attempts").map_err(get)?)
            .unwrap_or(0),
        priority: row.try_get("priority").map_err(get)?,
        tenant: row
            .try_get::<Option<String>, _>("tenant")
            .map_err(get)?
            .map(|t| Tenant::parse(&t).map_err(|e| corrupt("tenant", e)))
            .transpose()?,
        idempotency_key: row
            .try_get::<Option<String>, _>("idempotency_key")
            .map_err(get)?
            .map(|k| IdempotencyKey::parse(&k).map_err(|e| corrupt("idempotency key", e)))
            .transpose()?,
        tags: tags
            .iter()
            .map(|t| ferry_core::Tag::parse(t).map_err(|e| corrupt("tag", e)))
            .collect::<StoreResult<_>>()?,
        created_at: UnixMillis(row.try_get("created_ms").map_err(get)?),
        run_at: UnixMillis(row.try_get("scheduled_ms").map_err(get)?),
        started_at: row
            .try_get::<Option<i64>, _>("started_ms")
            .map_err(get)?
            .map(UnixMillis),
        finished_at: row
            .try_get::<Option<i64>, _>("finished_ms")
            .map_err(get)?
            .map(UnixMillis),
    })
}

#[async_trait]
impl Store for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn record(&self, events: Vec<JobEvent>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.inner
            .recorder
            .submit(events)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        let row = sqlx::query(SELECT_JOB)
            .bind(id.as_uuid())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| unavailable(&e))?;
        row.as_ref().map(decode).transpose()
    }

    async fn events(&self, id: JobId) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT kind, attempt, fence, (EXTRACT(EPOCH FROM at) * 1000)::int8 AS at_ms, \
                    worker, error, result::text AS result \
             FROM ferry_job_events WHERE job_id = $1 ORDER BY fence, step",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| unavailable(&e))?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt("column", e);
                Ok(EventRecord {
                    kind: row.try_get("kind").map_err(get)?,
                    attempt: u32::try_from(row.try_get::<i32, _>("attempt").map_err(get)?)
                        .unwrap_or(0),
                    fence: u64::try_from(row.try_get::<i64, _>("fence").map_err(get)?).unwrap_or(0),
                    at: UnixMillis(row.try_get("at_ms").map_err(get)?),
                    worker: row.try_get("worker").map_err(get)?,
                    error: row.try_get("error").map_err(get)?,
                    result: row
                        .try_get::<Option<String>, _>("result")
                        .map_err(get)?
                        .map(|r| RawValue::from_string(r).map(Arc::from))
                        .transpose()
                        .map_err(|e| corrupt("json", e))?,
                })
            })
            .collect()
    }

    async fn search(&self, query: &JobQuery) -> StoreResult<Vec<JobRecord>> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(concat!(
            "SELECT ",
            job_columns!(),
            " FROM ferry_jobs WHERE TRUE"
        ));
        if let Some(v) = &query.queue {
            q.push(" AND queue = ").push_bind(v.as_str().to_owned());
        }
        if let Some(v) = query.state {
            q.push(" AND state = ").push_bind(v.as_str());
        }
        if let Some(v) = &query.kind {
            q.push(" AND kind = ").push_bind(v.as_str().to_owned());
        }
        if let Some(v) = &query.tenant {
            q.push(" AND tenant = ").push_bind(v.as_str().to_owned());
        }
        if let Some(v) = &query.tag {
            q.push(" AND tags @> ARRAY[")
                .push_bind(v.as_str().to_owned())
                .push("]::text[]");
        }
        // A job's id encodes its creation time: time bounds are id bounds, which prune
        // partitions and walk the primary key in the order of the answer.
        if let Some(from) = query.created_from {
            q.push(" AND id >= ")
                .push_bind(JobId::first_at(from).as_uuid());
        }
        if let Some(to) = query.created_to {
            q.push(" AND id < ")
                .push_bind(JobId::first_at(to).as_uuid());
        }
        if !query.payload.is_empty() {
            q.push(" AND payload @> ")
                .push_bind(containment(&query.payload).to_string())
                .push("::jsonb");
        }
        if let Some(before) = query.before {
            q.push(" AND id < ").push_bind(before.as_uuid());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = q
            .build()
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| unavailable(&e))?;
        rows.iter().map(decode).collect()
    }

    async fn jobs_by_key(
        &self,
        keys: &[(Option<Tenant>, IdempotencyKey)],
    ) -> StoreResult<Vec<Option<JobId>>> {
        let tenants: Vec<&str> = keys
            .iter()
            .map(|(t, _)| t.as_ref().map_or("", |t| t.as_str()))
            .collect();
        let names: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        let ids: Vec<Option<uuid::Uuid>> = sqlx::query_scalar(
            "SELECT k.job_id FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS q(tenant, key, n) \
             LEFT JOIN ferry_idempotency_keys k USING (tenant, key) ORDER BY q.n",
        )
        .bind(&tenants)
        .bind(&names)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| unavailable(&e))?;
        Ok(ids.into_iter().map(|id| id.map(JobId::from_uuid)).collect())
    }

    async fn refresh_statistics(&self) -> StoreResult<()> {
        sqlx::raw_sql("ANALYZE ferry_jobs; ANALYZE ferry_job_events")
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_bounds_are_the_first_uuidv7_of_a_day() {
        // 2026-11-23T00:00:00Z
        let day = 1_795_392_000_000;
        assert_eq!(day_name(day), "20261123");
        assert_eq!(day_start("20261123"), Some(day));
        let v7 = |ms: i64| {
            let ms = u64::try_from(ms).unwrap();
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                ms / 1000,
                u32::try_from(ms % 1000).unwrap() * 1_000_000,
            ))
        };
        let lo = uuid::Uuid::parse_str(&uuid_floor(day)).unwrap();
        let hi = uuid::Uuid::parse_str(&uuid_floor(day + DAY_MS)).unwrap();
        assert!(v7(day) >= lo && v7(day) < hi, "the day's first ms is in");
        assert!(v7(day + DAY_MS - 1) < hi, "its last ms is in");
        assert!(v7(day - 1) < lo, "the day before is out");
        assert!(v7(day + DAY_MS) >= hi, "the day after is out");
    }
}
