//! The http-edge binary: parse configuration, optionally start the core in-process, serve HTTP
//! until SIGTERM, then drain the edge before the core.

use std::sync::Arc;

use anyhow::Context;
use http_edge::{
    abuse::Abuse,
    app::{self, AppState, HttpLimits},
    config::{EdgeCli, Verifiers},
    core_client::{CoreClient, CoreCredentials},
};
use ingest_core::{config, metrics, security::GrpcSecurity, server};
use tokio::sync::Notify;

/// mimalloc: per-thread free lists suit a server that allocates and frees small buffers on
/// every request from several threads (glibc malloc was ~12 % of a load profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // The scheme of the embedded core's own listener (TLS when it has a certificate).
    let embedded_scheme = if cli.core.grpc_tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    // Credentials for a core elsewhere; the embedded one is called in place and needs none.
    let credentials = if cli.edge.embedded() {
        Some(CoreCredentials::default())
    } else {
        CoreCredentials::load(&cli.core_auth, &cli.edge.core_url)
            .map_err(|p| problems.extend(p))
            .ok()
    };
    let security = if cli.edge.embedded() {
        GrpcSecurity::load(&cli.core)
            .map_err(|p| problems.extend(p))
            .ok()
    } else {
        Some(GrpcSecurity::none())
    };
    config::exit_on_problems(&problems);
    let (Some(verifiers), Some(abuse), Some(credentials), Some(security)) =
        (verifiers, abuse, credentials, security)
    else {
        unreachable!("problems were reported above")
    };
    let telemetry = cli.runtime.init_tracing("http-edge");
    ingest_core::security::tls::install_default_provider();
    verifiers.log(cli.edge.skip_verify());
    tracing::info!(limits = %abuse.describe(), "abuse limits");

    let stop_admin = metrics::start_admin(cli.runtime.admin_listen)
        .await
        .context("binding --admin-listen")?;
    let stop_core = Arc::new(Notify::new());
    let mut core_task = None;
    // The embedded core serves its gRPC port (grpcurl, internal submitters) and the edge calls
    // the same services in place.
    let credentials_in_force = credentials.describe();
    let (core, core_url) = if cli.edge.embedded() {
        let pipeline = server::build_pipeline(&cli.core).await?;
        let listener = tokio::net::TcpListener::bind(cli.core.grpc_listen)
            .await
            .with_context(|| format!("binding {}", cli.core.grpc_listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data_dir = %cli.core.data_dir.display(), "embedded ingest-core listening (gRPC)");
        security.log(addr);
        let limits = server::Limits::from_config(&cli.core, cli.runtime.grace());
        let services = server::CoreServices::new(pipeline).await;
        let core = CoreClient::in_process(&services, cli.edge.core_timeout());
        let stop = stop_core.clone();
        core_task = Some(tokio::spawn(server::serve_secured(
            listener,
            services,
            limits,
            security,
            async move { stop.notified().await },
        )));
        (
            core,
            format!("in-process (gRPC also on {embedded_scheme}://{addr})"),
        )
    } else {
        let url = cli.edge.core_url.clone();
        let dns_refresh = std::time::Duration::from_secs(cli.edge.core_dns_refresh_secs);
        let core = CoreClient::connect(&url, cli.edge.core_timeout(), dns_refresh, credentials)
            .with_context(|| format!("invalid --core-url {url}"))?;
        (core, url)
    };
    tracing::info!(core = %core_url, credentials = %credentials_in_force, "core client");
    let _watch_credentials = (!cli.edge.embedded()).then(|| {
        core.watch_credentials(
            cli.core_auth.clone(),
            core_url.clone(),
            std::time::Duration::from_secs(cli.core_auth.core_reload_secs),
        )
    });
    let state = AppState::new(core, verifiers, abuse);
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
