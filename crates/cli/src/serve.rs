//! `ferry dev`, `ferry api`, `ferry worker` and `ferry migrate`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use ferry_config::{ApiConfig, DataConfig, HttpTargetConfig, ProcessEnv, WorkerConfig};
use ferry_core::RetryPolicy;
use ferry_worker::{HttpOptions, Registry, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;

use crate::open;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Dev,
    Api,
    Worker,
}

/// Cancels `token` on SIGINT or SIGTERM.
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

pub(crate) async fn run(role: Role) -> anyhow::Result<()> {
    let env = ProcessEnv;
    let data = DataConfig::from_env(&env)?;
    let api_cfg = ApiConfig::from_env(&env)?;
    let worker_cfg = WorkerConfig::from_env(&env)?;
    let http_cfg = HttpTargetConfig::from_env(&env)?;
    if role != Role::Api
        && matches!(data.broker, ferry_config::BrokerUrl::Amqp(_))
        && worker_cfg.queues == ferry_core::broker::QueueSelector::All
    {
        return Err(crate::UsageError(
            "FERRY_QUEUES: RabbitMQ cannot list queues; name the queues this worker takes (e.g. FERRY_QUEUES=emails,reports)".into(),
        )
        .into());
    }
    let broker = open::broker(&data.broker).await?;
    let store = open::store(&data.store, data.retention).await?;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    let metrics = ferry_telemetry::install();

    let worker = if role == Role::Api {
        None
    } else {
        let w = Worker::new(
            broker.clone(),
            store.clone(),
            Registry::with_builtins_and(HttpOptions {
                signing_secret: http_cfg.signing_secret.clone(),
                timeout: http_cfg.timeout,
                breaker_failures: http_cfg.breaker_failures,
                breaker_cooldown: http_cfg.breaker_cooldown,
            }),
            WorkerOptions {
                concurrency: worker_cfg.concurrency,
                settle_window: worker_cfg.settle_window,
                queues: worker_cfg.queues,
                lease: worker_cfg.lease,
                default_timeout: worker_cfg.default_timeout,
                retry: RetryPolicy {
                    base: worker_cfg.retry_base,
                    cap: worker_cfg.retry_cap,
                },
                worker_id: None,
                shutdown_grace: worker_cfg.shutdown_grace,
            },
        );
        Some(tokio::spawn(w.run(shutdown.clone())))
    };

    let server = if role == Role::Worker {
        None
    } else {
        let state = ferry_api::AppState {
            broker,
            // Enqueue events outlive a store outage; the worker above keeps the plain store.
            store: Arc::new(ferry_store::RetryingStore::new(store)),
            metrics,
            body_limit: api_cfg.body_limit,
        };
        let mut app = ferry_api::router(state);
        if role == Role::Dev {
            app = app.merge(ferry_dashboard::router());
        }
        let listener = tokio::net::TcpListener::bind(api_cfg.listen)
            .await
            .with_context(|| format!("FERRY_LISTEN={}: cannot listen", api_cfg.listen))?;
        let addr = listener.local_addr()?;
        // The first line on stdout is the address, for scripts and tests that asked for port 0.
        println!("ferry: listening on http://{addr}");
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, broker = ?data.broker, store = ?data.store, "serving");
        let token = shutdown.clone();
        Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        }))
    };

    if let Some(s) = server {
        s.await.context("api task")?.context("api server")?;
    }
    if let Some(w) = worker {
        w.await.context("worker task")??;
    }
    Ok(())
}

pub(crate) async fn migrate() -> anyhow::Result<()> {
    let data = DataConfig::from_env(&ProcessEnv)?;
    // Opening migrates.
    open::broker(&data.broker).await?;
    open::store(&data.store, data.retention).await?;
    println!("ferry: broker and store schemas are up to date");
    Ok(())
}
