//! The settler: collects finished attempts from all running jobs, records their events in
//! the store, and only then settles their leases with the broker, in batches. Recording
//! first means a crash between the two re-runs the job (at-least-once) instead of losing
//! its history.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::broker::{Broker, LeaseRef, Settle, SettleOutcome, Settlement};
use ferry_core::store::{JobEvent, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::source::Held;

pub(crate) enum Msg {
    /// History only: an attempt started.
    Started(JobEvent),
    /// An attempt ended: record, then settle.
    Finished {
        lease: LeaseRef,
        settlement: Settlement,
        event: JobEvent,
    },
    /// Settle with nothing to record: a job given back before it started (a per-key limit
    /// said "not yet"), which history never saw leave the queue.
    Unstarted {
        lease: LeaseRef,
        settlement: Settlement,
    },
}

/// Hands finished attempts to the settler task. Dropping every clone lets the task flush
/// what it has and exit.
#[derive(Clone)]
pub(crate) struct Settler {
    tx: mpsc::Sender<Msg>,
}

const MAX_BATCH: usize = 4096;

impl Settler {
    pub(crate) fn spawn(
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        held: Held,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let task = tokio::spawn(run(rx, broker, store, held));
        (Self { tx }, task)
    }

    pub(crate) async fn send(&self, msg: Msg) {
        // The task only stops once every sender is gone, so this cannot fail while we hold one.
        let _ = self.tx.send(msg).await;
    }
}

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    held: Held,
) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let mut events = Vec::with_capacity(buf.len());
        let mut settles = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                Msg::Started(e) => events.push(e),
                Msg::Finished {
                    lease,
                    settlement,
                    event,
                } => {
                    events.push(event);
                    settles.push(Settle { lease, settlement });
                }
                Msg::Unstarted { lease, settlement } => {
                    settles.push(Settle { lease, settlement });
                }
            }
        }
        record(store.as_ref(), events).await;
        if settles.is_empty() {
            continue;
        }
        held.settling(settles.iter().map(|s| s.lease));
        let outcomes = settle(broker.as_ref(), &settles).await;
        let stale: Vec<_> = settles
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == SettleOutcome::Stale)
            .map(|(s, _)| s.lease)
            .collect();
        if !stale.is_empty() {
            ferry_telemetry::stale_settlements(stale.len() as u64);
            tracing::warn!(
                count = stale.len(),
                first = %stale[0].id,
                "settlements refused: those leases had expired and the jobs moved on"
            );
        }
        held.remove(settles.iter().map(|s| s.lease));
    }
}

async fn record(store: &dyn Store, events: Vec<JobEvent>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.record(events.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "recording history failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn settle(broker: &dyn Broker, settles: &[Settle]) -> Vec<SettleOutcome> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match broker.settle(settles).await {
            Ok(o) => return o,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "settling leases failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
