//! The http-edge binary: parse configuration, optionally start the core in-process, serve HTTP
//! until SIGTERM, then drain the edge before the core.

use std::sync::Arc;

use anyhow::Context;
use http_edge::{
    abuse::Abuse,
    app::{self, AppState, HttpLimits},
    config::{EdgeCli, Verifiers},
    core_client::CoreClient,
};
use ingest_core::{config, metrics, server};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: EdgeCli = config::parse_or_exit();
    let mut problems = cli.core.problems();
    problems.extend(cli.runtime.problems());
    let verifiers = match Verifiers::from_config(&cli.edge, &cli.secrets) {
        Ok(v) => Some(v),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    let abuse = match Abuse::from_config(&cli.abuse, cli.edge.trusted_proxies.as_deref()) {
        Ok(a) => Some(a),
        Err(p) => {
            // --trusted-proxies problems are already reported by the verifiers' settings.
            for problem in p {
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
            None
        }
    };
    config::exit_on_problems(&problems);
    let (Some(verifiers), Some(abuse)) = (verifiers, abuse) else {
        unreachable!("problems were reported above")
    };
    let telemetry = cli.runtime.init_tracing("http-edge");
    verifiers.log(cli.edge.skip_verify());
    tracing::info!(limits = %abuse.describe(), "abuse limits");

    let stop_admin = metrics::start_admin(cli.runtime.admin_listen)
        .await
        .context("binding --admin-listen")?;
    let stop_core = Arc::new(Notify::new());
    let mut core_task = None;
    let core_url = if cli.edge.embedded() {
        let pipeline = server::build_pipeline(&cli.core).await?;
        let listener = tokio::net::TcpListener::bind(cli.core.grpc_listen)
            .await
            .with_context(|| format!("binding {}", cli.core.grpc_listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data_dir = %cli.core.data_dir.display(), "embedded ingest-core listening (gRPC)");
        let limits = server::Limits::from_config(&cli.core, cli.runtime.grace());
        let stop = stop_core.clone();
        core_task = Some(tokio::spawn(server::serve(
            listener,
            pipeline,
            limits,
            async move { stop.notified().await },
        )));
        format!("http://{addr}")
    } else {
        cli.edge.core_url.clone()
    };

    let dns_refresh = if cli.edge.embedded() {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_secs(cli.edge.core_dns_refresh_secs)
    };
    let core = CoreClient::connect_lazy(&core_url, cli.edge.core_timeout(), dns_refresh)
        .with_context(|| format!("invalid --core-url {core_url}"))?;
    let state = AppState::new(core, verifiers).with_abuse(abuse);
    let limits = HttpLimits {
        body_bytes: cli.edge.body_limit_bytes,
        request_timeout: cli.edge.request_timeout(),
        concurrency: cli.edge.http_concurrency_limit,
    };
    let router = app::router(state.clone(), limits);
    let listener = tokio::net::TcpListener::bind(cli.edge.listen)
        .await
        .with_context(|| format!("binding {}", cli.edge.listen))?;
    tracing::info!(addr = %listener.local_addr()?, core = %core_url, "http-edge listening");
    app::serve(
        listener,
        router,
        &state,
        std::time::Duration::from_millis(cli.edge.http_header_timeout_ms),
        cli.edge.http_max_connections,
        cli.runtime.grace(),
        server::shutdown_signal(),
    )
    .await?;

    // The edge has drained: nothing more can reach the embedded core.
    stop_core.notify_one();
    if let Some(task) = core_task {
        task.await??;
    }
    stop_admin.notify_one();
    telemetry.shutdown().await;
    tracing::info!("http-edge stopped");
    Ok(())
}
