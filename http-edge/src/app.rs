//! The HTTP application: routes, the one webhook handler every carrier shares, limits, probes,
//! and the server with its graceful drain.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    BoxError, Json, Router,
    body::Bytes,
    error_handling::HandleErrorLayer,
    extract::{
        ConnectInfo, DefaultBodyLimit, Extension, FromRequest, Path, Request, State,
        rejection::BytesRejection,
    },
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use carrier_ingest::v1::{Outcome, QuarantineRecord, SubmitReply};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use ingest_core::metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use serde_json::json;
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceBuilder;
use tower::{ServiceExt, limit::GlobalConcurrencyLimitLayer};

use crate::{
    abuse::{self, Abuse},
    auth::{Incoming, Verified},
    carriers::{
        Webhook, bandwidth::Bandwidth, inteliquent::Inteliquent, message_id,
        messagebird::MessageBird, twilio::Twilio,
    },
    config::Verifiers,
    core_client::CoreClient,
    error::EdgeError,
    request::{self, EdgeSpan},
};

/// Labels of a webhook reply.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    carrier: &'static str,
    status: u16,
}

/// Labels naming a carrier.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CarrierLabels {
    carrier: &'static str,
}

/// The edge's metrics, registered in the process registry on first use.
struct EdgeMetrics {
    requests: Family<WebhookLabels, Counter>,
    seconds: Family<CarrierLabels, Histogram>,
}

static METRICS: LazyLock<EdgeMetrics> = LazyLock::new(|| {
    let m = EdgeMetrics {
        requests: Family::default(),
        seconds: Family::new_with_constructor(metrics::latency_histogram),
    };
    metrics::register(
        "ingest_webhook_requests",
        "Webhook calls by carrier and HTTP status of the reply",
        m.requests.clone(),
    );
    metrics::register(
        "ingest_webhook_duration_seconds",
        "Time from receiving a webhook to replying",
        m.seconds.clone(),
    );
    m
});

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest body.
    pub body_bytes: usize,
    /// Deadline of a whole request.
    pub request_timeout: Duration,
    /// Requests in flight before load is shed.
    pub concurrency: usize,
}

/// What every handler shares. One `Arc`: axum clones the state for every request, and one
/// reference count is cheaper to move between threads than one per field.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    core: CoreClient,
    verifiers: Verifiers,
    abuse: Arc<Abuse>,
    draining: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State over a core client, the carriers' verifiers and the per-client rate limits and
    /// source allowlists of every webhook route ([`Abuse::off`] for none).
    pub fn new(core: CoreClient, verifiers: Verifiers, abuse: Abuse) -> Self {
        Self(Arc::new(Shared {
            core,
            verifiers,
            abuse: Arc::new(abuse),
            draining: AtomicBool::new(false),
        }))
    }
}

/// The router with every endpoint of the spec, plus `/livez` and `/readyz`.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    // Rate limit and allowlist first on each carrier's routes: decided from the peer and the
    // headers, before the body is read.
    let abuse = &state.abuse;
    let webhooks = Router::new()
        .route(
            "/bandwidth/{destination}",
            post(bandwidth)
                .options(|| preflight(false))
                .layer(abuse.layer(Bandwidth::NAME)),
        )
        .route(
            "/twilio",
            post(webhook::<Twilio>)
                .get(webhook::<Twilio>)
                .layer(abuse.layer(Twilio::NAME)),
        )
        .route(
            "/messagebird",
            post(webhook::<MessageBird>)
                .get(webhook::<MessageBird>)
                .layer(abuse.layer(MessageBird::NAME)),
        )
        .route(
            "/webhooks/inteliquent",
            post(webhook::<Inteliquent>)
                .options(|| preflight(true))
                .layer(abuse.layer(Inteliquent::NAME)),
        )
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                // One semaphore shared by every route: `Router::layer` wraps each route
                // separately, and a per-route limit would multiply the cap.
                .layer(GlobalConcurrencyLimitLayer::new(limits.concurrency))
                .timeout(limits.request_timeout),
        );
    Router::new()
        .merge(webhooks)
        .route(
            "/livez",
            get(|| async { Json(json!({ "status": "live" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        // Outermost, so every reply (shed, timed out, 404, 405) carries the request id.
        .layer(axum::middleware::from_fn(request::context))
        .with_state(state)
}

async fn overloaded(error: BoxError) -> Response {
    let (status, message) = if error.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "request timed out; retry later",
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded; retry later")
    };
    tracing::warn!(%error, "request shed");
    (
        status,
        [crate::error::retry_after()],
        Json(json!({ "success": false, "error": "unavailable", "message": message })),
    )
        .into_response()
}

/// The OpenAPI 3.1 description of every route above, kept by hand beside the crate and checked
/// against the running server by schemathesis (`.ci/openapi.sh`).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "success": false, "error": "not_found", "message": "no such endpoint" })),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response();
    }
    if state.core.ready().await {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "core unavailable" })),
        )
            .into_response()
    }
}

/// The CORS preflight answers of the spec, with exactly its headers.
async fn preflight(inteliquent: bool) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, OPTIONS"),
    );
    if inteliquent {
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("Content-Type, Authorization"),
        );
        headers.insert("access-control-max-age", HeaderValue::from_static("86400"));
    } else {
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("Content-Type, X-Bandwidth-Signature"),
        );
    }
    (StatusCode::OK, headers).into_response()
}

async fn bandwidth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(span): Extension<EdgeSpan>,
    Path(destination): Path<String>,
    request: Request,
) -> Response {
    let incoming = incoming(request, peer, Some(destination)).await;
    handle::<Bandwidth>(&state, incoming, &span).await
}

async fn webhook<W: Webhook>(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(span): Extension<EdgeSpan>,
    request: Request,
) -> Response {
    let incoming = incoming(request, peer, None).await;
    handle::<W>(&state, incoming, &span).await
}

/// The call as the verifiers see it. The request's method, URI and headers are moved out, not
/// copied; its body is read within the route's body limit (its extensions stay for that).
async fn incoming(
    request: Request,
    peer: SocketAddr,
    destination: Option<String>,
) -> Result<Incoming, EdgeError> {
    let (mut parts, body) = request.into_parts();
    let method = std::mem::take(&mut parts.method);
    let uri = std::mem::take(&mut parts.uri);
    let headers = std::mem::take(&mut parts.headers);
    let body = Bytes::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                EdgeError::TooLarge
            } else {
                EdgeError::Malformed("unreadable body".to_owned())
            }
        })?;
    Ok(Incoming {
        method,
        uri,
        headers,
        body,
        peer,
        destination,
    })
}

/// Verify → parse → submit → reply: the one path every carrier's call takes. The core calls
/// carry `span`'s trace context.
async fn handle<W: Webhook>(
    state: &AppState,
    incoming: Result<Incoming, EdgeError>,
    span: &EdgeSpan,
) -> Response {
    let started = Instant::now();
    let result = async {
        let incoming = incoming?;
        let verifier = W::verifier(&state.verifiers);
        // The reason of a rejection is logged (rate-limited) with the reply below.
        let verified = verifier.verify(&incoming)?;
        let trace = &span.0;
        match parse_and_submit::<W>(state, &verified, trace).await {
            Err(error) if let Some(reason) = error.quarantine_reason() => {
                // Authentic but unusable: keep it (durably) before the 4xx, or the carrier
                // would lose it; if it cannot be kept, a 503 makes the carrier retry.
                let record = quarantine_record::<W>(&incoming, verifier.describe(), reason, &error);
                match state.core.quarantine(record, Some(trace)).await {
                    Ok(kept) => {
                        tracing::info!(
                            carrier = W::NAME,
                            reason,
                            record_id = %kept.record_id,
                            duplicate = kept.outcome == Outcome::Duplicate as i32,
                            "webhook quarantined"
                        );
                        Err(error)
                    }
                    Err(failed) => {
                        tracing::warn!(carrier = W::NAME, reason, error = %failed, "quarantine failed; answering 503 so the carrier retries");
                        Err(EdgeError::Core {
                            code: tonic::Code::Unavailable,
                        })
                    }
                }
            }
            other => other,
        }
    }
    .await;
    let elapsed = started.elapsed();
    let elapsed_ms = elapsed.as_millis() as u64;
    METRICS
        .seconds
        .get_or_create(&CarrierLabels { carrier: W::NAME })
        .observe(elapsed.as_secs_f64());
    let response = match result {
        Ok((count, first_id, replies)) => {
            let duplicates = replies
                .iter()
                .filter(|r| r.outcome == Outcome::Duplicate as i32)
                .count();
            // With the core embedded this is the only line of the webhook (the core leaves its
            // per-event line to it): it names the first event and the outcome.
            tracing::info!(
                carrier = W::NAME,
                events = count,
                duplicates,
                carrier_message_id = %first_id,
                event_id = %replies.first().map_or("", |r| r.event_id.as_str()),
                elapsed_ms,
                "webhook accepted"
            );
            let mut response = W::accepted(&first_id);
            if let Some(first) = replies.first() {
                if let Ok(v) = HeaderValue::from_str(&first.event_id) {
                    response.headers_mut().insert("x-ingest-event-id", v);
                }
                let outcome = if duplicates == replies.len() {
                    "duplicate"
                } else {
                    "accepted"
                };
                response
                    .headers_mut()
                    .insert("x-ingest-outcome", HeaderValue::from_static(outcome));
            }
            response
        }
        Err(error) => {
            let status = error.status(W::INVALID_STATUS);
            if status.is_server_error() {
                tracing::warn!(carrier = W::NAME, %status, %error, elapsed_ms, "webhook failed; carrier will retry");
            } else if let Some(suppressed) = abuse::REFUSAL_LOG.permit() {
                // Anyone can cause a 4xx (the auth reason is in `error`): a bounded number of lines.
                tracing::info!(carrier = W::NAME, %status, %error, elapsed_ms, suppressed, "webhook refused");
            }
            error.into_response_with(W::INVALID_STATUS)
        }
    };
    METRICS
        .requests
        .get_or_create(&WebhookLabels {
            carrier: W::NAME,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Parse → submit for a verified call: the events' count, the first carrier message id and the
/// core's replies.
async fn parse_and_submit<W: Webhook>(
    state: &AppState,
    verified: &Verified<'_>,
    trace: &ingest_core::trace::SpanContext,
) -> Result<(usize, String, Vec<SubmitReply>), EdgeError> {
    let events = W::parse(verified)?;
    // What the reply and the log need, taken before the events move into the call.
    let count = events.len();
    let first_id = events
        .first()
        .map(message_id)
        .unwrap_or_default()
        .to_owned();
    let replies = state.core.submit(events, Some(trace)).await?;
    Ok((count, first_id, replies))
}

/// The quarantine record of an authentic call that `error` kept from becoming events: the call
/// as received, minus every header but its content type (no credentials are kept).
fn quarantine_record<W: Webhook>(
    incoming: &Incoming,
    verified_by: String,
    reason: &'static str,
    error: &EdgeError,
) -> QuarantineRecord {
    // Within the core's bounds for a record, so that an authentic call can always be kept.
    let violations = match error {
        EdgeError::Invalid(v) => v
            .iter()
            .take(100)
            .map(|v| carrier_ingest::v1::FieldViolation {
                field: v.field.clone(),
                description: v.description.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    QuarantineRecord {
        carrier: W::CARRIER as i32,
        method: incoming.method.as_str().to_owned(),
        path: incoming.uri.path().to_owned(),
        raw_query: incoming.raw_query().to_owned(),
        content_type: incoming
            .header("content-type")
            .unwrap_or("")
            .chars()
            .take(1024)
            .collect(),
        verified_by: verified_by.chars().take(1024).collect(),
        received_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        reason: reason.to_owned(),
        detail: error.to_string().chars().take(1000).collect(),
        violations,
        body: incoming.body.to_vec(),
    }
}

/// Serves `router` on `listener` until `shutdown` completes: readiness turns false at once, the
/// listener closes, then in-flight requests drain for at most `grace`.
///
/// Every connection has a deadline for its request headers (`header_timeout`, which also ends
/// idle keep-alive connections), so slow or idle clients cannot hold connections forever, and at
/// most `max_connections` are open at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: &AppState,
    header_timeout: Duration,
    max_connections: usize,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // HTTP/1.1 only: carriers and ingress controllers speak it, and HTTP/2 connections would
    // escape the header-read deadline that bounds idle and slow connections.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the connection cap, stop accepting (the kernel backlog holds the rest).
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service =
            router
                .clone()
                .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.map(axum::body::Body::new)
                });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    state.draining.store(true, Ordering::Relaxed);
    tracing::info!("shutdown: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "shutdown: grace period over, dropping requests still in flight");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;

    use super::*;
    use crate::auth::Disabled;

    /// Every path given to `.route(` in this file, read from the source: the router cannot list
    /// its routes, and a route added here without a line in openapi.json must fail this test.
    fn router_paths() -> BTreeSet<String> {
        // The code above the tests: this function's own search strings do not count.
        let source = include_str!("app.rs").split("#[cfg(test)]").next().unwrap();
        let mut paths = BTreeSet::new();
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(open) = rest.find('"') else { break };
            assert!(
                rest[..open].trim().is_empty(),
                "a route whose path is not a literal: list it here by hand"
            );
            let literal = &rest[open + 1..];
            let close = literal.find('"').expect("closing quote");
            paths.insert(literal[..close].to_owned());
        }
        paths
    }

    fn test_router() -> Router {
        let off: Arc<dyn crate::auth::Verifier> = Arc::new(Disabled);
        let verifiers = Verifiers {
            bandwidth: off.clone(),
            twilio: off.clone(),
            messagebird: off.clone(),
            inteliquent: off,
        };
        // Port 1 refuses connections at once: /readyz answers 503 without waiting.
        let core = CoreClient::connect_lazy(
            "http://127.0.0.1:1",
            Duration::from_millis(200),
            Duration::ZERO,
        )
        .unwrap();
        let limits = HttpLimits {
            body_bytes: 1024,
            request_timeout: Duration::from_secs(5),
            concurrency: 8,
        };
        router(AppState::new(core, verifiers, Abuse::off()), limits)
    }

    async fn status_of(router: &Router, method: &str, path: &str) -> StatusCode {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))))
            .body(Body::empty())
            .unwrap();
        router.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn served_openapi_parses_and_lists_exactly_the_routes_and_methods() {
        let router = test_router();
        let request = http::Request::get("/openapi.json")
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();

        let documented: BTreeSet<String> = paths.keys().cloned().collect();
        let routed = router_paths();
        assert!(
            routed.contains("/twilio") && routed.len() >= 7,
            "{routed:?}"
        );
        assert_eq!(documented, routed, "openapi.json paths vs router routes");

        // Each documented method is routed, and every other one answers 405.
        for (path, item) in paths {
            let concrete = path.replace("{destination}", "15551234567");
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
                let status = status_of(&router, method, &concrete).await;
                if item.get(method.to_ascii_lowercase()).is_some() {
                    assert!(
                        status != StatusCode::METHOD_NOT_ALLOWED && status != StatusCode::NOT_FOUND,
                        "{method} {path} is documented but answers {status}"
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} is not documented"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn every_documented_reply_of_an_operation_has_a_description() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Some(responses) = op.get("responses").and_then(|r| r.as_object()) else {
                    continue;
                };
                assert!(responses.contains_key("200"), "{method} {path}");
                if path.starts_with("/twilio")
                    || path.starts_with("/messagebird")
                    || path.starts_with("/bandwidth")
                    || path.starts_with("/webhooks")
                {
                    if method == "options" {
                        continue;
                    }
                    for code in ["400", "401", "403", "413", "415", "500", "503", "504"] {
                        assert!(responses.contains_key(code), "{method} {path} lacks {code}");
                    }
                    assert_eq!(
                        responses.contains_key("422"),
                        path == "/webhooks/inteliquent",
                        "{method} {path}: 422 is Inteliquent's"
                    );
                }
            }
        }
    }

    #[test]
    fn every_operation_documents_the_request_id_and_trace_headers() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let resolve = |r: &serde_json::Value| -> serde_json::Value {
            match r["$ref"].as_str() {
                Some(path) => doc.pointer(path.trim_start_matches('#')).unwrap().clone(),
                None => r.clone(),
            }
        };
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let names: Vec<String> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| resolve(p)["name"].as_str().unwrap_or_default().to_owned())
                    .collect();
                assert!(names.iter().any(|n| n == "X-Request-Id"), "{method} {path}");
                let traced = !matches!(path.as_str(), "/livez" | "/readyz" | "/openapi.json");
                assert_eq!(
                    names.iter().any(|n| n == "traceparent"),
                    traced,
                    "{method} {path}"
                );
                for (code, reply) in op["responses"].as_object().unwrap() {
                    let reply = resolve(reply);
                    // A 414 or 431 is answered by the HTTP server before any request is read.
                    if code != "414" && code != "431" {
                        assert!(
                            reply["headers"].get("X-Request-Id").is_some(),
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn shed_and_unavailable_replies_carry_retry_after() {
        let response = overloaded(Box::new(tower::timeout::error::Elapsed::new())).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "5");
        let response = EdgeError::Core {
            code: tonic::Code::Unavailable,
        }
        .into_response_with(StatusCode::BAD_REQUEST);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "5");
        let response = EdgeError::Core {
            code: tonic::Code::Internal,
        }
        .into_response_with(StatusCode::BAD_REQUEST);
        assert!(response.headers().get("retry-after").is_none());
    }
}
