//! `fieldmq run`: the gateway until SIGINT or SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use fieldmq::config::Config;
use fieldmq::gateway::Gateway;
use tokio_util::sync::CancellationToken;

/// Runs the gateway for `config` until a stop signal, or until its sources end.
pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let gateway = Gateway::start(config).await?;
    let shutdown = CancellationToken::new();
    let serving = gateway.serve(shutdown.clone());
    tokio::pin!(serving);
    tokio::select! {
        done = &mut serving => {
            done?;
            return Ok(ExitCode::SUCCESS);
        }
        received = shutdown_signal() => {
            tracing::info!(signal = received?, "shutting down");
            shutdown.cancel();
        }
    }
    serving.await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves at the first SIGTERM or SIGINT, with its name.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
