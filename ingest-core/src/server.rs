//! Assembly of the core from configuration, and the gRPC server with its limits, health,
//! reflection and graceful drain.

use std::{future::Future, sync::Arc, time::Duration};

use carrier_ingest::v1::ingest_service_server::IngestServiceServer;
use tokio::{net::TcpListener, sync::Notify};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::{CoreConfig, DedupeKind, PublisherKind},
    dedupe::{DedupeStore, FallbackDedupe, MemoryDedupe, RedisDedupe, RedisSettings},
    publish::{
        ForwardSettings, Publisher, Spool, SqsPublisher, SqsSettings, StoreAndForward,
        outbox::OutboxError,
    },
    security::{GrpcSecurity, tls},
    service::{IngestGrpc, Pipeline, Routes},
};

/// Largest accepted gRPC message.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The limit the core's gRPC server puts on a decoded message, for a caller in this process that
/// hands the ingest service a message without encoding it ([`CoreServices::ingest`]):
/// `OUT_OF_RANGE` past it, as over the network.
pub fn check_message_size(message: &impl prost::Message) -> Result<(), tonic::Status> {
    let len = message.encoded_len();
    if len > MAX_MESSAGE_BYTES {
        return Err(tonic::Status::out_of_range(format!(
            "message length too large: found {len} bytes, the limit is {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    Ok(())
}
/// How long a claim may be held before another caller may take it over: in memory (one process,
/// so its holder cannot die alone) and, in Redis, the longest a live holder keeps renewing one.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// The Redis claim lease, renewed by its holder while the publish runs: a replica that dies
/// leaves claims that lapse within this, so a retry on another replica takes over quickly.
const REDIS_CLAIM_LEASE: Duration = Duration::from_millis(1_500);
/// The longest a claim waits on another replica's live claim. It must exceed the Redis lease (so
/// a dead holder's claim is taken over) and stay below the edge's deadline (`--core-timeout-ms`,
/// 5 s by default), so the retry answers before the edge gives up.
const REDIS_CLAIM_WAIT: Duration = Duration::from_secs(3);
/// How often a degraded dedupe store checks whether Redis is back.
const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often readiness re-checks the publisher's queues.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);
/// The service name reported by gRPC health.
pub const SERVICE_NAME: &str = "carrier.ingest.v1.IngestService";

/// Why the core could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The spool directory could not be created.
    #[error("cannot open spool directory: {0}")]
    Spool(#[source] std::io::Error),
    /// The AWS configuration cannot be used for SQS.
    #[error("SQS publisher: {0}")]
    Sqs(String),
    /// The Redis dedupe store cannot be set up (bad URL or settings).
    #[error("Redis dedupe: {0}")]
    Redis(String),
    /// The local outbox cannot be opened, or is corrupt.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Size at which the outbox starts a new segment file.
const OUTBOX_SEGMENT_BYTES: u64 = 16 << 20;

/// Builds the pipeline with the backends `config` chooses. For SQS, the AWS settings come from
/// the AWS default chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, credentials).
pub async fn build_pipeline(config: &CoreConfig) -> Result<Arc<Pipeline>, BuildError> {
    let aws = match config.publisher {
        PublisherKind::Sqs => {
            Some(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
        }
        PublisherKind::Spool => None,
    };
    build_pipeline_with(config, aws.as_ref()).await
}

/// Builds the pipeline like [`build_pipeline`], with the AWS settings given rather than read
/// from the environment (tests point them at an SQS-compatible server).
pub async fn build_pipeline_with(
    config: &CoreConfig,
    aws: Option<&aws_config::SdkConfig>,
) -> Result<Arc<Pipeline>, BuildError> {
    let publisher: Arc<dyn Publisher> = match config.publisher {
        PublisherKind::Spool => Arc::new(Spool::open(&config.data_dir).map_err(BuildError::Spool)?),
        PublisherKind::Sqs => {
            let aws = aws.ok_or_else(|| BuildError::Sqs("no AWS configuration".into()))?;
            if aws.region().is_none() {
                return Err(BuildError::Sqs(
                    "no AWS region: set AWS_REGION (or a profile with a region)".into(),
                ));
            }
            let sqs = SqsPublisher::new(
                aws,
                SqsSettings {
                    linger: config.sqs_linger(),
                    max_in_flight_batches: config.sqs_max_in_flight_batches,
                    publish_timeout: config.sqs_publish_timeout(),
                    call_timeout: config.sqs_call_timeout(),
                    breaker_failures: config.sqs_breaker_failures,
                },
            );
            let settings = ForwardSettings {
                dir: config.data_dir.join("outbox"),
                max_bytes: config.outbox_max_bytes,
                segment_bytes: OUTBOX_SEGMENT_BYTES,
            };
            tracing::info!(dir = %settings.dir.display(), max_bytes = settings.max_bytes, "outbox for SQS outages");
            Arc::new(StoreAndForward::open(sqs, settings)?)
        }
    };
    let ttl = Duration::from_secs(config.dedupe_ttl_secs);
    let memory = MemoryDedupe::new(ttl, config.dedupe_capacity, CLAIM_LEASE);
    let dedupe: Arc<dyn DedupeStore> = match config.dedupe {
        DedupeKind::Memory => Arc::new(memory),
        DedupeKind::Redis => {
            let url = config
                .redis_url
                .as_ref()
                .ok_or_else(|| BuildError::Redis("no Redis URL".into()))?;
            let redis = RedisDedupe::new(
                url.expose(),
                RedisSettings {
                    key_prefix: config.redis_key_prefix.clone(),
                    ttl,
                    lease: REDIS_CLAIM_LEASE,
                    max_hold: CLAIM_LEASE,
                    timeout: config.redis_timeout(),
                    // Past the caller's deadline the answer would be useless.
                    claim_wait: REDIS_CLAIM_WAIT.min(config.request_timeout()),
                },
            )
            .map_err(|e| BuildError::Redis(format!("{e} ({url})")))?;
            tracing::info!(redis = %url, prefix = %config.redis_key_prefix, "dedupe in Redis");
            Arc::new(FallbackDedupe::new(redis, memory, REDIS_PROBE_INTERVAL))
        }
    };
    tracing::info!(
        publisher = publisher.name(),
        dedupe = dedupe.name(),
        "core backends"
    );
    let routes = Routes {
        inbound: config.inbound_queue.clone(),
        status: config.status_queue.clone(),
        quarantine: config.quarantine_queue.clone(),
        overrides: config
            .queue_overrides()
            .into_iter()
            .map(|(carrier, kind, queue)| ((carrier, kind), queue.clone()))
            .collect(),
    };
    Ok(Pipeline::new(dedupe, publisher, routes))
}

/// Limits of the gRPC server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline of one call.
    pub request_timeout: Duration,
    /// Calls in flight per connection before load is shed.
    pub concurrency: usize,
    /// How long in-flight calls may drain after shutdown starts.
    pub grace: Duration,
}

impl Limits {
    /// Limits from the core's configuration and a drain grace period.
    pub fn from_config(config: &CoreConfig, grace: Duration) -> Self {
        Self {
            request_timeout: config.request_timeout(),
            concurrency: config.grpc_concurrency_limit,
            grace,
        }
    }
}

/// The core's gRPC services over one pipeline: ingest, health (driven by the readiness loop) and
/// reflection. Served on a listener by [`serve_secured`], and callable in-process through
/// [`CoreServices::routes`] (the embedded core: the same services, no TCP or HTTP/2 in between).
#[derive(Debug)]
pub struct CoreServices {
    routes: tonic::service::Routes,
    ingest: Arc<IngestGrpc>,
    health: HealthReporter,
    readiness: tokio::task::JoinHandle<()>,
}

impl CoreServices {
    /// The services over `pipeline`, NOT_SERVING until the readiness loop (started here) finds
    /// every queue usable.
    pub async fn new(pipeline: Arc<Pipeline>) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;
        let readiness = tokio::spawn(readiness_loop(pipeline.clone(), health.clone()));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(carrier_ingest::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("embedded descriptor sets are valid");
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(carrier_ingest::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("embedded descriptor sets are valid");
        let grpc = Arc::new(IngestGrpc::new(pipeline));
        let ingest = IngestServiceServer::from_arc(grpc.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ingest)
            .prepare();
        Self {
            routes,
            ingest: grpc,
            health,
            readiness,
        }
    }

    /// The services as one tower service of gRPC requests, for callers in this process: the
    /// same handlers, health and limits on message size as over the network.
    pub fn routes(&self) -> tonic::service::Routes {
        self.routes.clone()
    }

    /// The ingest service itself, for a caller in this process that hands it messages as they
    /// are (no encoding, no body streams): the same handler, spans and status codes as a call
    /// through [`CoreServices::routes`], once the caller has applied [`check_message_size`].
    pub fn ingest(&self) -> Arc<IngestGrpc> {
        self.ingest.clone()
    }
}

/// Serves the core on `listener` (plaintext, no credentials) until `shutdown` completes, then
/// drains in-flight calls for at most `limits.grace`.
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let services = CoreServices::new(pipeline).await;
    serve_secured(listener, services, limits, GrpcSecurity::none(), shutdown).await
}

/// Serves `services` like [`serve`], with the TLS and credentials of `security` (re-read from
/// their files while it serves); on shutdown health turns NOT_SERVING for callers in this
/// process too.
pub async fn serve_secured(
    listener: TcpListener,
    services: CoreServices,
    limits: Limits,
    security: GrpcSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let CoreServices {
        routes,
        health,
        readiness,
        ..
    } = services;
    let reloader = security.spawn_reloader();
    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = draining.clone();
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown: draining in-flight calls");
            readiness.abort();
            set_health(&health, ServingStatus::NotServing).await;
            draining.notify_one();
        }
    };
    let router = Server::builder()
        .timeout(limits.request_timeout)
        .concurrency_limit_per_connection(limits.concurrency)
        .load_shed(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(security.layer())
        .add_routes(routes);
    let server = async move {
        match &security.tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(tls::incoming(listener, tls.clone()), signal)
                    .await
            }
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
        }
    };
    let result = tokio::select! {
        result = server => result,
        () = async { draining.notified().await; tokio::time::sleep(limits.grace).await } => {
            tracing::warn!(grace_secs = limits.grace.as_secs(), "shutdown: grace period over, dropping calls still in flight");
            Ok(())
        }
    };
    reloader.abort();
    result
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Reports SERVING only while every configured queue accepts publishes.
async fn readiness_loop(pipeline: Arc<Pipeline>, health: HealthReporter) {
    let mut last = None;
    loop {
        let mut ready = true;
        for queue in pipeline.routes().all() {
            if let Err(error) = pipeline.publisher().check(&queue).await {
                tracing::warn!(%error, queue, "readiness: queue not usable");
                ready = false;
            }
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        crate::metrics::CORE.ready.set(i64::from(ready));
        if last != Some(ready) {
            tracing::info!(ready, "readiness changed");
            set_health(&health, status).await;
            last = Some(ready);
        }
        tokio::time::sleep(READINESS_INTERVAL).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
