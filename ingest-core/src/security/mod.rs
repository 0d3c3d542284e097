//! Who may call the core's gRPC: TLS on the listener (optionally requiring client
//! certificates, mTLS), per-submitter bearer tokens, both re-read from their files when they
//! change, and the tower layer that refuses calls without the configured credentials.
//!
//! Every configured credential is required: with `--grpc-tls-client-ca` a connection needs a
//! client certificate that chains to that CA; with tokens, every call needs
//! `authorization: Bearer <token>` with one of them. The submitter is the token's name, or
//! without tokens the client certificate's first DNS name. `grpc.health.v1.Health` needs no
//! token (probes carry none) but still sits behind TLS and mTLS; reflection does need one.

pub mod tls;
pub mod tokens;

use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use sha2::{Digest, Sha256};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::Instrument;

use crate::{config::CoreConfig, metrics};
pub use tokens::TokenSet;

/// Calls under this path prefix need no token.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Builds a watched value from the contents of its files, in order.
type Build<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync>;

/// A value built from files, rebuilt when their contents change. A change that does not build
/// (a half-written file, a key that does not match its certificate) keeps the current value
/// and is logged once.
pub struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    seen: Mutex<[u8; 32]>,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())))
        .collect()
}

fn digest(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for c in contents {
        hash.update((c.len() as u64).to_be_bytes());
        hash.update(c);
    }
    hash.finalize().into()
}

impl<T> Watched<T> {
    /// Reads `paths` and builds the first value.
    pub fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let contents = read_all(&paths)?;
        let value = build(&contents)?;
        Ok(Self {
            what,
            paths,
            build: Box::new(build),
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(digest(&contents)),
        })
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files; rebuilds if they changed. Whether a new value took effect.
    pub fn refresh(&self) -> bool {
        let contents = match read_all(&self.paths) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(what = self.what, %error, "reload: keeping the current one");
                return false;
            }
        };
        let new = digest(&contents);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == new {
                return false;
            }
            // Recorded before building, so a bad file is reported once, not every interval.
            *seen = new;
        }
        match (self.build)(&contents) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
                tracing::info!(what = self.what, "reloaded after its files changed");
                true
            }
            Err(error) => {
                tracing::error!(what = self.what, %error, "reload failed: keeping the current one");
                false
            }
        }
    }
}

/// The credentials the core's gRPC listener requires, loaded from [`CoreConfig`].
#[derive(Debug, Clone, Default)]
pub struct GrpcSecurity {
    /// TLS server configuration, when `--grpc-tls-cert` is set.
    pub tls: Option<Arc<Watched<rustls::ServerConfig>>>,
    tokens: Option<Arc<Watched<TokenSet>>>,
    client_certs: bool,
    reload_every: Duration,
    insecure: bool,
}

impl GrpcSecurity {
    /// Plaintext, no credentials: what tests on loopback and the embedded default use.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loads the TLS files and tokens that `config` names, reporting every problem at once.
    pub fn load(config: &CoreConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let tls = match (&config.grpc_tls_cert, &config.grpc_tls_key) {
            (Some(cert), Some(key)) => {
                let mut paths = vec![cert.clone(), key.clone()];
                paths.extend(config.grpc_tls_client_ca.clone());
                match Watched::load("gRPC TLS certificate", paths, tls::server_config) {
                    Ok(w) => Some(Arc::new(w)),
                    Err(e) => {
                        problems.push(e);
                        None
                    }
                }
            }
            // The flag combinations are reported by CoreConfig::problems.
            _ => None,
        };
        let tokens = if config.grpc_tokens.is_some() || config.grpc_tokens_file.is_some() {
            let inline = match config.grpc_tokens.as_ref() {
                Some(list) => TokenSet::parse(list.expose(), "--grpc-tokens (INGEST_GRPC_TOKENS)"),
                None => Ok(TokenSet::default()),
            };
            match inline {
                Err(e) => {
                    problems.push(e);
                    None
                }
                Ok(inline) => {
                    let file = config.grpc_tokens_file.clone();
                    let source = file
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_default();
                    let built =
                        Watched::load("gRPC tokens", file.into_iter().collect(), move |contents| {
                            let mut all = inline.clone();
                            for text in contents {
                                let text = std::str::from_utf8(text)
                                    .map_err(|_| format!("{source}: not UTF-8"))?;
                                all.extend(TokenSet::parse(text, &source)?);
                            }
                            Ok(all)
                        });
                    match built {
                        Ok(w) => Some(Arc::new(w)),
                        Err(e) => {
                            problems.push(e);
                            None
                        }
                    }
                }
            }
        } else {
            None
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            tls,
            tokens,
            client_certs: config.grpc_tls_client_ca.is_some(),
            reload_every: Duration::from_secs(config.grpc_reload_secs.max(1)),
            insecure: config.grpc_insecure,
        })
    }

    /// Whether calls need credentials (a token, or a client certificate at the handshake).
    pub fn authenticates(&self) -> bool {
        self.tokens.is_some() || self.client_certs
    }

    /// Logs what the listener at `addr` requires; loudly when it requires nothing off loopback.
    pub fn log(&self, addr: std::net::SocketAddr) {
        let tokens = self.tokens.as_ref().map(|t| t.current());
        tracing::info!(
            %addr,
            tls = self.tls.is_some(),
            client_certificates = self.client_certs,
            tokens = tokens.as_ref().map_or(0, |t| t.len()),
            submitters = ?tokens.as_ref().map(|t| t.names()).unwrap_or_default(),
            "gRPC security"
        );
        if let Some(t) = &tokens
            && t.is_empty()
        {
            tracing::warn!(
                "gRPC tokens are configured but none is set: every call is refused (fail closed)"
            );
        }
        if !self.authenticates() && (self.insecure || !addr.ip().is_loopback()) {
            tracing::warn!(
                %addr,
                "!!! gRPC WITHOUT AUTHENTICATION (--grpc-insecure): anyone who reaches this port can submit events as any carrier. Never run this way in production. !!!"
            );
        }
    }

    /// Re-reads the TLS files and the tokens file every `--grpc-reload-secs` until the
    /// returned task is aborted.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
        let (tls, tokens, every) = (self.tls.clone(), self.tokens.clone(), self.reload_every);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Some(tls) = &tls {
                    tls.refresh();
                }
                if let Some(tokens) = &tokens
                    && tokens.refresh()
                {
                    let current = tokens.current();
                    tracing::info!(tokens = current.len(), submitters = ?current.names(), "gRPC tokens now accepted");
                }
            }
        })
    }

    /// The layer that checks every call's credentials.
    pub fn layer(&self) -> AuthLayer {
        AuthLayer {
            auth: Arc::new(Authenticator {
                tokens: self.tokens.clone(),
                client_certs: self.client_certs,
            }),
        }
    }
}

/// The submitter of an authenticated call, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter(pub String);

/// Most log lines a second about refused connections and calls: anyone who reaches the port can
/// cause them, so a flood must not fill the disk. The counters still count every one.
const REFUSAL_LINES_PER_SEC: u32 = 10;

/// A budget of log lines per second; the next line written says how many were left out.
#[derive(Debug)]
pub(crate) struct LogBudget {
    state: Mutex<(std::time::Instant, u32, u64)>,
}

impl LogBudget {
    fn new() -> Self {
        Self {
            state: Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(lines left out since the last one written)` when a line may be written now.
    pub(crate) fn permit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (started, written, suppressed) = &mut *state;
        if started.elapsed() >= Duration::from_secs(1) {
            *started = std::time::Instant::now();
            *written = 0;
        }
        if *written < REFUSAL_LINES_PER_SEC {
            *written += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// The log budget of refused gRPC connections and calls.
pub(crate) static REFUSAL_LOG: std::sync::LazyLock<LogBudget> =
    std::sync::LazyLock::new(LogBudget::new);

/// Counts a refused connection or call by reason.
pub(crate) fn count_failure(reason: &'static str) {
    metrics::CORE
        .grpc_auth_failures
        .get_or_create(&metrics::AuthFailureLabels { reason })
        .inc();
}

struct Authenticator {
    tokens: Option<Arc<Watched<TokenSet>>>,
    client_certs: bool,
}

impl Authenticator {
    /// The submitter of `request`, or why it is refused. `None`: no credentials are configured.
    fn check<B>(&self, request: &http::Request<B>) -> Result<Option<String>, &'static str> {
        if let Some(tokens) = &self.tokens {
            let Some(value) = request.headers().get(http::header::AUTHORIZATION) else {
                return Err("missing_token");
            };
            let Some(token) = tokens::bearer(value.as_bytes()) else {
                return Err("invalid_token");
            };
            return match tokens.current().submitter(token) {
                Some(name) => Ok(Some(name.to_owned())),
                None => Err("invalid_token"),
            };
        }
        if self.client_certs {
            // The handshake already required a certificate that chains to the client CA.
            let name = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs())
                .and_then(|certs| certs.first().and_then(tls::certificate_name))
                .unwrap_or_else(|| "client-certificate".to_owned());
            return Ok(Some(name));
        }
        Ok(None)
    }
}

/// Refuses calls without the configured credentials with `UNAUTHENTICATED`, and runs the
/// others in a span naming the submitter (counted per submitter).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one that takes the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(inner.call(request));
        }
        match self.auth.check(&request) {
            Ok(None) => Box::pin(inner.call(request)),
            Ok(Some(name)) => {
                metrics::CORE
                    .grpc_authenticated
                    .get_or_create(&metrics::SubmitterLabels {
                        submitter: name.clone(),
                    })
                    .inc();
                let span =
                    tracing::info_span!("grpc", submitter = %name, method = %request.uri().path());
                request.extensions_mut().insert(Submitter(name));
                Box::pin(inner.call(request).instrument(span))
            }
            Err(reason) => {
                count_failure(reason);
                if let Some(suppressed) = REFUSAL_LOG.permit() {
                    tracing::warn!(reason, method = %request.uri().path(), suppressed, "gRPC call refused: no valid credentials");
                }
                let status = tonic::Status::unauthenticated("missing or invalid credentials");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_rebuilt_and_a_bad_one_keeps_the_current_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let watched = Watched::load("number", vec![path.clone()], |c| {
            std::str::from_utf8(&c[0])
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| "not a number".to_owned())
        })
        .unwrap();
        assert_eq!(*watched.current(), 1);
        assert!(!watched.refresh(), "unchanged");
        std::fs::write(&path, "2").unwrap();
        assert!(watched.refresh());
        assert_eq!(*watched.current(), 2);
        std::fs::write(&path, "two").unwrap();
        assert!(!watched.refresh());
        assert_eq!(*watched.current(), 2, "a bad file keeps the value in force");
        std::fs::remove_file(&path).unwrap();
        assert!(!watched.refresh());
        assert_eq!(*watched.current(), 2);
        std::fs::write(&path, "3").unwrap();
        assert!(watched.refresh());
        assert_eq!(*watched.current(), 3);
    }

    #[test]
    fn refusal_lines_are_bounded_per_second_and_report_what_was_left_out() {
        let budget = LogBudget::new();
        for _ in 0..REFUSAL_LINES_PER_SEC {
            assert_eq!(budget.permit(), Some(0));
        }
        assert_eq!(budget.permit(), None);
        assert_eq!(budget.permit(), None);
        budget.state.lock().unwrap().0 -= Duration::from_secs(1);
        assert_eq!(
            budget.permit(),
            Some(2),
            "the next line counts the two left out"
        );
    }
}
