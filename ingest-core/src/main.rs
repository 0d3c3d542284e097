//! The ingest-core binary: parse configuration, build the pipeline, serve gRPC until SIGTERM.

use anyhow::Context;
use clap::Parser;
use ingest_core::{
    config::{self, CoreConfig, RuntimeConfig},
    metrics, server,
};

/// carrier-ingest core: validates, normalizes, dedupes and publishes carrier events (gRPC).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    core: CoreConfig,
    #[command(flatten)]
    runtime: RuntimeConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = config::parse_or_exit();
    let mut problems = cli.core.problems();
    problems.extend(cli.runtime.problems());
    config::exit_on_problems(&problems);
    let telemetry = cli.runtime.init_tracing("ingest-core");

    let pipeline = server::build_pipeline(&cli.core).await?;
    let listener = tokio::net::TcpListener::bind(cli.core.grpc_listen)
        .await
        .with_context(|| format!("binding {}", cli.core.grpc_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "ingest-core listening (gRPC)");
    let stop_admin = metrics::start_admin(cli.runtime.admin_listen)
        .await
        .context("binding --admin-listen")?;
    let limits = server::Limits::from_config(&cli.core, cli.runtime.grace());
    server::serve(listener, pipeline, limits, server::shutdown_signal()).await?;
    stop_admin.notify_one();
    telemetry.shutdown().await;
    tracing::info!("ingest-core stopped");
    Ok(())
}
