//! The consumer side: one group member per process, polled by a thread of its own. The
//! thread turns fetched messages into buffered jobs, commits each partition up to its
//! lowest unfinished offset, stops reading partitions whose buffers are full, moves
//! delay-step messages on when they have waited their step, and handles rebalances: a newly
//! assigned partition starts a batch before its committed offset, and a revoked partition's
//! running jobs get a grace period to finish, then it is committed and forgotten (its
//! unfinished jobs go to the next owner).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use ferry_core::UnixMillis;
use rdkafka::consumer::RebalanceProtocol;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::state::{State, Taken, Tp};
use crate::topology::{Role, classify};
use crate::wire;

pub(crate) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the poller thread, the rebalance callbacks and the broker's calls share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Due work arrived (or a delay step's front became due): idle leasers wake.
    pub(crate) ready: Notify,
    /// Fetching progressed or a rebalance happened: leases waiting to catch up re-check.
    pub(crate) progress: Notify,
    pub(crate) stop: AtomicBool,
    pub(crate) revoke_grace: Duration,
    pub(crate) buffer_per_partition: usize,
    pub(crate) wake: Arc<Wake>,
}

/// The consumer's context: rebalance callbacks run on the poller thread, inside `poll`.
pub(crate) struct Ctx {
    pub(crate) shared: Weak<Shared>,
}

impl ClientContext for Ctx {}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

fn commit_list(points: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), offset) in points {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*offset));
    }
    tpl
}

/// How far before its committed offset a newly assigned partition starts fetching: the
/// largest batch our producer sends (`batch.num.messages`). tansu answers a fetch from inside
/// a batch with the batches after it, silently skipping the rest of that one; starting a
/// batch early and skipping what is below the committed offset here loses nothing, on any
/// Kafka (decision 0012).
pub(crate) const REWIND: i64 = 10_000;

impl ConsumerContext for Ctx {
    /// librdkafka's own assignment steps (as rdkafka's default does), with newly assigned
    /// partitions moved to start [`REWIND`] messages before their committed offsets.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let revoke = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
        if assign {
            self.rewind(consumer, tpl);
        }
        let rebalance = if assign {
            Rebalance::Assign(tpl)
        } else if revoke {
            Rebalance::Revoke(tpl)
        } else {
            Rebalance::Error(KafkaError::Rebalance(err.into()))
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "kafka: applying a rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let tps = tps_of(tpl);
        // Running jobs of the revoked partitions may finish within the grace period; what is
        // still running then goes to the next owner (it runs again: at least once).
        let deadline = Instant::now() + shared.revoke_grace;
        loop {
            let busy = in_flight(&lock(&shared.state), &tps);
            if busy == 0 || Instant::now() >= deadline || shared.stop.load(Ordering::Relaxed) {
                if busy > 0 {
                    tracing::warn!(
                        jobs = busy,
                        "kafka: partitions revoked with jobs still running; their next owner runs them again"
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let points: Vec<(Tp, i64)> = {
            let mut s = lock(&shared.state);
            tps.iter()
                .filter_map(|tp| s.revoke(tp).map(|o| (tp.clone(), o)))
                .collect()
        };
        if !points.is_empty()
            && let Err(e) = consumer.commit(&commit_list(&points), CommitMode::Sync)
        {
            tracing::warn!(error = %e, "kafka: commit on revoke failed; the next owner re-runs finished jobs");
        }
        shared.progress.notify_waiters();
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut s = lock(&shared.state);
                for tp in tps_of(tpl) {
                    if let Some((queue, role)) = classify(&tp.0)
                        && role != Role::Dead
                    {
                        s.assign(tp, queue);
                    }
                }
                s.rebalances += 1;
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka: rebalance failed"),
        }
        shared.progress.notify_waiters();
    }
}

impl Ctx {
    /// Sets each newly assigned partition's start to [`REWIND`] before its committed offset,
    /// and tells the state to skip what lies below the committed offset.
    fn rewind(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => {
                // Starting at the committed offsets is still right on Kafka.
                tracing::warn!(error = %e, "kafka: reading committed offsets on assign failed");
                return;
            }
        };
        let mut resume = Vec::new();
        for e in committed.elements() {
            if let Offset::Offset(at) = e.offset() {
                let from = (at - REWIND).max(0);
                if tpl
                    .set_partition_offset(e.topic(), e.partition(), Offset::Offset(from))
                    .is_ok()
                {
                    resume.push(((Arc::from(e.topic()), e.partition()), at));
                }
            }
        }
        lock(&shared.state).resume_at.extend(resume);
    }
}

/// Offsets of these partitions that are open but not waiting in a buffer: leased, or
/// being moved to another topic.
fn in_flight(s: &State, tps: &[Tp]) -> usize {
    tps.iter()
        .filter_map(|tp| s.parts.get(tp))
        .map(|p| p.open.len().saturating_sub(p.buffered.len()))
        .sum()
}

/// A fetched message as the state takes it: the job (`None` if it is not one of ours) and
/// the time it is held until.
fn decode(topic: &str, payload: Option<&[u8]>) -> Option<(ferry_core::JobEnvelope, UnixMillis)> {
    let (_, role) = classify(topic)?;
    let bytes = payload?;
    let out = match role {
        Role::Work => wire::read_work(bytes).map(|j| (j, UnixMillis(0))),
        Role::Step(_) => wire::read_held(bytes),
        Role::Dead => return None,
    };
    match out {
        Ok(o) => Some(o),
        Err(e) => {
            // Another producer wrote to the topic: nothing can run it, so it is skipped (and
            // counts as finished) rather than blocking the partition's commits forever.
            tracing::error!(topic, error = %e, "kafka: skipping a message that is not a Ferry job");
            None
        }
    }
}

/// Where the poller sends delay-step fronts that must move on (the broker produces them).
pub(crate) type Mover = Box<dyn Fn(Vec<Taken>) + Send>;

/// Wakes the poller thread when one of its queues gets a message or an event.
#[derive(Default)]
pub(crate) struct Wake {
    flag: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Wake {
    pub(crate) fn notify(&self) {
        *self.flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_one();
    }

    fn wait(&self, at_most: Duration) {
        let mut woken = self.flag.lock().unwrap_or_else(PoisonError::into_inner);
        if !*woken {
            woken = self
                .cv
                .wait_timeout(woken, at_most)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *woken = false;
    }
}

type Fetched = (Tp, i64, Option<(ferry_core::JobEnvelope, UnixMillis)>);

fn fetched(m: &rdkafka::message::BorrowedMessage<'_>) -> Fetched {
    let tp: Tp = (Arc::from(m.topic()), m.partition());
    (tp, m.offset(), decode(m.topic(), m.payload()))
}

/// The poller thread's loop; returns when `shared.stop` is set (after a last commit).
///
/// Each owned partition's messages come through a queue of its own, read only while that
/// partition's buffer has room: a full buffer stops its fetching without `pause` (librdkafka
/// resumes a paused partition at the application's position, which can fall inside a
/// batch, where tansu serves nothing).
pub(crate) fn run(consumer: &Arc<BaseConsumer<Ctx>>, shared: &Shared, mover: &Mover) {
    let mut last_tick = Instant::now();
    let mut last_dump = Instant::now();
    let mut batch: Vec<Fetched> = Vec::with_capacity(1024);
    // Per owned partition: the assignment (epoch) its queue was split for, and the queue.
    let mut queues: HashMap<Tp, (u64, PartitionQueue<Ctx>)> = HashMap::new();
    let cap = shared.buffer_per_partition;
    while !shared.stop.load(Ordering::Relaxed) {
        // Events (rebalances, errors), and messages fetched before their partition's split.
        while batch.len() < 2048 {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => batch.push(fetched(&m)),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "kafka: consumer poll");
                    break;
                }
                None => break,
            }
        }
        let room: Vec<(Tp, u64, usize)> = {
            let s = lock(&shared.state);
            s.parts
                .iter()
                .map(|(tp, p)| (tp.clone(), p.epoch, cap.saturating_sub(p.buffered.len())))
                .collect()
        };
        queues.retain(|tp, (epoch, _)| room.iter().any(|(t, e, _)| t == tp && e == epoch));
        for (tp, epoch, free) in &room {
            if !queues.contains_key(tp) {
                let Some(mut q) = consumer.split_partition_queue(&tp.0, tp.1) else {
                    continue;
                };
                let wake = shared.wake.clone();
                q.set_nonempty_callback(move || wake.notify());
                queues.insert(tp.clone(), (*epoch, q));
            }
            let (_, q) = &queues[tp];
            let mut n = 0;
            while n < (*free).min(2048) {
                match q.poll(Duration::ZERO) {
                    Some(Ok(m)) => {
                        batch.push(fetched(&m));
                        n += 1;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "kafka: partition poll");
                        break;
                    }
                    None => break,
                }
            }
        }
        let idle = batch.is_empty();
        if !idle {
            let mut woke = false;
            {
                let mut s = lock(&shared.state);
                for (tp, offset, job) in batch.drain(..) {
                    woke |= s.ingest(&tp, offset, job);
                }
            }
            if woke {
                shared.ready.notify_waiters();
            }
            shared.progress.notify_waiters();
        }
        if last_tick.elapsed() >= Duration::from_millis(20) {
            last_tick = Instant::now();
            tick(consumer, shared, mover);
        }
        if last_dump.elapsed() >= Duration::from_secs(2) && tracing::enabled!(tracing::Level::DEBUG)
        {
            last_dump = Instant::now();
            dump(shared);
        }
        if idle {
            shared.wake.wait(Duration::from_millis(5));
        }
    }
    drop(queues);
    let points = lock(&shared.state).commits();
    if !points.is_empty()
        && let Err(e) = consumer.commit(&commit_list(&points), CommitMode::Sync)
    {
        tracing::warn!(error = %e, "kafka: last commit failed");
    }
}

fn dump(shared: &Shared) {
    let s = lock(&shared.state);
    for ((topic, p), part) in &s.parts {
        tracing::debug!(
            topic = &**topic,
            partition = p,
            buffered = part.buffered.len(),
            open = part.open.len(),
            next = ?part.next,
            committed = ?part.committed,
            produced = ?s.produced.get(&(topic.clone(), *p)),
            "kafka: partition"
        );
    }
    tracing::debug!(held = s.held.len(), "kafka: leases");
}

/// Commits, delay-step moves and wake-ups for due delay-step fronts.
fn tick(consumer: &BaseConsumer<Ctx>, shared: &Shared, mover: &Mover) {
    let now = UnixMillis::now();
    let (points, moves, due) = {
        let mut s = lock(&shared.state);
        let points = s.commits();
        let moves = s.take_moves(now);
        let due = s.next_hold().is_some_and(|t| t <= now) && s.due_count(|_| true, now, 1) > 0;
        (points, moves, due)
    };
    if !points.is_empty()
        && let Err(e) = consumer.commit(&commit_list(&points), CommitMode::Async)
    {
        tracing::debug!(error = %e, "kafka: commit");
    }
    if !moves.is_empty() {
        mover(moves);
    }
    if due {
        shared.ready.notify_waiters();
    }
}
