//! Key names. Every key of one queue carries the hash tag `{queue}`, so the queue lives in
//! one Redis Cluster slot and its scripts may touch all of its keys.

use ferry_core::QueueName;

/// The global set of queue names (for workers that take every queue). Not part of any
/// queue's slot; only ever touched by plain commands, never by a script.
pub(crate) const QUEUES: &str = "ferry:queues";

/// The pub/sub channel on which pushes to an empty queue are announced (payload: the queue).
pub(crate) const WAKE_CHANNEL: &str = "ferry:wake";

/// The pub/sub channel on which requests to stop a running job are announced (payload: the
/// job id's 16 bytes).
pub(crate) const CANCEL_CHANNEL: &str = "ferry:cancel";

/// One queue's keys, in the order the scripts expect them (see `lua/common.lua`).
#[derive(Debug)]
pub(crate) struct QueueKeys {
    pub(crate) queue: QueueName,
    pub(crate) keys: [String; 12],
}

impl QueueKeys {
    pub(crate) fn new(queue: &QueueName) -> Self {
        let k = |part: &str| format!("ferry:{{{}}}:{part}", queue.as_str());
        Self {
            queue: queue.clone(),
            keys: [
                k("ready"),
                k("sched"),
                k("leased"),
                k("dead"),
                k("jobs"),
                k("err"),
                k("fence"),
                k("paused"),
                k("limits"),
                k("tat"),
                k("lanes"),
                k("tenant"),
            ],
        }
    }

    /// The holders of one `concurrency_key` (zset: job id -> holder expiry ms).
    pub(crate) fn key_holders(&self, key: &ferry_core::FlowKey) -> String {
        format!("ferry:{{{}}}:ck:{}", self.queue.as_str(), key.as_str())
    }

    /// One `rate_key`'s GCRA state (the theoretical arrival time, ms).
    pub(crate) fn key_rate(&self, key: &ferry_core::FlowKey) -> String {
        format!("ferry:{{{}}}:rk:{}", self.queue.as_str(), key.as_str())
    }

    /// `scope` is the tenant and key ([`ferry_core::JobEnvelope::idempotency_scope`]).
    pub(crate) fn idempotency(&self, scope: &str) -> String {
        format!("ferry:{{{}}}:idem:{scope}", self.queue.as_str())
    }
}

/// A job's id as stored: its 16 raw UUID bytes.
pub(crate) fn id_bytes(id: ferry_core::JobId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// A lease as the `leased` set holds it: the id's bytes, then the token in decimal.
pub(crate) fn lease_member(lease: &ferry_core::broker::LeaseRef) -> Vec<u8> {
    let mut m = id_bytes(lease.id).to_vec();
    m.extend_from_slice(lease.token.0.to_string().as_bytes());
    m
}

/// Decodes a `jobs` hash value (`priority "\n" JSON`) with `attempt` deliveries so far.
pub(crate) fn decode_job(
    stored: &[u8],
    attempt: u64,
) -> ferry_core::broker::BrokerResult<ferry_core::JobEnvelope> {
    use ferry_core::broker::BrokerError;
    let nl = stored.iter().position(|b| *b == b'\n').ok_or_else(|| {
        BrokerError::Unavailable("redis: a stored job has no priority head".into())
    })?;
    let mut job: ferry_core::JobEnvelope =
        serde_json::from_slice(&stored[nl + 1..]).map_err(|e| {
            BrokerError::Unavailable(format!("redis: a stored job does not decode: {e}"))
        })?;
    job.attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_queue_shares_its_hash_tag() {
        let q = QueueKeys::new(&QueueName::parse("emails").unwrap());
        for k in &q.keys {
            assert!(k.starts_with("ferry:{emails}:"), "{k}");
        }
        let idem = q.idempotency("order-1");
        assert_eq!(idem, "ferry:{emails}:idem:order-1");
    }
}
