//! A store that keeps nothing: for benchmarks that isolate dispatch (broker + worker) from
//! history, the way peers such as BullMQ run with `removeOnComplete`. Not offered to
//! deployments: a Ferry that forgets its jobs' history is not one we ship.

use async_trait::async_trait;
use ferry_core::store::{EventRecord, JobEvent, JobQuery, JobRecord, Store, StoreResult};
use ferry_core::{IdempotencyKey, JobId, Tenant};

#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardStore;

#[async_trait]
impl Store for DiscardStore {
    fn name(&self) -> &'static str {
        "none"
    }

    async fn record(&self, _events: Vec<JobEvent>) -> StoreResult<()> {
        Ok(())
    }

    async fn job(&self, _id: JobId) -> StoreResult<Option<JobRecord>> {
        Ok(None)
    }

    async fn events(&self, _id: JobId) -> StoreResult<Vec<EventRecord>> {
        Ok(Vec::new())
    }

    async fn search(&self, _query: &JobQuery) -> StoreResult<Vec<JobRecord>> {
        Ok(Vec::new())
    }

    async fn jobs_by_key(
        &self,
        keys: &[(Option<Tenant>, IdempotencyKey)],
    ) -> StoreResult<Vec<Option<JobId>>> {
        Ok(vec![None; keys.len()])
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
