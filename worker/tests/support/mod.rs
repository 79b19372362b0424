//! The rig the worker's integration tests share: a worker on the embedded broker and store
//! (real SQLite files in a temporary directory).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ferry_broker_sqlite::{SqliteBroker, SqliteBrokerConfig};
use ferry_core::RetryPolicy;
use ferry_core::broker::Broker;
use ferry_core::store::Store;
use ferry_store::{SqliteStore, SqliteStoreConfig};
use ferry_worker::{Registry, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;

pub struct Rig {
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn Store>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// The store's SQLite file.
    pub fn store_path(&self) -> std::path::PathBuf {
        self._dir.path().join("s.db")
    }
}

pub async fn rig(registry: Registry, options: WorkerOptions) -> Rig {
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
    let stop = CancellationToken::new();
    let w = Worker::new(broker.clone(), store.clone(), registry, options);
    let task = tokio::spawn(w.run(stop.clone()));
    Rig {
        broker,
        store,
        stop,
        task,
        _dir: dir,
    }
}

/// Fast retries (10-50 ms backoff), concurrency 8.
pub fn fast() -> WorkerOptions {
    WorkerOptions {
        concurrency: 8,
        retry: RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        ..WorkerOptions::default()
    }
}
