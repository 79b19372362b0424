#![doc = include_str!("../README.md")]

mod config;
mod consumer;
mod dead;
mod producer;
mod reader;
mod state;
mod topology;
mod wire;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::broker::{
    Broker, BrokerError, BrokerResult, CancelOutcome, Capabilities, DeadJob, EnqueueOutcome,
    FencingToken, Lease, LeaseRef, QueueSelector, QueueStats, Settle, SettleOutcome, Settlement,
};
use ferry_core::{JobEnvelope, JobId, QueueName, UnixMillis};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

pub use config::KafkaBrokerConfig;
use consumer::{Ctx, Shared, lock};
use dead::{DeadIndex, DeadIndexes};
use producer::{Landed, Out, produce};
use state::{Held, Taken, Tp};
use topology::{Names, Role, classify};

/// Why the broker could not start. One line each, fit for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("not a valid kafka URL: {0}")]
    InvalidUrl(String),
    #[error("cannot reach Kafka at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

fn unavailable(e: &impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("kafka: {e}"))
}

fn encode_error(job: &JobEnvelope, e: &serde_json::Error) -> BrokerError {
    BrokerError::Rejected(format!("cannot encode job {}: {e}", job.id))
}

/// Fencing tokens: the attempt in the top 12 bits, then a clock of milliseconds since 2024
/// times 2,048 that never repeats within a process. A newer attempt always has a larger
/// token, and so has a later lease of the same attempt in another process (after a crash the
/// next owner leases the job seconds later), so history orders every attempt correctly.
struct TokenClock(AtomicU64);

const EPOCH_2024_MS: i64 = 1_704_067_200_000;
const LOW_BITS: u32 = 52;

impl TokenClock {
    fn next(&self, attempt: u32) -> FencingToken {
        let now = u64::try_from(UnixMillis::now().0 - EPOCH_2024_MS).unwrap_or(0) << 11;
        let prev = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(last.saturating_add(1).max(now))
            })
            .unwrap_or(0);
        let low = prev.saturating_add(1).max(now) & ((1 << LOW_BITS) - 1);
        FencingToken((u64::from(attempt.min(4095)) << LOW_BITS) | low)
    }
}

struct Inner {
    config: KafkaBrokerConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
    /// Queues whose topics exist (created or found by this process).
    declared: Mutex<HashSet<QueueName>>,
    names: Mutex<HashMap<QueueName, Arc<Names>>>,
    /// What the consumer is subscribed to; changed one caller at a time.
    subscribed: tokio::sync::Mutex<BTreeSet<String>>,
    /// The work topics found in the cluster, for `QueueSelector::All`, and when.
    listed: Mutex<Option<(Instant, Vec<QueueName>)>>,
    /// The out-of-group reader and the dead-letter indexes it keeps (used one call at a time).
    reader: Arc<Mutex<Reader>>,
    tokens: TokenClock,
    cancels: tokio::sync::broadcast::Sender<JobId>,
}

#[derive(Default)]
struct Reader {
    consumer: Option<BaseConsumer>,
    dead: DeadIndexes,
}

/// Ferry's Kafka broker. Cheap to clone.
#[derive(Clone)]
pub struct KafkaBroker {
    inner: Arc<Inner>,
    _guard: Arc<Guard>,
}

/// Stops the reaper and the poller thread when the last clone goes, and waits for the
/// poller's last commit and its leaving the group: a member that vanishes without leaving
/// holds up the group's next rebalance until its session times out.
struct Guard {
    shared: Arc<Shared>,
    reaper: tokio::task::JoinHandle<()>,
    /// Says when the poller thread has ended.
    poller_done: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.reaper.abort();
        // Bounded: a cluster that does not answer must not hang the process on exit.
        let _ = lock_std(&self.poller_done).recv_timeout(Duration::from_secs(10));
    }
}

fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

impl KafkaBroker {
    /// Connects, checks the cluster answers, and starts the consumer's poller (it joins the
    /// group only when this process first leases).
    ///
    /// # Errors
    /// A malformed URL, or a cluster that cannot be reached (one clear line each).
    pub async fn connect(config: KafkaBrokerConfig) -> Result<Self, ConnectError> {
        let shown = ferry_core::redacted_url(&config.url);
        let bootstrap = config
            .bootstrap()
            .map_err(|e| ConnectError::InvalidUrl(format!("{shown}: {e}")))?;
        let invalid = |e: rdkafka::error::KafkaError| ConnectError::InvalidUrl(e.to_string());
        let mut common = ClientConfig::new();
        common
            .set("bootstrap.servers", &bootstrap)
            .set("socket.keepalive.enable", "true")
            .set("log_level", "3");
        if let Ok(contexts) = std::env::var("FERRY_KAFKA_DEBUG") {
            // librdkafka's own debug contexts (e.g. `cgrp,fetch`), logged at debug level.
            common.set("debug", contexts).set("log_level", "7");
        }
        let producer: FutureProducer = common
            .clone()
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", ms(config.produce_timeout))
            .set("queue.buffering.max.messages", "200000")
            // A batch never holds more than a new owner fetches back (consumer::REWIND).
            .set("batch.num.messages", consumer::REWIND.to_string())
            .create()
            .map_err(invalid)?;
        let admin: AdminClient<DefaultClientContext> = common.create().map_err(invalid)?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            ready: tokio::sync::Notify::new(),
            progress: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            revoke_grace: config.revoke_grace,
            buffer_per_partition: config.buffer_per_partition,
            wake: Arc::default(),
        });
        let mut consumer: BaseConsumer<Ctx> = common
            .clone()
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("session.timeout.ms", ms(config.session_timeout))
            .set("heartbeat.interval.ms", ms(config.session_timeout / 4))
            // The poller polls all the time, so a short bound is safe; it is also how long a
            // rebalance waits for members that do not rejoin.
            .set(
                "max.poll.interval.ms",
                ms(config.session_timeout.max(Duration::from_secs(10)) * 3),
            )
            .set("fetch.wait.max.ms", ms(config.fetch_wait))
            .set("queued.max.messages.kbytes", "16384")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create_with_context(Ctx {
                shared: Arc::downgrade(&shared),
            })
            .map_err(invalid)?;
        {
            // Rebalances and errors arrive on the main queue: they wake the poller too.
            let wake = shared.wake.clone();
            consumer.set_nonempty_callback(move || wake.notify());
        }
        let consumer = Arc::new(consumer);
        // The cluster answers, or we say so now rather than at the first job.
        {
            let c = consumer.clone();
            let timeout = config.connect_timeout;
            let probe = tokio::task::spawn_blocking(move || {
                c.fetch_metadata(None, timeout).map(|m| m.brokers().len())
            })
            .await;
            let reason = match probe {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(reason) = reason {
                return Err(ConnectError::Unreachable { url: shown, reason });
            }
        }
        let inner = Arc::new(Inner {
            producer,
            admin,
            consumer: consumer.clone(),
            shared: shared.clone(),
            declared: Mutex::default(),
            names: Mutex::default(),
            subscribed: tokio::sync::Mutex::default(),
            listed: Mutex::default(),
            reader: Arc::default(),
            tokens: TokenClock(AtomicU64::new(0)),
            cancels: tokio::sync::broadcast::channel(16).0,
            config,
        });
        let poller = start_poller(&inner, consumer);
        let reaper = {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.reap();
                }
            })
        };
        Ok(Self {
            inner,
            _guard: Arc::new(Guard {
                shared,
                reaper,
                poller_done: Mutex::new(poller),
            }),
        })
    }
}

/// The poller thread; delay-step moves it finds are produced on the runtime. The thread
/// holds the consumer's last reference once the broker is gone, so leaving the group
/// (closing the consumer) happens before the thread ends.
fn start_poller(
    inner: &Arc<Inner>,
    consumer: Arc<BaseConsumer<Ctx>>,
) -> std::sync::mpsc::Receiver<()> {
    let shared = inner.shared.clone();
    let rt = tokio::runtime::Handle::current();
    let weak = Arc::downgrade(inner);
    let mover: consumer::Mover = Box::new(move |moves| {
        let weak = weak.clone();
        rt.spawn(async move {
            if let Some(inner) = weak.upgrade() {
                inner.move_on(moves).await;
            }
        });
    });
    let (done, poller_done) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("ferry-kafka-poller".into())
        .spawn(move || {
            consumer::run(&consumer, &shared, &mover);
            drop(mover);
            // The broker's own reference went with it (fields drop before the guard); a
            // move still in flight may hold the last one a moment longer.
            drop(consumer);
            let _ = done.send(());
        })
        .expect("spawn the kafka poller thread");
    poller_done
}

impl Inner {
    /// A queue's topic names, made once per queue (enqueue asks for every job).
    fn names(&self, queue: &QueueName) -> Arc<Names> {
        lock_std(&self.names)
            .entry(queue.clone())
            .or_insert_with(|| Arc::new(Names::new(queue, &self.config.delay_steps)))
            .clone()
    }

    /// Creates a queue's topics once per process (existing ones are kept as they are).
    async fn declare(&self, queue: &QueueName) -> BrokerResult<()> {
        if lock_std(&self.declared).contains(queue) {
            return Ok(());
        }
        let names = self.names(queue);
        let replication = || TopicReplication::Fixed(self.config.replication);
        let mut topics = vec![NewTopic::new(
            &names.work,
            self.config.partitions,
            replication(),
        )];
        topics.extend(
            names
                .steps
                .iter()
                .map(|(_, t)| NewTopic::new(t, 1, replication())),
        );
        topics.push(NewTopic::new(&names.dead, 1, replication()));
        let opts = AdminOptions::new()
            .operation_timeout(Some(self.config.connect_timeout))
            .request_timeout(Some(self.config.connect_timeout));
        let results = self
            .admin
            .create_topics(topics.iter(), &opts)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut created = Vec::new();
        for r in results {
            match r {
                Ok(topic) => created.push(topic),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BrokerError::Unavailable(format!(
                        "kafka: cannot create topic {topic}: {code}"
                    )));
                }
            }
        }
        // Topics that existed are known to the cluster already; only new ones may still be
        // on their way into its metadata (a first enqueue from a new process would otherwise
        // pay a metadata round trip per topic).
        if !created.is_empty() {
            self.await_topics(created).await?;
        }
        lock_std(&self.declared).insert(queue.clone());
        Ok(())
    }

    /// Waits until the cluster's metadata shows every topic of a queue with its partitions
    /// led (a subscription to a topic not yet in metadata would be ignored until the next
    /// refresh).
    async fn await_topics(&self, wanted: Vec<String>) -> BrokerResult<()> {
        let consumer = self.consumer.clone();
        let within = self.config.connect_timeout;
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + within;
            for topic in &wanted {
                loop {
                    let ok = consumer
                        .fetch_metadata(Some(topic), within)
                        .ok()
                        .is_some_and(|m| {
                            m.topics().iter().any(|t| {
                                t.error().is_none()
                                    && !t.partitions().is_empty()
                                    && t.partitions().iter().all(|p| p.leader() >= 0)
                            })
                        });
                    if ok {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(BrokerError::Unavailable(format!(
                            "kafka: topic {topic} did not appear within {within:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| unavailable(&e))?
    }

    /// The queues a selector names; for `All`, every work topic in the cluster (listed at
    /// most every two seconds).
    async fn queues_of(&self, sel: &QueueSelector) -> BrokerResult<Vec<QueueName>> {
        match sel {
            QueueSelector::Only(qs) => Ok(qs.clone()),
            QueueSelector::All => {
                if let Some((at, qs)) = lock_std(&self.listed).as_ref()
                    && at.elapsed() < Duration::from_secs(2)
                {
                    return Ok(qs.clone());
                }
                let consumer = self.consumer.clone();
                let timeout = self.config.connect_timeout;
                let qs = tokio::task::spawn_blocking(move || {
                    consumer.fetch_metadata(None, timeout).map(|m| {
                        m.topics()
                            .iter()
                            .filter_map(|t| classify(t.name()))
                            .filter(|(_, r)| *r == Role::Work)
                            .map(|(q, _)| q)
                            .collect::<Vec<_>>()
                    })
                })
                .await
                .map_err(|e| unavailable(&e))?
                .map_err(|e| unavailable(&e))?;
                *lock_std(&self.listed) = Some((Instant::now(), qs.clone()));
                Ok(qs)
            }
        }
    }

    /// Subscribes to the queues' topics if not yet, and waits for the group to hand out
    /// their partitions (bounded: a lease then returns what there is).
    async fn subscribe(&self, queues: &[QueueName]) -> BrokerResult<()> {
        let mut sub = self.subscribed.lock().await;
        let wanted: Vec<String> = queues
            .iter()
            .flat_map(|q| {
                self.names(q)
                    .consumed()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if wanted.iter().all(|t| sub.contains(t)) {
            return Ok(());
        }
        for q in queues {
            self.declare(q).await?;
        }
        sub.extend(wanted);
        let topics: Vec<&str> = sub.iter().map(String::as_str).collect();
        let before = lock(&self.shared.state).rebalances;
        self.consumer
            .subscribe(&topics)
            .map_err(|e| unavailable(&e))?;
        let deadline = Instant::now() + self.config.assign_timeout;
        while lock(&self.shared.state).rebalances == before {
            if Instant::now() >= deadline {
                tracing::warn!(
                    "kafka: the group did not assign partitions within {:?}",
                    self.config.assign_timeout
                );
                break;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(10), self.shared.progress.notified())
                    .await;
        }
        Ok(())
    }

    fn reap(&self) {
        let n = lock(&self.shared.state).reap(Instant::now());
        if n > 0 {
            self.shared.ready.notify_waiters();
        }
    }

    /// Produces and records where each message landed (a lease then waits for the fetcher
    /// to catch up with this process's own produces).
    async fn produce(&self, msgs: &[Out]) -> BrokerResult<Vec<Landed>> {
        let landed = produce(&self.producer, msgs, self.config.produce_timeout).await?;
        let mut s = lock(&self.shared.state);
        for (m, l) in msgs.iter().zip(&landed) {
            s.note_produced((Arc::from(m.topic.as_str()), l.partition), l.offset);
        }
        Ok(landed)
    }

    /// The message that puts `job` where it waits until `at`: the work topic when due, else
    /// a delay step.
    fn routed(&self, job: &JobEnvelope, at: UnixMillis) -> BrokerResult<Out> {
        let names = self.names(&job.queue);
        let now = UnixMillis::now();
        let (topic, step) = names.route(now.until(at));
        let value = match step {
            None => wire::work(job),
            Some(step) => wire::held(job, at.min(now.plus(step))),
        }
        .map_err(|e| encode_error(job, &e))?;
        Ok(Out {
            topic: topic.to_owned(),
            // Jobs sharing a concurrency key share a partition, so they keep their order.
            key: job
                .concurrency_key
                .as_ref()
                .filter(|_| step.is_none())
                .map(|k| k.as_str().to_owned()),
            value: Some(value),
        })
    }

    /// Sends delay-step fronts that have waited their step on to the next one; their offsets
    /// finish once the move is confirmed, and go back to the front if it fails.
    async fn move_on(&self, moves: Vec<Taken>) {
        let mut msgs = Vec::with_capacity(moves.len());
        for t in &moves {
            match self.routed(&t.job, t.job.run_at) {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    tracing::error!(error = %e, "kafka: cannot move a delayed job");
                    return;
                }
            }
        }
        let ok = self.produce(&msgs).await;
        let mut s = lock(&self.shared.state);
        for t in moves {
            if ok.is_ok() {
                s.finish(&t.tp, t.epoch, t.offset);
            } else {
                s.requeue(&t.tp, t.epoch, t.offset, t.job);
            }
        }
        if let Err(e) = ok {
            tracing::warn!(error = %e, "kafka: moving delayed jobs failed; retrying");
        }
    }

    /// Waits (bounded) until the fetcher has caught up with what this process had produced
    /// to the selected queues when the lease began (not with later produces: a steady
    /// stream would keep it waiting), unless `max` jobs are already waiting.
    async fn catch_up(&self, wanted: &(impl Fn(&QueueName) -> bool + Sync), max: usize) {
        let targets = lock(&self.shared.state).behind(wanted);
        if targets.is_empty() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            {
                let s = lock(&self.shared.state);
                if s.reached(&targets) || s.due_count(wanted, UnixMillis::now(), max) >= max {
                    return;
                }
            }
            if Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), self.shared.progress.notified())
                .await;
        }
    }

    /// Runs `f` on the out-of-group reader (created on first use), on a blocking thread.
    async fn with_reader<R: Send + 'static>(
        &self,
        f: impl FnOnce(&BaseConsumer, &mut DeadIndexes) -> BrokerResult<R> + Send + 'static,
    ) -> BrokerResult<R> {
        let reader = self.reader.clone();
        let bootstrap = self.config.bootstrap().map_err(BrokerError::Rejected)?;
        tokio::task::spawn_blocking(move || {
            let mut r = lock_std(&reader);
            let r = &mut *r;
            if r.consumer.is_none() {
                r.consumer = Some(reader::create(&bootstrap).map_err(|e| unavailable(&e))?);
            }
            let consumer = r.consumer.as_ref().expect("created above");
            f(consumer, &mut r.dead)
        })
        .await
        .map_err(|e| unavailable(&e))?
    }

    /// Brings the queue's dead-letter index up to date, then runs `f` on it.
    async fn dead_index<R: Send + 'static>(
        &self,
        queue: &QueueName,
        f: impl FnOnce(&mut DeadIndex) -> R + Send + 'static,
    ) -> BrokerResult<R> {
        self.declare(queue).await?;
        let topic = self.names(queue).dead.clone();
        let timeout = self.config.connect_timeout;
        let known_end = lock(&self.shared.state)
            .produced
            .get(&(Arc::from(topic.as_str()), 0))
            .copied();
        let queue = queue.clone();
        self.with_reader(move |c, dead| {
            let index = dead.entry(queue).or_default();
            dead::refresh(c, &topic, index, known_end, timeout)?;
            Ok(f(index))
        })
        .await
    }

    /// Exact counts for partitions this process owns; the group's committed offsets for the
    /// rest (their owners' leased jobs then count as ready).
    async fn counts(&self, queue: &QueueName) -> BrokerResult<QueueStats> {
        let names = self.names(queue);
        let topics: Vec<(String, Role)> = std::iter::once((names.work.clone(), Role::Work))
            .chain(names.steps.iter().map(|(s, t)| (t.clone(), Role::Step(*s))))
            .collect();
        let consumer = self.consumer.clone();
        let timeout = self.config.connect_timeout;
        // (topic, partition, role, low, high), and the group's committed offsets.
        let marks = tokio::task::spawn_blocking(move || {
            let mut marks = Vec::new();
            let mut tpl = TopicPartitionList::new();
            for (topic, role) in &topics {
                let md = consumer.fetch_metadata(Some(topic), timeout)?;
                let Some(t) = md.topics().iter().find(|t| t.error().is_none()) else {
                    continue;
                };
                for p in t.partitions() {
                    let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                    marks.push((topic.clone(), p.id(), *role, low, high));
                    tpl.add_partition(topic, p.id());
                }
            }
            let committed = if tpl.count() == 0 {
                TopicPartitionList::new()
            } else {
                consumer.committed_offsets(tpl, timeout)?
            };
            Ok::<_, rdkafka::error::KafkaError>((marks, committed))
        })
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| unavailable(&e))?;
        let (marks, committed) = marks;
        let now = UnixMillis::now();
        let mut out = QueueStats::default();
        let s = lock(&self.shared.state);
        for (topic, p, role, low, high) in marks {
            let tp: Tp = (Arc::from(topic.as_str()), p);
            // The cluster's latest offset may lag on tansu (decision 0012); this process's
            // own produces are known to exist.
            let high = high.max(s.produced.get(&tp).copied().unwrap_or(0));
            let group = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            let unfetched;
            let (mut ready, mut scheduled, mut leased) = (0u64, 0u64, 0u64);
            if let Some(part) = s.parts.get(&tp) {
                let from = part.seen_to().unwrap_or_else(|| group.max(low));
                unfetched = u64::try_from(high - from).unwrap_or(0);
                for b in &part.buffered {
                    if b.job.run_at <= now && b.hold_until <= now {
                        ready += 1;
                    } else {
                        scheduled += 1;
                    }
                }
                leased = s.held.values().filter(|h| h.tp == tp).count() as u64;
                // Open offsets neither buffered nor leased are moving to a later step.
                let moving =
                    (part.open.len() as u64).saturating_sub(part.buffered.len() as u64 + leased);
                scheduled += moving;
            } else {
                unfetched = u64::try_from(high - group.max(low)).unwrap_or(0);
            }
            match role {
                Role::Work => ready += unfetched,
                _ => scheduled += unfetched,
            }
            out.ready += ready;
            out.scheduled += scheduled;
            out.leased += leased;
        }
        Ok(out)
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delay: true,
            priority: false,
            per_message_lease: true,
            pause: false,
            cross_process_wakeup: true,
            limits: false,
            idempotency: false,
            cancel: false,
        }
    }

    async fn enqueue(&self, jobs: Vec<JobEnvelope>) -> BrokerResult<Vec<EnqueueOutcome>> {
        let inner = &self.inner;
        let queues: BTreeSet<&QueueName> = jobs.iter().map(|j| &j.queue).collect();
        for q in queues {
            inner.declare(q).await?;
        }
        let msgs = jobs
            .iter()
            .map(|j| inner.routed(j, j.run_at))
            .collect::<BrokerResult<Vec<_>>>()?;
        // A 2xx from the API means the cluster acknowledged every message (acks=all).
        inner.produce(&msgs).await?;
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
        let names = inner.queues_of(queues).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        inner.subscribe(&names).await?;
        inner.reap();
        let wanted = |q: &QueueName| names.contains(q);
        inner.catch_up(&wanted, max).await;
        let now = UnixMillis::now();
        let expires = Instant::now() + lease_for;
        let mut s = lock(&inner.shared.state);
        let taken = s.take(wanted, max, now);
        let mut out = Vec::with_capacity(taken.len());
        for t in taken {
            let mut job = t.job;
            job.attempt += 1;
            let token = inner.tokens.next(job.attempt);
            let job = Arc::new(job);
            let lease = Lease {
                job: job.clone(),
                token,
                expires_at: now.plus(lease_for),
            };
            s.held.insert(
                lease.to_ref(),
                Held {
                    tp: t.tp,
                    offset: t.offset,
                    epoch: t.epoch,
                    job,
                    expires,
                },
            );
            out.push(lease);
        }
        Ok(out)
    }

    async fn extend(&self, leases: &[LeaseRef], lease_for: Duration) -> BrokerResult<Vec<bool>> {
        let now = Instant::now();
        let mut s = lock(&self.inner.shared.state);
        Ok(leases
            .iter()
            .map(|r| match s.held.get_mut(r) {
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
        let now = Instant::now();
        let mut out = Vec::with_capacity(batch.len());
        // (held, message to produce first) for each applied settlement.
        let mut applied: Vec<(LeaseRef, Held, Option<Out>)> = Vec::new();
        let mut requeued = false;
        {
            let mut s = lock(&inner.shared.state);
            for st in batch {
                let Some(h) = s.held.remove(&st.lease) else {
                    out.push(SettleOutcome::Stale);
                    continue;
                };
                let owned = s.parts.get(&h.tp).is_some_and(|p| p.epoch == h.epoch);
                if !owned || h.expires <= now {
                    // Revoked (the next owner has it) or expired (it goes round again).
                    if owned {
                        let job = Arc::unwrap_or_clone(h.job);
                        s.requeue(&h.tp, h.epoch, h.offset, job);
                        requeued = true;
                    }
                    out.push(SettleOutcome::Stale);
                    continue;
                }
                let msg = match &st.settlement {
                    Settlement::Ack => None,
                    Settlement::Retry { at, .. } => {
                        let mut job = (*h.job).clone();
                        job.run_at = *at;
                        Some(inner.routed(&job, *at)?)
                    }
                    Settlement::Release { at } if *at <= UnixMillis::now() => {
                        // Back to the front here: the offset stays open, nothing to produce.
                        let mut job = (*h.job).clone();
                        job.attempt = job.attempt.saturating_sub(1);
                        s.requeue(&h.tp, h.epoch, h.offset, job);
                        requeued = true;
                        out.push(SettleOutcome::Applied);
                        continue;
                    }
                    Settlement::Release { at } => {
                        let mut job = (*h.job).clone();
                        job.attempt = job.attempt.saturating_sub(1);
                        job.run_at = *at;
                        Some(inner.routed(&job, *at)?)
                    }
                    Settlement::Dead { error } => Some(Out {
                        topic: inner.names(&h.job.queue).dead.clone(),
                        key: Some(h.job.id.to_string()),
                        value: Some(
                            wire::dead(&h.job, error).map_err(|e| encode_error(&h.job, &e))?,
                        ),
                    }),
                };
                applied.push((st.lease, h, msg));
                out.push(SettleOutcome::Applied);
            }
        }
        if requeued {
            inner.shared.ready.notify_waiters();
        }
        // Copies go out first; an offset finishes only once its copy is confirmed, so a crash
        // in between delivers a job twice, never zero times.
        let msgs: Vec<Out> = applied
            .iter_mut()
            .filter_map(|(_, _, m)| m.take())
            .collect();
        if let Err(e) = inner.produce(&msgs).await {
            // Nothing finished: the leases are held again, so the worker can settle again (or
            // they expire and the jobs go round again).
            let mut s = lock(&inner.shared.state);
            for (r, h, _) in applied {
                s.held.insert(r, h);
            }
            return Err(e);
        }
        let mut s = lock(&inner.shared.state);
        for (_, h, _) in applied {
            s.finish(&h.tp, h.epoch, h.offset);
        }
        Ok(out)
    }

    async fn wait_for_jobs(&self, queues: &QueueSelector, max_wait: Duration) {
        let inner = &self.inner;
        let wait = max_wait.min(inner.config.poll_interval);
        let notified = inner.shared.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let due = {
            let s = lock(&inner.shared.state);
            s.due_count(|q| queues.includes(q), UnixMillis::now(), 1) > 0
        };
        if due {
            return;
        }
        let _ = tokio::time::timeout(wait, notified).await;
    }

    async fn stats(&self, queue: &QueueName) -> BrokerResult<QueueStats> {
        let mut stats = self.inner.counts(queue).await?;
        stats.dead = self.inner.dead_index(queue, |d| d.len() as u64).await?;
        Ok(stats)
    }

    async fn pause(&self, _queue: &QueueName) -> BrokerResult<()> {
        Err(BrokerError::Unsupported("pause"))
    }

    async fn resume(&self, _queue: &QueueName) -> BrokerResult<()> {
        Err(BrokerError::Unsupported("pause"))
    }

    async fn dead_jobs(&self, queue: &QueueName, limit: usize) -> BrokerResult<Vec<DeadJob>> {
        self.inner
            .dead_index(queue, move |d| d.jobs().take(limit).cloned().collect())
            .await
    }

    async fn retry_dead(&self, queue: &QueueName, ids: Option<&[JobId]>) -> BrokerResult<u64> {
        let inner = &self.inner;
        let ids: Option<HashSet<JobId>> = ids.map(|i| i.iter().copied().collect());
        let chosen: Vec<JobEnvelope> = inner
            .dead_index(queue, move |d| {
                d.jobs()
                    .filter(|j| ids.as_ref().is_none_or(|ids| ids.contains(&j.job.id)))
                    .map(|j| j.job.clone())
                    .collect()
            })
            .await?;
        if chosen.is_empty() {
            return Ok(0);
        }
        let names = inner.names(queue);
        let mut work = Vec::with_capacity(chosen.len());
        for job in &chosen {
            // A fresh attempt budget, due now.
            let mut j = job.clone();
            j.attempt = 0;
            j.run_at = UnixMillis::now();
            work.push(inner.routed(&j, j.run_at)?);
        }
        inner.produce(&work).await?;
        // Then the tombstones: a crash in between leaves a job both queued and dead (it may
        // be retried twice), never lost.
        let tombstones: Vec<Out> = chosen
            .iter()
            .map(|j| Out {
                topic: names.dead.clone(),
                key: Some(j.id.to_string()),
                value: None,
            })
            .collect();
        inner.produce(&tombstones).await?;
        let gone: Vec<JobId> = chosen.iter().map(|j| j.id).collect();
        inner
            .dead_index(queue, move |d| {
                for id in gone {
                    d.forget(id);
                }
            })
            .await?;
        Ok(chosen.len() as u64)
    }

    async fn ping(&self) -> BrokerResult<()> {
        let consumer = self.inner.consumer.clone();
        let timeout = self.inner.config.connect_timeout;
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, timeout).map(|_| ()))
            .await
            .map_err(|e| unavailable(&e))?
            .map_err(|e| unavailable(&e))
    }

    async fn cancel(&self, _queue: &QueueName, _id: JobId) -> BrokerResult<CancelOutcome> {
        // A record cannot be taken out of a Kafka log.
        Err(BrokerError::Unsupported("cancel"))
    }

    async fn announce_cancel(&self, _id: JobId) -> BrokerResult<()> {
        Err(BrokerError::Unsupported("cancel"))
    }

    fn cancel_requests(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.inner.cancels.subscribe()
    }
}
