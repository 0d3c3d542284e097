//! W3C trace context from the carrier to the queue: a caller's `traceparent` / `tracestate` is
//! continued (or a new trace started), its trace id goes on every log line of the request, the
//! context is passed on (edge → core in gRPC metadata, core → queue as message attributes), and,
//! only when an OTLP endpoint is configured, spans are exported.
//!
//! With export off a span is two random ids and a `tracing` span for the logs: no exporter, no
//! background work. With export on ([`init`]) the same calls also start an OpenTelemetry span,
//! whose ids (chosen by the SDK) are the ones propagated, so what is exported and what is passed
//! on agree.

use std::{
    borrow::Cow,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

pub use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::{
    Context, KeyValue,
    trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _},
};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
};

use crate::publish::Attribute;

/// The W3C header (and gRPC metadata key, and queue message attribute) with the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header (and metadata key, and attribute) with vendor trace state.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` passed on; W3C asks to propagate at least 512 characters, and a longer
/// one is dropped whole rather than cut (a cut list member would be corrupt).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// Which binary a span belongs to: one instrumentation scope each, so the spans of an edge with
/// the core embedded still say which side made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// http-edge's spans.
    Edge,
    /// ingest-core's spans.
    Core,
}

/// The tracers, set once when export is on.
struct Tracers {
    edge: SdkTracer,
    core: SdkTracer,
}

static TRACERS: OnceLock<Tracers> = OnceLock::new();

fn tracer(scope: Scope) -> Option<&'static SdkTracer> {
    TRACERS.get().map(|t| match scope {
        Scope::Edge => &t.edge,
        Scope::Core => &t.core,
    })
}

/// Whether spans are exported (an OTLP endpoint was configured).
pub fn exporting() -> bool {
    TRACERS.get().is_some()
}

/// The span context in a `traceparent` value (and its `tracestate`), or `None` when it is
/// absent or invalid: the caller then starts a new trace. Strict W3C Trace Context level 1:
/// lowercase hex of exact lengths, version `ff` refused, a version-00 header has exactly four
/// fields (later versions may append more), all-zero ids refused. An invalid or over-long
/// `tracestate` is dropped and the `traceparent` kept.
pub fn parse(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<SpanContext> {
    let value = traceparent?.trim_matches([' ', '\t']);
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let version = lower_hex::<1>(version)?[0];
    if version == 0xff || (version == 0 && parts.next().is_some()) {
        return None;
    }
    let trace_id = TraceId::from_bytes(lower_hex::<16>(trace)?);
    let span_id = SpanId::from_bytes(lower_hex::<8>(span)?);
    // Only the sampled bit is defined; others are not passed on (W3C: "other flags").
    let flags = TraceFlags::new(lower_hex::<1>(flags)?[0]) & TraceFlags::SAMPLED;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN)
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// `N` bytes from exactly `2 * N` lowercase hex digits.
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The `traceparent` value for `context` (version 00).
pub fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags() & TraceFlags::SAMPLED
    )
}

/// The `tracestate` value for `context`, if it has any state.
pub fn tracestate(context: &SpanContext) -> Option<String> {
    let header = context.trace_state().header();
    (!header.is_empty()).then_some(header)
}

/// One span of ours: its context (what is passed on and logged) and, when export is on, the
/// OpenTelemetry span, which is exported when this is dropped.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    otel: Option<opentelemetry_sdk::trace::Span>,
}

impl Span {
    /// A server span of `scope` continuing `parent` (a remote caller's context), or starting a
    /// new trace when there is none. `name` is only called when export is on.
    ///
    /// With export off the ids are random; a new trace is marked sampled, so that consumers
    /// whose sampler follows the parent keep their part of it; a continued one keeps the
    /// caller's flag and state.
    pub fn start<N>(scope: Scope, name: impl FnOnce() -> N, parent: Option<SpanContext>) -> Self
    where
        N: Into<Cow<'static, str>>,
    {
        if let Some(tracer) = tracer(scope) {
            let cx = match &parent {
                Some(parent) => Context::new().with_remote_span_context(parent.clone()),
                None => Context::new(),
            };
            let span = tracer
                .span_builder(name())
                .with_kind(SpanKind::Server)
                .start_with_context(tracer, &cx);
            // A provider already shut down hands out empty contexts: never propagate those.
            if span.span_context().is_valid() {
                return Self {
                    context: span.span_context().clone(),
                    otel: Some(span),
                };
            }
        }
        let span_id = SpanId::from(fastrand::u64(1..));
        let context = match parent {
            Some(parent) => SpanContext::new(
                parent.trace_id(),
                span_id,
                parent.trace_flags(),
                false,
                parent.trace_state().clone(),
            ),
            None => SpanContext::new(
                TraceId::from(fastrand::u128(1..)),
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
        };
        Self {
            context,
            otel: None,
        }
    }

    /// This span's context: what goes to the next hop.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// The trace id, for log fields.
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }

    /// Adds an attribute to the exported span (nothing when export is off).
    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.otel {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the exported span as failed with `description` (nothing when export is off).
    pub fn set_error(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.otel {
            span.set_status(Status::error(description));
        }
    }

    /// The message attributes that carry this span's context to the consumer of a queue.
    pub fn attributes(&self) -> Propagated {
        Propagated {
            traceparent: traceparent(&self.context),
            tracestate: tracestate(&self.context),
        }
    }
}

/// A span context in the form a queue message carries it: the `traceparent` and `tracestate`
/// attribute values, formatted once and copied onto each event of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Propagated {
    /// `traceparent` value.
    pub traceparent: String,
    /// `tracestate` value, when there is state.
    pub tracestate: Option<String>,
}

impl Propagated {
    /// Appends the `traceparent` (and `tracestate`) attributes to `attributes`.
    pub fn add_to(self, attributes: &mut Vec<Attribute>) {
        attributes.push(Attribute::text(TRACEPARENT, self.traceparent));
        if let Some(state) = self.tracestate {
            attributes.push(Attribute::text(TRACESTATE, state));
        }
    }
}

/// Settings of the optional OTLP export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// How long the exporter may take for one batch, and shutdown for the last flush.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The export pipeline while it runs; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporter, within a few seconds whatever the
    /// collector does.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks while it flushes; the export itself runs on the runtime's other threads.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(EXPORT_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => tracing::info!("trace export flushed"),
            Ok(Err(error)) => tracing::warn!(%error, "trace export: last flush failed"),
            Err(error) => tracing::warn!(%error, "trace export: flush task failed"),
        }
    }
}

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct ExportError(String);

/// Starts exporting spans over OTLP/gRPC to `settings.endpoint` (batched, on the SDK's own
/// thread). Must run inside the Tokio runtime; once per process.
pub fn init(settings: &ExportSettings) -> Result<Telemetry, ExportError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_timeout(EXPORT_TIMEOUT)
        .with_channel(
            tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
                .map_err(|e| ExportError(e.to_string()))?
                .connect_timeout(Duration::from_secs(1))
                .timeout(EXPORT_TIMEOUT)
                .connect_lazy(),
        )
        .build()
        .map_err(|e| ExportError(e.to_string()))?;
    let exporter = Counted {
        inner: exporter,
        failing: AtomicBool::new(false),
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let version = env!("CARGO_PKG_VERSION");
    let scope = |name: &'static str| {
        opentelemetry::InstrumentationScope::builder(name)
            .with_version(version)
            .build()
    };
    use opentelemetry::trace::TracerProvider as _;
    let tracers = Tracers {
        edge: provider.tracer_with_scope(scope("http-edge")),
        core: provider.tracer_with_scope(scope("ingest-core")),
    };
    if TRACERS.set(tracers).is_err() {
        return Err(ExportError("already started".into()));
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// An exporter that counts the spans it exports and those it loses
/// (`ingest_trace_export_spans_total`), and says when a failing collector takes spans again;
/// the SDK logs each failed export itself (its `internal-logs`).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    /// Whether the last export failed.
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let outcome = if result.is_ok() { "exported" } else { "failed" };
        crate::metrics::CORE
            .trace_spans
            .get_or_create(&crate::metrics::SpanExportLabels { outcome })
            .inc_by(spans);
        let was_failing = self.failing.swap(result.is_err(), Ordering::Relaxed);
        if was_failing && result.is_ok() {
            tracing::info!("trace export: the collector takes spans again");
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_its_state() {
        let cx = parse(Some(VALID), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(
            tracestate(&cx).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(traceparent(&cx), VALID);
        let unsampled = parse(Some(&VALID.replace("-01", "-00")), None).unwrap();
        assert!(!unsampled.is_sampled());
        // Unknown flags are not passed on.
        let other = parse(Some(&VALID.replace("-01", "-ff")), None).unwrap();
        assert_eq!(traceparent(&other), VALID);
        // A later version may append fields.
        assert!(
            parse(
                Some(&format!("{}-extra", VALID.replacen("00", "cc", 1))),
                None
            )
            .is_some()
        );
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        let bad = [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ];
        for value in bad {
            assert!(parse(Some(value), None).is_none(), "{value:?}");
        }
        assert!(parse(None, Some("rojo=1")).is_none());
    }

    #[test]
    fn a_bad_or_long_tracestate_is_dropped_and_the_parent_kept() {
        for state in [
            "not a list member",
            "UPPER=x",
            &format!("k={}", "v".repeat(600)),
        ] {
            let cx = parse(Some(VALID), Some(state)).unwrap();
            assert_eq!(tracestate(&cx), None, "{state:?}");
        }
    }

    #[test]
    fn without_export_a_span_continues_its_parent_with_a_new_span_id() {
        assert!(!exporting());
        let parent = parse(Some(VALID), Some("rojo=1")).unwrap();
        let span = Span::start(Scope::Edge, || "unused", Some(parent.clone()));
        assert_eq!(span.trace_id(), parent.trace_id());
        assert_ne!(span.context().span_id(), parent.span_id());
        assert_ne!(span.context().span_id(), SpanId::INVALID);
        let p = span.attributes();
        assert!(
            p.traceparent
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(p.traceparent.ends_with("-01"));
        assert_eq!(p.tracestate.as_deref(), Some("rojo=1"));
        let mut attributes = Vec::new();
        p.add_to(&mut attributes);
        assert_eq!(attributes.len(), 2);
        assert_eq!(attributes[0].name, TRACEPARENT);

        let fresh = Span::start(Scope::Core, || "unused", None);
        let again = Span::start(Scope::Core, || "unused", None);
        assert_ne!(fresh.trace_id(), again.trace_id());
        assert_ne!(fresh.trace_id(), TraceId::INVALID);
        assert!(fresh.context().is_sampled());
        let reparsed = parse(Some(&fresh.attributes().traceparent), None).unwrap();
        assert_eq!(reparsed.trace_id(), fresh.trace_id());
        assert_eq!(fresh.attributes().tracestate, None);
    }
}
