#![doc = include_str!("../README.md")]

mod config;
mod feed;
mod topology;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::broker::{
    Broker, BrokerError, BrokerResult, CancelOutcome, Capabilities, DeadJob, EnqueueOutcome,
    FencingToken, Lease, LeaseRef, QueueSelector, QueueStats, Settle, SettleOutcome, Settlement,
};
use ferry_core::{JobEnvelope, JobId, QueueName, UnixMillis};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use tokio::sync::Notify;

pub use config::AmqpBrokerConfig;
use feed::{Feed, Feeds};
use topology::Names;

/// Why the broker could not start. One line each, fit for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("not a valid amqp URL: {0}")]
    InvalidUrl(String),
    #[error("cannot reach RabbitMQ at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

fn unavailable(e: &lapin::Error) -> BrokerError {
    BrokerError::Unavailable(format!("rabbitmq: {e}"))
}

/// One connection and its channels; replaced as a whole when the connection fails.
struct Session {
    _conn: Connection,
    /// Publisher confirms on: a publish is done when RabbitMQ has the message.
    publish: Channel,
    /// Every queue's `basic.consume`, and the acks and rejects of what it delivered
    /// (delivery tags are per channel). Its prefetch window is channel-wide.
    consume: Channel,
    /// Declarations, counts and dead-letter browsing (`basic.get`), kept off the consume
    /// channel so that its prefetch window counts only leases and buffered deliveries.
    admin: Channel,
    /// Which session a delivery tag belongs to.
    generation: u64,
}

/// A lease this process holds: the delivery it stands for.
struct Held {
    queue: QueueName,
    tag: u64,
    generation: u64,
    job: Arc<JobEnvelope>,
    expires: Instant,
}

struct Inner {
    config: AmqpBrokerConfig,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    generations: AtomicU64,
    /// Queues whose topology this process declared (per session generation).
    declared: Mutex<HashSet<(u64, QueueName)>>,
    held: Mutex<HashMap<LeaseRef, Held>>,
    /// Deliveries pushed ahead of leases, per queue.
    feeds: Feeds,
    /// One lease at a time: its emptiness check (the fence) reasons about the whole channel.
    leasing: tokio::sync::Mutex<()>,
    /// The consume channel's prefetch window as last set.
    window: AtomicU64,
    counter: AtomicU64,
    pushed: Notify,
    cancels: tokio::sync::broadcast::Sender<JobId>,
}

/// Ferry's RabbitMQ broker. Cheap to clone.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
    _reaper: Arc<Reaper>,
}

/// Stops the lease reaper when the last clone of the broker goes.
struct Reaper(tokio::task::JoinHandle<()>);

impl Drop for Reaper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a lease that finds nothing buffered, while the server still counts ready
/// messages, waits for their deliveries before it answers empty.
const FENCE_PATIENCE: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ferry priorities (i16, higher first) onto RabbitMQ's 0..=31: -16..=15 keep their order,
/// the rest are clamped.
fn amqp_priority(p: i16) -> u8 {
    u8::try_from((i32::from(p) + 16).clamp(0, 31)).unwrap_or(0)
}

impl AmqpBroker {
    /// Connects and checks the server answers.
    ///
    /// # Errors
    /// A malformed URL, or a server that cannot be reached (one clear line each).
    pub async fn connect(config: AmqpBrokerConfig) -> Result<Self, ConnectError> {
        let shown = ferry_core::redacted_url(&config.url);
        if let Err(e) = config.url.parse::<lapin::uri::AMQPUri>() {
            return Err(ConnectError::InvalidUrl(format!("{shown}: {e}")));
        }
        let inner = Arc::new(Inner {
            config,
            session: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            declared: Mutex::default(),
            held: Mutex::default(),
            feeds: Feeds::default(),
            leasing: tokio::sync::Mutex::new(()),
            window: AtomicU64::new(1),
            counter: AtomicU64::new(0),
            pushed: Notify::new(),
            cancels: tokio::sync::broadcast::channel(16).0,
        });
        inner
            .session()
            .await
            .map_err(|e| ConnectError::Unreachable {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        let reaper = {
            let inner = Arc::downgrade(&inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let Some(inner) = inner.upgrade() else { return };
                    inner.reap().await;
                }
            })
        };
        Ok(Self {
            inner,
            _reaper: Arc::new(Reaper(reaper)),
        })
    }
}

impl Inner {
    /// The live session, connecting (again) when there is none or it failed.
    async fn session(&self) -> BrokerResult<Arc<Session>> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref()
            && s.publish.status().connected()
            && s.consume.status().connected()
            && s.admin.status().connected()
        {
            return Ok(s.clone());
        }
        *slot = None;
        let connect = Connection::connect(&self.config.url, ConnectionProperties::default());
        let conn = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Err(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "rabbitmq: no answer within {:?}",
                    self.config.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(unavailable(&e)),
            Ok(Ok(c)) => c,
        };
        let publish = conn.create_channel().await.map_err(|e| unavailable(&e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable(&e))?;
        let consume = conn.create_channel().await.map_err(|e| unavailable(&e))?;
        // Channel-wide (`global`) so that one window covers every queue's consumer; leases
        // widen it to what they hold plus what they ask for. Until then, one at a time.
        consume
            .basic_qos(1, BasicQosOptions { global: true })
            .await
            .map_err(|e| unavailable(&e))?;
        let admin = conn.create_channel().await.map_err(|e| unavailable(&e))?;
        let s = Arc::new(Session {
            _conn: conn,
            publish,
            consume,
            admin,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        });
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Declares a queue's topology once per session.
    async fn declare(&self, s: &Session, queue: &QueueName) -> BrokerResult<Names> {
        let names = Names::new(queue, &self.config.delay_buckets);
        let key = (s.generation, queue.clone());
        if lock(&self.declared).contains(&key) {
            return Ok(names);
        }
        topology::declare(&s.admin, &names)
            .await
            .map_err(|e| unavailable(&e))?;
        lock(&self.declared).insert(key);
        Ok(names)
    }

    /// Publishes `job` so that it is delivered from `at` on: to the work queue when due,
    /// else to the delay bucket that returns it soonest without being early.
    async fn publish(
        &self,
        s: &Session,
        names: &Names,
        job: &JobEnvelope,
        at: UnixMillis,
    ) -> BrokerResult<PublisherConfirm> {
        let wait = UnixMillis::now().until(at);
        let routing = names.route(wait);
        self.publish_to(s, &routing, job, None).await
    }

    async fn publish_to(
        &self,
        s: &Session,
        routing: &str,
        job: &JobEnvelope,
        error: Option<&str>,
    ) -> BrokerResult<PublisherConfirm> {
        let body = serde_json::to_vec(job)
            .map_err(|e| BrokerError::Rejected(format!("cannot encode job {}: {e}", job.id)))?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(amqp_priority(job.priority));
        if let Some(e) = error {
            let mut h = FieldTable::default();
            h.insert("x-ferry-error".into(), AMQPValue::LongString(e.into()));
            props = props.with_headers(h);
        }
        s.publish
            .basic_publish(
                "".into(),
                routing.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map_err(|e| unavailable(&e))
    }

    /// Turns one delivery into a lease, or sends it on to its next delay step when it came
    /// back before its time (then `None`).
    async fn take(
        &self,
        s: &Session,
        n: &Names,
        queue: &QueueName,
        d: lapin::message::Delivery,
        lease_for: Duration,
    ) -> BrokerResult<Option<Lease>> {
        let mut job = match job_of(&d) {
            Ok(j) => j,
            Err(e) => {
                // Not a Ferry job (another publisher wrote to the queue): left unacked it
                // would be stuck for this connection's life; nothing can run it.
                tracing::error!(queue = %queue, error = %e, "dropping a message that is not a Ferry job");
                s.consume
                    .basic_reject(d.delivery_tag, BasicRejectOptions { requeue: false })
                    .await
                    .map_err(|e| unavailable(&e))?;
                return Ok(None);
            }
        };
        if job.run_at > UnixMillis::now() {
            let c = self.publish(s, n, &job, job.run_at).await?;
            confirmed(c).await?;
            s.consume
                .basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await
                .map_err(|e| unavailable(&e))?;
            return Ok(None);
        }
        job.attempt += 1;
        // Newer attempts always carry larger tokens, whichever process leases them; the low
        // half tells this process's leases of one attempt apart.
        let token = (u64::from(job.attempt) << 32)
            | (self.counter.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
        let job = Arc::new(job);
        let lease = Lease {
            job: job.clone(),
            token: FencingToken(token),
            expires_at: UnixMillis::now().plus(lease_for),
        };
        lock(&self.held).insert(
            lease.to_ref(),
            Held {
                queue: queue.clone(),
                tag: d.delivery_tag,
                generation: s.generation,
                job,
                expires: Instant::now() + lease_for,
            },
        );
        Ok(Some(lease))
    }

    /// Starts `queue`'s consumer on this session's consume channel, unless it runs.
    async fn feed(&self, s: &Session, queue: &QueueName, n: &Names) -> BrokerResult<()> {
        let kept = {
            let mut feeds = self.feeds.lock();
            match feeds.get(queue) {
                Some(f) if f.generation == s.generation && !f.ended => return Ok(()),
                // An ended consumer's deliveries are still valid on a live channel.
                Some(f) if f.generation == s.generation => {
                    feeds.remove(queue).map(|f| f.buffer).unwrap_or_default()
                }
                // Another session's deliveries died with its channel: RabbitMQ requeued them.
                _ => std::collections::VecDeque::new(),
            }
        };
        let consumer = s
            .consume
            .basic_consume(
                n.work.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let mut f = Feed::new(s.generation, consumer);
        f.buffer = kept;
        self.feeds.lock().insert(queue.clone(), f);
        Ok(())
    }

    /// Leases what the feeds of `queues` have delivered, up to `max` in `out`.
    async fn take_buffered(
        &self,
        s: &Session,
        queues: &[(QueueName, Names)],
        max: usize,
        lease_for: Duration,
        out: &mut Vec<Lease>,
    ) -> BrokerResult<()> {
        for (queue, n) in queues {
            loop {
                let want = max.saturating_sub(out.len());
                if want == 0 {
                    return Ok(());
                }
                let got: Vec<lapin::message::Delivery> = {
                    let mut feeds = self.feeds.lock();
                    let Some(f) = feeds.get_mut(queue) else { break };
                    f.drain_arrived();
                    let k = want.min(f.buffer.len());
                    f.buffer.drain(..k).collect()
                };
                if got.is_empty() {
                    break;
                }
                for d in got {
                    if let Some(lease) = self.take(s, n, queue, d, lease_for).await? {
                        out.push(lease);
                    }
                }
            }
        }
        Ok(())
    }

    /// A round trip on the consume channel: when it returns, every delivery the server sent
    /// before it has reached the feeds. Sets the prefetch window to `window` (or keeps it).
    async fn fence(&self, s: &Session, window: Option<usize>) -> BrokerResult<()> {
        let w = match window {
            Some(w) => {
                let w = u16::try_from(w).unwrap_or(u16::MAX);
                self.window.store(u64::from(w), Ordering::Relaxed);
                w
            }
            None => u16::try_from(self.window.load(Ordering::Relaxed)).unwrap_or(u16::MAX),
        };
        s.consume
            .basic_qos(w, BasicQosOptions { global: true })
            .await
            .map_err(|e| unavailable(&e))
    }

    /// Deliveries of this session not yet acked: held leases and buffered ones.
    fn unacked(&self, generation: u64) -> usize {
        let held = lock(&self.held)
            .values()
            .filter(|h| h.generation == generation)
            .count();
        let buffered: usize = self
            .feeds
            .lock()
            .values()
            .filter(|f| f.generation == generation)
            .map(|f| f.buffer.len())
            .sum();
        held + buffered
    }

    /// Stops every consumer and gives back what they delivered that no lease took: a fresh
    /// copy of each job (with a lost delivery counted, as a lease would have), then the ack.
    /// Requeueing instead would mark them redelivered, and count an attempt that never ran.
    async fn release_prefetched(&self) -> BrokerResult<()> {
        let _one_at_a_time = self.leasing.lock().await;
        let s = self.session().await?;
        let tags: Vec<lapin::types::ShortString> = self
            .feeds
            .lock()
            .values()
            .filter(|f| f.generation == s.generation && !f.ended)
            .map(Feed::tag)
            .collect();
        // Each cancel-ok also comes back after every delivery sent before it.
        for t in tags {
            s.consume
                .basic_cancel(t, BasicCancelOptions::default())
                .await
                .map_err(|e| unavailable(&e))?;
        }
        let left: Vec<(QueueName, lapin::message::Delivery)> = {
            let mut feeds = self.feeds.lock();
            feeds
                .drain()
                .filter(|(_, f)| f.generation == s.generation)
                .flat_map(|(q, mut f)| {
                    f.drain_arrived();
                    f.buffer.into_iter().map(move |d| (q.clone(), d))
                })
                .collect()
        };
        let mut confirms = Vec::new();
        let mut acks = Vec::new();
        for (queue, d) in left {
            let names = self.declare(&s, &queue).await?;
            match job_of(&d) {
                Ok(job) => {
                    confirms.push(self.publish_to(&s, &names.work, &job, None).await?);
                    acks.push(d.delivery_tag);
                }
                Err(_) => {
                    // Not a Ferry job: whoever leases it next drops it (and says so).
                    s.consume
                        .basic_reject(d.delivery_tag, BasicRejectOptions { requeue: true })
                        .await
                        .map_err(|e| unavailable(&e))?;
                }
            }
        }
        for c in futures_util::future::join_all(confirms.into_iter().map(confirmed)).await {
            c?;
        }
        let acked = acks
            .iter()
            .map(|t| s.consume.basic_ack(*t, BasicAckOptions::default()));
        for a in futures_util::future::join_all(acked).await {
            a.map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }

    /// Gives back (requeues) the deliveries of expired leases: RabbitMQ delivers them again.
    async fn reap(&self) {
        let now = Instant::now();
        let expired: Vec<Held> = {
            let mut held = lock(&self.held);
            let gone: Vec<LeaseRef> = held
                .iter()
                .filter(|(_, h)| h.expires <= now)
                .map(|(r, _)| *r)
                .collect();
            gone.iter().filter_map(|r| held.remove(r)).collect()
        };
        if expired.is_empty() {
            return;
        }
        let Ok(s) = self.session().await else { return };
        for h in expired {
            if h.generation == s.generation {
                let _ = s
                    .consume
                    .basic_reject(h.tag, BasicRejectOptions { requeue: true })
                    .await;
            }
        }
    }
}

async fn confirmed(c: PublisherConfirm) -> BrokerResult<()> {
    match c.await.map_err(|e| unavailable(&e))? {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(BrokerError::Unavailable(
            "rabbitmq refused to store a message (nack)".into(),
        )),
    }
}

/// A delivery's job, with the attempt this delivery is. A redelivery (the previous holder's
/// channel closed, or its lease expired here) counts the lost delivery as an attempt.
fn job_of(d: &lapin::message::Delivery) -> BrokerResult<JobEnvelope> {
    let mut job: JobEnvelope = serde_json::from_slice(&d.data)
        .map_err(|e| BrokerError::Unavailable(format!("rabbitmq: undecodable job: {e}")))?;
    if d.redelivered {
        job.attempt += 1;
    }
    Ok(job)
}

/// The next dead letter of a queue, unacked (the caller acks or requeues it).
async fn next_dead(
    s: &Session,
    names: &Names,
) -> BrokerResult<Option<(lapin::message::Delivery, JobEnvelope)>> {
    let got = s
        .admin
        .basic_get(
            names.dead.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .map_err(|e| unavailable(&e))?;
    let Some(msg) = got else { return Ok(None) };
    let d = msg.delivery;
    let job = serde_json::from_slice(&d.data)
        .map_err(|e| BrokerError::Unavailable(format!("rabbitmq: undecodable dead job: {e}")))?;
    Ok(Some((d, job)))
}

fn error_of(d: &lapin::message::Delivery) -> String {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-ferry-error").cloned())
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

#[async_trait]
impl Broker for AmqpBroker {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delay: true,
            priority: true,
            per_message_lease: true,
            pause: false,
            // Consumers: a push from any process arrives as a delivery and wakes the waiter.
            cross_process_wakeup: true,
            limits: false,
            idempotency: false,
            cancel: false,
        }
    }

    async fn enqueue(&self, jobs: Vec<JobEnvelope>) -> BrokerResult<Vec<EnqueueOutcome>> {
        let inner = &self.inner;
        let s = inner.session().await?;
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let names = inner.declare(&s, &job.queue).await?;
            confirms.push(inner.publish(&s, &names, job, job.run_at).await?);
        }
        // A 2xx from the API means RabbitMQ has every message.
        for c in confirms {
            confirmed(c).await?;
        }
        inner.pushed.notify_waiters();
        Ok(EnqueueOutcome::all_new(&jobs))
    }

    async fn lease(
        &self,
        queues: &QueueSelector,
        max: usize,
        lease_for: Duration,
        _worker: &str,
    ) -> BrokerResult<Vec<Lease>> {
        let inner = &self.inner;
        inner.reap().await;
        let _one_at_a_time = inner.leasing.lock().await;
        let s = inner.session().await?;
        let names: Vec<QueueName> = match queues {
            QueueSelector::Only(qs) => qs.clone(),
            // RabbitMQ cannot list queues over AMQP: the ones this process has used.
            QueueSelector::All => lock(&inner.declared)
                .iter()
                .filter(|(g, _)| *g == s.generation)
                .map(|(_, q)| q.clone())
                .collect(),
        };
        let mut queues = Vec::with_capacity(names.len());
        for q in names {
            let n = inner.declare(&s, &q).await?;
            inner.feed(&s, &q, &n).await?;
            queues.push((q, n));
        }
        let mut out = Vec::new();
        inner
            .take_buffered(&s, &queues, max, lease_for, &mut out)
            .await?;
        if out.len() == max {
            return Ok(out);
        }
        // Short of `max`. More may be ready on the server, or on its way (lapin hands
        // deliveries over asynchronously, and RabbitMQ can answer a count before it sends
        // what it already dispatched), so it is decided by a fence: the ready count first,
        // then a round trip on the consume channel, which comes back after every delivery
        // the server sent before it.
        let give_up = Instant::now() + FENCE_PATIENCE;
        loop {
            let mut ready = 0u64;
            for (_, n) in &queues {
                ready += topology::ready(&s.admin, n)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            // The fence doubles as the window: what this process holds (leased or
            // buffered), plus what this lease still asks for.
            let window = inner.unacked(s.generation) + (max - out.len());
            inner.fence(&s, Some(window)).await?;
            inner
                .take_buffered(&s, &queues, max, lease_for, &mut out)
                .await?;
            let now = Instant::now();
            if out.len() == max || ready == 0 || now >= give_up {
                return Ok(out);
            }
            // Ready messages the server has not pushed yet (or pushed to another process):
            // wait briefly for a delivery, then look again.
            let qs: Vec<QueueName> = queues.iter().map(|(q, _)| q.clone()).collect();
            let _ =
                tokio::time::timeout(give_up - now, inner.feeds.arrival(&qs, s.generation)).await;
        }
    }

    async fn extend(&self, leases: &[LeaseRef], lease_for: Duration) -> BrokerResult<Vec<bool>> {
        let now = Instant::now();
        let mut held = lock(&self.inner.held);
        Ok(leases
            .iter()
            .map(|r| match held.get_mut(r) {
                Some(h) if h.expires > now => {
                    h.expires = now + lease_for;
                    true
                }
                _ => false,
            })
            .collect())
    }

    async fn settle(&self, batch: &[Settle]) -> BrokerResult<Vec<SettleOutcome>> {
        let inner = &self.inner;
        let s = inner.session().await?;
        let now = Instant::now();
        let mut out = Vec::with_capacity(batch.len());
        let mut acks = Vec::new();
        let mut confirms = Vec::new();
        for st in batch {
            let h = lock(&inner.held).remove(&st.lease);
            let Some(h) = h else {
                out.push(SettleOutcome::Stale);
                continue;
            };
            if h.generation != s.generation || h.expires <= now {
                // Its channel is gone (RabbitMQ redelivers it) or its lease ran out.
                if h.generation == s.generation {
                    let _ = s
                        .consume
                        .basic_reject(h.tag, BasicRejectOptions { requeue: true })
                        .await;
                }
                out.push(SettleOutcome::Stale);
                continue;
            }
            let names = inner.declare(&s, &h.queue).await?;
            let mut job = (*h.job).clone();
            match &st.settlement {
                Settlement::Ack => {}
                // The due time travels in the envelope: a message back early from a delay
                // step goes on to the next one.
                Settlement::Retry { at, .. } => {
                    job.run_at = *at;
                    confirms.push(inner.publish(&s, &names, &job, *at).await?);
                }
                Settlement::Release { at } => {
                    job.attempt = job.attempt.saturating_sub(1);
                    job.run_at = *at;
                    confirms.push(inner.publish(&s, &names, &job, *at).await?);
                }
                Settlement::Dead { error } => {
                    confirms.push(inner.publish_to(&s, &names.dead, &job, Some(error)).await?);
                }
            }
            acks.push(h.tag);
            out.push(SettleOutcome::Applied);
        }
        // Republished copies first, acks after: a crash in between delivers a job twice,
        // never zero times. Each group goes out at once rather than a round trip apiece.
        for c in futures_util::future::join_all(confirms.into_iter().map(confirmed)).await {
            c?;
        }
        let acked = acks
            .iter()
            .map(|t| s.consume.basic_ack(*t, BasicAckOptions::default()));
        for a in futures_util::future::join_all(acked).await {
            a.map_err(|e| unavailable(&e))?;
        }
        if batch.iter().any(|s| {
            matches!(
                s.settlement,
                Settlement::Retry { .. } | Settlement::Release { .. }
            )
        }) {
            inner.pushed.notify_waiters();
        }
        Ok(out)
    }

    async fn wait_for_jobs(&self, queues: &QueueSelector, max_wait: Duration) {
        let inner = &self.inner;
        let generation = inner.generations.load(Ordering::Relaxed);
        let qs: Vec<QueueName> = match queues {
            QueueSelector::Only(qs) => qs.clone(),
            QueueSelector::All => inner.feeds.lock().keys().cloned().collect(),
        };
        let consuming = {
            let feeds = inner.feeds.lock();
            qs.iter()
                .any(|q| feeds.get(q).is_some_and(|f| f.generation == generation))
        };
        if !consuming {
            // No consumer yet (nothing leased in this session): poll.
            let wait = max_wait.min(inner.config.poll_interval);
            let _ = tokio::time::timeout(wait, inner.pushed.notified()).await;
            return;
        }
        // A push from any process arrives as a delivery.
        tokio::select! {
            () = inner.feeds.arrival(&qs, generation) => {}
            () = inner.pushed.notified() => {}
            () = tokio::time::sleep(max_wait) => {}
        }
    }

    async fn release_prefetched(&self) {
        if let Err(e) = self.inner.release_prefetched().await {
            // Their channel closes with the connection and RabbitMQ redelivers them (each
            // counting one attempt, as after a crash).
            tracing::warn!(error = %e, "could not give back prefetched jobs");
        }
    }

    async fn stats(&self, queue: &QueueName) -> BrokerResult<QueueStats> {
        let inner = &self.inner;
        let _no_lease_meanwhile = inner.leasing.lock().await;
        let s = inner.session().await?;
        let names = inner.declare(&s, queue).await?;
        // A message is either counted ready by the server or delivered here, never both:
        // close the window to what this process holds, so that nothing is delivered while
        // the server counts, and what was sent before is in the feeds after the fence.
        let open = usize::try_from(inner.window.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        inner
            .fence(&s, Some(inner.unacked(s.generation).max(1)))
            .await?;
        let counted = topology::counts(&s.admin, &names).await;
        let buffered = inner.feeds.buffered(queue);
        inner.fence(&s, Some(open)).await?;
        let counts = counted.map_err(|e| unavailable(&e))?;
        let leased = lock(&inner.held)
            .values()
            .filter(|h| h.queue == *queue)
            .count() as u64;
        Ok(QueueStats {
            // Delivered to this process ahead of a lease: still waiting to run.
            ready: counts.work + buffered,
            scheduled: counts.delayed,
            leased,
            dead: counts.dead,
            paused: false,
        })
    }

    async fn pause(&self, _queue: &QueueName) -> BrokerResult<()> {
        Err(BrokerError::Unsupported("pause"))
    }

    async fn resume(&self, _queue: &QueueName) -> BrokerResult<()> {
        Err(BrokerError::Unsupported("pause"))
    }

    async fn dead_jobs(&self, queue: &QueueName, limit: usize) -> BrokerResult<Vec<DeadJob>> {
        let inner = &self.inner;
        let s = inner.session().await?;
        let names = inner.declare(&s, queue).await?;
        // Browse: take up to `limit`, then give them all back in order.
        let mut tags = Vec::new();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((d, job)) = next_dead(&s, &names).await? else {
                break;
            };
            tags.push(d.delivery_tag);
            out.push(DeadJob {
                job,
                error: error_of(&d),
            });
        }
        for t in tags {
            s.admin
                .basic_reject(t, BasicRejectOptions { requeue: true })
                .await
                .map_err(|e| unavailable(&e))?;
        }
        Ok(out)
    }

    async fn retry_dead(&self, queue: &QueueName, ids: Option<&[JobId]>) -> BrokerResult<u64> {
        let inner = &self.inner;
        let s = inner.session().await?;
        let names = inner.declare(&s, queue).await?;
        let mut keep = Vec::new();
        let mut moved = 0;
        while let Some((d, mut job)) = next_dead(&s, &names).await? {
            if ids.is_some_and(|ids| !ids.contains(&job.id)) {
                keep.push(d.delivery_tag);
                continue;
            }
            // A fresh attempt budget.
            job.attempt = 0;
            confirmed(inner.publish_to(&s, &names.work, &job, None).await?).await?;
            s.admin
                .basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await
                .map_err(|e| unavailable(&e))?;
            moved += 1;
        }
        for t in keep {
            s.admin
                .basic_reject(t, BasicRejectOptions { requeue: true })
                .await
                .map_err(|e| unavailable(&e))?;
        }
        if moved > 0 {
            inner.pushed.notify_waiters();
        }
        Ok(moved)
    }

    async fn ping(&self) -> BrokerResult<()> {
        self.inner.session().await.map(|_| ())
    }

    async fn cancel(&self, _queue: &QueueName, _id: JobId) -> BrokerResult<CancelOutcome> {
        // A message cannot be taken out of the middle of a RabbitMQ queue.
        Err(BrokerError::Unsupported("cancel"))
    }

    async fn announce_cancel(&self, _id: JobId) -> BrokerResult<()> {
        Err(BrokerError::Unsupported("cancel"))
    }

    fn cancel_requests(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.inner.cancels.subscribe()
    }
}
