//! The Postgres store against a real server (`FERRY_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`; `scripts/test` starts one
//! when none answers). Each test gets a database of its own, dropped when it passes.

mod cases;

use std::sync::Arc;

use ferry_core::store::{JobEvent, JobEventKind, Store};
use ferry_core::{JobEnvelope, JobKind, QueueName, Tag, UnixMillis};
use ferry_store::{PgOpenError, PgStore, PgStoreConfig};
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("FERRY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
}

/// `admin_url` with its database replaced by `db`.
fn url_for(db: &str) -> String {
    let url = admin_url();
    let (base, query) = url
        .split_once('?')
        .map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
    let root = &base[..base.rfind('/').expect("a database in the URL")];
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// A fresh database and a store connected to it.
async fn fresh() -> (PgStore, String) {
    let name = format!("ferry_t_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("the test postgres answers");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let store = PgStore::connect(PgStoreConfig::new(url_for(&name)))
        .await
        .unwrap();
    (store, name)
}

async fn drop_db(store: PgStore, name: &str) {
    store.pool().close().await;
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn records_a_life_and_ignores_late_and_repeated_events() {
    let (s, db) = fresh().await;
    cases::records_a_life_and_ignores_late_and_repeated_events(Arc::new(s.clone())).await;
    drop_db(s, &db).await;
}

#[tokio::test]
async fn a_worker_event_creates_the_record_when_the_enqueue_event_was_lost() {
    let (s, db) = fresh().await;
    cases::a_worker_event_creates_the_record_when_the_enqueue_event_was_lost(Arc::new(s.clone()))
        .await;
    drop_db(s, &db).await;
}

#[tokio::test]
async fn the_timeline_lists_each_event_once_in_order() {
    let (s, db) = fresh().await;
    cases::the_timeline_lists_each_event_once_in_order(Arc::new(s.clone())).await;
    drop_db(s, &db).await;
}

#[tokio::test]
async fn idempotency_keys_are_unique_per_tenant() {
    let (s, db) = fresh().await;
    cases::idempotency_keys_are_unique_per_tenant(Arc::new(s.clone())).await;
    drop_db(s, &db).await;
}

/// The event log keeps each event once, however often it is delivered, and the projection
/// carries the envelope's tags and trace id.
#[tokio::test]
async fn a_repeated_event_is_logged_once() {
    let (s, db) = fresh().await;
    let mut job = JobEnvelope::new(
        QueueName::parse("q").unwrap(),
        JobKind::parse("noop").unwrap(),
        JobEnvelope::empty_payload(),
    );
    job.tags = vec![Tag::parse("tenant:7").unwrap()];
    job.headers.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    let job = Arc::new(job);
    let ev = |fence, kind| JobEvent {
        job: job.clone(),
        attempt: u32::try_from(fence).unwrap(),
        fence,
        at: UnixMillis::now(),
        kind,
    };
    let enqueued = ev(0, JobEventKind::Enqueued);
    let started = ev(1, JobEventKind::Started { worker: "w".into() });
    // Twice in one batch, and again in a later one.
    s.record(vec![enqueued.clone(), started.clone(), started.clone()])
        .await
        .unwrap();
    s.record(vec![enqueued, started]).await.unwrap();
    let (events, kinds): (i64, Vec<String>) = (
        sqlx::query_scalar("SELECT count(*) FROM ferry_job_events WHERE job_id = $1")
            .bind(job.id.as_uuid())
            .fetch_one(s.pool())
            .await
            .unwrap(),
        sqlx::query_scalar(
            "SELECT kind FROM ferry_job_events WHERE job_id = $1 ORDER BY fence, step",
        )
        .bind(job.id.as_uuid())
        .fetch_all(s.pool())
        .await
        .unwrap(),
    );
    assert_eq!(events, 2);
    assert_eq!(kinds, vec!["enqueued", "started"]);
    let (tags, trace): (Vec<String>, Option<String>) =
        sqlx::query_as("SELECT tags, trace_id FROM ferry_jobs WHERE id = $1")
            .bind(job.id.as_uuid())
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(tags, vec!["tenant:7"]);
    assert_eq!(trace.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    let r = s.job(job.id).await.unwrap().unwrap();
    assert_eq!(r.tags[0].as_str(), "tenant:7");
    assert_eq!(r.created_at, job.created_at, "millisecond times round-trip");
    drop_db(s, &db).await;
}

/// Today's jobs land in today's partition, not the default one.
#[tokio::test]
async fn jobs_land_in_their_day_partition() {
    let (s, db) = fresh().await;
    let job = Arc::new(JobEnvelope::new(
        QueueName::parse("q").unwrap(),
        JobKind::parse("noop").unwrap(),
        JobEnvelope::empty_payload(),
    ));
    s.record(vec![JobEvent {
        job: job.clone(),
        attempt: 0,
        fence: 0,
        at: UnixMillis::now(),
        kind: JobEventKind::Enqueued,
    }])
    .await
    .unwrap();
    let part: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM ferry_jobs WHERE id = $1")
            .bind(job.id.as_uuid())
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert!(part.starts_with("ferry_jobs_p"), "landed in {part}");
    drop_db(s, &db).await;
}

#[tokio::test]
async fn bad_urls_are_one_clear_error() {
    let e = PgStore::connect(PgStoreConfig::new("postgres://127.0.0.1:notaport/x"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, PgOpenError::InvalidUrl(_)), "{e}");
    let mut cfg = PgStoreConfig::new("postgres://ferry:s3cret@127.0.0.1:1/x?sslmode=disable");
    cfg.connect_timeout = std::time::Duration::from_secs(2);
    let e = PgStore::connect(cfg).await.err().unwrap().to_string();
    assert!(
        e.starts_with("cannot use postgres at postgres://ferry:***@127.0.0.1:1/x"),
        "{e}"
    );
    assert!(!e.contains("s3cret") && !e.contains('\n'), "{e}");
}

#[tokio::test]
async fn search_filters_and_pages_newest_first() {
    let (s, db) = fresh().await;
    cases::search_filters_and_pages_newest_first(Arc::new(s.clone())).await;
    drop_db(s, &db).await;
}

/// Retention drops a day's partitions once the day is older than the retention and every job
/// in it is final; a day with a job still waiting is kept until that job ends.
#[tokio::test]
async fn retention_drops_whole_days_of_final_jobs() {
    let (s, db) = fresh().await;
    const DAY: i64 = 86_400_000;
    let now = UnixMillis::now();
    let today = now.0 - now.0.rem_euclid(DAY);
    let job_at = |ms: i64| {
        let ms = u64::try_from(ms).unwrap();
        let mut j = JobEnvelope::new(
            QueueName::parse("q").unwrap(),
            JobKind::parse("noop").unwrap(),
            JobEnvelope::empty_payload(),
        );
        j.id = ferry_core::JobId::from_uuid(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            0,
        )));
        Arc::new(j)
    };
    let ev = |job: &Arc<JobEnvelope>, fence: u64, kind| JobEvent {
        job: job.clone(),
        attempt: u32::try_from(fence).unwrap(),
        fence,
        at: now,
        kind,
    };
    let mut done = job_at(today + 1000);
    Arc::make_mut(&mut done).idempotency_key =
        Some(ferry_core::IdempotencyKey::parse("order-1").unwrap());
    let waiting = job_at(today + DAY + 1000);
    s.record(vec![
        ev(&done, 0, JobEventKind::Enqueued),
        ev(&done, 1, JobEventKind::Started { worker: "w".into() }),
        ev(&done, 1, JobEventKind::Succeeded { result: None }),
        ev(&waiting, 0, JobEventKind::Enqueued),
    ])
    .await
    .unwrap();

    // Nothing is old enough yet.
    assert!(s.maintain(now).await.unwrap().is_empty());
    // Nine and a half days on, with the default 7-day retention: yesterday and today go;
    // tomorrow stays, its job is still queued.
    let later = UnixMillis(today + 9 * DAY + DAY / 2);
    let day = |ms: i64| {
        let d = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
            .unwrap()
            .date();
        format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
    };
    let dropped = s.maintain(later).await.unwrap();
    assert_eq!(dropped, vec![day(today - DAY), day(today)]);
    assert!(s.job(done.id).await.unwrap().is_none());
    let key = ferry_core::IdempotencyKey::parse("order-1").unwrap();
    assert_eq!(
        s.jobs_by_key(&[(None, key)]).await.unwrap(),
        vec![None],
        "a dropped day's idempotency keys go with it"
    );
    assert!(s.events(done.id).await.unwrap().is_empty());
    assert!(s.job(waiting.id).await.unwrap().is_some());
    // Once that job ends, its day goes too.
    s.record(vec![ev(
        &waiting,
        1,
        JobEventKind::Dead {
            error: "gave up".into(),
        },
    )])
    .await
    .unwrap();
    assert_eq!(s.maintain(later).await.unwrap(), vec![day(today + DAY)]);
    assert!(s.job(waiting.id).await.unwrap().is_none());
    drop_db(s, &db).await;
}
