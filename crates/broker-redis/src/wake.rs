//! Wake-ups across processes: a task holds a pub/sub subscription to the wake channel and
//! wakes this process's idle consumers whenever any process pushes to an empty queue. The
//! same subscription carries cancel requests for running jobs to this process's workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::keys::{CANCEL_CHANNEL, WAKE_CHANNEL};

pub(crate) struct Wakeups {
    notify: Notify,
    /// Cancel requests from any process, for this process's workers.
    pub(crate) cancels: tokio::sync::broadcast::Sender<ferry_core::JobId>,
    /// False while the subscription is down: consumers then poll quickly instead of relying
    /// on messages that cannot arrive.
    subscribed: AtomicBool,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            cancels: tokio::sync::broadcast::channel(1024).0,
            subscribed: AtomicBool::new(false),
        }
    }
}

impl Wakeups {
    pub(crate) fn wake(&self) {
        // Wake everyone waiting now, and leave a permit for a consumer that is between an
        // empty lease and its wait, so that the push is not missed.
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    pub(crate) fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub(crate) async fn wait(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.notify.notified()).await;
    }
}

/// Runs until aborted: subscribes, forwards messages, resubscribes with back-off when the
/// connection drops.
pub(crate) async fn listen(client: redis::Client, wakeups: Arc<Wakeups>, connect: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(WAKE_CHANNEL).await?;
            ps.subscribe(CANCEL_CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(connect, session).await {
            Ok(Ok(mut ps)) => {
                backoff = Duration::from_millis(100);
                wakeups.subscribed.store(true, Ordering::Relaxed);
                // Anything pushed while we were not subscribed is found by this wake-up.
                wakeups.wake();
                let mut messages = ps.on_message();
                while let Some(msg) = messages.next().await {
                    if msg.get_channel_name() == CANCEL_CHANNEL {
                        let id = uuid::Uuid::from_slice(msg.get_payload_bytes())
                            .map(ferry_core::JobId::from_uuid);
                        if let Ok(id) = id {
                            // Nobody listening (an API-only process) is fine.
                            let _ = wakeups.cancels.send(id);
                        }
                    } else {
                        wakeups.wake();
                    }
                }
                wakeups.subscribed.store(false, Ordering::Relaxed);
                tracing::warn!("redis wake-up subscription lost; polling until it is back");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "redis wake-up subscription failed"),
            Err(_) => tracing::debug!("redis wake-up subscription timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
