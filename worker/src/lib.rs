#![doc = include_str!("../README.md")]

mod builtin;
mod circuit;
mod dispatch;
mod handler;
mod heartbeat;
mod http_target;
mod runtime;
mod settle;
mod source;

pub use handler::{JobContext, JobError, Registry};
pub use http_target::{HttpOptions, signature};
pub use runtime::{Worker, WorkerOptions};
pub use source::SourceError;
