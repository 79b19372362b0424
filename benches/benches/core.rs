//! Micro-benchmarks of the hot pure code.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_core::{JobEnvelope, JobKind, QueueName, RetryPolicy};
use serde_json::value::RawValue;

fn core(c: &mut Criterion) {
    let policy = RetryPolicy::default();
    let mut rng = rand_rng();
    c.bench_function("retry_backoff", |b| {
        b.iter(|| policy.backoff(black_box(7), &mut rng));
    });
    c.bench_function("queue_name_parse", |b| {
        b.iter(|| QueueName::parse(black_box("emails.high-priority")));
    });
    let job = JobEnvelope::new(
        QueueName::parse("emails").unwrap(),
        JobKind::parse("email.send").unwrap(),
        Arc::from(
            RawValue::from_string(r#"{"to":"a@b.c","subject":"hi","n":[1,2,3]}"#.into()).unwrap(),
        ),
    );
    c.bench_function("envelope_to_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&job)).unwrap());
    });
    let text = serde_json::to_vec(&job).unwrap();
    c.bench_function("envelope_from_json", |b| {
        b.iter(|| serde_json::from_slice::<JobEnvelope>(black_box(&text)).unwrap());
    });
}

fn rand_rng() -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(1)
}

criterion_group!(benches, core);
criterion_main!(benches);
