//! The embedded store on SQLite.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_batch::Batcher;
use ferry_core::store::{
    EventRecord, JobEvent, JobEventKind, JobQuery, JobRecord, Store, StoreError, StoreResult,
};
use ferry_core::{JobId, JobKind, JobState, QueueName, UnixMillis};
use serde_json::value::RawValue;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

/// How to open the embedded store.
#[derive(Clone, Debug)]
pub struct SqliteStoreConfig {
    pub path: PathBuf,
}

/// Job history in one SQLite file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    reader: SqlitePool,
    recorder: Batcher<JobEvent, (), Arc<str>>,
}

fn unavailable(e: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

const SCHEMA: &str = r"
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
";

/// Events per INSERT statement (18 parameters each).
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
        sqlx::raw_sql(SCHEMA)
            .execute(&writer)
            .await
            .map_err(|e| unavailable(&e))?;
        let reader = opened.readers(2).await.map_err(|e| unavailable(&e))?;
        let recorder = Batcher::spawn(10_000, 4096, move |events: Vec<JobEvent>| {
            let w = writer.clone();
            async move {
                let n = events.len();
                write_events(&w, events)
                    .await
                    .map(|()| vec![(); n])
                    .map_err(|e| Arc::<str>::from(e.to_string()))
            }
        });
        Ok(Self {
            inner: Arc::new(Inner { reader, recorder }),
        })
    }
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
             attempts, max_attempts, priority, tags, idempotency_key, created_at, run_at, \
             started_at, finished_at, fence, step) ",
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

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.reader)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }
}
