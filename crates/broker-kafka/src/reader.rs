//! A consumer outside the group, for reading logs on request (dead letters).
//!
//! tansu 0.6 answers a latest-offset query (`ListOffsets`) with the first offset of the
//! newest batch plus one, and serves no fetch that starts inside a batch (decision 0012).
//! So a log is read from where the last read stopped (a batch boundary) until it is quiet
//! and past every offset known to exist, never from a queried end offset.

use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaResult;

pub(crate) fn create(bootstrap: &str) -> KafkaResult<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ferry-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("log_level", "3")
        .create()
}
