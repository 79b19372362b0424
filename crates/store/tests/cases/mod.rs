//! Store cases every store implementation passes (the embedded SQLite store and Postgres),
//! each taking a store connected to a real, fresh database.

use std::sync::Arc;

use ferry_core::store::{JobEvent, JobEventKind, Store};
use ferry_core::{JobEnvelope, JobKind, JobState, QueueName, UnixMillis};
use serde_json::value::RawValue;

/// Stores may normalise JSON (Postgres `jsonb` does): compare values, not text.
fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

fn job() -> Arc<JobEnvelope> {
    Arc::new(JobEnvelope::new(
        QueueName::parse("q").unwrap(),
        JobKind::parse("echo").unwrap(),
        Arc::from(RawValue::from_string(r#"{"a":1}"#.into()).unwrap()),
    ))
}

fn ev(job: &Arc<JobEnvelope>, attempt: u32, fence: u64, kind: JobEventKind) -> JobEvent {
    JobEvent {
        job: job.clone(),
        attempt,
        fence,
        at: UnixMillis::now(),
        kind,
    }
}

pub async fn records_a_life_and_ignores_late_and_repeated_events(s: Arc<dyn Store>) {
    let j = job();
    assert!(s.job(j.id).await.unwrap().is_none());
    s.record(vec![ev(&j, 0, 0, JobEventKind::Enqueued)])
        .await
        .unwrap();
    assert_eq!(s.job(j.id).await.unwrap().unwrap().state, JobState::Queued);

    let failed = ev(
        &j,
        1,
        1,
        JobEventKind::Failed {
            error: "boom".into(),
            retry_at: UnixMillis::now(),
        },
    );
    s.record(vec![
        ev(&j, 1, 1, JobEventKind::Started { worker: "w".into() }),
        failed.clone(),
    ])
    .await
    .unwrap();
    let r = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.attempts, r.error.as_deref()),
        (JobState::Retrying, 1, Some("boom"))
    );

    let result = Arc::from(RawValue::from_string(r#"{"ok":true}"#.into()).unwrap());
    s.record(vec![
        ev(&j, 2, 2, JobEventKind::Started { worker: "w".into() }),
        ev(
            &j,
            2,
            2,
            JobEventKind::Succeeded {
                result: Some(result),
            },
        ),
    ])
    .await
    .unwrap();
    // The first attempt's failure arrives again, late: it must not overwrite success.
    s.record(vec![
        failed,
        ev(&j, 1, 1, JobEventKind::Started { worker: "w".into() }),
    ])
    .await
    .unwrap();
    let r = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.attempts, 2);
    assert_eq!(json(r.result.unwrap().get()), json(r#"{"ok":true}"#));
    assert!(r.error.is_none());
    assert!(r.started_at.is_some() && r.finished_at.is_some());
}

pub async fn a_worker_event_creates_the_record_when_the_enqueue_event_was_lost(s: Arc<dyn Store>) {
    let j = job();
    s.record(vec![ev(
        &j,
        1,
        1,
        JobEventKind::Dead {
            error: "gone".into(),
        },
    )])
    .await
    .unwrap();
    let r = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Dead);
    assert_eq!(r.kind.as_str(), "echo");
    assert_eq!(json(r.payload.get()), json(r#"{"a":1}"#));
}

pub async fn the_timeline_lists_each_event_once_in_order(s: Arc<dyn Store>) {
    let j = job();
    assert!(
        s.events(j.id).await.unwrap().is_empty(),
        "unknown job: no events"
    );
    let result = Arc::from(RawValue::from_string(r#"{"n":2}"#.into()).unwrap());
    let life = vec![
        ev(&j, 0, 0, JobEventKind::Enqueued),
        ev(
            &j,
            1,
            1,
            JobEventKind::Started {
                worker: "w1".into(),
            },
        ),
        ev(
            &j,
            1,
            1,
            JobEventKind::Failed {
                error: "boom".into(),
                retry_at: UnixMillis::now(),
            },
        ),
        ev(
            &j,
            2,
            2,
            JobEventKind::Started {
                worker: "w2".into(),
            },
        ),
        ev(
            &j,
            2,
            2,
            JobEventKind::Succeeded {
                result: Some(result),
            },
        ),
    ];
    // Out of order and delivered twice: the log still holds each event once, in order.
    let mut shuffled = life.clone();
    shuffled.reverse();
    s.record(shuffled).await.unwrap();
    s.record(life).await.unwrap();
    let events = s.events(j.id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["enqueued", "started", "failed", "started", "succeeded"]
    );
    assert_eq!(
        events.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [0, 1, 1, 2, 2]
    );
    assert_eq!(events[1].worker.as_deref(), Some("w1"));
    assert_eq!(events[2].error.as_deref(), Some("boom"));
    assert_eq!(
        json(events[4].result.as_ref().unwrap().get()),
        json(r#"{"n":2}"#)
    );
    let r = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Succeeded);
}

fn job_in(queue: &str, kind: &str, payload: &str, tag: Option<&str>) -> Arc<JobEnvelope> {
    let mut j = JobEnvelope::new(
        QueueName::parse(queue).unwrap(),
        JobKind::parse(kind).unwrap(),
        Arc::from(RawValue::from_string(payload.into()).unwrap()),
    );
    j.tags = tag
        .map(|t| ferry_core::Tag::parse(t).unwrap())
        .into_iter()
        .collect();
    Arc::new(j)
}

fn ids(records: &[ferry_core::store::JobRecord]) -> Vec<ferry_core::JobId> {
    records.iter().map(|r| r.id).collect()
}

pub async fn search_filters_and_pages_newest_first(s: Arc<dyn Store>) {
    use ferry_core::store::JobQuery;
    // A queue name of this run's own, so that a shared database holds no one else's jobs.
    let queue = format!(
        "search-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let a = job_in(
        &queue,
        "email.send",
        r#"{"user_id":42,"to":{"domain":"x.org"}}"#,
        Some("tenant:7"),
    );
    let b = job_in(&queue, "email.send", r#"{"user_id":7}"#, Some("tenant:8"));
    let c = job_in(&queue, "report.build", r#"{"user_id":42}"#, None);
    let d = job_in(
        "elsewhere",
        "email.send",
        r#"{"user_id":42}"#,
        Some("tenant:7"),
    );
    let mut events = Vec::new();
    for j in [&a, &b, &c, &d] {
        events.push(ev(j, 0, 0, JobEventKind::Enqueued));
    }
    events.push(ev(&b, 1, 1, JobEventKind::Dead { error: "no".into() }));
    s.record(events).await.unwrap();
    let q = |f: &dyn Fn(&mut JobQuery)| {
        let mut q = JobQuery {
            queue: Some(QueueName::parse(&queue).unwrap()),
            limit: 10,
            ..JobQuery::default()
        };
        f(&mut q);
        q
    };
    let all = s.search(&q(&|_| {})).await.unwrap();
    assert_eq!(
        ids(&all),
        vec![c.id, b.id, a.id],
        "newest first, this queue only"
    );
    let by_kind = s
        .search(&q(&|q| {
            q.kind = Some(JobKind::parse("email.send").unwrap());
        }))
        .await
        .unwrap();
    assert_eq!(ids(&by_kind), vec![b.id, a.id]);
    let dead = s
        .search(&q(&|q| q.state = Some(JobState::Dead)))
        .await
        .unwrap();
    assert_eq!(ids(&dead), vec![b.id]);
    let tagged = s
        .search(&q(&|q| {
            q.tag = Some(ferry_core::Tag::parse("tenant:7").unwrap());
        }))
        .await
        .unwrap();
    assert_eq!(ids(&tagged), vec![a.id]);
    let user_42 = s
        .search(&q(&|q| {
            q.payload = vec![(vec!["user_id".into()], serde_json::json!(42))];
        }))
        .await
        .unwrap();
    assert_eq!(ids(&user_42), vec![c.id, a.id]);
    let nested = s
        .search(&q(&|q| {
            q.payload = vec![
                (vec!["user_id".into()], serde_json::json!(42)),
                (
                    vec!["to".into(), "domain".into()],
                    serde_json::json!("x.org"),
                ),
            ];
        }))
        .await
        .unwrap();
    assert_eq!(ids(&nested), vec![a.id]);
    let window = s
        .search(&q(&|q| {
            q.created_from = Some(a.created_at);
            q.created_to = Some(UnixMillis(c.created_at.0 + 1));
        }))
        .await
        .unwrap();
    assert_eq!(ids(&window), vec![c.id, b.id, a.id]);
    let none = s
        .search(&q(&|q| {
            q.created_from = Some(UnixMillis(c.created_at.0 + 60_000));
        }))
        .await
        .unwrap();
    assert!(none.is_empty());
    // Pages of two: the cursor is the last id of the previous page.
    let first = s.search(&q(&|q| q.limit = 2)).await.unwrap();
    assert_eq!(ids(&first), vec![c.id, b.id]);
    let second = s
        .search(&q(&|q| {
            q.limit = 2;
            q.before = Some(b.id);
        }))
        .await
        .unwrap();
    assert_eq!(ids(&second), vec![a.id]);
}

fn keyed(queue: &str, tenant: Option<&str>, key: &str) -> Arc<JobEnvelope> {
    let mut j = JobEnvelope::new(
        QueueName::parse(queue).unwrap(),
        JobKind::parse("order.place").unwrap(),
        JobEnvelope::empty_payload(),
    );
    j.tenant = tenant.map(|t| ferry_core::Tenant::parse(t).unwrap());
    j.idempotency_key = Some(ferry_core::IdempotencyKey::parse(key).unwrap());
    Arc::new(j)
}

pub async fn idempotency_keys_are_unique_per_tenant(s: Arc<dyn Store>) {
    use ferry_core::{IdempotencyKey, Tenant};
    let acme = keyed("orders", Some("acme"), "order-42");
    let globex = keyed("orders", Some("globex"), "order-42");
    let nobody = keyed("orders", None, "order-42");
    s.record(vec![
        ev(&acme, 0, 0, JobEventKind::Enqueued),
        ev(&globex, 0, 0, JobEventKind::Enqueued),
        ev(&nobody, 0, 0, JobEventKind::Enqueued),
    ])
    .await
    .unwrap();
    // A second submission in the same tenant (another queue, past any broker window): history
    // keeps it, but the key stays with the first job.
    let late = keyed("refunds", Some("acme"), "order-42");
    s.record(vec![ev(&late, 0, 0, JobEventKind::Enqueued)])
        .await
        .unwrap();
    let key = IdempotencyKey::parse("order-42").unwrap();
    let t = |n: &str| Some(Tenant::parse(n).unwrap());
    let found = s
        .jobs_by_key(&[
            (t("acme"), key.clone()),
            (t("globex"), key.clone()),
            (None, key.clone()),
            (t("initech"), key.clone()),
            (t("acme"), IdempotencyKey::parse("order-43").unwrap()),
        ])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![Some(acme.id), Some(globex.id), Some(nobody.id), None, None]
    );

    let r = s.job(acme.id).await.unwrap().unwrap();
    assert_eq!(r.tenant.as_ref().map(Tenant::as_str), Some("acme"));
    assert_eq!(r.idempotency_key, Some(key));
    let mut q = ferry_core::store::JobQuery {
        limit: 10,
        ..Default::default()
    };
    q.tenant = t("acme");
    assert_eq!(ids(&s.search(&q).await.unwrap()), vec![late.id, acme.id]);
    q.tenant = t("globex");
    assert_eq!(ids(&s.search(&q).await.unwrap()), vec![globex.id]);
}
