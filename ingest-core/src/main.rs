//! The ingest-core binary: parse configuration, build the pipeline, serve gRPC until SIGTERM.

use anyhow::Context;
use clap::Parser;
use ingest_core::{
    config::{self, CoreConfig, RuntimeConfig},
    metrics, security, server,
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

/// mimalloc: per-thread free lists suit a server that allocates and frees small buffers on
/// every request from several threads (glibc malloc was ~12 % of a load profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = config::parse_or_exit();
    let mut problems = cli.core.problems();
    problems.extend(cli.runtime.problems());
    config::exit_on_problems(&problems);
    let security = security::GrpcSecurity::load(&cli.core).unwrap_or_else(|problems| {
        config::exit_on_problems(&problems);
        unreachable!("problems were reported above")
    });
    let telemetry = cli.runtime.init_tracing("ingest-core");
    security::tls::install_default_provider();

    let pipeline = server::build_pipeline(&cli.core).await?;
    let listener = tokio::net::TcpListener::bind(cli.core.grpc_listen)
        .await
        .with_context(|| format!("binding {}", cli.core.grpc_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "ingest-core listening (gRPC)");
    security.log(listener.local_addr()?);
    let stop_admin = metrics::start_core_admin(cli.runtime.admin_listen)
        .await
        .context("binding --admin-listen")?;
    let limits = server::Limits::from_config(&cli.core, cli.runtime.grace());
    server::serve_secured(
        listener,
        server::CoreServices::new(pipeline).await,
        limits,
        security,
        server::shutdown_signal(),
    )
    .await?;
    stop_admin.notify_one();
    telemetry.shutdown().await;
    tracing::info!("ingest-core stopped");
    Ok(())
}
