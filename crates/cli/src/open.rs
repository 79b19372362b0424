//! Opening the configured broker and store. URLs this build cannot serve are refused with a
//! message that says what it can.

use std::sync::Arc;

use anyhow::Context;
use ferry_broker_redis::{ConnectError, RedisBroker, RedisBrokerConfig};
use ferry_broker_sqlite::{SqliteBroker, SqliteBrokerConfig};
use ferry_config::{BrokerUrl, StoreUrl};
use ferry_core::broker::Broker;
use ferry_core::store::Store;
use ferry_store::{PgOpenError, PgStore, PgStoreConfig, SqliteStore, SqliteStoreConfig};

use crate::UsageError;

fn redis_config(url: &str) -> anyhow::Result<RedisBrokerConfig> {
    let keep = ferry_config::RedisConfig::from_env(&ferry_config::ProcessEnv)?;
    Ok(RedisBrokerConfig {
        idempotency_ttl: keep.idempotency_ttl,
        dead_max: keep.dead_max,
        ..RedisBrokerConfig::new(url)
    })
}

pub(crate) async fn broker(url: &BrokerUrl) -> anyhow::Result<Arc<dyn Broker>> {
    broker_in_group(url, None).await
}

/// Opens the broker; on Kafka, `group` (when given) replaces `FERRY_KAFKA_GROUP`, so that a
/// benchmark never joins (and rebalances) the pool of a running deployment.
pub(crate) async fn broker_in_group(
    url: &BrokerUrl,
    group: Option<String>,
) -> anyhow::Result<Arc<dyn Broker>> {
    #[cfg(not(feature = "kafka"))]
    let _ = group;
    match url {
        BrokerUrl::Sqlite(path) => {
            let b = SqliteBroker::open(SqliteBrokerConfig::new(path))
                .await
                .with_context(|| format!("opening the broker at sqlite://{}", path.display()))?;
            Ok(Arc::new(b))
        }
        BrokerUrl::Redis(url) => match RedisBroker::connect(redis_config(url)?).await {
            Ok(b) => Ok(Arc::new(b)),
            // A malformed URL is the operator's to fix (exit 2); an unreachable server may be
            // a moment away (exit 1), so supervisors restart us.
            Err(e @ ConnectError::InvalidUrl(_)) => {
                Err(UsageError(format!("FERRY_BROKER_URL: {e}")).into())
            }
            Err(e) => Err(anyhow::anyhow!("FERRY_BROKER_URL: {e}")),
        },
        #[cfg(feature = "amqp")]
        BrokerUrl::Amqp(url) => {
            use ferry_broker_amqp::{AmqpBroker, AmqpBrokerConfig, ConnectError as AmqpError};
            match AmqpBroker::connect(AmqpBrokerConfig::new(url)).await {
                Ok(b) => Ok(Arc::new(b)),
                Err(e @ AmqpError::InvalidUrl(_)) => {
                    Err(UsageError(format!("FERRY_BROKER_URL: {e}")).into())
                }
                Err(e) => Err(anyhow::anyhow!("FERRY_BROKER_URL: {e}")),
            }
        }
        #[cfg(not(feature = "amqp"))]
        BrokerUrl::Amqp(_) => Err(UsageError(
            "FERRY_BROKER_URL: this ferry was built without the amqp feature".into(),
        )
        .into()),
        #[cfg(feature = "kafka")]
        BrokerUrl::Kafka(url) => {
            use ferry_broker_kafka::{ConnectError as KafkaError, KafkaBroker, KafkaBrokerConfig};
            let env = ferry_config::KafkaConfig::from_env(&ferry_config::ProcessEnv)?;
            let config = KafkaBrokerConfig {
                group: group.unwrap_or(env.group),
                partitions: env.partitions,
                replication: env.replication,
                session_timeout: env.session_timeout,
                fetch_wait: env.fetch_wait,
                ..KafkaBrokerConfig::new(url)
            };
            match KafkaBroker::connect(config).await {
                Ok(b) => Ok(Arc::new(b)),
                Err(e @ KafkaError::InvalidUrl(_)) => {
                    Err(UsageError(format!("FERRY_BROKER_URL: {e}")).into())
                }
                Err(e) => Err(anyhow::anyhow!("FERRY_BROKER_URL: {e}")),
            }
        }
        #[cfg(not(feature = "kafka"))]
        BrokerUrl::Kafka(_) => Err(UsageError(
            "FERRY_BROKER_URL: this ferry was built without the kafka feature".into(),
        )
        .into()),
        BrokerUrl::Other { scheme, url } => Err(UsageError(format!(
            "FERRY_BROKER_URL={url:?}: the {scheme} broker is not part of this build yet; use sqlite://PATH (the default), redis://HOST, amqp://HOST or kafka://HOST:PORT"
        ))
        .into()),
    }
}

pub(crate) async fn store(
    url: &StoreUrl,
    retention: Option<std::time::Duration>,
) -> anyhow::Result<Arc<dyn Store>> {
    match url {
        StoreUrl::Sqlite(path) => {
            let s = SqliteStore::open(SqliteStoreConfig {
                path: path.clone(),
                retention,
            })
            .await
            .with_context(|| format!("opening the store at sqlite://{}", path.display()))?;
            Ok(Arc::new(s))
        }
        StoreUrl::Postgres(url) => match PgStore::connect(PgStoreConfig {
            retention,
            ..PgStoreConfig::new(url)
        })
        .await
        {
            Ok(s) => Ok(Arc::new(s)),
            Err(e @ PgOpenError::InvalidUrl(_)) => {
                Err(UsageError(format!("FERRY_DATABASE_URL: {e}")).into())
            }
            Err(e) => Err(anyhow::anyhow!("FERRY_DATABASE_URL: {e}")),
        },
    }
}
