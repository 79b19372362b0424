//! The embedded store on SQLite.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_batch::Batcher;
use ferry_core::store::{
    EventRecord, JobEvent, JobEventKind, JobQuery, JobRecord, Store, StoreError, StoreResult,
};
use ferry_core::{IdempotencyKey, JobId, JobKind, JobState, QueueName, Tenant, UnixMillis};
use serde_json::value::RawValue;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

/// How to open the embedded store.
#[derive(Clone, Debug)]
pub struct SqliteStoreConfig {
    pub path: PathBuf,
    /// Final jobs that finished longer ago than this are deleted with their events, hourly.
    /// `None` keeps everything. Default 7 days.
    pub retention: Option<Duration>,
}

impl SqliteStoreConfig {
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            retention: Some(Duration::from_secs(7 * 86_400)),
        }
    }
}

/// Job history in one SQLite file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    reader: SqlitePool,
    writer: SqlitePool,
    recorder: Batcher<JobEvent, (), Arc<str>>,
    retention: Option<Duration>,
    maintenance: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.maintenance.abort();
    }
}

/// How often expired history is deleted.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
/// Jobs deleted per transaction, so the single writer is never held for long.
const DELETE_CHUNK: i64 = 5_000;

fn unavailable(e: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// Versioned schema steps (`PRAGMA user_version` counts those applied); each runs once, in
/// order, in a transaction. Step 1 is written to be a no-op on files made before versioning.
const STEPS: &[&str] = &[
    r"
CREATE TABLE IF NOT EXISTS ferry_job_events (
    job_id  BLOB NOT NULL,
    fence   INTEGER NOT NULL,
    step    INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    worker  TEXT,
    error   TEXT,
    result  TEXT,
    at      INTEGER NOT NULL,
    PRIMARY KEY (job_id, fence, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ferry_job_records (
    id              BLOB PRIMARY KEY NOT NULL,
    queue           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    result          TEXT,
    error           TEXT,
    attempts        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    priority        INTEGER NOT NULL,
    tags            TEXT,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    run_at          INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    -- ordering of updates: newer lease first, then later step within a lease
    fence           INTEGER NOT NULL,
    step            INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ferry_job_records_queue_state ON ferry_job_records (queue, state, id);
",
    // 2: tenants, idempotency keys unique per tenant, and an index for retention.
    r"
ALTER TABLE ferry_job_records ADD COLUMN tenant TEXT;
CREATE INDEX ferry_job_records_tenant ON ferry_job_records (tenant, id);
CREATE INDEX ferry_job_records_finished ON ferry_job_records (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE ferry_idempotency_keys (
    tenant TEXT NOT NULL,
    key    TEXT NOT NULL,
    job_id BLOB NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX ferry_idempotency_keys_job ON ferry_idempotency_keys (job_id);
",
];

/// Events per INSERT statement (19 parameters each).
const ROWS_PER_INSERT: usize = 400;

impl SqliteStore {
    /// Opens (creating if needed) the store and its schema.
    ///
    /// # Errors
    /// When the file cannot be opened or the schema created.
    pub async fn open(config: SqliteStoreConfig) -> StoreResult<Self> {
        let opened = ferry_sqlite::open_writer(&config.path, "store", &[])
            .await
            .map_err(StoreError::Unavailable)?;
        let writer = opened.writer.clone();
        migrate(&writer).await.map_err(|e| unavailable(&e))?;
        let reader = opened.readers(2).await.map_err(|e| unavailable(&e))?;
        let w = writer.clone();
        let recorder = Batcher::spawn(10_000, 4096, move |events: Vec<JobEvent>| {
            let w = w.clone();
            async move {
                let n = events.len();
                write_events(&w, events)
                    .await
                    .map(|()| vec![(); n])
                    .map_err(|e| Arc::<str>::from(e.to_string()))
            }
        });
        let maintenance = {
            let writer = writer.clone();
            let retention = config.retention;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(MAINTENANCE_EVERY).await;
                    if let Err(e) = expire(&writer, retention, UnixMillis::now()).await {
                        tracing::warn!(error = %e, "history maintenance failed; will try again");
                    }
                }
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                reader,
                writer,
                recorder,
                retention: config.retention,
                maintenance,
            }),
        })
    }

    /// Deletes expired history as if it were `now`; the store does this by itself every
    /// hour. Returns how many jobs were deleted.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn maintain(&self, now: UnixMillis) -> StoreResult<u64> {
        expire(&self.inner.writer, self.inner.retention, now)
            .await
            .map_err(|e| unavailable(&e))
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let current: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(pool)
        .await?;
    for (i, step) in STEPS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(*step).execute(&mut *tx).await?;
        // A number we count, never input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {}",
            i + 1
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Deletes final jobs (with their events and keys) that finished before `now - retention`,
/// a chunk per transaction. Returns the number of jobs deleted.
async fn expire(
    pool: &SqlitePool,
    retention: Option<Duration>,
    now: UnixMillis,
) -> Result<u64, sqlx::Error> {
    let Some(retention) = retention else {
        return Ok(0);
    };
    let cutoff = now.0 - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    // The same subquery in each statement: the records go last, so it selects the same jobs
    // each time (this pool is the only writer).
    let expired = "SELECT id FROM ferry_job_records WHERE finished_at < ?1 \
                   AND state IN ('succeeded', 'dead', 'cancelled') LIMIT ?2";
    let mut deleted = 0;
    loop {
        let mut tx = pool.begin().await?;
        let mut jobs = 0;
        for target in [
            "ferry_job_events WHERE job_id",
            "ferry_idempotency_keys WHERE job_id",
            "ferry_job_records WHERE id",
        ] {
            jobs = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {target} IN ({expired})"
            )))
            .bind(cutoff)
            .bind(DELETE_CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        deleted += jobs;
        if jobs < DELETE_CHUNK.unsigned_abs() {
            break;
        }
    }
    if deleted > 0 {
        tracing::info!(jobs = deleted, "history past retention deleted");
    }
    Ok(deleted)
}

async fn write_events(pool: &SqlitePool, events: Vec<JobEvent>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The log: a repeated event hits its key and is ignored.
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO ferry_job_events \
             (job_id, fence, step, attempt, kind, worker, error, result, at) ",
        );
        q.push_values(chunk, |mut b, ev| {
            let (worker, error, result) = ev.kind.details();
            b.push_bind(ev.job.id.as_uuid().as_bytes().to_vec())
                .push_bind(i64::try_from(ev.fence).unwrap_or(i64::MAX))
                .push_bind(i64::from(ev.kind.step()))
                .push_bind(i64::from(ev.attempt))
                .push_bind(ev.kind.name())
                .push_bind(worker.map(str::to_owned))
                .push_bind(error.map(str::to_owned))
                .push_bind(result.map(|r| r.get().to_owned()))
                .push_bind(ev.at.0);
        });
        q.build().execute(&mut *tx).await?;
    }
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO ferry_job_records (id, queue, kind, state, payload, result, error, \
             attempts, max_attempts, priority, tags, idempotency_key, tenant, created_at, \
             run_at, started_at, finished_at, fence, step) ",
        );
        q.push_values(chunk, |mut b, ev| {
            let job = &ev.job;
            let state = ev.kind.state_after(job);
            let (result, error, run_at, started, finished) = match &ev.kind {
                JobEventKind::Enqueued => (None, None, job.run_at.0, None, None),
                JobEventKind::Started { .. } => (None, None, job.run_at.0, Some(ev.at.0), None),
                JobEventKind::Succeeded { result } => (
                    Some(result.as_ref().map_or("null", |r| r.get()).to_owned()),
                    None,
                    job.run_at.0,
                    None,
                    Some(ev.at.0),
                ),
                JobEventKind::Failed { error, retry_at } => {
                    (None, Some(error.clone()), retry_at.0, None, None)
                }
                JobEventKind::Dead { error } => {
                    (None, Some(error.clone()), job.run_at.0, None, Some(ev.at.0))
                }
                JobEventKind::Cancelled => (None, None, job.run_at.0, None, Some(ev.at.0)),
                JobEventKind::Released { at } => (None, None, at.0, None, None),
            };
            b.push_bind(job.id.as_uuid().as_bytes().to_vec())
                .push_bind(job.queue.as_str().to_owned())
                .push_bind(job.kind.as_str().to_owned())
                .push_bind(state.as_str())
                .push_bind(job.payload.get().to_owned())
                .push_bind(result)
                .push_bind(error)
                .push_bind(i64::from(ev.attempt))
                .push_bind(i64::from(job.max_attempts))
                .push_bind(i64::from(job.priority))
                .push_bind(if job.tags.is_empty() {
                    None
                } else {
                    serde_json::to_string(&job.tags).ok()
                })
                .push_bind(job.idempotency_key.as_ref().map(|k| k.as_str().to_owned()))
                .push_bind(job.tenant.as_ref().map(|t| t.as_str().to_owned()))
                .push_bind(job.created_at.0)
                .push_bind(run_at)
                .push_bind(started)
                .push_bind(finished)
                .push_bind(i64::try_from(ev.fence).unwrap_or(i64::MAX))
                .push_bind(i64::from(ev.kind.step()));
        });
        // A started event keeps the previous attempt's error visible until the job succeeds.
        q.push(
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
             result = excluded.result, \
             error = CASE WHEN excluded.step = 1 THEN error ELSE excluded.error END, \
             attempts = excluded.attempts, run_at = excluded.run_at, \
             started_at = COALESCE(excluded.started_at, started_at), \
             finished_at = excluded.finished_at, fence = excluded.fence, step = excluded.step \
             WHERE excluded.fence > fence OR (excluded.fence = fence AND excluded.step > step)",
        );
        q.build().execute(&mut *tx).await?;
    }
    // The first job recorded with a (tenant, key) keeps it.
    let keyed: Vec<&JobEvent> = events
        .iter()
        .filter(|e| e.job.idempotency_key.is_some())
        .collect();
    for chunk in keyed.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO ferry_idempotency_keys (tenant, key, job_id) ",
        );
        q.push_values(chunk, |mut b, ev| {
            b.push_bind(ev.job.tenant.as_ref().map_or("", |t| t.as_str()).to_owned())
                .push_bind(
                    ev.job
                        .idempotency_key
                        .as_ref()
                        .map_or("", |k| k.as_str())
                        .to_owned(),
                )
                .push_bind(ev.job.id.as_uuid().as_bytes().to_vec());
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn decode(row: &SqliteRow) -> StoreResult<JobRecord> {
    let get = |e: sqlx::Error| corrupt("column", e);
    let id: Vec<u8> = row.try_get("id").map_err(get)?;
    let raw = |s: String| {
        RawValue::from_string(s)
            .map(Arc::from)
            .map_err(|e| corrupt("json", e))
    };
    let state: String = row.try_get("state").map_err(get)?;
    let tags: Option<String> = row.try_get("tags").map_err(get)?;
    let opt_ms = |c: &str| -> StoreResult<Option<UnixMillis>> {
        Ok(row
            .try_get::<Option<i64>, _>(c)
            .map_err(get)?
            .map(UnixMillis))
    };
    Ok(JobRecord {
        id: uuid::Uuid::from_slice(&id)
            .map(JobId::from_uuid)
            .map_err(|e| corrupt("id", e))?,
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
        attempts: u32::try_from(row.try_get::<i64, _>("attempts").map_err(get)?).unwrap_or(0),
        max_attempts: u32::try_from(row.try_get::<i64, _>("max_attempts").map_err(get)?)
            .unwrap_or(0),
        priority: i16::try_from(row.try_get::<i64, _>("priority").map_err(get)?).unwrap_or(0),
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
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| corrupt("tags", e))?
            .unwrap_or_default(),
        created_at: UnixMillis(row.try_get("created_at").map_err(get)?),
        run_at: UnixMillis(row.try_get("run_at").map_err(get)?),
        started_at: opt_ms("started_at")?,
        finished_at: opt_ms("finished_at")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
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
        let row = sqlx::query("SELECT * FROM ferry_job_records WHERE id = ?")
            .bind(id.as_uuid().as_bytes().to_vec())
            .fetch_optional(&self.inner.reader)
            .await
            .map_err(|e| unavailable(&e))?;
        row.as_ref().map(decode).transpose()
    }

    async fn search(&self, query: &JobQuery) -> StoreResult<Vec<JobRecord>> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT * FROM ferry_job_records WHERE 1 = 1");
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
            q.push(" AND EXISTS (SELECT 1 FROM json_each(ferry_job_records.tags) WHERE value = ")
                .push_bind(v.as_str().to_owned())
                .push(")");
        }
        // A job's id encodes its creation time: time bounds are id bounds.
        if let Some(from) = query.created_from {
            q.push(" AND id >= ")
                .push_bind(JobId::first_at(from).as_uuid().as_bytes().to_vec());
        }
        if let Some(to) = query.created_to {
            q.push(" AND id < ")
                .push_bind(JobId::first_at(to).as_uuid().as_bytes().to_vec());
        }
        for (path, value) in &query.payload {
            // Keys are plain names (the API checks): `$."a"."b"` needs no further escaping.
            let json_path: String = std::iter::once("$".to_owned())
                .chain(path.iter().map(|k| format!(".\"{k}\"")))
                .collect();
            q.push(" AND json_extract(payload, ")
                .push_bind(json_path)
                .push(") IS json_extract(")
                .push_bind(value.to_string())
                .push(", '$')");
        }
        if let Some(before) = query.before {
            q.push(" AND id < ")
                .push_bind(before.as_uuid().as_bytes().to_vec());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = q
            .build()
            .fetch_all(&self.inner.reader)
            .await
            .map_err(|e| unavailable(&e))?;
        rows.iter().map(decode).collect()
    }

    async fn events(&self, id: JobId) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT kind, attempt, fence, at, worker, error, result FROM ferry_job_events \
             WHERE job_id = ? ORDER BY fence, step",
        )
        .bind(id.as_uuid().as_bytes().to_vec())
        .fetch_all(&self.inner.reader)
        .await
        .map_err(|e| unavailable(&e))?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt("column", e);
                Ok(EventRecord {
                    kind: row.try_get("kind").map_err(get)?,
                    attempt: u32::try_from(row.try_get::<i64, _>("attempt").map_err(get)?)
                        .unwrap_or(0),
                    fence: u64::try_from(row.try_get::<i64, _>("fence").map_err(get)?).unwrap_or(0),
                    at: UnixMillis(row.try_get("at").map_err(get)?),
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

    async fn jobs_by_key(
        &self,
        keys: &[(Option<Tenant>, IdempotencyKey)],
    ) -> StoreResult<Vec<Option<JobId>>> {
        let mut conn = self
            .inner
            .reader
            .acquire()
            .await
            .map_err(|e| unavailable(&e))?;
        let mut out = Vec::with_capacity(keys.len());
        for (tenant, key) in keys {
            let id: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT job_id FROM ferry_idempotency_keys WHERE tenant = ? AND key = ?",
            )
            .bind(tenant.as_ref().map_or("", |t| t.as_str()))
            .bind(key.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| unavailable(&e))?;
            out.push(
                id.map(|b| uuid::Uuid::from_slice(&b).map(JobId::from_uuid))
                    .transpose()
                    .map_err(|e| corrupt("id", e))?,
            );
        }
        Ok(out)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.reader)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }
}
