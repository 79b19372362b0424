use std::time::Duration;

/// How to reach Kafka and how this process takes part in its pool's consumer group.
#[derive(Clone, Debug)]
pub struct KafkaBrokerConfig {
    /// `kafka://host:port[,host:port...]`: the bootstrap servers (plaintext; no TLS or SASL in
    /// this build).
    pub url: String,
    /// The consumer group: one per worker pool. Every process of a pool shares it, and a
    /// queue's partitions are spread over them.
    pub group: String,
    /// Partitions of a new queue's work topic (existing topics keep theirs).
    pub partitions: i32,
    /// Replication factor of new topics (1 for a single broker; 3 is usual in production).
    pub replication: i32,
    /// The delay ladder: one topic per step. A delay goes to the longest step that does not
    /// overshoot it and is held there until the step has passed, then goes on (or runs);
    /// delays shorter than the first step wait at most until they are due.
    pub delay_steps: Vec<Duration>,
    /// Limit for reaching the cluster at start-up and for metadata and admin calls.
    pub connect_timeout: Duration,
    /// How long a produce may wait for the cluster's acknowledgement before the submission
    /// fails (the API then answers 503).
    pub produce_timeout: Duration,
    /// How long the group waits for a silent consumer before giving its partitions to others
    /// (a SIGKILLed worker's uncommitted jobs come back after this).
    pub session_timeout: Duration,
    /// How long a fetch waits at the broker for new messages (bounds idle pickup latency).
    pub fetch_wait: Duration,
    /// Messages fetched ahead and kept in memory per partition before its fetching stops.
    pub buffer_per_partition: usize,
    /// On a rebalance, how long revoked partitions' running jobs get to finish before their
    /// leases are given up (the next owner then runs them again).
    pub revoke_grace: Duration,
    /// How long a first lease waits for the group to assign a newly subscribed queue.
    pub assign_timeout: Duration,
    /// How often an idle consumer looks for work when nothing wakes it.
    pub poll_interval: Duration,
}

impl KafkaBrokerConfig {
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            group: "ferry".into(),
            partitions: 4,
            replication: 1,
            delay_steps: [100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            connect_timeout: Duration::from_secs(5),
            produce_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(10),
            buffer_per_partition: 20_000,
            revoke_grace: Duration::from_secs(5),
            assign_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
        }
    }

    /// The bootstrap servers of `url` (`host:port,...`), or why the URL is not one.
    ///
    /// # Errors
    /// Not `kafka://`, credentials or a path given, or no host.
    pub fn bootstrap(&self) -> Result<String, String> {
        let rest = self
            .url
            .strip_prefix("kafka://")
            .ok_or_else(|| "expected kafka://host:port".to_owned())?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err("credentials in the URL: SASL is not part of this build".into());
        }
        if rest.contains('/') || rest.contains('?') {
            return Err("expected kafka://host:port[,host:port], without a path".into());
        }
        if rest.is_empty() || rest.split(',').any(|h| h.is_empty() || h.starts_with(':')) {
            return Err("no host".into());
        }
        Ok(rest
            .split(',')
            .map(|h| {
                if h.contains(':') {
                    h.to_owned()
                } else {
                    format!("{h}:9092")
                }
            })
            .collect::<Vec<_>>()
            .join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_come_from_the_url() {
        let b = |u: &str| KafkaBrokerConfig::new(u).bootstrap();
        assert_eq!(b("kafka://127.0.0.1:9092").unwrap(), "127.0.0.1:9092");
        assert_eq!(b("kafka://a,b:9093/").unwrap(), "a:9092,b:9093");
        assert!(b("kafka://user:pw@a:9092").unwrap_err().contains("SASL"));
        assert!(b("kafka://").unwrap_err().contains("no host"));
        assert!(b("kafka://a:1/topic").is_err());
        assert!(b("redis://a").is_err());
    }
}
