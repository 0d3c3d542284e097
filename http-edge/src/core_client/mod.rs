//! The edge's client of ingest-core: one gRPC channel per core replica, calls spread over the
//! replicas in rotation, and a submit that fails on one replica retried on another within the
//! same deadline, bounded by a retry budget.
//!
//! Retrying is safe because the core dedupes by event id: a retry of an event the first replica
//! did publish is answered as a duplicate. Only failures that say nothing was taken are
//! retried: the replica could not be reached, the connection or stream broke, or the core
//! answered UNAVAILABLE / RESOURCE_EXHAUSTED. The budget (a share of recent calls) keeps a full
//! outage from multiplying the load on the cores.

mod credentials;
mod direct;
mod pool;

pub use credentials::{CoreAuthConfig, CoreCredentials};

use std::{error::Error as _, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use carrier_ingest::v1::{
    BatchEvent, DeliveryStatus, InboundMessage, QuarantineRecord, QuarantineReply,
    QuarantineRequest, SubmitBatchRequest, SubmitInboundRequest, SubmitReply, SubmitStatusRequest,
    batch_event::Event,
};
use ingest_core::{
    metrics,
    service::CallerSpan,
    trace::{self, SpanContext, TRACEPARENT, TRACESTATE},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use tokio::time::Instant;
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Endpoint};
use tonic_types::StatusExt;
use tower::retry::budget::{Budget, TpsBudget};

use crate::error::{EdgeError, FieldViolation};
use pool::{Pool, Replica, Target};

/// How long a deposit in the retry budget counts.
const BUDGET_TTL: Duration = Duration::from_secs(10);
/// Retries allowed per second whatever the traffic, so a quiet edge can still fail over.
const BUDGET_MIN_PER_SEC: u32 = 10;
/// Retries allowed as a share of calls, on top of the minimum.
const BUDGET_RETRY_RATIO: f32 = 0.2;
/// An attempt with less time than this left is not started: it could not finish.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// Labels of a retry decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    outcome: &'static str,
}

/// Labels of a core call as the edge saw it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// `submit` (events) or `quarantine`.
    call: &'static str,
    /// `ok` or `error`.
    outcome: &'static str,
}

struct ClientMetrics {
    retries: Family<RetryLabels, Counter>,
    ejections: Counter,
    calls: Family<CallLabels, Histogram>,
}

static METRICS: std::sync::LazyLock<ClientMetrics> = std::sync::LazyLock::new(|| {
    let m = ClientMetrics {
        retries: Family::default(),
        ejections: Counter::default(),
        calls: Family::new_with_constructor(metrics::latency_histogram),
    };
    metrics::register(
        "ingest_core_retries",
        "Core calls that failed retryably, by what happened next (retried on another replica, no budget, no replica left, no time left)",
        m.retries.clone(),
    );
    metrics::register(
        "ingest_core_replica_ejections",
        "Core replicas taken out of rotation after a transport failure",
        m.ejections.clone(),
    );
    metrics::register(
        "ingest_core_call_duration_seconds",
        "Time of one call to the core as the edge saw it (failover included; in place with the core embedded), by call and outcome",
        m.calls.clone(),
    );
    m
});

/// Runs `call` (named `name`) and records how long it took.
async fn timed<T>(
    name: &'static str,
    call: impl Future<Output = Result<T, EdgeError>>,
) -> Result<T, EdgeError> {
    let started = Instant::now();
    let result = call.await;
    METRICS
        .calls
        .get_or_create(&CallLabels {
            call: name,
            outcome: if result.is_ok() { "ok" } else { "error" },
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

fn count_retry(outcome: &'static str) {
    METRICS
        .retries
        .get_or_create(&RetryLabels { outcome })
        .inc();
}

fn count_ejection() {
    METRICS.ejections.inc();
}

/// A client of ingest-core's replicas.
#[derive(Clone)]
pub struct CoreClient {
    pool: Arc<Pool>,
    budget: Arc<TpsBudget>,
    timeout: Duration,
    connector: Arc<Connector>,
}

/// What replicas are built from: the URLs and the credentials in force, which a reload of the
/// credential files replaces (each replacement bumps `generation`).
struct Connector {
    urls: Vec<String>,
    timeout: Duration,
    dns: bool,
    credentials: std::sync::RwLock<Arc<CoreCredentials>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Connector {
    fn credentials(&self) -> Arc<CoreCredentials> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A replica for `url` (named `name`) with the credentials in force.
    fn replica(&self, url: String, name: String) -> Result<Arc<Replica>, tonic::transport::Error> {
        let credentials = self.credentials();
        let endpoint = endpoint(url, self.timeout, &credentials)?;
        Ok(Replica::with_token(
            name,
            &endpoint,
            credentials.token.clone(),
            connect_timeout(self.timeout),
        ))
    }

    /// One replica per configured URL.
    fn fixed(&self) -> Result<Vec<Arc<Replica>>, tonic::transport::Error> {
        self.urls
            .iter()
            .map(|u| self.replica(u.clone(), u.clone()))
            .collect()
    }
}

impl std::fmt::Debug for CoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreClient")
            .field("replicas", &self.pool.snapshot())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Turns the [`CallerSpan`] of a call about to leave the process into its metadata.
fn caller_span_to_metadata<T>(request: &mut Request<T>) {
    let Some(CallerSpan(context)) = request.extensions_mut().remove::<CallerSpan>() else {
        return;
    };
    let metadata = request.metadata_mut();
    if let Ok(v) = MetadataValue::try_from(trace::traceparent(&context)) {
        metadata.insert(TRACEPARENT, v);
    }
    if let Some(v) = trace::tracestate(&context).and_then(|s| MetadataValue::try_from(s).ok()) {
        metadata.insert(TRACESTATE, v);
    }
}

/// What one webhook call submits, kept so that it can be sent again to another replica.
#[derive(Debug, Clone)]
enum Call {
    Inbound(InboundMessage),
    Status(DeliveryStatus),
    Batch(Vec<BatchEvent>),
}

/// How a failed attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The call did not reach the core or its answer did not come back (refused, reset,
    /// broken connection): retry elsewhere, and take the replica out of rotation.
    Transport,
    /// The core answered that it could not take the event now: retry elsewhere.
    Retryable,
    /// The deadline passed.
    Deadline,
    /// An answer that another replica would give too (invalid event, a bug).
    Final,
}

impl CoreClient {
    /// A client for `url`, connecting on first use and reconnecting as needed. `url` may list
    /// several replicas, comma-separated (`http://core-0:50051,http://core-1:50051`).
    ///
    /// With a non-zero `dns_refresh`, each URL's host is re-resolved that often and calls are
    /// spread over every address (one HTTP/2 connection each), so a headless Service's pods all
    /// take traffic and pods that come and go are followed.
    pub fn connect_lazy(
        url: &str,
        timeout: Duration,
        dns_refresh: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        Self::connect(url, timeout, dns_refresh, CoreCredentials::default())
    }

    /// A client of the core embedded in this process, calling its ingest handler in place:
    /// the same handler, messages, deadlines and status codes as over the network, without the
    /// loopback TCP connection, HTTP/2 framing or protobuf encoding (and without credentials:
    /// nothing leaves the process). Health checks go through its `services`.
    pub fn in_process(services: &ingest_core::server::CoreServices, timeout: Duration) -> Self {
        Self {
            pool: Pool::fixed(vec![Replica::in_process(
                "in-process".to_owned(),
                services.routes(),
                services.ingest(),
            )]),
            budget: Arc::new(TpsBudget::new(
                BUDGET_TTL,
                BUDGET_MIN_PER_SEC,
                BUDGET_RETRY_RATIO,
            )),
            timeout,
            connector: Arc::new(Connector {
                urls: Vec::new(),
                timeout,
                dns: false,
                credentials: std::sync::RwLock::new(Arc::new(CoreCredentials::default())),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Like [`CoreClient::connect_lazy`], with TLS for `https://` URLs and a bearer token on
    /// every call (health checks included).
    pub fn connect(
        url: &str,
        timeout: Duration,
        dns_refresh: Duration,
        credentials: CoreCredentials,
    ) -> Result<Self, tonic::transport::Error> {
        Self::connect_with_resolver(
            url,
            timeout,
            dns_refresh,
            credentials,
            |host, port| async move {
                tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map(Iterator::collect)
            },
        )
    }

    /// Like [`CoreClient::connect`], resolving host names with `resolve` (tests use it to
    /// stand in for a DNS server that returns several pods).
    pub fn connect_with_resolver<R, F>(
        url: &str,
        timeout: Duration,
        dns_refresh: Duration,
        credentials: CoreCredentials,
        resolve: R,
    ) -> Result<Self, tonic::transport::Error>
    where
        R: Fn(String, u16) -> F + Send + 'static,
        F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let credentials = Arc::new(credentials);
        if urls.is_empty() {
            // The same error an empty URL always gave.
            endpoint(String::new(), timeout, &credentials)?;
        }
        let endpoints = urls
            .iter()
            .map(|u| endpoint((*u).to_owned(), timeout, &credentials))
            .collect::<Result<Vec<_>, _>>()?;
        let connector = Arc::new(Connector {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            timeout,
            dns: !dns_refresh.is_zero(),
            credentials: std::sync::RwLock::new(credentials),
            generation: std::sync::atomic::AtomicU64::new(0),
        });
        let pool = if dns_refresh.is_zero() {
            Pool::fixed(connector.fixed()?)
        } else {
            let pool = Pool::fixed(Vec::new());
            let targets = endpoints.iter().map(Target::new).collect();
            let (make, current) = (connector.clone(), connector.clone());
            tokio::spawn(pool::resolve_loop(
                Arc::downgrade(&pool),
                targets,
                dns_refresh,
                move |url, name| make.replica(url, name),
                move || current.generation(),
                resolve,
            ));
            pool
        };
        Ok(Self {
            pool,
            budget: Arc::new(TpsBudget::new(
                BUDGET_TTL,
                BUDGET_MIN_PER_SEC,
                BUDGET_RETRY_RATIO,
            )),
            timeout,
            connector,
        })
    }

    /// Uses `credentials` from now on: every replica gets a new channel with them (at once for
    /// fixed URLs; at the next DNS refresh for resolved ones). Calls in flight finish on the
    /// old channels.
    pub fn set_credentials(&self, credentials: CoreCredentials) {
        *self
            .connector
            .credentials
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(credentials);
        self.connector
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // An in-process client has no URLs (and no credentials to change).
        if !self.connector.dns && !self.connector.urls.is_empty() {
            match self.connector.fixed() {
                Ok(replicas) => self.pool.replace(replicas),
                Err(error) => {
                    tracing::error!(%error, "core credentials: cannot rebuild the channels; keeping the old ones")
                }
            }
        }
    }

    /// Re-reads the credential files of `config` every `every`; when their contents changed
    /// and they load, the client uses them for new connections (a client certificate or token
    /// renewed by cert-manager or a Secret update, without a restart). A change that does not
    /// load is logged once and the credentials in force stay.
    pub fn watch_credentials(
        &self,
        config: CoreAuthConfig,
        url: String,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.clone();
        tokio::spawn(async move {
            let mut seen = credentials::fingerprint(&config);
            loop {
                tokio::time::sleep(every).await;
                let now = credentials::fingerprint(&config);
                if now == seen {
                    continue;
                }
                seen = now;
                match CoreCredentials::load(&config, &url) {
                    Ok(new) => {
                        tracing::info!(credentials = %new.describe(), "core credentials reloaded after their files changed");
                        client.set_credentials(new);
                    }
                    Err(problems) => tracing::error!(
                        problems = %problems.join("; "),
                        "core credentials changed but do not load: keeping the ones in force"
                    ),
                }
            }
        })
    }

    /// Submits the events of one webhook call (a single event as itself, several as one batch)
    /// within the core deadline, failing over to another replica when one cannot take it. With
    /// `trace`, the core continues that trace; without, it starts one.
    pub async fn submit(
        &self,
        events: Vec<Event>,
        trace: Option<&SpanContext>,
    ) -> Result<Vec<SubmitReply>, EdgeError> {
        let call = match <[Event; 1]>::try_from(events) {
            Ok([Event::Inbound(message)]) => Call::Inbound(message),
            Ok([Event::Status(status)]) => Call::Status(status),
            Err(events) if events.is_empty() => {
                tracing::error!("submit called without events");
                return Err(EdgeError::Core {
                    code: Code::Internal,
                });
            }
            Err(events) => Call::Batch(
                events
                    .into_iter()
                    .map(|event| BatchEvent { event: Some(event) })
                    .collect(),
            ),
        };
        let call = &call;
        timed(
            "submit",
            self.with_failover(
                |replica, left| async move { send(&replica, call, left, trace).await },
            ),
        )
        .await
    }

    /// Hands a call that could not become events to the core's quarantine, failing over like
    /// [`CoreClient::submit`] (the core dedupes records too); `Ok` only once the record is
    /// durable.
    pub async fn quarantine(
        &self,
        record: QuarantineRecord,
        trace: Option<&SpanContext>,
    ) -> Result<QuarantineReply, EdgeError> {
        timed(
            "quarantine",
            self.with_failover(|replica, left| {
                let record = record.clone();
                async move {
                    let request = QuarantineRequest {
                        record: Some(record),
                    };
                    let request = call_request(request, left, &replica, trace);
                    Ok(replica.ingest.quarantine(request).await?.into_inner())
                }
            }),
        )
        .await
    }

    /// Runs `attempt` on one replica after another (each at most once) until one answers,
    /// within the core deadline and the retry budget.
    async fn with_failover<T, F, Fut>(&self, attempt: F) -> Result<T, EdgeError>
    where
        F: Fn(Arc<Replica>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        self.budget.deposit();
        let mut tried: Vec<Arc<Replica>> = Vec::new();
        let mut last: Option<EdgeError> = None;
        loop {
            let Some(replica) = self.pool.pick(&tried) else {
                if !tried.is_empty() {
                    count_retry("no_replica_left");
                }
                return Err(last.unwrap_or(EdgeError::Core {
                    code: Code::Unavailable,
                }));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_ATTEMPT {
                count_retry("no_time_left");
                return Err(last.unwrap_or(EdgeError::Core {
                    code: Code::DeadlineExceeded,
                }));
            }
            if !tried.is_empty() {
                if !self.budget.withdraw() {
                    count_retry("no_budget");
                    tracing::warn!("core retry budget exhausted; not failing over");
                    return Err(last.unwrap_or(EdgeError::Core {
                        code: Code::Unavailable,
                    }));
                }
                count_retry("retried");
            }
            // The gRPC deadline covers the call; this also covers a connect that hangs.
            let status = match tokio::time::timeout(left, attempt(replica.clone(), left)).await {
                Ok(Ok(replies)) => {
                    replica.readmit();
                    return Ok(replies);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    return Err(EdgeError::Core {
                        code: Code::DeadlineExceeded,
                    });
                }
            };
            let failure = classify(&status);
            tracing::warn!(
                replica = %replica.name,
                code = ?status.code(),
                message = status.message(),
                ?failure,
                "core call failed"
            );
            match failure {
                Failure::Final => return Err(from_status(status)),
                Failure::Deadline => {
                    return Err(EdgeError::Core {
                        code: Code::DeadlineExceeded,
                    });
                }
                Failure::Transport => {
                    replica.eject();
                    // Whatever the code tonic gave it, a broken call is the core being
                    // unavailable, never the caller's fault or a bug: 503, and the carrier retries.
                    last = Some(EdgeError::Core {
                        code: Code::Unavailable,
                    });
                }
                Failure::Retryable => last = Some(from_status(status)),
            }
            tried.push(replica);
        }
    }

    /// Whether some core replica answers its health check with SERVING (those in rotation are
    /// asked first).
    pub async fn ready(&self) -> bool {
        let all = self.pool.snapshot();
        let (admitted, ejected): (Vec<_>, Vec<_>) = all.iter().partition(|r| r.admitted());
        for replica in admitted.into_iter().chain(ejected) {
            if replica.serving().await {
                return true;
            }
        }
        false
    }
}

/// The request of one call with a gRPC deadline of `timeout`.
fn call_request<T>(
    message: T,
    timeout: Duration,
    replica: &Replica,
    trace: Option<&SpanContext>,
) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    replica.authorize(&mut request);
    if let Some(context) = trace {
        // In place the core takes it as it is; the remote arm turns it into metadata.
        request.extensions_mut().insert(CallerSpan(context.clone()));
    }
    request
}

/// Sends `call` to `replica` with a gRPC deadline of `timeout`.
async fn send(
    replica: &Replica,
    call: &Call,
    timeout: Duration,
    trace: Option<&SpanContext>,
) -> Result<Vec<SubmitReply>, Status> {
    let client = &replica.ingest;
    Ok(match call {
        Call::Inbound(message) => {
            let request = SubmitInboundRequest {
                message: Some(message.clone()),
            };
            vec![
                client
                    .submit_inbound(call_request(request, timeout, replica, trace))
                    .await?
                    .into_inner(),
            ]
        }
        Call::Status(status) => {
            let request = SubmitStatusRequest {
                status: Some(status.clone()),
            };
            vec![
                client
                    .submit_status(call_request(request, timeout, replica, trace))
                    .await?
                    .into_inner(),
            ]
        }
        Call::Batch(events) => {
            let request = SubmitBatchRequest {
                events: events.clone(),
            };
            client
                .submit_batch(call_request(request, timeout, replica, trace))
                .await?
                .into_inner()
                .results
        }
    })
}

/// Whether a failed call may be retried on another replica, and whether that replica's
/// connection failed.
///
/// A status the core sent has no source; one raised by this side's transport (connect error,
/// reset stream, broken connection, h2 protocol error, client-side timeout) carries the error
/// that caused it.
fn classify(status: &Status) -> Failure {
    if let Some(source) = status.source() {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(error) = cause {
            if error.is::<tonic::TimeoutExpired>() {
                return Failure::Deadline;
            }
            cause = error.source();
        }
        return Failure::Transport;
    }
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted => Failure::Retryable,
        Code::DeadlineExceeded => Failure::Deadline,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss
        | Code::Unauthenticated => Failure::Final,
    }
}

/// HTTP/2 keepalive of core connections: a ping once nothing has come from the replica for the
/// interval, and the connection closed if the ping is not answered within the timeout.
///
/// This is how a replica that hangs is found: a frozen process, or a node whose network drops
/// packets, keeps its connections open and answers nothing, so no call through it fails; each
/// would wait out the core deadline (`--core-timeout-ms`, 5 s) and be answered 504, half of all
/// webhooks while it lasts. A core answers pings from its HTTP/2 connection task, however busy
/// its handlers are, so within 2 s of the silence the connection closes, the calls on it fail
/// as a broken connection, the replica is ejected, and they are retried on another replica
/// with their deadline's remainder (by then the Redis claims of the frozen one, 1.5 s leases,
/// have lapsed, so the other replica takes them over at once). A busy connection sends no
/// pings: only silence costs one ping a second.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connect to a replica may take, for a core deadline of `timeout`: a replica that
/// does not accept within this is tried no longer, and the call fails over with most of its
/// deadline left.
fn connect_timeout(timeout: Duration) -> Duration {
    Duration::from_secs(1).min(timeout / 2)
}

fn endpoint(
    url: String,
    timeout: Duration,
    credentials: &CoreCredentials,
) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(url)?;
    if let Some(tls) = &credentials.tls
        && endpoint.uri().scheme_str() == Some("https")
    {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    Ok(endpoint
        .connect_timeout(connect_timeout(timeout))
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

fn from_status(status: Status) -> EdgeError {
    if status.code() == Code::InvalidArgument
        && let Some(bad) = status.get_details_bad_request()
    {
        return EdgeError::Invalid(
            bad.field_violations
                .into_iter()
                .map(|v| FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect(),
        );
    }
    EdgeError::Core {
        code: status.code(),
    }
}

#[cfg(test)]
mod tests {
    //! Retries and the budget against real gRPC servers on loopback that answer as told: the
    //! failures a core gives (UNAVAILABLE, INTERNAL, a refused connection) on demand.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use carrier_ingest::v1::{
        Outcome, SubmitBatchReply,
        ingest_service_server::{IngestService, IngestServiceServer},
    };
    use tonic::Response;

    use super::*;

    struct Replies {
        code: Option<Code>,
        calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl IngestService for Replies {
        async fn submit_inbound(
            &self,
            _: Request<SubmitInboundRequest>,
        ) -> Result<Response<SubmitReply>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.code {
                Some(code) => Err(Status::new(code, "as told")),
                None => Ok(Response::new(SubmitReply {
                    event_id: "e".into(),
                    outcome: Outcome::Accepted as i32,
                })),
            }
        }

        async fn submit_status(
            &self,
            _: Request<SubmitStatusRequest>,
        ) -> Result<Response<SubmitReply>, Status> {
            Err(Status::unimplemented("not used"))
        }

        async fn submit_batch(
            &self,
            _: Request<SubmitBatchRequest>,
        ) -> Result<Response<SubmitBatchReply>, Status> {
            Err(Status::unimplemented("not used"))
        }

        async fn quarantine(
            &self,
            _: Request<QuarantineRequest>,
        ) -> Result<Response<QuarantineReply>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.code {
                Some(code) => Err(Status::new(code, "as told")),
                None => Ok(Response::new(QuarantineReply {
                    record_id: "r".into(),
                    outcome: Outcome::Accepted as i32,
                    body_sha256: String::new(),
                })),
            }
        }
    }

    /// A server answering every submit with `code` (or success); its URL and call counter.
    async fn server(code: Option<Code>) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = IngestServiceServer::new(Replies {
            code,
            calls: calls.clone(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (url, calls)
    }

    /// A URL nothing listens on: connections are refused.
    fn dead_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn client(urls: &[&str]) -> CoreClient {
        CoreClient::connect_lazy(&urls.join(","), Duration::from_secs(2), Duration::ZERO).unwrap()
    }

    fn one_event() -> Vec<Event> {
        vec![Event::Inbound(InboundMessage::default())]
    }

    fn code_of(result: Result<Vec<SubmitReply>, EdgeError>) -> Code {
        match result {
            Err(EdgeError::Core { code }) => code,
            other => panic!("expected a core error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unavailable_and_refused_replicas_fail_over_and_refused_ones_are_ejected() {
        let (busy, busy_calls) = server(Some(Code::Unavailable)).await;
        let (good, good_calls) = server(None).await;
        let dead = dead_url();
        let core = client(&[&dead, &busy, &good]);
        for _ in 0..9 {
            let replies = core.submit(one_event(), None).await.expect("fails over");
            assert_eq!(replies[0].event_id, "e");
        }
        assert_eq!(
            good_calls.load(Ordering::SeqCst),
            9,
            "every call ends on the live one"
        );
        let replicas = core.pool.snapshot();
        let dead_replica = replicas.iter().find(|r| r.name == dead).unwrap();
        assert!(
            !dead_replica.admitted(),
            "a refused connection takes it out"
        );
        let busy_replica = replicas.iter().find(|r| r.name == busy).unwrap();
        assert!(
            busy_replica.admitted(),
            "a replica that answers stays in rotation"
        );
        assert!(busy_calls.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn quarantine_records_fail_over_too() {
        let (busy, busy_calls) = server(Some(Code::Unavailable)).await;
        let (good, good_calls) = server(None).await;
        let core = client(&[&dead_url(), &busy, &good]);
        for _ in 0..3 {
            let kept = core
                .quarantine(QuarantineRecord::default(), None)
                .await
                .expect("fails over");
            assert_eq!(kept.record_id, "r");
        }
        assert_eq!(good_calls.load(Ordering::SeqCst), 3);
        assert!(busy_calls.load(Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn final_answers_are_not_retried_and_transport_failures_are_503() {
        let (broken, broken_calls) = server(Some(Code::Internal)).await;
        let (good, good_calls) = server(None).await;
        let core = client(&[&broken, &good]);
        let mut internal = 0;
        for _ in 0..4 {
            match core.submit(one_event(), None).await {
                Ok(_) => {}
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            EdgeError::Core {
                                code: Code::Internal
                            }
                        ),
                        "{e:?}"
                    );
                    internal += 1;
                }
            }
        }
        assert_eq!(internal, 2, "a bug on one replica is reported, not hidden");
        assert_eq!(broken_calls.load(Ordering::SeqCst), 2);
        assert_eq!(good_calls.load(Ordering::SeqCst), 2);

        // Every replica unreachable: UNAVAILABLE (503), never a 500.
        let core = client(&[&dead_url(), &dead_url()]);
        assert_eq!(
            code_of(core.submit(one_event(), None).await),
            Code::Unavailable
        );
        assert_eq!(
            crate::error::http_status_for(Code::Unavailable),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn in_a_full_outage_the_budget_bounds_retries() {
        const CALLS: usize = 300;
        let mut urls = Vec::new();
        let mut counters = Vec::new();
        for _ in 0..3 {
            let (url, calls) = server(Some(Code::Unavailable)).await;
            urls.push(url);
            counters.push(calls);
        }
        let core = client(&urls.iter().map(String::as_str).collect::<Vec<_>>());
        for _ in 0..CALLS {
            assert_eq!(
                code_of(core.submit(one_event(), None).await),
                Code::Unavailable
            );
        }
        let attempts: usize = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        // Without a budget every call would try all three replicas (900 attempts). The budget
        // allows its reserve (10/s over 10 s) plus a fifth of the calls.
        let allowed = CALLS
            + (BUDGET_MIN_PER_SEC as usize * BUDGET_TTL.as_secs() as usize)
            + (CALLS as f32 * BUDGET_RETRY_RATIO) as usize;
        assert!(
            attempts > CALLS && attempts <= allowed,
            "{attempts} attempts for {CALLS} calls (at most {allowed})"
        );
    }

    #[tokio::test]
    async fn a_replica_that_never_answers_ends_at_the_deadline_as_504() {
        // The kernel accepts connections into the backlog, but nothing ever speaks HTTP/2.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let core =
            CoreClient::connect_lazy(&url, Duration::from_millis(300), Duration::ZERO).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            code_of(core.submit(one_event(), None).await),
            Code::DeadlineExceeded
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(700),
            "{took:?}"
        );
    }
}
