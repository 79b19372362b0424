//! Lease extension on its own timer, every third of the lease, for every lease this process
//! holds (running, buffered, or waiting to be settled).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::broker::Broker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::source::Held;

pub(crate) fn spawn(
    broker: Arc<dyn Broker>,
    held: Held,
    lease_for: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(lease_for / 3) => {}
                () = stop.cancelled() => return,
            }
            let refs = held.snapshot();
            if refs.is_empty() {
                continue;
            }
            match broker.extend(&refs, lease_for).await {
                Ok(still) => {
                    let lost = held.lost(
                        refs.iter()
                            .zip(still)
                            .filter(|(_, ok)| !ok)
                            .map(|(r, _)| *r),
                    );
                    if !lost.is_empty() {
                        tracing::warn!(count = lost.len(), first = %lost[0].id, "leases lost before heartbeat; another worker may run those jobs");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed; will try again"),
            }
        }
    })
}
