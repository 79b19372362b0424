//! The embedded store against a real SQLite file.

use std::sync::Arc;

use ferry_core::store::{JobEvent, JobEventKind, Store};
use ferry_core::{JobEnvelope, JobKind, JobState, QueueName, UnixMillis};
use ferry_store::{SqliteStore, SqliteStoreConfig};
use serde_json::value::RawValue;

async fn store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(SqliteStoreConfig {
        path: dir.path().join("store.db"),
    })
    .await
    .unwrap();
    (s, dir)
}

fn job() -> Arc<JobEnvelope> {
    Arc::new(JobEnvelope::new(
        QueueName::parse("q").unwrap(),
        JobKind::parse("echo").unwrap(),
        Arc::from(RawValue::from_string(r#"{"a":1}"#.into()).unwrap()),
    ))
}

fn ev(job: &Arc<JobEnvelope>, attempt: u32, fence: u64, kind: JobEventKind) -> JobEvent {
    JobEvent {
        job: job.clone(),
        attempt,
        fence,
        at: UnixMillis::now(),
        kind,
    }
}

#[tokio::test]
async fn records_a_life_and_ignores_late_and_repeated_events() {
    let (s, _dir) = store().await;
    let j = job();
    assert!(s.job(j.id).await.unwrap().is_none());
    s.record(vec![ev(&j, 0, 0, JobEventKind::Enqueued)])
        .await
        .unwrap();
    assert_eq!(s.job(j.id).await.unwrap().unwrap().state, JobState::Queued);

    let failed = ev(
        &j,
        1,
        1,
        JobEventKind::Failed {
            error: "boom".into(),
            retry_at: UnixMillis::now(),
        },
    );
    s.record(vec![
        ev(&j, 1, 1, JobEventKind::Started { worker: "w".into() }),
        failed.clone(),
    ])
    .await
    .unwrap();
    let r = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.attempts, r.error.as_deref()),
        (JobState::Retrying, 1, Some("boom"))
    );

    let result = Arc::from(RawValue::from_string(r#"{"ok":true}"#.into()).unwrap());
    s.record(vec![
        ev(&j, 2, 2, JobEventKind::Started { worker: "w".into() }),
        ev(
            &j,
            2,
            2,
            JobEventKind::Succeeded {
                result: Some(result),
            },
        ),
    ])
    .await
    .unwrap();
    // The first attempt's failure arrives again, late: it must not overwrite success.
    s.record(vec![
        failed,
        ev(&j, 1, 1, JobEventKind::Started { worker: "w".into() }),
    ])
    .await
    .unwrap();
    let r = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.result.unwrap().get(), r#"{"ok":true}"#);
    assert!(r.error.is_none());
    assert!(r.started_at.is_some() && r.finished_at.is_some());
}

#[tokio::test]
async fn a_worker_event_creates_the_record_when_the_enqueue_event_was_lost() {
    let (s, _dir) = store().await;
    let j = job();
    s.record(vec![ev(
        &j,
        1,
        1,
        JobEventKind::Dead {
            error: "gone".into(),
        },
    )])
    .await
    .unwrap();
    let r = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Dead);
    assert_eq!(r.kind.as_str(), "echo");
    assert_eq!(r.payload.get(), r#"{"a":1}"#);
}
