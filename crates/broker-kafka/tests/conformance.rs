//! The shared broker conformance suite against a real Kafka-protocol broker
//! (`FERRY_TEST_KAFKA_URL`, default `kafka://127.0.0.1:9092`; `scripts/test` starts tansu
//! when none is running). Cases for capabilities Kafka lacks print SKIP.

use std::sync::Arc;

use ferry_broker_conformance::{DynBroker, conformance_tests};
use ferry_broker_kafka::{KafkaBroker, KafkaBrokerConfig};

fn url() -> String {
    std::env::var("FERRY_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

async fn broker() -> DynBroker {
    // Every case uses queues of its own and a consumer group of its own: cases run at the
    // same time in separate processes, and one group would rebalance them all at every join.
    let mut config = KafkaBrokerConfig::new(url());
    config.group = format!("ferry-test-{}", uuid::Uuid::now_v7().simple());
    let b = KafkaBroker::connect(config)
        .await
        .expect("connect to the test kafka");
    Arc::new(b)
}

conformance_tests!(broker());
