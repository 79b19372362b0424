//! Test helpers shared by the CLI's integration tests: a private Redis server and a fresh
//! Postgres database.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of this test's own, on a free port, with AOF on and `appendfsync always`
/// (every acknowledged write is on disk), so that it can be killed and restarted on its data.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// AOF with `appendfsync always`; off for servers whose data may go with them.
    persist: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// A server that keeps nothing on disk: for tests that leave data behind which should
    /// not accumulate in the shared server.
    pub fn scratch() -> Self {
        Self::start_with(false)
    }

    fn start_with(persist: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            persist,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(if self.persist {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .args(["--save", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True once the server answers PING (after an AOF load too).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// SIGKILL: no shutdown, no final AOF rewrite.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A database of its own on the test Postgres (`FERRY_TEST_DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`); returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin = std::env::var("FERRY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into());
    let name = format!("ferry_t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("the test postgres answers");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let root = &base[..base.rfind('/').expect("a database in the URL")];
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// A Postgres server of this test's own (initdb in a temp dir, a free port), so that it can
/// be stopped and started without disturbing other tests. Runs as `postgres` when the test
/// runs as root (Postgres refuses root).
pub struct PostgresServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PostgresServer {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                let mut v: Vec<PathBuf> = d.flatten().map(|e| e.path().join("bin")).collect();
                v.sort();
                v.pop()
            })
            .expect("postgres binaries under /usr/lib/postgresql (scripts/test installs them)");
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Self { bin, dir, port };
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres", s.dir.path().to_str().unwrap()])
                .status()
                .unwrap();
        }
        let data = s.data();
        s.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        s.pg_ctl("start");
        s
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_owned()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().expect("run a postgres tool");
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.data();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        match action {
            "start" => self.run(
                "pg_ctl",
                &[
                    "-D",
                    &data,
                    "-o",
                    &opts,
                    "-w",
                    "-l",
                    &format!("{data}.log"),
                    "start",
                ],
            ),
            _ => self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]),
        }
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    pub fn restart(&self) {
        self.pg_ctl("start");
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A `ferry` process that serves HTTP, killed (SIGKILL) when dropped.
pub struct Dev {
    pub child: Child,
    pub base: String,
}

/// Starts `ferry <role>` on a free port with fast retries and 1.5 s leases; returns once it
/// listens.
pub fn start_role(role: &str, data: &std::path::Path, env: &[(&str, String)]) -> Dev {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .arg(role)
        .env("FERRY_LISTEN", "127.0.0.1:0")
        .env("FERRY_DATA_DIR", data)
        .env("FERRY_RETRY_BASE_MS", "10")
        .env("FERRY_RETRY_CAP_MS", "50")
        .env("FERRY_LEASE_MS", "1500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry dev");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("ferry: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Dev { child, base }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a server, for taking the server away and bringing it back without
/// touching it (it may be shared by other tests). `down` cuts every connection and refuses
/// new ones; `up` accepts again.
/// A private RabbitMQ node (its own port, node name and data directory), for tests that
/// kill and restart the broker. Durable queues and persistent messages live in its data
/// directory and survive a `kill -9`. Killed and removed on drop.
pub struct RabbitNode {
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    name: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RabbitNode {
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ferry-rmq-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        // The server runs as the rabbitmq user (Debian's wrapper switches to it).
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let node = Self {
            dir,
            port,
            dist_port: free_port(),
            name: format!("ferry-{}-{port}@localhost", std::process::id()),
        };
        node.launch();
        node
    }

    fn launch(&self) {
        let d = &self.dir;
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start rabbitmq-server (scripts/test installs it)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let until = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "private rabbitmq did not start ({d:?}/log)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `kill -9` of the server process, then waits until its port is closed.
    pub fn kill(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < until, "rabbitmq still up after kill -9");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    /// Starts the node again on the same data.
    pub fn restart(&mut self) {
        self.launch();
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private tansu (Kafka-protocol broker) listening on `port` and telling clients to
/// connect to `advertised` (the same port, or a proxy in front of it), keeping its topics in
/// memory or in a SQLite file of its own that survives a restart. Killed on drop.
pub struct Tansu {
    args: Vec<String>,
    port: u16,
    /// Where it runs (a `sqlite://` storage path is relative to it).
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Tansu {
    /// In memory, behind a proxy.
    pub fn start(port: u16, advertised: u16) -> Self {
        Self::start_with(port, advertised, "memory://tansu/")
    }

    /// On a port of its own, with its topics in a SQLite file (tansu's `libsql` storage,
    /// which `scripts/test` builds in): a `kill -9` and a restart keep every acknowledged
    /// record and committed offset.
    pub fn start_durable() -> Self {
        let port = free_port();
        Self::start_with(port, port, "sqlite://tansu/tansu.db")
    }

    fn start_with(port: u16, advertised: u16, storage: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tansu")).unwrap();
        let args = vec![
            "broker".to_owned(),
            "--listener-url".to_owned(),
            format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url".to_owned(),
            format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine".to_owned(),
            storage.to_owned(),
        ];
        let mut t = Self {
            args,
            port,
            dir,
            child: None,
        };
        t.restart();
        t
    }

    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same storage) and waits for its port.
    pub fn restart(&mut self) {
        let child = Command::new("tansu")
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu (scripts/test installs it)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct TcpProxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            std::sync::Arc::default();
        let upstream = upstream.to_owned();
        let accept = {
            let (up, conns) = (up.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Self {
            port,
            up,
            conns,
            accept,
        }
    }

    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}
