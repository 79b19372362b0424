//! Producing with acknowledgements: every message of a call is handed to librdkafka at once
//! (its queue batches them per partition), then each delivery report is awaited. A call
//! returns only when the cluster has every message (`acks=all`), or fails.

use std::collections::VecDeque;

use ferry_core::broker::{BrokerError, BrokerResult};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// One message to produce; `value: None` is a tombstone.
pub(crate) struct Out {
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) value: Option<Vec<u8>>,
}

/// Where a message landed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Landed {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

fn delivery_error(e: &KafkaError) -> BrokerError {
    BrokerError::Unavailable(format!("kafka: {e}"))
}

async fn landed(f: DeliveryFuture) -> BrokerResult<Landed> {
    match f.await {
        Ok(Ok(d)) => Ok(Landed {
            partition: d.partition,
            offset: d.offset,
        }),
        Ok(Err((e, _))) => Err(delivery_error(&e)),
        Err(_) => Err(BrokerError::Unavailable(
            "kafka: the producer went away before the delivery report".into(),
        )),
    }
}

/// Produces all of `msgs`, in order per partition; one result per message, in order.
pub(crate) async fn produce(
    p: &FutureProducer,
    msgs: &[Out],
    timeout: std::time::Duration,
) -> BrokerResult<Vec<Landed>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(msgs.len());
    let mut out = Vec::with_capacity(msgs.len());
    for m in msgs {
        let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(&m.topic);
        if let Some(k) = &m.key {
            rec = rec.key(k.as_str());
        }
        if let Some(v) = &m.value {
            rec = rec.payload(v.as_slice());
        }
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                // librdkafka's local queue is full: wait for the oldest delivery, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    match pending.pop_front() {
                        Some(f) => out.push(landed(f).await?),
                        // Full of other callers' messages: they drain within the produce
                        // timeout, or the cluster is not taking any.
                        None if std::time::Instant::now() >= deadline => {
                            return Err(BrokerError::Unavailable(
                                "kafka: the producer queue stayed full (is the cluster down?)"
                                    .into(),
                            ));
                        }
                        None => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => return Err(delivery_error(&e)),
            }
        }
    }
    for f in pending {
        out.push(landed(f).await?);
    }
    Ok(out)
}
