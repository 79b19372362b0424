#![doc = include_str!("../README.md")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ferry_core::QueueName;
use ferry_core::broker::QueueSelector;

/// A variable had a value Ferry cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// Where variables come from: the process environment, or a map in tests.
pub trait Env {
    fn get(&self, var: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn get(&self, var: &str) -> Option<String> {
        self(var)
    }
}

/// A count that must be at least 1.
fn at_least_one(env: &dyn Env, var: &'static str, default: usize) -> Result<usize, ConfigError> {
    match parsed(env, var, default, "a positive whole number")? {
        0 => Err(ConfigError {
            var,
            value: "0".into(),
            reason: "must be at least 1".into(),
        }),
        n => Ok(n),
    }
}

fn parsed<T: FromStr>(
    env: &dyn Env,
    var: &'static str,
    default: T,
    expected: &str,
) -> Result<T, ConfigError> {
    match env.get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError {
            var,
            value: v.clone(),
            reason: format!("expected {expected}"),
        }),
    }
}

fn millis(env: &dyn Env, var: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
    let ms: u64 = parsed(env, var, default_ms, "a whole number of milliseconds")?;
    if ms == 0 {
        return Err(ConfigError {
            var,
            value: "0".into(),
            reason: "must be at least 1 millisecond".into(),
        });
    }
    Ok(Duration::from_millis(ms))
}

/// Where a broker lives, from `FERRY_BROKER_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `sqlite://PATH` (the embedded default: `sqlite://$FERRY_DATA_DIR/broker.db`).
    Sqlite(PathBuf),
    /// `redis://[user:pass@]host[:port][/db]` or `rediss://...` (TLS).
    Redis(String),
    /// `amqp://user:pass@host[:port]/vhost` (RabbitMQ).
    Amqp(String),
    /// `kafka://host:port[,host:port...]` (bootstrap servers, plaintext).
    Kafka(String),
    /// `amqps://...`: recognised, served by broker code that is not part of this build yet.
    Other { scheme: String, url: String },
}

/// Where history is kept, from `FERRY_DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH` (default `sqlite://$FERRY_DATA_DIR/store.db`).
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`.
    Postgres(String),
}

fn split_url(var: &'static str, url: &str) -> Result<(String, String), ConfigError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError {
            var,
            value: url.into(),
            reason: "expected a URL such as sqlite://ferry-data/broker.db".into(),
        });
    };
    Ok((scheme.to_ascii_lowercase(), rest.to_owned()))
}

fn sqlite_path(var: &'static str, url: &str, rest: &str) -> Result<PathBuf, ConfigError> {
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(ConfigError {
            var,
            value: url.into(),
            reason: "sqlite URL has no file path".into(),
        });
    }
    Ok(PathBuf::from(path))
}

impl BrokerUrl {
    /// # Errors
    /// When the URL has no scheme, an unknown scheme, or no path for sqlite.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        const VAR: &str = "FERRY_BROKER_URL";
        let (scheme, rest) = split_url(VAR, url)?;
        match scheme.as_str() {
            "sqlite" => Ok(Self::Sqlite(sqlite_path(VAR, url, &rest)?)),
            "redis" | "rediss" => Ok(Self::Redis(url.into())),
            "amqp" => Ok(Self::Amqp(url.into())),
            "kafka" => Ok(Self::Kafka(url.into())),
            "amqps" => Ok(Self::Other {
                scheme,
                url: url.into(),
            }),
            _ => Err(ConfigError {
                var: VAR,
                value: url.into(),
                reason: format!(
                    "unknown broker scheme '{scheme}'; expected sqlite, redis, amqp or kafka"
                ),
            }),
        }
    }
}

impl StoreUrl {
    /// # Errors
    /// When the URL has no scheme, an unknown scheme, or no path for sqlite.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        const VAR: &str = "FERRY_DATABASE_URL";
        let (scheme, rest) = split_url(VAR, url)?;
        match scheme.as_str() {
            "sqlite" => Ok(Self::Sqlite(sqlite_path(VAR, url, &rest)?)),
            "postgres" | "postgresql" => Ok(Self::Postgres(url.into())),
            _ => Err(ConfigError {
                var: VAR,
                value: url.into(),
                reason: format!("unknown database scheme '{scheme}'; expected sqlite or postgres"),
            }),
        }
    }
}

/// Where jobs are dispatched and history kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataConfig {
    /// `FERRY_DATA_DIR` (default `./ferry-data`): where the embedded broker and store live.
    pub data_dir: PathBuf,
    /// `FERRY_BROKER_URL` (default `sqlite://$FERRY_DATA_DIR/broker.db`).
    pub broker: BrokerUrl,
    /// `FERRY_DATABASE_URL` (default `sqlite://$FERRY_DATA_DIR/store.db`).
    pub store: StoreUrl,
    /// `FERRY_HISTORY_RETENTION_DAYS` (default 7; 0 keeps everything): history older than
    /// this is dropped: on Postgres by day of creation once all of that day's jobs are final,
    /// on SQLite job by job once a final job finished that long ago.
    pub retention: Option<Duration>,
}

impl DataConfig {
    /// # Errors
    /// On a malformed variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let data_dir = PathBuf::from(
            env.get("FERRY_DATA_DIR")
                .unwrap_or_else(|| "./ferry-data".into()),
        );
        let broker = match env.get("FERRY_BROKER_URL") {
            Some(u) => BrokerUrl::parse(&u)?,
            None => BrokerUrl::Sqlite(data_dir.join("broker.db")),
        };
        let store = match env.get("FERRY_DATABASE_URL") {
            Some(u) => StoreUrl::parse(&u)?,
            None => StoreUrl::Sqlite(data_dir.join("store.db")),
        };
        Ok(Self {
            data_dir,
            broker,
            store,
            retention: match parsed(
                env,
                "FERRY_HISTORY_RETENTION_DAYS",
                7u64,
                "a whole number of days (0 keeps everything)",
            )? {
                0 => None,
                days => Some(Duration::from_secs(days.saturating_mul(86_400))),
            },
        })
    }
}

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// `FERRY_LISTEN` (default `127.0.0.1:8080`): address and port to serve on.
    pub listen: SocketAddr,
    /// `FERRY_BODY_LIMIT_BYTES` (default 1 MiB): larger request bodies get 413.
    pub body_limit: usize,
}

impl ApiConfig {
    /// # Errors
    /// On a malformed variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: parsed(
                env,
                "FERRY_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
                "host:port, e.g. 127.0.0.1:8080",
            )?,
            body_limit: parsed(
                env,
                "FERRY_BODY_LIMIT_BYTES",
                1024 * 1024,
                "a number of bytes",
            )?,
        })
    }
}

/// A worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// `FERRY_WORKER_CONCURRENCY` (default 50): jobs run at once by this process.
    pub concurrency: usize,
    /// `FERRY_WORKER_SETTLE_WINDOW` (default 1000): finished jobs that may wait at once for
    /// their history write and acknowledgement. A worker holds at most concurrency + this
    /// many leases, and if it is killed those jobs run again: smaller means fewer duplicates
    /// after a crash, larger means bigger (faster) history batches.
    pub settle_window: usize,
    /// `FERRY_QUEUES` (default `*`, every queue): comma-separated queues to take jobs from.
    pub queues: QueueSelector,
    /// `FERRY_LEASE_MS` (default 30000): how long a lease lasts without a heartbeat. A worker
    /// that dies loses its jobs to others after at most this long.
    pub lease: Duration,
    /// `FERRY_JOB_TIMEOUT_MS` (default 300000): how long an attempt may run when the job
    /// sets no timeout of its own.
    pub default_timeout: Duration,
    /// `FERRY_RETRY_BASE_MS` (default 1000) and `FERRY_RETRY_CAP_MS` (default 3600000):
    /// backoff after failed attempt n is drawn from [0, min(cap, base * 2^(n-1))].
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// `FERRY_SHUTDOWN_GRACE_MS` (default 30000): on SIGTERM/SIGINT the worker stops leasing
    /// and lets running jobs finish for this long; what is still running then is stopped
    /// and given back to the broker (the attempt does not count), and the process exits 0.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    /// # Errors
    /// On a malformed variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let concurrency = at_least_one(env, "FERRY_WORKER_CONCURRENCY", 50)?;
        let settle_window = at_least_one(env, "FERRY_WORKER_SETTLE_WINDOW", 1000)?;
        let queues = match env.get("FERRY_QUEUES") {
            None => QueueSelector::All,
            Some(v) if v.trim() == "*" => QueueSelector::All,
            Some(v) => QueueSelector::Only(
                v.split(',')
                    .map(|q| {
                        QueueName::parse(q.trim()).map_err(|e| ConfigError {
                            var: "FERRY_QUEUES",
                            value: v.clone(),
                            reason: e.to_string(),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Self {
            concurrency,
            settle_window,
            queues,
            lease: millis(env, "FERRY_LEASE_MS", 30_000)?,
            default_timeout: millis(env, "FERRY_JOB_TIMEOUT_MS", 300_000)?,
            retry_base: millis(env, "FERRY_RETRY_BASE_MS", 1_000)?,
            retry_cap: millis(env, "FERRY_RETRY_CAP_MS", 3_600_000)?,
            shutdown_grace: millis(env, "FERRY_SHUTDOWN_GRACE_MS", 30_000)?,
        })
    }
}

/// What the Redis broker keeps (used when `FERRY_BROKER_URL` is `redis://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `FERRY_REDIS_IDEMPOTENCY_TTL_SECS` (default 86400): how long the broker remembers an
    /// idempotency key (the store remembers it for the history's retention).
    pub idempotency_ttl: Duration,
    /// `FERRY_REDIS_DEAD_MAX` (default 100000): dead-lettered jobs kept per queue; the oldest
    /// fall out first (their history stays in the store).
    pub dead_max: u64,
}

impl RedisConfig {
    /// # Errors
    /// On a malformed variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let secs: u64 = parsed(
            env,
            "FERRY_REDIS_IDEMPOTENCY_TTL_SECS",
            86_400,
            "a whole number of seconds",
        )?;
        if secs == 0 {
            return Err(ConfigError {
                var: "FERRY_REDIS_IDEMPOTENCY_TTL_SECS",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            idempotency_ttl: Duration::from_secs(secs),
            dead_max: parsed(env, "FERRY_REDIS_DEAD_MAX", 100_000, "a whole number")?,
        })
    }
}

/// How a Kafka broker's processes share work (used when `FERRY_BROKER_URL` is `kafka://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `FERRY_KAFKA_GROUP` (default `ferry`): the consumer group; every worker process of one
    /// pool uses the same, and a queue's partitions are spread over them.
    pub group: String,
    /// `FERRY_KAFKA_PARTITIONS` (default 4): partitions of a new queue's work topic; the most
    /// worker processes that can share one queue.
    pub partitions: i32,
    /// `FERRY_KAFKA_REPLICATION` (default 1): replication factor of new topics.
    pub replication: i32,
    /// `FERRY_KAFKA_SESSION_TIMEOUT_MS` (default 10000): how long the group waits for a
    /// silent worker before its partitions (and their unfinished jobs) go to the others.
    pub session_timeout: Duration,
    /// `FERRY_KAFKA_FETCH_WAIT_MS` (default 10): how long a fetch may wait at the broker for
    /// new messages. Kafka answers as soon as a message arrives; tansu holds every fetch this
    /// long, so there it bounds pickup latency (and sets the idle fetch rate).
    pub fetch_wait: Duration,
}

impl KafkaConfig {
    /// # Errors
    /// On a malformed variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let positive = |var: &'static str, default: i32| -> Result<i32, ConfigError> {
            let n: i32 = parsed(env, var, default, "a whole number from 1")?;
            if n < 1 {
                return Err(ConfigError {
                    var,
                    value: n.to_string(),
                    reason: "must be at least 1".into(),
                });
            }
            Ok(n)
        };
        Ok(Self {
            group: env
                .get("FERRY_KAFKA_GROUP")
                .unwrap_or_else(|| "ferry".into()),
            partitions: positive("FERRY_KAFKA_PARTITIONS", 4)?,
            replication: positive("FERRY_KAFKA_REPLICATION", 1)?,
            session_timeout: millis(env, "FERRY_KAFKA_SESSION_TIMEOUT_MS", 10_000)?,
            fetch_wait: millis(env, "FERRY_KAFKA_FETCH_WAIT_MS", 10)?,
        })
    }
}

/// The built-in `http` handler.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpTargetConfig {
    /// `FERRY_HTTP_SIGNING_SECRET` (unset: requests are not signed): the key of the
    /// `Ferry-Signature` HMAC-SHA256 header receivers verify.
    pub signing_secret: Option<String>,
    /// `FERRY_HTTP_TIMEOUT_MS` (default 30000): per request, for jobs that set no timeout.
    pub timeout: Duration,
    /// `FERRY_HTTP_BREAKER_FAILURES` (default 5): consecutive failures (5xx, timeouts,
    /// connection errors) to one host that open its circuit.
    pub breaker_failures: u32,
    /// `FERRY_HTTP_BREAKER_COOLDOWN_MS` (default 30000): how long an open circuit stays open
    /// before one probe request is let through.
    pub breaker_cooldown: Duration,
}

impl std::fmt::Debug for HttpTargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTargetConfig")
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .finish()
    }
}

impl HttpTargetConfig {
    /// # Errors
    /// On a malformed variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let breaker_failures: u32 = parsed(
            env,
            "FERRY_HTTP_BREAKER_FAILURES",
            5,
            "a positive whole number",
        )?;
        if breaker_failures == 0 {
            return Err(ConfigError {
                var: "FERRY_HTTP_BREAKER_FAILURES",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            signing_secret: env
                .get("FERRY_HTTP_SIGNING_SECRET")
                .filter(|s| !s.is_empty()),
            timeout: millis(env, "FERRY_HTTP_TIMEOUT_MS", 30_000)?,
            breaker_failures,
            breaker_cooldown: millis(env, "FERRY_HTTP_BREAKER_COOLDOWN_MS", 30_000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn defaults() {
        let e = env(&[]);
        let d = DataConfig::from_env(&e).unwrap();
        assert_eq!(
            d.broker,
            BrokerUrl::Sqlite(PathBuf::from("./ferry-data/broker.db"))
        );
        assert_eq!(
            d.store,
            StoreUrl::Sqlite(PathBuf::from("./ferry-data/store.db"))
        );
        assert_eq!(d.retention, Some(Duration::from_secs(7 * 86_400)));
        let keep = env(&[("FERRY_HISTORY_RETENTION_DAYS", "0")]);
        assert_eq!(DataConfig::from_env(&keep).unwrap().retention, None);
        let a = ApiConfig::from_env(&e).unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(a.body_limit, 1 << 20);
        let w = WorkerConfig::from_env(&e).unwrap();
        assert_eq!((w.concurrency, w.settle_window), (50, 1000));
        assert_eq!(w.queues, QueueSelector::All);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = env(&[("FERRY_LISTEN", "nope")]);
        assert_eq!(
            ApiConfig::from_env(&e).unwrap_err().to_string(),
            "FERRY_LISTEN=\"nope\": expected host:port, e.g. 127.0.0.1:8080"
        );
        let e = env(&[("FERRY_BROKER_URL", "mongo://x")]);
        assert!(
            DataConfig::from_env(&e)
                .unwrap_err()
                .to_string()
                .contains("unknown broker scheme 'mongo'")
        );
        let e = env(&[("FERRY_QUEUES", "a,B")]);
        assert!(
            WorkerConfig::from_env(&e)
                .unwrap_err()
                .to_string()
                .starts_with("FERRY_QUEUES=")
        );
        let e = env(&[("FERRY_WORKER_CONCURRENCY", "0")]);
        assert!(WorkerConfig::from_env(&e).is_err());
        let e = env(&[("FERRY_WORKER_SETTLE_WINDOW", "0")]);
        assert_eq!(
            WorkerConfig::from_env(&e).unwrap_err().to_string(),
            "FERRY_WORKER_SETTLE_WINDOW=\"0\": must be at least 1"
        );
        let h =
            HttpTargetConfig::from_env(&env(&[("FERRY_HTTP_SIGNING_SECRET", "s3cret")])).unwrap();
        assert_eq!(
            (h.breaker_failures, h.timeout),
            (5, Duration::from_secs(30))
        );
        assert!(
            !format!("{h:?}").contains("s3cret"),
            "the secret is never printed"
        );
        let k = KafkaConfig::from_env(&env(&[])).unwrap();
        assert_eq!((k.group.as_str(), k.partitions), ("ferry", 4));
        let e = KafkaConfig::from_env(&env(&[("FERRY_KAFKA_PARTITIONS", "0")])).unwrap_err();
        assert_eq!(e.var, "FERRY_KAFKA_PARTITIONS");
        let bad = env(&[("FERRY_HTTP_BREAKER_FAILURES", "many")]);
        assert_eq!(
            HttpTargetConfig::from_env(&bad).unwrap_err().var,
            "FERRY_HTTP_BREAKER_FAILURES"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            BrokerUrl::parse("sqlite:///tmp/b.db").unwrap(),
            BrokerUrl::Sqlite(PathBuf::from("/tmp/b.db"))
        );
        assert_eq!(
            BrokerUrl::parse("redis://127.0.0.1:6379").unwrap(),
            BrokerUrl::Redis("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            BrokerUrl::parse("kafka://127.0.0.1:9092").unwrap(),
            BrokerUrl::Kafka("kafka://127.0.0.1:9092".into())
        );
        assert!(matches!(
            BrokerUrl::parse("amqps://h").unwrap(),
            BrokerUrl::Other { .. }
        ));
        assert!(BrokerUrl::parse("127.0.0.1:6379").is_err());
        assert!(StoreUrl::parse("sqlite://").is_err());
    }
}
