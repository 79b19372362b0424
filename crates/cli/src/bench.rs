//! `ferry bench`: whole-system benchmarks that print one JSON line per result (River's
//! `river bench` is the model). They drive the real broker, worker runtime and store.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use ferry_config::{BrokerUrl, StoreUrl};
use ferry_core::broker::{Broker, QueueSelector};
use ferry_core::{JobEnvelope, JobKind, QueueName};
use ferry_worker::{JobContext, JobError, Registry, Worker, WorkerOptions};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::{UsageError, open};

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// Batch enqueue straight into the broker.
    Enqueue,
    /// Run a pre-filled backlog of no-op jobs to completion (leases, fencing and acks on;
    /// history as `--store` says).
    Drain,
    /// Enqueue at a steady rate and measure enqueue -> handler start.
    Latency,
    /// Record history straight into the store: three events (enqueued, started, succeeded)
    /// per job, batches of `--batch` from `--concurrency` writers.
    Record,
    /// Fill a queue with `--jobs` no-op jobs, then drain it with `--workers` separate
    /// `ferry worker` processes (concurrency `--concurrency` each, history in a SQLite file
    /// per process): how a pool scales.
    Pool,
    /// Run `--concurrency` jobs that each sleep `--rate` ms, all in flight at once, and report
    /// the process's peak resident memory (worker overhead per job in flight).
    Inflight,
    /// Fill the store with `--jobs` jobs, then time `GET /v1/jobs` searches over HTTP (one
    /// JSON line per filter: p50, p99 over `--rate` queries each).
    Query,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[arg(value_enum)]
    which: Which,
    /// Broker URL; default a fresh SQLite file in a temporary directory.
    #[arg(long)]
    broker: Option<String>,
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Worker concurrency (drain, latency) or concurrent producers (enqueue).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Jobs per enqueue call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Jobs per second for `latency`.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Where the worker records history: `sqlite` (a fresh file) or `none` (history off, to
    /// measure dispatch alone).
    #[arg(long, value_enum, default_value_t = BenchStore::Sqlite)]
    store: BenchStore,
    /// Worker processes for `pool`.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// A store URL (`postgres://...`, `sqlite://...`) to record history in instead of
    /// `--store`'s choice.
    #[arg(long)]
    database: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchStore {
    Sqlite,
    None,
}

struct Progress {
    enabled: bool,
    what: &'static str,
    total: u64,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            what,
            total,
        }
    }
    fn show(&self, done: u64) {
        if self.enabled {
            let pct = done.saturating_mul(100) / self.total.max(1);
            let bar = "#".repeat(usize::try_from(pct / 4).unwrap_or(0));
            eprint!(
                "\r{:<8} [{bar:<25}] {done}/{} ({pct}%)",
                self.what, self.total
            );
            let _ = std::io::stderr().flush();
        }
    }
    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

fn noop_job(queue: &QueueName) -> JobEnvelope {
    JobEnvelope::new(
        queue.clone(),
        JobKind::parse("noop").expect("kind"),
        JobEnvelope::empty_payload(),
    )
}

async fn enqueue_backlog(
    broker: &Arc<dyn Broker>,
    queue: &QueueName,
    jobs: u64,
    batch: usize,
    producers: usize,
    progress: &Progress,
) -> anyhow::Result<()> {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let per = jobs.div_ceil(producers.max(1) as u64);
    let mut tasks = Vec::new();
    for p in 0..producers.max(1) as u64 {
        let n = per.min(jobs.saturating_sub(p * per));
        let broker = broker.clone();
        let queue = queue.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let take = left.min(batch as u64);
                broker
                    .enqueue((0..take).map(|_| noop_job(&queue)).collect())
                    .await?;
                left -= take;
                done.fetch_add(take, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let all = futures_join(tasks);
    tokio::pin!(all);
    loop {
        tokio::select! {
            r = &mut all => { progress.show(jobs); progress.finish(); return r; }
            () = tokio::time::sleep(Duration::from_millis(200)) => progress.show(done.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

async fn futures_join(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub(crate) async fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.jobs == 0 || a.concurrency == 0 || a.batch == 0 || a.rate == 0 {
        return Err(UsageError(
            "--jobs, --concurrency, --batch and --rate must be at least 1".into(),
        )
        .into());
    }
    let tmp = tempdir()?;
    let broker_url = match &a.broker {
        Some(u) => BrokerUrl::parse(u)?,
        None => BrokerUrl::Sqlite(tmp.join("broker.db")),
    };
    // A group of its own on Kafka: a bench must not join (and rebalance) a running pool.
    let group = Some(format!("ferry-bench-{}", std::process::id()));
    let broker = open::broker_in_group(&broker_url, group).await?;
    let store: Arc<dyn ferry_core::store::Store> = match (&a.database, a.store) {
        (Some(url), _) => open::store(&StoreUrl::parse(url)?, None).await?,
        (None, BenchStore::Sqlite) => {
            open::store(&StoreUrl::Sqlite(tmp.join("store.db")), None).await?
        }
        (None, BenchStore::None) => Arc::new(ferry_store::DiscardStore),
    };
    let queue = QueueName::parse(&format!("bench-{}", std::process::id())).expect("valid");
    let line = match a.which {
        Which::Enqueue => {
            let p = Progress::new("enqueue", a.jobs);
            let start = Instant::now();
            enqueue_backlog(&broker, &queue, a.jobs, a.batch, a.concurrency, &p).await?;
            let secs = start.elapsed().as_secs_f64();
            drain_quietly(&broker, &queue).await?;
            serde_json::json!({"bench":"enqueue","broker":broker.name(),"jobs":a.jobs,"concurrency":a.concurrency,"batch":a.batch,"seconds":secs,"jobs_per_s":a.jobs as f64 / secs})
        }
        Which::Drain => {
            enqueue_backlog(
                &broker,
                &queue,
                a.jobs,
                a.batch,
                2,
                &Progress::new("fill", a.jobs),
            )
            .await?;
            let p = Progress::new("drain", a.jobs);
            let stop = CancellationToken::new();
            let opts = WorkerOptions {
                concurrency: a.concurrency,
                queues: QueueSelector::Only(vec![queue.clone()]),
                ..WorkerOptions::default()
            };
            let start = Instant::now();
            let worker = tokio::spawn(
                Worker::new(
                    broker.clone(),
                    store.clone(),
                    Registry::with_builtins(),
                    opts,
                )
                .run(stop.clone()),
            );
            wait_drained(&broker, &queue, a.jobs, &p).await?;
            let secs = start.elapsed().as_secs_f64();
            stop.cancel();
            worker.await??;
            serde_json::json!({"bench":"drain","broker":broker.name(),"store":store.name(),"jobs":a.jobs,"concurrency":a.concurrency,"seconds":secs,"jobs_per_s":a.jobs as f64 / secs})
        }
        Which::Latency => latency(&a, broker.clone(), store, &queue).await?,
        Which::Inflight => inflight(&a, broker.clone(), store, &queue).await?,
        Which::Pool => pool(&a, &broker, &broker_url, &queue, &tmp).await?,
        Which::Record => record(&a, store, &queue).await?,
        Which::Query => {
            for line in query(&a, broker.clone(), store).await? {
                println!("{line}");
            }
            return Ok(());
        }
    };
    println!("{line}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Leases and acks whatever is left in `queue`, so that a benchmark against a shared server
/// (Redis) does not leave its jobs behind.
async fn drain_quietly(broker: &Arc<dyn Broker>, queue: &QueueName) -> anyhow::Result<()> {
    let only = QueueSelector::Only(vec![queue.clone()]);
    loop {
        let leases = broker
            .lease(&only, 5_000, Duration::from_secs(60), "bench-cleanup")
            .await?;
        if leases.is_empty() {
            return Ok(());
        }
        let acks = ferry_core::broker::Settle::acks(&leases);
        broker.settle(&acks).await?;
    }
}

/// Records `--jobs` jobs' histories (3 events each) and measures events per second.
async fn record(
    a: &BenchArgs,
    store: Arc<dyn ferry_core::store::Store>,
    queue: &QueueName,
) -> anyhow::Result<serde_json::Value> {
    use ferry_core::UnixMillis;
    use ferry_core::store::{JobEvent, JobEventKind};
    let worker: Arc<str> = Arc::from("bench");
    let per_writer = a.jobs.div_ceil(a.concurrency as u64);
    let p = Progress::new("record", a.jobs * 3);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency as u64 {
        let n = per_writer.min(a.jobs.saturating_sub(w * per_writer));
        let (store, queue, worker, done) =
            (store.clone(), queue.clone(), worker.clone(), done.clone());
        let batch_jobs = (a.batch / 3).max(1) as u64;
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let take = left.min(batch_jobs);
                let mut events = Vec::with_capacity(usize::try_from(take * 3).unwrap_or(0));
                for _ in 0..take {
                    let job = Arc::new(noop_job(&queue));
                    let at = UnixMillis::now();
                    let ev = |attempt, fence, kind| JobEvent {
                        job: job.clone(),
                        attempt,
                        fence,
                        at,
                        kind,
                    };
                    events.push(ev(0, 0, JobEventKind::Enqueued));
                    events.push(ev(
                        1,
                        1,
                        JobEventKind::Started {
                            worker: worker.clone(),
                        },
                    ));
                    events.push(ev(1, 1, JobEventKind::Succeeded { result: None }));
                }
                store.record(events).await?;
                left -= take;
                done.fetch_add(take * 3, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let all = futures_join(tasks);
    tokio::pin!(all);
    loop {
        tokio::select! {
            r = &mut all => { r?; break; }
            () = tokio::time::sleep(Duration::from_millis(200)) => p.show(done.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    p.show(a.jobs * 3);
    p.finish();
    let events = a.jobs * 3;
    Ok(
        serde_json::json!({"bench":"record","store":store.name(),"jobs":a.jobs,"events":events,"concurrency":a.concurrency,"batch":a.batch,"seconds":secs,"events_per_s":events as f64 / secs}),
    )
}

/// Fills the store with varied jobs (10 queues, 5 kinds, 100 tenants (and tenant tags),
/// 10,000 users, a third of them succeeded), then runs each filter `--rate` times through
/// `GET /v1/jobs` of an API served in this process.
async fn query(
    a: &BenchArgs,
    broker: Arc<dyn Broker>,
    store: Arc<dyn ferry_core::store::Store>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use std::future::IntoFuture;

    use ferry_core::store::{JobEvent, JobEventKind};
    use ferry_core::{Tag, Tenant, UnixMillis};
    let kinds = [
        "email.send",
        "report.build",
        "image.resize",
        "sms.send",
        "webhook.post",
    ];
    let p = Progress::new("fill", a.jobs);
    let mut done = 0u64;
    let fill_start = UnixMillis::now();
    while done < a.jobs {
        let take = (a.jobs - done).min(5_000);
        let mut events = Vec::with_capacity(usize::try_from(take).unwrap_or(0) * 2);
        for i in done..done + take {
            let queue = QueueName::parse(&format!("q{}", i % 10)).expect("name");
            let payload = RawValue::from_string(format!("{{\"user_id\":{}}}", i % 10_000))?;
            let mut job = JobEnvelope::new(
                queue,
                JobKind::parse(kinds[usize::try_from(i % 5).unwrap_or(0)]).expect("kind"),
                Arc::from(payload),
            );
            job.tags = vec![Tag::parse(&format!("tenant:{}", i % 100)).expect("tag")];
            job.tenant = Some(Tenant::parse(&format!("t{}", i % 100)).expect("tenant"));
            let job = Arc::new(job);
            let at = UnixMillis::now();
            events.push(JobEvent {
                job: job.clone(),
                attempt: 0,
                fence: 0,
                at,
                kind: JobEventKind::Enqueued,
            });
            if i % 3 == 0 {
                events.push(JobEvent {
                    job,
                    attempt: 1,
                    fence: 1,
                    at,
                    kind: JobEventKind::Succeeded { result: None },
                });
            }
        }
        store.record(events).await?;
        done += take;
        p.show(done);
    }
    p.finish();
    // As autovacuum would after a bulk load, before anyone queries.
    store.refresh_statistics().await?;
    let mid = fill_start.0 + (UnixMillis::now().0 - fill_start.0) / 2;
    // The real API in this process on a loopback port: figures include routing, query
    // parsing, the store and JSON encoding, as a client sees them.
    let state = ferry_api::AppState {
        broker,
        store: store.clone(),
        metrics: ferry_telemetry::install(),
        body_limit: 1 << 20,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(axum::serve(listener, ferry_api::router(state)).into_future());
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let resp = client.get(&url).send().await?;
            let status = resp.status();
            let body: serde_json::Value = serde_json::from_str(&resp.text().await?)?;
            anyhow::ensure!(status.is_success(), "GET {url}: {status} {body}");
            Ok::<_, anyhow::Error>(body)
        }
    };
    let page_two = get("/v1/jobs?queue=q7&limit=50".into()).await?["next"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the first page of q7 has no next link"))?;
    let filters: Vec<(&str, String)> = vec![
        ("queue+state", "/v1/jobs?queue=q3&state=succeeded".into()),
        ("kind", "/v1/jobs?kind=sms.send".into()),
        ("tenant", "/v1/jobs?tenant=t42".into()),
        ("tag", "/v1/jobs?tag=tenant:42".into()),
        ("payload", "/v1/jobs?payload.user_id=4242".into()),
        (
            "created_range",
            format!("/v1/jobs?created_after={mid}&created_before={}", mid + 1000),
        ),
        ("queue_page_2", page_two),
    ];
    let mut lines = Vec::new();
    for (name, path) in filters {
        let mut micros = Vec::with_capacity(usize::try_from(a.rate).unwrap_or(0));
        let mut found = 0;
        for _ in 0..a.rate {
            let t = Instant::now();
            found = get(path.clone()).await?["jobs"]
                .as_array()
                .map_or(0, Vec::len);
            micros.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        micros.sort_unstable();
        let pct = |x: f64| {
            let idx = ((micros.len() as f64 - 1.0) * x).round() as usize;
            micros[idx.min(micros.len() - 1)] as f64 / 1000.0
        };
        lines.push(serde_json::json!({"bench":"query","via":"http","store":store.name(),"jobs":a.jobs,"filter":name,"path":path,"queries":a.rate,"rows":found,"p50_ms":pct(0.5),"p99_ms":pct(0.99)}));
    }
    server.abort();
    Ok(lines)
}

/// Waits until `queue` holds no job (ready, leased or scheduled), showing progress.
async fn wait_drained(
    broker: &Arc<dyn Broker>,
    queue: &QueueName,
    jobs: u64,
    p: &Progress,
) -> anyhow::Result<()> {
    loop {
        let s = broker.stats(queue).await?;
        let left = s.ready + s.leased + s.scheduled;
        p.show(jobs - left.min(jobs));
        if left == 0 {
            p.finish();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pool(
    a: &BenchArgs,
    broker: &Arc<dyn Broker>,
    url: &BrokerUrl,
    queue: &QueueName,
    tmp: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    let BrokerUrl::Redis(redis_url) = url else {
        return Err(UsageError(
            "`bench pool` needs --broker redis://...: worker processes share the broker".into(),
        )
        .into());
    };
    enqueue_backlog(
        broker,
        queue,
        a.jobs,
        a.batch,
        2,
        &Progress::new("fill", a.jobs),
    )
    .await?;
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut children = Vec::new();
    for w in 0..a.workers {
        let dir = tmp.join(format!("worker-{w}"));
        children.push(
            std::process::Command::new(&exe)
                .arg("worker")
                .env("FERRY_BROKER_URL", redis_url)
                .env("FERRY_QUEUES", queue.as_str())
                .env("FERRY_WORKER_CONCURRENCY", a.concurrency.to_string())
                .env("FERRY_DATA_DIR", &dir)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
    }
    wait_drained(broker, queue, a.jobs, &Progress::new("drain", a.jobs)).await?;
    let secs = start.elapsed().as_secs_f64();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(
        serde_json::json!({"bench":"pool","broker":broker.name(),"store":"sqlite per worker","workers":a.workers,"jobs":a.jobs,"concurrency":a.concurrency,"seconds":secs,"jobs_per_s":a.jobs as f64 / secs}),
    )
}

/// This process's resident and peak resident memory in KiB (Linux `/proc/self/status`).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn inflight(
    a: &BenchArgs,
    broker: Arc<dyn Broker>,
    store: Arc<dyn ferry_core::store::Store>,
    queue: &QueueName,
) -> anyhow::Result<serde_json::Value> {
    let n = a.concurrency;
    let payload = RawValue::from_string(format!("{{\"ms\":{}}}", a.rate))?;
    let jobs: Vec<JobEnvelope> = (0..n)
        .map(|_| {
            JobEnvelope::new(
                queue.clone(),
                JobKind::parse("sleep").expect("kind"),
                Arc::from(payload.clone()),
            )
        })
        .collect();
    let (before, _) = rss_kib();
    broker.enqueue(jobs).await?;
    let stop = CancellationToken::new();
    let opts = WorkerOptions {
        concurrency: n,
        queues: QueueSelector::Only(vec![queue.clone()]),
        ..WorkerOptions::default()
    };
    let worker = tokio::spawn(
        Worker::new(broker.clone(), store, Registry::with_builtins(), opts).run(stop.clone()),
    );
    let mut most_leased = 0;
    let mut peak_rss = 0;
    loop {
        let s = broker.stats(queue).await?;
        most_leased = most_leased.max(s.leased);
        peak_rss = peak_rss.max(rss_kib().0);
        if s.ready + s.leased + s.scheduled == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    worker.await??;
    let (_, hwm) = rss_kib();
    Ok(
        serde_json::json!({"bench":"inflight","broker":broker.name(),"jobs":n,"sleep_ms":a.rate,"most_in_flight":most_leased,"rss_before_mib":before as f64 / 1024.0,"peak_rss_mib":peak_rss as f64 / 1024.0,"hwm_mib":hwm as f64 / 1024.0}),
    )
}

fn micros_now() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(0)
}

async fn latency(
    a: &BenchArgs,
    broker: Arc<dyn Broker>,
    store: Arc<dyn ferry_core::store::Store>,
    queue: &QueueName,
) -> anyhow::Result<serde_json::Value> {
    let samples = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        usize::try_from(a.jobs).unwrap_or(0),
    )));
    let s = samples.clone();
    let mut reg = Registry::new();
    #[derive(serde::Deserialize)]
    struct Stamp {
        t: u64,
    }
    reg.register("bench.latency", move |_: JobContext, p: Stamp| {
        let waited = micros_now().saturating_sub(p.t);
        s.lock().expect("samples").push(waited);
        async { Ok::<_, JobError>(()) }
    });
    let stop = CancellationToken::new();
    let opts = WorkerOptions {
        concurrency: a.concurrency,
        queues: QueueSelector::Only(vec![queue.clone()]),
        ..WorkerOptions::default()
    };
    let store_name = store.name();
    let worker = tokio::spawn(Worker::new(broker.clone(), store, reg, opts).run(stop.clone()));
    let p = Progress::new("latency", a.jobs);
    let kind = JobKind::parse("bench.latency").expect("kind");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    for i in 0..a.jobs {
        tick.tick().await;
        let payload = RawValue::from_string(format!("{{\"t\":{}}}", micros_now()))?;
        broker
            .enqueue(vec![JobEnvelope::new(
                queue.clone(),
                kind.clone(),
                Arc::from(payload),
            )])
            .await?;
        if i % 500 == 0 {
            p.show(i);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (samples.lock().expect("samples").len() as u64) < a.jobs {
        anyhow::ensure!(
            Instant::now() < deadline,
            "latency bench: jobs did not all start within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    p.show(a.jobs);
    p.finish();
    stop.cancel();
    worker.await??;
    let mut v = samples.lock().expect("samples").clone();
    v.sort_unstable();
    let pct = |q: f64| -> f64 {
        let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[idx.min(v.len() - 1)] as f64 / 1000.0
    };
    Ok(
        serde_json::json!({"bench":"latency","broker":broker.name(),"store":store_name,"jobs":a.jobs,"rate":a.rate,"concurrency":a.concurrency,"seconds":secs,"p50_ms":pct(0.50),"p99_ms":pct(0.99),"max_ms":pct(1.0)}),
    )
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "ferry-bench-{}-{}",
        std::process::id(),
        micros_now()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
