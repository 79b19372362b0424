//! The shared broker conformance suite against a real Redis server (`FERRY_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`; `scripts/test` starts one when none is running).

use std::sync::Arc;

use ferry_broker_conformance::{DynBroker, conformance_tests};
use ferry_broker_redis::{RedisBroker, RedisBrokerConfig};

fn url() -> String {
    std::env::var("FERRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn broker() -> DynBroker {
    // Every case uses queues of its own, so cases share the server without interfering.
    let b = RedisBroker::connect(RedisBrokerConfig::new(url()))
        .await
        .expect("connect to the test redis");
    Arc::new(b)
}

conformance_tests!(broker());
