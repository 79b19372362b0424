#![doc = include_str!("../README.md")]

mod builtin;
mod dispatch;
mod handler;
mod heartbeat;
mod runtime;
mod settle;
mod source;

pub use handler::{JobContext, JobError, Registry};
pub use runtime::{Worker, WorkerOptions};
pub use source::SourceError;
