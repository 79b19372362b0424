//! The shared broker conformance suite against a real RabbitMQ (`FERRY_TEST_AMQP_URL`,
//! default `amqp://guest:guest@127.0.0.1:5672/%2f`; `scripts/test` starts one when none is
//! running). Cases for capabilities RabbitMQ lacks print SKIP.

use std::sync::Arc;

use ferry_broker_amqp::{AmqpBroker, AmqpBrokerConfig};
use ferry_broker_conformance::{DynBroker, conformance_tests};

fn url() -> String {
    std::env::var("FERRY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn broker() -> DynBroker {
    // Every case uses queues of its own, so cases share the server without interfering.
    let b = AmqpBroker::connect(AmqpBrokerConfig::new(url()))
        .await
        .expect("connect to the test rabbitmq");
    Arc::new(b)
}

conformance_tests!(broker());
