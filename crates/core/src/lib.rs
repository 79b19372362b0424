#![doc = include_str!("../README.md")]

pub mod broker;
mod envelope;
mod id;
pub mod ladder;
pub mod limits;
mod name;
mod retry;
mod state;
pub mod store;
mod time;
mod url;

pub use envelope::{JobEnvelope, Payload};
pub use id::{JobId, ParseJobIdError};
pub use name::{FlowKey, IdempotencyKey, JobKind, NameError, QueueName, Tag, Tenant};
pub use retry::RetryPolicy;
pub use state::{IllegalTransition, JobState};
pub use time::UnixMillis;
pub use url::redacted_url;
