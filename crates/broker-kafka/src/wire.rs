//! What a message holds. Work topics carry the bare job envelope (JSON), so that any Kafka
//! tool reads them; delay steps and dead letters wrap it with what that topic needs.

use ferry_core::{JobEnvelope, UnixMillis};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct Held<'a> {
    hold_until: UnixMillis,
    job: &'a JobEnvelope,
}

#[derive(Deserialize)]
struct HeldOwned {
    hold_until: UnixMillis,
    job: JobEnvelope,
}

#[derive(Serialize)]
struct Dead<'a> {
    error: &'a str,
    job: &'a JobEnvelope,
}

#[derive(Deserialize)]
pub(crate) struct DeadOwned {
    pub(crate) error: String,
    pub(crate) job: JobEnvelope,
}

pub(crate) fn work(job: &JobEnvelope) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(job)
}

pub(crate) fn held(job: &JobEnvelope, hold_until: UnixMillis) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Held { hold_until, job })
}

pub(crate) fn dead(job: &JobEnvelope, error: &str) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Dead { error, job })
}

pub(crate) fn read_work(b: &[u8]) -> serde_json::Result<JobEnvelope> {
    serde_json::from_slice(b)
}

pub(crate) fn read_held(b: &[u8]) -> serde_json::Result<(JobEnvelope, UnixMillis)> {
    let h: HeldOwned = serde_json::from_slice(b)?;
    Ok((h.job, h.hold_until))
}

pub(crate) fn read_dead(b: &[u8]) -> serde_json::Result<DeadOwned> {
    serde_json::from_slice(b)
}
