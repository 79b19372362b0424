//! The shared broker conformance suite against the embedded SQLite broker.

use std::sync::Arc;

use ferry_broker_conformance::{DynBroker, conformance_tests};
use ferry_broker_sqlite::{SqliteBroker, SqliteBrokerConfig};

async fn broker() -> DynBroker {
    // Each test gets its own file; the directory lives as long as the process.
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let b = SqliteBroker::open(SqliteBrokerConfig::new(dir.join("broker.db")))
        .await
        .expect("open sqlite broker");
    Arc::new(b)
}

conformance_tests!(broker());
