//! The core replicas the edge calls: one gRPC channel per replica, round-robin over the ones in
//! rotation, and ejection of a replica whose connection fails until a probe finds it serving.
//!
//! Ejection follows call outcomes, not DNS: in Kubernetes a dead pod stays in the headless
//! Service's answer until its readiness fails, which is many seconds of refused calls. A replica
//! is taken out of rotation on its first transport failure and probed with gRPC health, with
//! backoff, until it answers SERVING; a successful call through it also puts it back.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use carrier_ingest::v1::{
    QuarantineReply, QuarantineRequest, SubmitBatchReply, SubmitBatchRequest, SubmitInboundRequest,
    SubmitReply, SubmitStatusRequest, ingest_service_client::IngestServiceClient,
    ingest_service_server::IngestService,
};
use ingest_core::{
    server::check_message_size,
    service::{CallerLogsEvents, IngestGrpc},
};
use tonic::{
    Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    transport::Endpoint,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::{ServiceExt, util::BoxCloneSyncService};

use super::direct::Direct;

/// How long a probe or readiness check waits for a replica's health answer.
pub(super) const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause between probes of an ejected replica.
const PROBE_FIRST: Duration = Duration::from_millis(50);
const PROBE_MAX: Duration = Duration::from_secs(1);

/// How calls reach a replica: a plaintext HTTP/2 connection of its own (`direct.rs`), a gRPC
/// channel for TLS, or, for the core embedded in this process, the core's own services called
/// in place (the same handlers and messages, without TCP or HTTP/2).
pub(super) type Transport = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// A call that failed on this side (connect, I/O, HTTP/2), whichever transport made it. The
/// cause is its source, so the status tonic makes of it carries the chain the client classifies.
#[derive(Debug)]
pub(super) struct TransportError(tower::BoxError);

impl TransportError {
    pub(super) fn new(error: impl Into<tower::BoxError>) -> Self {
        Self(error.into())
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "transport error: {}", self.0)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// How a replica's ingest calls are made.
#[derive(Clone)]
pub(super) enum Ingest {
    /// The generated client over the replica's transport.
    Remote(IngestServiceClient<Transport>),
    /// The core in this process: its handler called with the request as it is, without
    /// encoding it or streaming it through a body (the same handler, spans and status codes).
    /// The call carries [`CallerLogsEvents`]: the edge's own line covers its events; and its
    /// trace context as it is, not as metadata.
    Local(Arc<IngestGrpc>),
}

/// The ingest calls, each either through the client or straight to the local handler.
macro_rules! ingest_calls {
    ($($method:ident($request:ty) -> $reply:ty;)*) => {
        impl Ingest {
            $(
                pub(super) async fn $method(
                    &self,
                    mut request: Request<$request>,
                ) -> Result<Response<$reply>, Status> {
                    match self {
                        Self::Remote(client) => {
                            super::caller_span_to_metadata(&mut request);
                            client.clone().$method(request).await
                        }
                        Self::Local(core) => {
                            check_message_size(request.get_ref())?;
                            request.extensions_mut().insert(CallerLogsEvents);
                            core.$method(request).await
                        }
                    }
                }
            )*
        }
    };
}

ingest_calls! {
    submit_inbound(SubmitInboundRequest) -> SubmitReply;
    submit_status(SubmitStatusRequest) -> SubmitReply;
    submit_batch(SubmitBatchRequest) -> SubmitBatchReply;
    quarantine(QuarantineRequest) -> QuarantineReply;
}

/// One core replica: an address (or URL) and its channel.
pub(super) struct Replica {
    /// The address or URL, for logs.
    pub(super) name: String,
    /// The ingest service on this replica's channel, or in this process.
    pub(super) ingest: Ingest,
    health: HealthClient<Transport>,
    /// `Bearer <token>` for every call, health checks included.
    token: Option<MetadataValue<Ascii>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Out of rotation after a transport failure.
    ejected: bool,
    /// A probe task is running.
    probing: bool,
    /// No longer in the resolved set: its probe ends.
    removed: bool,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("name", &self.name)
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica reached through `endpoint`, connecting on first use and reconnecting as needed.
    #[cfg(test)]
    pub(super) fn new(name: String, endpoint: &Endpoint) -> Arc<Self> {
        Self::with_token(name, endpoint, None, Duration::from_secs(1))
    }

    /// A replica reached through `endpoint` whose calls carry `token` as their `authorization`.
    /// Plaintext (`http://`) replicas get a connection of their own, opened within
    /// `connect_timeout`; TLS ones a gRPC channel with `endpoint`'s TLS settings.
    pub(super) fn with_token(
        name: String,
        endpoint: &Endpoint,
        token: Option<MetadataValue<Ascii>>,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        let uri = endpoint.uri();
        // The clients put the origin's scheme and authority on every request; a channel sets
        // its own, so its clients keep the default.
        let (transport, origin): (Transport, http::Uri) = match (uri.scheme_str(), uri.authority())
        {
            (Some("http"), Some(authority)) => (
                BoxCloneSyncService::new(Direct::new(authority.clone(), connect_timeout)),
                http::Uri::builder()
                    .scheme("http")
                    .authority(authority.clone())
                    .path_and_query("/")
                    .build()
                    .expect("scheme and authority of a parsed URI"),
            ),
            _ => (
                BoxCloneSyncService::new(ServiceExt::<http::Request<tonic::body::Body>>::map_err(
                    endpoint.connect_lazy(),
                    TransportError::new,
                )),
                http::Uri::default(),
            ),
        };
        let ingest = Ingest::Remote(IngestServiceClient::with_origin(
            transport.clone(),
            origin.clone(),
        ));
        Self::over(
            name,
            HealthClient::with_origin(transport, origin),
            ingest,
            token,
        )
    }

    /// The core running in this process: its ingest handler called directly, health through
    /// its services (no credentials: nothing leaves the process).
    pub(super) fn in_process(
        name: String,
        routes: tonic::service::Routes,
        ingest: Arc<IngestGrpc>,
    ) -> Arc<Self> {
        let routes = ServiceExt::<http::Request<tonic::body::Body>>::map_err(
            routes,
            |never: std::convert::Infallible| -> TransportError { match never {} },
        );
        Self::over(
            name,
            HealthClient::new(BoxCloneSyncService::new(routes)),
            Ingest::Local(ingest),
            None,
        )
    }

    fn over(
        name: String,
        health: HealthClient<Transport>,
        ingest: Ingest,
        token: Option<MetadataValue<Ascii>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            ingest,
            health,
            token,
            state: Mutex::new(State::default()),
        })
    }

    /// Adds this replica's token (if any) to `request`.
    pub(super) fn authorize<T>(&self, request: &mut Request<T>) {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a field assignment: a panic elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the replica is in rotation.
    pub(super) fn admitted(&self) -> bool {
        !self.lock().ejected
    }

    /// Whether the replica answers its health check with SERVING, within [`HEALTH_TIMEOUT`].
    pub(super) async fn serving(&self) -> bool {
        let mut health = self.health.clone();
        let mut request = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(HEALTH_TIMEOUT);
        self.authorize(&mut request);
        match tokio::time::timeout(HEALTH_TIMEOUT, health.check(request)).await {
            Ok(Ok(reply)) => reply.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    }

    /// Takes the replica out of rotation (its connection failed) and starts probing it.
    pub(super) fn eject(self: &Arc<Self>) {
        let (newly, probe) = {
            let mut state = self.lock();
            let newly = !state.ejected;
            state.ejected = true;
            let probe = !state.probing && !state.removed;
            state.probing |= probe;
            (newly, probe)
        };
        if newly {
            super::count_ejection();
            tracing::warn!(replica = %self.name, "core replica unreachable; out of rotation until it answers again");
        }
        if probe {
            tokio::spawn(probe_until_serving(self.clone()));
        }
    }

    /// Puts the replica back in rotation (a call through it succeeded, or a probe).
    pub(super) fn readmit(&self) {
        let was_ejected = std::mem::replace(&mut self.lock().ejected, false);
        if was_ejected {
            tracing::info!(replica = %self.name, "core replica answers again; back in rotation");
        }
    }

    fn remove(&self) {
        self.lock().removed = true;
    }
}

/// Probes `replica` with backoff and jitter until it is serving, then readmits it.
async fn probe_until_serving(replica: Arc<Replica>) {
    let mut pause = PROBE_FIRST;
    loop {
        // Jitter spreads the probes of many edges over the pause.
        let jittered = pause.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(jittered).await;
        if replica.lock().removed {
            replica.lock().probing = false;
            return;
        }
        if replica.serving().await {
            // Clearing `probing` in the same step as `ejected` means a failure right after this
            // starts a new probe.
            replica.lock().probing = false;
            replica.readmit();
            return;
        }
        pause = (pause * 2).min(PROBE_MAX);
    }
}

/// The replicas currently known, and which is next.
#[derive(Debug, Default)]
pub(super) struct Pool {
    replicas: RwLock<Arc<[Arc<Replica>]>>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool of fixed replicas.
    pub(super) fn fixed(replicas: Vec<Arc<Replica>>) -> Arc<Self> {
        let pool = Arc::new(Self::default());
        pool.replace(replicas);
        pool
    }

    /// Every replica, in rotation or not.
    pub(super) fn snapshot(&self) -> Arc<[Arc<Replica>]> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces every replica (new channels, new rotation state).
    pub(super) fn replace(&self, replicas: Vec<Arc<Replica>>) {
        *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = replicas.into();
    }

    /// The next replica in rotation not in `tried`, round-robin; if every untried replica is
    /// out of rotation, one of those (a probe may lag, and the alternative is a sure failure);
    /// `None` once every replica was tried.
    pub(super) fn pick(&self, tried: &[Arc<Replica>]) -> Option<Arc<Replica>> {
        let all = self.snapshot();
        let n = all.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let untried: Vec<&Arc<Replica>> = (0..n)
            .map(|i| &all[(start + i) % n])
            .filter(|r| !tried.iter().any(|t| Arc::ptr_eq(t, r)))
            .collect();
        untried
            .iter()
            .find(|r| r.admitted())
            .or_else(|| untried.first())
            .map(|r| Arc::clone(r))
    }
}

/// The scheme, host and port of a core URL whose host name is resolved.
#[derive(Debug, Clone)]
pub(super) struct Target {
    host: String,
    port: u16,
    scheme: String,
}

impl Target {
    pub(super) fn new(endpoint: &Endpoint) -> Self {
        let uri = endpoint.uri().clone();
        Self {
            host: uri
                .host()
                .unwrap_or("localhost")
                .trim_matches(['[', ']'])
                .to_owned(),
            port: uri.port_u16().unwrap_or(80),
            scheme: uri.scheme_str().unwrap_or("http").to_owned(),
        }
    }
}

/// Keeps `pool` equal to every address the targets' host names resolve to, re-resolving every
/// `every`. A replica keeps its channel and rotation state while it stays in the answer. A
/// lookup that fails or returns nothing keeps that target's last addresses.
pub(super) async fn resolve_loop<R, F>(
    pool: std::sync::Weak<Pool>,
    targets: Vec<Target>,
    every: Duration,
    make_replica: impl Fn(String, String) -> Result<Arc<Replica>, tonic::transport::Error>,
    generation: impl Fn() -> u64,
    resolve: R,
) where
    R: Fn(String, u16) -> F,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let mut last: Vec<HashSet<SocketAddr>> = vec![HashSet::new(); targets.len()];
    let mut current: HashMap<SocketAddr, Arc<Replica>> = HashMap::new();
    let mut built_with = generation();
    loop {
        for (target, known) in targets.iter().zip(last.iter_mut()) {
            match resolve(target.host.clone(), target.port).await {
                Ok(addrs) if !addrs.is_empty() => *known = addrs.into_iter().collect(),
                Ok(_) => {
                    tracing::warn!(host = %target.host, "core DNS name resolved to no address; keeping the last set");
                }
                Err(error) => {
                    tracing::warn!(host = %target.host, %error, "core DNS lookup failed; keeping the last set");
                }
            }
        }
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let wanted: HashMap<SocketAddr, &Target> = targets
            .iter()
            .zip(&last)
            .flat_map(|(t, addrs)| addrs.iter().map(move |a| (*a, t)))
            .collect();
        let before = current.len();
        // New credentials: every replica gets a new channel.
        let now = generation();
        let fresh = now != built_with;
        built_with = now;
        current.retain(|addr, replica| {
            let keep = !fresh && wanted.contains_key(addr);
            if !keep {
                replica.remove();
            }
            keep
        });
        let mut changed = fresh || current.len() != before;
        for (addr, target) in &wanted {
            if current.contains_key(addr) {
                continue;
            }
            match make_replica(format!("{}://{addr}", target.scheme), addr.to_string()) {
                Ok(replica) => {
                    current.insert(*addr, replica);
                    changed = true;
                }
                Err(error) => tracing::warn!(%error, "bad core endpoint"),
            }
        }
        if changed {
            let mut replicas: Vec<_> = current.iter().collect();
            replicas.sort_by_key(|(addr, _)| **addr);
            pool.replace(replicas.into_iter().map(|(_, r)| r.clone()).collect());
            tracing::info!(addresses = current.len(), "core endpoints changed");
        }
        drop(pool);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str) -> Arc<Replica> {
        // Nothing listens on port 9 (discard) here: probes fail, which these tests rely on.
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:9/{name}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(100));
        Replica::new(name.to_owned(), &endpoint)
    }

    fn names(picked: impl IntoIterator<Item = Arc<Replica>>) -> Vec<String> {
        picked.into_iter().map(|r| r.name.clone()).collect()
    }

    #[tokio::test]
    async fn round_robin_skips_tried_and_ejected_replicas() {
        let (a, b, c) = (replica("a"), replica("b"), replica("c"));
        let pool = Pool::fixed(vec![a.clone(), b.clone(), c.clone()]);
        let first: Vec<_> = (0..6).map(|_| pool.pick(&[]).unwrap()).collect();
        assert_eq!(names(first), ["a", "b", "c", "a", "b", "c"]);

        // A retry never goes back to a replica this call already tried.
        for _ in 0..3 {
            let next = pool.pick(std::slice::from_ref(&a)).unwrap();
            assert!(!Arc::ptr_eq(&next, &a));
        }
        assert!(pool.pick(&[a.clone(), b.clone(), c.clone()]).is_none());

        // An ejected replica takes no traffic while another is in rotation...
        b.eject();
        assert!(!b.admitted());
        for _ in 0..6 {
            assert!(!Arc::ptr_eq(&pool.pick(&[]).unwrap(), &b));
        }
        // ...but is still tried when it is the only one left for this call.
        let last = pool.pick(&[a.clone(), c.clone()]).unwrap();
        assert!(Arc::ptr_eq(&last, &b));

        // A success through it puts it back.
        b.readmit();
        let picked = names((0..3).map(|_| pool.pick(&[]).unwrap()));
        assert!(picked.contains(&"b".to_owned()), "{picked:?}");
        assert!(Pool::fixed(vec![]).pick(&[]).is_none());
    }

    #[tokio::test]
    async fn an_ejected_replica_is_probed_until_it_serves_and_then_readmitted() {
        // A real core on a port nobody listens on yet: ejected, probed, then it starts.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(200));
        let r = Replica::new(addr.to_string(), &endpoint);
        r.eject();
        assert!(!r.admitted());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!r.admitted(), "nothing serves yet");
        assert!(r.lock().probing);

        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut waited = Duration::ZERO;
        while !r.admitted() {
            assert!(waited < Duration::from_secs(5), "never readmitted");
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        assert!(!r.lock().probing, "the probe ends once readmitted");
        server.abort();
    }

    #[tokio::test]
    async fn a_removed_replica_stops_being_probed() {
        let r = replica("gone");
        r.eject();
        r.remove();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!r.lock().probing);
        assert!(!r.admitted());
    }
}
