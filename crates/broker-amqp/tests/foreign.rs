//! A message Ferry did not write (another publisher on the same queue) is dropped with an
//! error in the log, not left unacked to block the queue for the connection's life.

use std::time::Duration;

use ferry_broker_amqp::{AmqpBroker, AmqpBrokerConfig};
use ferry_broker_conformance::fresh_queue;
use ferry_core::broker::{Broker, QueueSelector};
use ferry_core::{JobEnvelope, JobKind};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn url() -> String {
    std::env::var("FERRY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_is_dropped_and_the_queue_moves_on() {
    let b = AmqpBroker::connect(AmqpBrokerConfig::new(url()))
        .await
        .unwrap();
    let q = fresh_queue("foreign");
    // Declares the queue (stats does) before the foreign publisher writes to it.
    b.stats(&q).await.unwrap();
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        "".into(),
        format!("ferry.{}", q.as_str()).as_str().into(),
        BasicPublishOptions::default(),
        b"not a job",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let job = JobEnvelope::new(
        q.clone(),
        JobKind::parse("noop").unwrap(),
        JobEnvelope::empty_payload(),
    );
    b.enqueue(vec![job.clone()]).await.unwrap();
    let leased = b
        .lease(
            &QueueSelector::Only(vec![q.clone()]),
            10,
            Duration::from_secs(30),
            "w",
        )
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.id, job.id);
    let s = b.stats(&q).await.unwrap();
    assert_eq!((s.ready, s.leased), (0, 1), "the foreign message is gone");
}
