use std::time::Duration;

/// How to reach Redis and how much the broker keeps there.
#[derive(Clone, Debug)]
pub struct RedisBrokerConfig {
    /// `redis://[user:pass@]host[:port][/db]` or `rediss://...`.
    pub url: String,
    /// How long an idempotency key is remembered (default 24 h).
    pub idempotency_ttl: Duration,
    /// Most dead-lettered jobs kept per queue; the oldest fall out first (their history is
    /// in the store). Default 100,000.
    pub dead_max: u64,
    /// How often an idle consumer looks anyway, in case a wake-up message was lost (a
    /// reconnect). Pushes wake consumers in every process at once. Default 500 ms.
    pub poll_interval: Duration,
    /// Most jobs written in one group commit of concurrent enqueues.
    pub max_enqueue_batch: usize,
    /// Limit for establishing a connection (also at start-up).
    pub connect_timeout: Duration,
    /// Limit for one command's answer; a large batch is one command.
    pub response_timeout: Duration,
}

impl RedisBrokerConfig {
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            dead_max: 100_000,
            poll_interval: Duration::from_millis(500),
            max_enqueue_batch: 10_000,
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(10),
        }
    }
}
