//! Bad configuration and arguments: one clear line on stderr, exit code 2, no panic.

use std::process::Command;

fn ferry(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args)
        .env("FERRY_DATA_DIR", dir.path())
        .env("RUST_LOG", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(code: i32, stderr: &str, has: &str) {
    assert_one_line_exit(2, code, stderr, has);
}

fn assert_one_line_exit(want: i32, code: i32, stderr: &str, has: &str) {
    assert_eq!(code, want, "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "exactly one line: {stderr:?}");
    assert!(stderr.starts_with("ferry: "), "{stderr:?}");
    assert!(stderr.contains(has), "{stderr:?} lacks {has:?}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn bad_configuration_is_one_line_and_exit_2() {
    let (c, e) = ferry(&["api"], &[("FERRY_LISTEN", "nope")]);
    assert_one_line(c, &e, "FERRY_LISTEN=\"nope\"");
    let (c, e) = ferry(&["worker"], &[("FERRY_BROKER_URL", "mongo://x")]);
    assert_one_line(c, &e, "unknown broker scheme 'mongo'");
    let (c, e) = ferry(&["worker"], &[("FERRY_BROKER_URL", "amqps://h/%2f")]);
    assert_one_line(c, &e, "the amqps broker is not part of this build yet");
    let (c, e) = ferry(
        &["worker"],
        &[("FERRY_BROKER_URL", "amqp://127.0.0.1:5672")],
    );
    assert_one_line(c, &e, "FERRY_QUEUES: RabbitMQ cannot list queues");
    let (c, e) = ferry(
        &["dev"],
        &[("FERRY_DATABASE_URL", "postgres://127.0.0.1:notaport/test")],
    );
    assert_one_line(c, &e, "FERRY_DATABASE_URL: not a valid postgres URL");
    // Nothing listens on port 1: one line, exit 1, password hidden.
    let (c, e) = ferry(
        &["dev"],
        &[(
            "FERRY_DATABASE_URL",
            "postgres://ferry:s3cret@127.0.0.1:1/test",
        )],
    );
    assert_one_line_exit(
        1,
        c,
        &e,
        "cannot use postgres at postgres://ferry:***@127.0.0.1:1/test",
    );
    assert!(!e.contains("s3cret"));
    let (c, e) = ferry(&["worker"], &[("FERRY_WORKER_CONCURRENCY", "0")]);
    assert_one_line(c, &e, "FERRY_WORKER_CONCURRENCY");
    let (c, e) = ferry(&["worker"], &[("FERRY_HTTP_BREAKER_FAILURES", "many")]);
    assert_one_line(c, &e, "FERRY_HTTP_BREAKER_FAILURES");
    let (c, e) = ferry(
        &["worker"],
        &[
            ("FERRY_BROKER_URL", "redis://127.0.0.1:6379"),
            ("FERRY_REDIS_DEAD_MAX", "lots"),
        ],
    );
    assert_one_line(c, &e, "FERRY_REDIS_DEAD_MAX");
    let (c, e) = ferry(&["submit", "noop", "--payload", "{oops"], &[]);
    assert_one_line(c, &e, "--payload is not JSON");
}

#[test]
fn bad_redis_urls_are_one_line_not_a_hang() {
    // Malformed: the operator's to fix, exit 2.
    let (c, e) = ferry(
        &["worker"],
        &[("FERRY_BROKER_URL", "redis://127.0.0.1:notaport")],
    );
    assert_one_line(c, &e, "not a valid redis URL");
    // Nothing listens on port 1: refused at once, exit 1 so a supervisor retries.
    for cmd in ["worker", "dev"] {
        let start = std::time::Instant::now();
        let (c, e) = ferry(&[cmd], &[("FERRY_BROKER_URL", "redis://127.0.0.1:1")]);
        assert_one_line_exit(1, c, &e, "cannot reach redis at redis://127.0.0.1:1");
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }
    // The password never reaches the terminal.
    let (c, e) = ferry(
        &["worker"],
        &[("FERRY_BROKER_URL", "redis://ferry:s3cret@127.0.0.1:1")],
    );
    assert_one_line_exit(1, c, &e, "redis://ferry:***@127.0.0.1:1");
    assert!(!e.contains("s3cret"));
}

#[test]
fn bad_amqp_urls_are_one_line_not_a_hang() {
    let q = ("FERRY_QUEUES", "jobs");
    let (c, e) = ferry(
        &["worker"],
        &[("FERRY_BROKER_URL", "amqp://127.0.0.1:notaport/%2f"), q],
    );
    assert_one_line(c, &e, "not a valid amqp URL");
    let start = std::time::Instant::now();
    let (c, e) = ferry(
        &["worker"],
        &[
            ("FERRY_BROKER_URL", "amqp://ferry:s3cret@127.0.0.1:1/%2f"),
            q,
        ],
    );
    assert_one_line_exit(
        1,
        c,
        &e,
        "cannot reach RabbitMQ at amqp://ferry:***@127.0.0.1:1",
    );
    assert!(!e.contains("s3cret"));
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    // Wrong credentials on a real server: one line too.
    let (c, e) = ferry(
        &["worker"],
        &[
            ("FERRY_BROKER_URL", "amqp://guest:wrong@127.0.0.1:5672/%2f"),
            q,
        ],
    );
    assert_one_line_exit(1, c, &e, "cannot reach RabbitMQ");
}

#[test]
fn bad_kafka_urls_are_one_line_not_a_hang() {
    let (c, e) = ferry(
        &["worker"],
        &[("FERRY_BROKER_URL", "kafka://ferry:s3cret@127.0.0.1:9092")],
    );
    assert_one_line(c, &e, "SASL is not part of this build");
    assert!(!e.contains("s3cret"));
    let (c, e) = ferry(
        &["worker"],
        &[("FERRY_BROKER_URL", "kafka://127.0.0.1:1/jobs")],
    );
    assert_one_line(c, &e, "not a valid kafka URL");
    let (c, e) = ferry(
        &["worker"],
        &[
            ("FERRY_BROKER_URL", "kafka://127.0.0.1:9092"),
            ("FERRY_KAFKA_PARTITIONS", "0"),
        ],
    );
    assert_one_line(c, &e, "FERRY_KAFKA_PARTITIONS");
    // Nothing listens on port 1: one line within the connect timeout, exit 1.
    let start = std::time::Instant::now();
    let (c, e) = ferry(&["worker"], &[("FERRY_BROKER_URL", "kafka://127.0.0.1:1")]);
    assert_one_line_exit(1, c, &e, "cannot reach Kafka at kafka://127.0.0.1:1");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn migrate_creates_both_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("migrate")
        .env("FERRY_DATA_DIR", dir.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("broker.db").exists());
    assert!(dir.path().join("store.db").exists());
}
