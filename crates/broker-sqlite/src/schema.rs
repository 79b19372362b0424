//! Versioned schema. Each step runs once, in order, inside a transaction; the version lives in
//! `ferry_broker_schema`.

use ferry_core::broker::{BrokerError, BrokerResult};
use sqlx::SqlitePool;

use crate::unavailable;

const STEPS: &[&str] = &[
    // 1: jobs, idempotency keys, paused queues.
    r"
    CREATE TABLE ferry_jobs (
        id              BLOB PRIMARY KEY NOT NULL,
        queue           TEXT NOT NULL,
        kind            TEXT NOT NULL,
        payload         TEXT NOT NULL,
        priority        INTEGER NOT NULL,
        run_at          INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        max_attempts    INTEGER NOT NULL,
        timeout_ms      INTEGER,
        idempotency_key TEXT,
        tags            TEXT,
        headers         TEXT,
        -- 0 waiting (ready or scheduled by run_at), 1 leased, 2 dead
        state           INTEGER NOT NULL DEFAULT 0,
        fence           INTEGER NOT NULL DEFAULT 0,
        lease_until     INTEGER,
        worker          TEXT,
        last_error      TEXT
    );
    CREATE INDEX ferry_jobs_due ON ferry_jobs (state, priority DESC, run_at);
    CREATE INDEX ferry_jobs_queue_due ON ferry_jobs (queue, state, priority DESC, run_at);
    CREATE INDEX ferry_jobs_leases ON ferry_jobs (lease_until) WHERE state = 1;
    CREATE TABLE ferry_idempotency (
        queue      TEXT NOT NULL,
        key        TEXT NOT NULL,
        job_id     BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (queue, key)
    );
    CREATE INDEX ferry_idempotency_age ON ferry_idempotency (created_at);
    CREATE TABLE ferry_paused (queue TEXT PRIMARY KEY NOT NULL);
    ",
    // 2: the job's tenant (idempotency keys are scoped by it: `ferry_idempotency.key` holds
    // the tenant and the key) and flow keys.
    r"
    ALTER TABLE ferry_jobs ADD COLUMN tenant TEXT;
    ALTER TABLE ferry_jobs ADD COLUMN concurrency_key TEXT;
    ALTER TABLE ferry_jobs ADD COLUMN rate_key TEXT;
    ",
    // 3: queue limits (with the queue rate's GCRA arrival time), per-key holders and rates.
    r"
    CREATE TABLE ferry_limits (
        queue              TEXT PRIMARY KEY NOT NULL,
        rate_count         INTEGER,
        rate_period_ms     INTEGER,
        rate_burst         INTEGER,
        concurrency        INTEGER,
        key_rate_count     INTEGER,
        key_rate_period_ms INTEGER,
        key_rate_burst     INTEGER,
        key_concurrency    INTEGER,
        tat                REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE ferry_key_holders (
        queue  TEXT NOT NULL,
        key    TEXT NOT NULL,
        job_id BLOB NOT NULL,
        until  INTEGER NOT NULL,
        PRIMARY KEY (queue, key, job_id)
    );
    CREATE INDEX ferry_key_holders_job ON ferry_key_holders (job_id);
    CREATE TABLE ferry_key_rates (
        queue TEXT NOT NULL,
        key   TEXT NOT NULL,
        tat   REAL NOT NULL,
        PRIMARY KEY (queue, key)
    );
    ",
];

/// Brings the schema up to date.
///
/// # Errors
/// When a step fails; that step is rolled back.
pub async fn migrate(pool: &SqlitePool) -> BrokerResult<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS ferry_broker_schema (version INTEGER NOT NULL)")
        .execute(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM ferry_broker_schema")
        .fetch_one(pool)
        .await
        .map_err(|e| unavailable(&e))?;
    let current = usize::try_from(current.unwrap_or(0)).unwrap_or(0);
    if current > STEPS.len() {
        return Err(BrokerError::Rejected(format!(
            "broker database is at schema version {current}, newer than this ferry ({})",
            STEPS.len()
        )));
    }
    for (i, step) in STEPS.iter().enumerate().skip(current) {
        let mut tx = pool.begin().await.map_err(|e| unavailable(&e))?;
        sqlx::raw_sql(*step)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable(&e))?;
        sqlx::query("INSERT INTO ferry_broker_schema (version) VALUES (?)")
            .bind(i64::try_from(i + 1).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable(&e))?;
        tx.commit().await.map_err(|e| unavailable(&e))?;
    }
    Ok(())
}
