//! The dead letters of a queue: the topic `ferry.q.DEAD` is a log of dead jobs (key: the
//! job id) and tombstones (the same key, no value) for jobs retried since. This process
//! folds the log into the list of jobs still dead, reading only what was appended since its
//! last look.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferry_core::broker::{BrokerError, BrokerResult, DeadJob};
use ferry_core::{JobId, QueueName};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::unavailable;

use crate::wire;

#[derive(Default)]
pub(crate) struct DeadIndex {
    next: i64,
    /// offset -> job, oldest first.
    live: BTreeMap<i64, DeadJob>,
    by_id: HashMap<JobId, i64>,
}

impl DeadIndex {
    pub(crate) fn jobs(&self) -> impl Iterator<Item = &DeadJob> {
        self.live.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn forget(&mut self, id: JobId) {
        if let Some(o) = self.by_id.remove(&id) {
            self.live.remove(&o);
        }
    }

    fn fold(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.next = offset + 1;
        let id = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse::<JobId>().ok());
        match (id, value) {
            (Some(id), None) => self.forget(id),
            (_, Some(v)) => match wire::read_dead(v) {
                Ok(d) => {
                    self.forget(d.job.id);
                    self.by_id.insert(d.job.id, offset);
                    self.live.insert(
                        offset,
                        DeadJob {
                            job: d.job,
                            error: d.error,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(offset, error = %e, "kafka: skipping an undecodable dead letter");
                }
            },
            (None, None) => {}
        }
    }
}

/// Reads `topic` (one partition) from where `index` stopped until it is quiet and past
/// `known_end` (an offset known to exist: the cluster's latest-offset answer, or this
/// process's own newest produce). Blocking.
pub(crate) fn refresh(
    reader: &BaseConsumer,
    topic: &str,
    index: &mut DeadIndex,
    known_end: Option<i64>,
    timeout: Duration,
) -> BrokerResult<()> {
    let (low, latest) = reader
        .fetch_watermarks(topic, 0, timeout)
        .map_err(|e| unavailable(&e))?;
    if index.next < low {
        // Retention removed the oldest entries: start over from what is left.
        *index = DeadIndex {
            next: low,
            ..DeadIndex::default()
        };
    }
    let end = known_end.unwrap_or(0).max(latest);
    if index.next >= end {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(index.next))
        .map_err(|e| unavailable(&e))?;
    reader.assign(&tpl).map_err(|e| unavailable(&e))?;
    let deadline = Instant::now() + timeout;
    loop {
        if Instant::now() >= deadline {
            return Err(BrokerError::Unavailable(format!(
                "kafka: reading dead letters of {topic} timed out"
            )));
        }
        match reader.poll(Duration::from_millis(50)) {
            Some(Ok(m)) if m.topic() == topic => index.fold(m.offset(), m.key(), m.payload()),
            Some(Ok(_)) => {}
            None if index.next >= end => return Ok(()),
            None => {}
            Some(Err(e)) => return Err(unavailable(&e)),
        }
    }
}

/// The dead-letter indexes of every queue this process looked at.
pub(crate) type DeadIndexes = HashMap<QueueName, DeadIndex>;
