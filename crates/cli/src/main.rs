#![doc = include_str!("../README.md")]

mod bench;
mod cancel;
mod client;
mod limits;
mod open;
mod serve;
mod submit;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: async jobs over HTTP, run by workers, remembered in a store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API, worker and dashboard in one process on the embedded default (no servers needed).
    Dev,
    /// The HTTP API only.
    Api,
    /// A worker only.
    Worker,
    /// Create or upgrade the broker and store schemas, then exit.
    Migrate,
    /// Submit a job to a running API.
    Submit(submit::SubmitArgs),
    /// Cancel a job on a running API: a waiting job is removed, a running one stopped.
    Cancel(cancel::CancelArgs),
    /// Show or replace a queue's pool-wide limits (rate, concurrency, per-key) on a running
    /// API; workers apply a change at once.
    Limits(limits::LimitsArgs),
    /// Benchmarks: one JSON line per result on stdout.
    Bench(bench::BenchArgs),
}

/// An error that is the user's to fix (configuration, arguments): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_telemetry::init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Dev => serve::run(serve::Role::Dev).await,
            Command::Api => serve::run(serve::Role::Api).await,
            Command::Worker => serve::run(serve::Role::Worker).await,
            Command::Migrate => serve::migrate().await,
            Command::Submit(a) => submit::run(a).await,
            Command::Limits(a) => limits::run(a).await,
            Command::Cancel(a) => cancel::run(a).await,
            Command::Bench(a) => bench::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            if e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<ferry_config::ConfigError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
