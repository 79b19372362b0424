use std::time::Duration;

/// How to reach RabbitMQ.
#[derive(Clone, Debug)]
pub struct AmqpBrokerConfig {
    /// `amqp://user:pass@host[:port]/vhost` (`%2f` is the default vhost `/`).
    pub url: String,
    /// Limit for establishing a connection (also at start-up).
    pub connect_timeout: Duration,
    /// How often an idle consumer looks for work (pushes in this process wake it at once).
    pub poll_interval: Duration,
    /// The delay ladder: one queue per step, each holding messages that long before
    /// dead-lettering them back to the work queue. A delay goes to the longest step that
    /// does not overshoot it, and comes back as often as needed; delays shorter than the
    /// first step wait that step (late, never early).
    pub delay_buckets: Vec<Duration>,
}

impl AmqpBrokerConfig {
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(3),
            poll_interval: Duration::from_millis(50),
            delay_buckets: [100, 1_000, 10_000, 60_000, 600_000, 3_600_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
        }
    }
}
