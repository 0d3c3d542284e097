//! Prometheus metrics of the process, served on the admin listener at `/metrics`.
//!
//! One registry per process: the core's and the edge's metrics (both, when the core runs
//! embedded) are exposed together. Names follow `ingest_<thing>_<unit>_total` / `_seconds`.

use std::{
    future::Future,
    sync::{LazyLock, Mutex, atomic::AtomicU64},
};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};
use tokio::net::TcpListener;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

/// Registers `metric` under `name` in the process registry.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    REGISTRY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .register(name, help, metric);
}

/// The registry in Prometheus/OpenMetrics text.
pub fn render() -> String {
    // Make sure the core's families exist (zero-valued) even before the first event.
    LazyLock::force(&CORE);
    let mut text = String::new();
    let registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The value of one series of the registry, named as rendered (`name{label="v",…}`), if it has
/// that series.
pub fn sample(series: &str) -> Option<f64> {
    render().lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Latency buckets from 1 ms to ~16 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// Labels of a core event outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Carrier name.
    pub carrier: &'static str,
    /// `inbound` or `status`.
    pub kind: &'static str,
    /// `accepted`, `duplicate`, `invalid` or `failed`.
    pub outcome: &'static str,
}

/// Labels naming a backend.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Backend name (`spool`, `sqs`).
    pub backend: &'static str,
}

/// Labels naming a queue (its short name: the last segment of an SQS URL).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Queue name.
    pub queue: String,
}

/// The labels of `queue` (a name or an SQS queue URL).
pub fn queue_labels(queue: &str) -> QueueLabels {
    QueueLabels {
        queue: crate::publish::queue_name(queue),
    }
}

/// Labels of one call to a queue: the queue's short name and whether the call succeeded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueCallLabels {
    /// Queue name.
    pub queue: String,
    /// `ok` (the call succeeded, though SQS may have refused single entries) or `error` (it
    /// failed: no answer, a timeout or an error reply).
    pub outcome: &'static str,
}

/// Buckets of entries per `SendMessageBatch`: 1 to 10, one each.
pub fn batch_entries_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::linear_buckets(
        1.0, 1.0, 10,
    ))
}

/// Labels of a quarantined call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    /// Carrier name.
    pub carrier: &'static str,
    /// Why it could not become events.
    pub reason: &'static str,
}

/// Labels of a refused gRPC connection or call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    /// `missing_token`, `invalid_token` or `tls_handshake`.
    pub reason: &'static str,
}

/// Labels naming an authenticated gRPC submitter (a configured token name or a client
/// certificate's DNS name: a bounded set).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubmitterLabels {
    /// The submitter's name.
    pub submitter: String,
}

/// Labels naming a group-commit journal: `spool-<file>` or `outbox-<queue>` (a bounded set: the
/// configured queues).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JournalLabels {
    /// The journal's name.
    pub journal: String,
}

/// Buckets of a journal's write + fsync: 50 µs to ~0.8 s, doubling (an fsync of a local SSD
/// takes well under 1 ms, so the latency buckets' 1 ms floor would hide it).
pub fn sync_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 15,
    ))
}

/// Labels of spans handed to the OTLP exporter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanExportLabels {
    /// `exported` (the collector took them) or `failed` (the export failed: they are lost).
    pub outcome: &'static str,
}

/// A carrier name as a static label (`other` for anything unknown).
pub fn static_carrier(name: &str) -> &'static str {
    ["bandwidth", "twilio", "messagebird", "inteliquent"]
        .into_iter()
        .find(|c| *c == name)
        .unwrap_or("other")
}

/// A quarantine reason as a static label (`other` for anything unknown).
pub fn static_reason(reason: &str) -> &'static str {
    crate::quarantine::REASONS
        .into_iter()
        .find(|r| *r == reason)
        .unwrap_or("other")
}

/// The core's metrics.
#[derive(Debug)]
pub struct CoreMetrics {
    /// Events by carrier, kind and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Time to make one event durable, by publisher.
    pub publish_seconds: Family<BackendLabels, Histogram>,
    /// 1 while dedupe has fallen back from Redis to process memory.
    pub dedupe_degraded: Gauge,
    /// Ids the in-memory dedupe remembers as published.
    pub dedupe_memory_keys: Gauge,
    /// Ids the in-memory dedupe forgot before their TTL, to stay within its capacity.
    pub dedupe_memory_evicted: Counter,
    /// 1 while the core can take events (gRPC health SERVING).
    pub ready: Gauge,
    /// Time of one `SendMessageBatch` call (each attempt, outbox relay calls included), by
    /// queue and whether it succeeded.
    pub sqs_call_seconds: Family<QueueCallLabels, Histogram>,
    /// Entries per `SendMessageBatch` call, by queue: how full batches leave.
    pub sqs_batch_entries: Family<QueueLabels, Histogram>,
    /// 1 while a queue's SQS circuit is open (SQS failing; events go to the outbox).
    pub sqs_circuit_open: Family<QueueLabels, Gauge>,
    /// Events in a queue's outbox, not yet confirmed by SQS.
    pub outbox_events: Family<QueueLabels, Gauge>,
    /// Bytes of a queue's outbox records not yet confirmed by SQS.
    pub outbox_bytes: Family<QueueLabels, Gauge>,
    /// Age of the oldest record in a queue's outbox (0 when empty).
    pub outbox_oldest_age_seconds: Family<QueueLabels, Gauge<f64, AtomicU64>>,
    /// Events written to a queue's outbox.
    pub outbox_stored: Family<QueueLabels, Counter>,
    /// Outbox events the relay delivered to SQS.
    pub outbox_relayed: Family<QueueLabels, Counter>,
    /// Relay calls to SQS that failed (each is retried).
    pub outbox_relay_failures: Family<QueueLabels, Counter>,
    /// Events refused with UNAVAILABLE because the outbox was full.
    pub outbox_full: Family<QueueLabels, Counter>,
    /// Calls newly kept in the quarantine, by carrier and reason.
    pub quarantined: Family<QuarantineLabels, Counter>,
    /// gRPC connections and calls refused for lack of valid credentials, by reason.
    pub grpc_auth_failures: Family<AuthFailureLabels, Counter>,
    /// Authenticated gRPC calls, by submitter.
    pub grpc_authenticated: Family<SubmitterLabels, Counter>,
    /// Spans sent to the OTLP collector, by outcome (both zero while export is off).
    pub trace_spans: Family<SpanExportLabels, Counter>,
    /// Time of one group commit (write and fsync) of a spool file or outbox, failed ones too.
    pub journal_sync_seconds: Family<JournalLabels, Histogram>,
    /// Records a spool file or outbox made durable.
    pub journal_records: Family<JournalLabels, Counter>,
}

/// The core's metrics, registered on first use.
pub static CORE: LazyLock<CoreMetrics> = LazyLock::new(|| {
    let m = CoreMetrics {
        events: Family::default(),
        publish_seconds: Family::new_with_constructor(latency_histogram),
        dedupe_degraded: Gauge::default(),
        dedupe_memory_keys: Gauge::default(),
        dedupe_memory_evicted: Counter::default(),
        ready: Gauge::default(),
        sqs_call_seconds: Family::new_with_constructor(latency_histogram),
        sqs_batch_entries: Family::new_with_constructor(batch_entries_histogram),
        sqs_circuit_open: Family::default(),
        outbox_events: Family::default(),
        outbox_bytes: Family::default(),
        outbox_oldest_age_seconds: Family::default(),
        outbox_stored: Family::default(),
        outbox_relayed: Family::default(),
        outbox_relay_failures: Family::default(),
        outbox_full: Family::default(),
        quarantined: Family::default(),
        grpc_auth_failures: Family::default(),
        grpc_authenticated: Family::default(),
        trace_spans: Family::default(),
        journal_sync_seconds: Family::new_with_constructor(sync_histogram),
        journal_records: Family::default(),
    };
    register(
        "ingest_events",
        "Events submitted to the core, by outcome",
        m.events.clone(),
    );
    register(
        "ingest_publish_duration_seconds",
        "Time to make one event durable",
        m.publish_seconds.clone(),
    );
    register(
        "ingest_dedupe_degraded",
        "1 while dedupe runs on process memory because Redis is unreachable",
        m.dedupe_degraded.clone(),
    );
    register(
        "ingest_dedupe_memory_keys",
        "Event ids the in-memory dedupe remembers as published (at most --dedupe-capacity)",
        m.dedupe_memory_keys.clone(),
    );
    register(
        "ingest_dedupe_memory_evicted",
        "Event ids the in-memory dedupe forgot before --dedupe-ttl-secs because it was full: a carrier retry of one is published again",
        m.dedupe_memory_evicted.clone(),
    );
    register(
        "ingest_core_ready",
        "1 while the core can take events",
        m.ready.clone(),
    );
    register(
        "ingest_sqs_call_duration_seconds",
        "Time of one SendMessageBatch call to SQS (every attempt, relay calls included), by queue and outcome",
        m.sqs_call_seconds.clone(),
    );
    register(
        "ingest_sqs_batch_entries",
        "Entries per SendMessageBatch call to SQS, by queue",
        m.sqs_batch_entries.clone(),
    );
    register(
        "ingest_sqs_circuit_open",
        "1 while SQS calls for a queue keep failing and events go to the local outbox",
        m.sqs_circuit_open.clone(),
    );
    register(
        "ingest_outbox_events",
        "Events in the local outbox not yet confirmed by SQS",
        m.outbox_events.clone(),
    );
    register(
        "ingest_outbox_bytes",
        "Bytes of outbox records not yet confirmed by SQS",
        m.outbox_bytes.clone(),
    );
    register(
        "ingest_outbox_oldest_age_seconds",
        "Age of the oldest outbox record (0 when empty)",
        m.outbox_oldest_age_seconds.clone(),
    );
    register(
        "ingest_outbox_stored",
        "Events written to the local outbox",
        m.outbox_stored.clone(),
    );
    register(
        "ingest_outbox_relayed",
        "Outbox events delivered to SQS by the relay",
        m.outbox_relayed.clone(),
    );
    register(
        "ingest_outbox_relay_failures",
        "Relay calls to SQS that failed and will be retried",
        m.outbox_relay_failures.clone(),
    );
    register(
        "ingest_quarantined",
        "Authentic calls that could not become events, newly kept in the quarantine",
        m.quarantined.clone(),
    );
    register(
        "ingest_grpc_auth_failures",
        "gRPC connections (failed TLS handshakes) and calls (missing or invalid token) refused, by reason",
        m.grpc_auth_failures.clone(),
    );
    register(
        "ingest_grpc_authenticated_calls",
        "gRPC calls that presented valid credentials, by submitter",
        m.grpc_authenticated.clone(),
    );
    register(
        "ingest_outbox_full",
        "Events refused because the outbox reached --outbox-max-bytes",
        m.outbox_full.clone(),
    );
    register(
        "ingest_journal_sync_duration_seconds",
        "Time of one group commit (write and fsync) of a spool file or outbox, by journal",
        m.journal_sync_seconds.clone(),
    );
    register(
        "ingest_journal_records",
        "Records a spool file or outbox made durable, by journal (per sync: records over the histogram's count)",
        m.journal_records.clone(),
    );
    // Both series exist from the start (zero while export is off), so that alerts on them
    // see a value rather than nothing.
    for outcome in ["exported", "failed"] {
        let _ = m.trace_spans.get_or_create(&SpanExportLabels { outcome });
    }
    register(
        "ingest_trace_export_spans",
        "Spans sent to the OTLP collector, by outcome (failed: lost with their export)",
        m.trace_spans.clone(),
    );
    m
});

/// Binds the admin listener at `addr` (if configured) and serves `/metrics` on it until the
/// returned handle is notified.
pub async fn start_admin(
    addr: Option<std::net::SocketAddr>,
) -> std::io::Result<std::sync::Arc<tokio::sync::Notify>> {
    start(addr, false).await
}

/// Like [`start_admin`], also serving the core's probes: `GET /livez` (200 while the process
/// serves) and `GET /readyz` (200 while the core can take events, as gRPC health reports).
/// With TLS on the gRPC port the kubelet's native gRPC probe cannot connect; these can.
pub async fn start_core_admin(
    addr: Option<std::net::SocketAddr>,
) -> std::io::Result<std::sync::Arc<tokio::sync::Notify>> {
    start(addr, true).await
}

async fn start(
    addr: Option<std::net::SocketAddr>,
    probes: bool,
) -> std::io::Result<std::sync::Arc<tokio::sync::Notify>> {
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Some(addr) = addr {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, probes, "admin listener (GET /metrics)");
        let stop = stop.clone();
        tokio::spawn(serve_admin_with(listener, probes, async move {
            stop.notified().await
        }));
    }
    Ok(stop)
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_admin(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_admin_with(listener, false, shutdown).await
}

async fn serve_admin_with(
    listener: TcpListener,
    probes: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut router = Router::new();
    if probes {
        router = router.route("/livez", get(|| async { "ok" })).route(
            "/readyz",
            get(|| async {
                if CORE.ready.get() == 1 {
                    (axum::http::StatusCode::OK, "ready")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        );
    }
    let router = router
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(),
                )
                    .into_response()
            }),
        )
        // A scrape is cheap, but the listener still gets limits: a few at a time, briefly.
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: axum::BoxError| async { axum::http::StatusCode::SERVICE_UNAVAILABLE },
                ))
                .load_shed()
                .concurrency_limit(8)
                .timeout(std::time::Duration::from_secs(5)),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_labels() {
        CORE.events
            .get_or_create(&EventLabels {
                carrier: "twilio",
                kind: "inbound",
                outcome: "accepted",
            })
            .inc();
        CORE.publish_seconds
            .get_or_create(&BackendLabels { backend: "spool" })
            .observe(0.003);
        let text = render();
        assert!(
            text.contains(
                r#"ingest_events_total{carrier="twilio",kind="inbound",outcome="accepted"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ingest_publish_duration_seconds_count{backend="spool"} 1"#),
            "{text}"
        );
        assert!(text.contains("ingest_dedupe_degraded 0"), "{text}");
    }
}
