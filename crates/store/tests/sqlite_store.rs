//! The embedded store against a real SQLite file, through the shared store cases.

mod cases;

use std::sync::Arc;

use ferry_core::store::Store;
use ferry_store::{SqliteStore, SqliteStoreConfig};

async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(SqliteStoreConfig::new(dir.path().join("store.db")))
        .await
        .unwrap();
    (Arc::new(s), dir)
}

#[tokio::test]
async fn records_a_life_and_ignores_late_and_repeated_events() {
    let (s, _dir) = store().await;
    cases::records_a_life_and_ignores_late_and_repeated_events(s).await;
}

#[tokio::test]
async fn a_worker_event_creates_the_record_when_the_enqueue_event_was_lost() {
    let (s, _dir) = store().await;
    cases::a_worker_event_creates_the_record_when_the_enqueue_event_was_lost(s).await;
}

#[tokio::test]
async fn the_timeline_lists_each_event_once_in_order() {
    let (s, _dir) = store().await;
    cases::the_timeline_lists_each_event_once_in_order(s).await;
}

#[tokio::test]
async fn search_filters_and_pages_newest_first() {
    let (s, _dir) = store().await;
    cases::search_filters_and_pages_newest_first(s).await;
}

#[tokio::test]
async fn idempotency_keys_are_unique_per_tenant() {
    let (s, _dir) = store().await;
    cases::idempotency_keys_are_unique_per_tenant(s).await;
}

/// SQLite has no partitions: retention deletes final jobs (with their events and keys) that
/// finished longer ago than the retention, and keeps everything else.
#[tokio::test]
async fn retention_deletes_old_final_jobs_only() {
    use ferry_core::store::{JobEvent, JobEventKind};
    use ferry_core::{IdempotencyKey, JobEnvelope, JobKind, QueueName, UnixMillis};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(SqliteStoreConfig::new(dir.path().join("store.db")))
        .await
        .unwrap();
    let job = |key: &str| {
        let mut j = JobEnvelope::new(
            QueueName::parse("q").unwrap(),
            JobKind::parse("k").unwrap(),
            JobEnvelope::empty_payload(),
        );
        j.idempotency_key = Some(IdempotencyKey::parse(key).unwrap());
        Arc::new(j)
    };
    let ev = |j: &Arc<JobEnvelope>, fence, kind| JobEvent {
        job: j.clone(),
        attempt: 1,
        fence,
        at: UnixMillis::now(),
        kind,
    };
    let done = job("done");
    let retrying = job("retrying");
    s.record(vec![
        ev(&done, 0, JobEventKind::Enqueued),
        ev(&done, 1, JobEventKind::Succeeded { result: None }),
        ev(&retrying, 0, JobEventKind::Enqueued),
        ev(
            &retrying,
            1,
            JobEventKind::Failed {
                error: "boom".into(),
                retry_at: UnixMillis::now(),
            },
        ),
    ])
    .await
    .unwrap();
    let day = 86_400_000;
    let now = UnixMillis::now();
    assert_eq!(
        s.maintain(UnixMillis(now.0 + 6 * day)).await.unwrap(),
        0,
        "younger than 7 days: kept"
    );
    assert_eq!(s.maintain(UnixMillis(now.0 + 8 * day)).await.unwrap(), 1);
    assert!(s.job(done.id).await.unwrap().is_none());
    assert!(s.events(done.id).await.unwrap().is_empty());
    let keys = [
        (None, IdempotencyKey::parse("done").unwrap()),
        (None, IdempotencyKey::parse("retrying").unwrap()),
    ];
    assert_eq!(
        s.jobs_by_key(&keys).await.unwrap(),
        vec![None, Some(retrying.id)]
    );
    assert!(
        s.job(retrying.id).await.unwrap().is_some(),
        "not final: kept"
    );
    assert_eq!(s.events(retrying.id).await.unwrap().len(), 2);
}
