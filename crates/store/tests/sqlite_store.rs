//! The embedded store against a real SQLite file, through the shared store cases.

mod cases;

use std::sync::Arc;

use ferry_core::store::Store;
use ferry_store::{SqliteStore, SqliteStoreConfig};

async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(SqliteStoreConfig {
        path: dir.path().join("store.db"),
    })
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
