//! What every operation needs: the connection and the per-queue key cache.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use ferry_core::QueueName;
use ferry_core::broker::{BrokerError, BrokerResult};
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::keys::{QUEUES, QueueKeys};

pub(crate) struct Shared {
    /// Multiplexed and reconnecting: concurrent calls are pipelined on one socket.
    pub(crate) conn: ConnectionManager,
    keys: Mutex<HashMap<QueueName, Arc<QueueKeys>>>,
    /// Queues this process already registered in the global set.
    registered: Mutex<HashSet<QueueName>>,
}

pub(crate) fn unavailable(e: &redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {e}"))
}

impl Shared {
    pub(crate) fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            keys: Mutex::default(),
            registered: Mutex::default(),
        }
    }

    pub(crate) fn keys(&self, queue: &QueueName) -> Arc<QueueKeys> {
        let mut map = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(queue.clone())
            .or_insert_with(|| Arc::new(QueueKeys::new(queue)))
            .clone()
    }

    /// Adds `queue` to the global set once per process, so that `QueueSelector::All` finds it.
    pub(crate) async fn register(&self, queue: &QueueName) -> BrokerResult<()> {
        let known = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(queue);
        if known {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("SADD")
            .arg(QUEUES)
            .arg(queue.as_str())
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.clone());
        Ok(())
    }

    /// Runs `script` on one queue's keys (plus `extra_keys`) with `args`.
    pub(crate) async fn run(
        &self,
        script: &Script,
        keys: &QueueKeys,
        extra_keys: &[String],
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> BrokerResult<Value> {
        let mut inv = script.prepare_invoke();
        for k in keys.keys.iter().chain(extra_keys) {
            inv.key(k);
        }
        args(&mut inv);
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }
}
