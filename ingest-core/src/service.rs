//! The `IngestService` gRPC handlers and the claim → publish → commit pipeline behind them.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use carrier_ingest::v1::{
    Carrier, Outcome, QuarantineReply, QuarantineRequest, SubmitBatchReply, SubmitBatchRequest,
    SubmitInboundRequest, SubmitReply, SubmitStatusRequest, ingest_service_server::IngestService,
};
use futures_util::{
    FutureExt,
    future::{BoxFuture, join_all},
};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument;

use crate::{
    dedupe::{Claim, DedupeError, DedupeStore},
    event::{self, Normalized, Submitted, Violation},
    metrics,
    publish::{EventKind, OutboundEvent, PublishError, Publisher},
    quarantine,
    trace::{self, Propagated, Scope, SpanContext, TRACEPARENT, TRACESTATE},
};

/// Most events in one `SubmitBatch`.
pub const MAX_BATCH: usize = 100;

/// Where each event is published: one queue per kind, each overridable per carrier.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routes {
    /// Queue for inbound messages.
    pub inbound: String,
    /// Queue for delivery statuses.
    pub status: String,
    /// Queue for quarantined calls.
    pub quarantine: String,
    /// Queues that replace `inbound` or `status` for one carrier.
    pub overrides: HashMap<(Carrier, EventKind), String>,
}

impl Routes {
    /// The queue for an event of `kind` from `carrier`; the one place that routes.
    pub fn queue(&self, carrier: Carrier, kind: EventKind) -> &str {
        if let Some(queue) = self.overrides.get(&(carrier, kind)) {
            return queue;
        }
        match kind {
            EventKind::Inbound => &self.inbound,
            EventKind::Status => &self.status,
        }
    }

    /// Every configured queue, once each, for readiness checks.
    pub fn all(&self) -> Vec<String> {
        let mut queues = vec![
            self.inbound.clone(),
            self.status.clone(),
            self.quarantine.clone(),
        ];
        queues.extend(self.overrides.values().cloned());
        queues.retain(|q| !q.is_empty());
        queues.sort();
        queues.dedup();
        queues
    }
}

/// Why an event was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The submitted event is invalid; nothing was published.
    #[error("invalid event")]
    Invalid(Vec<Violation>),
    /// The event could not be made durable; the submitter must retry.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The dedupe store failed; the submitter must retry.
    #[error(transparent)]
    Dedupe(#[from] DedupeError),
    /// A bug or a panic in the pipeline.
    #[error("internal error")]
    Internal,
}

impl IngestError {
    /// The gRPC code for this error: one table, no catch-all.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Publish(_) | Self::Dedupe(_) => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }
}

/// Most field violations carried in one error's details. A batch of 100 events can have hundreds
/// of violations; every one of them in the `grpc-status-details-bin` and `grpc-message` headers
/// overflows HTTP/2's header block, and the call then fails as a protocol error (a 500 at the
/// edge, which a carrier retries forever) instead of the INVALID_ARGUMENT it is.
pub const MAX_REPORTED_VIOLATIONS: usize = 10;
/// Longest `grpc-message`, in bytes, for the same reason.
const MAX_STATUS_MESSAGE_BYTES: usize = 1024;
/// The field named by the violation that says how many more were left out.
pub const MORE_VIOLATIONS_FIELD: &str = "(more)";

/// `s` cut to at most `max` bytes on a character boundary.
fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        let code = e.code();
        match e {
            IngestError::Invalid(violations) => {
                // The first violations, and a count of the rest: enough to fix the sender, and
                // small enough for HTTP/2 headers whatever the batch.
                let shown = &violations[..violations.len().min(MAX_REPORTED_VIOLATIONS)];
                let more = violations.len() - shown.len();
                let mut details = ErrorDetails::new();
                for v in shown {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                let mut summary = shown
                    .iter()
                    .map(|v| format!("{} {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                if more > 0 {
                    let note = format!("and {more} more violations not listed");
                    details.add_bad_request_violation(MORE_VIOLATIONS_FIELD, note.clone());
                    summary = format!("{summary}; {note}");
                }
                let message = truncated(
                    format!("invalid event: {summary}"),
                    MAX_STATUS_MESSAGE_BYTES,
                );
                Status::with_error_details(code, message, details)
            }
            // Internal detail was logged where it happened; the reply stays generic.
            IngestError::Publish(_) | IngestError::Dedupe(_) => {
                Status::new(code, "event not stored; retry later")
            }
            IngestError::Internal => Status::new(code, "internal error"),
        }
    }
}

/// Dedupe and publishing, shared by every handler.
pub struct Pipeline {
    dedupe: Arc<dyn DedupeStore>,
    publisher: Arc<dyn Publisher>,
    routes: Routes,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("dedupe", &self.dedupe.name())
            .field("publisher", &self.publisher.name())
            .field("routes", &self.routes)
            .finish()
    }
}

impl Pipeline {
    /// A pipeline over the given backends.
    pub fn new(
        dedupe: Arc<dyn DedupeStore>,
        publisher: Arc<dyn Publisher>,
        routes: Routes,
    ) -> Arc<Self> {
        Arc::new(Self {
            dedupe,
            publisher,
            routes,
        })
    }

    /// The configured routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The publisher, for readiness checks.
    pub fn publisher(&self) -> &Arc<dyn Publisher> {
        &self.publisher
    }

    /// The dedupe store, for readiness and its degraded state.
    pub fn dedupe(&self) -> &Arc<dyn DedupeStore> {
        &self.dedupe
    }

    /// Dedupes and publishes one normalized event, with `trace` (the call's span context) in
    /// its message attributes. A duplicate publishes nothing, so the queue keeps the trace of
    /// the first submission.
    ///
    /// A caller that gives up (deadline, disconnect) cannot leave a claim half-settled: the
    /// work is finished without it (see [`Detached`]) and its claim committed or released.
    pub async fn ingest(
        self: &Arc<Self>,
        event: Normalized,
        trace: Propagated,
    ) -> Result<SubmitReply, IngestError> {
        self.ingest_with(event, trace, true, None).await
    }

    /// Like [`Pipeline::ingest`]; with `log_events` false, accepted and duplicate events are
    /// not logged at `info` (the caller logs them). With a `deadline` (the caller's gRPC
    /// deadline), the publisher keeps the event by another way (the outbox) in time for it.
    pub async fn ingest_with(
        self: &Arc<Self>,
        event: Normalized,
        trace: Propagated,
        log_events: bool,
        deadline: Option<Instant>,
    ) -> Result<SubmitReply, IngestError> {
        let this = self.clone();
        // The work stays in the caller's span (the `rpc` span, or the edge's `request` span in
        // place). The event's own lines name it themselves: a span per event cost more (it is
        // formatted, stored and closed for every event) than the few lines that need it.
        Detached::new("ingest", async move {
            this.process(event, trace, log_events, deadline).await
        })
        .await
    }

    async fn process(
        &self,
        event: Normalized,
        trace: Propagated,
        log_events: bool,
        deadline: Option<Instant>,
    ) -> Result<SubmitReply, IngestError> {
        let (carrier, kind) = (event::carrier_name(event.carrier), event.kind);
        let count = |outcome| {
            metrics::CORE
                .events
                .get_or_create(&metrics::EventLabels {
                    carrier,
                    kind: kind.as_str(),
                    outcome,
                })
                .inc();
        };
        let queue = self.routes.queue(event.carrier, event.kind);
        let status = event::status_name(event.status);
        let event_id = event.event_id.clone();
        let carrier_message_id = event.carrier_message_id.clone();
        let mut outbound = event.into_outbound();
        trace.add_to(&mut outbound.attributes);
        match self
            .publish_once(
                &event_id,
                Some(&carrier_message_id),
                queue,
                &outbound,
                deadline,
            )
            .await
        {
            Ok(Outcome::Duplicate) => {
                if log_events {
                    tracing::info!(
                        outcome = "duplicate",
                        carrier,
                        kind = kind.as_str(),
                        %carrier_message_id,
                        %event_id,
                        "event already published"
                    );
                }
                count("duplicate");
                Ok(reply(event_id, Outcome::Duplicate))
            }
            Ok(outcome) => {
                count("accepted");
                if log_events {
                    tracing::info!(
                        outcome = "accepted",
                        status,
                        carrier,
                        kind = kind.as_str(),
                        %carrier_message_id,
                        %event_id,
                        "event published"
                    );
                }
                Ok(reply(event_id, outcome))
            }
            Err(error) => {
                count("failed");
                Err(error)
            }
        }
    }

    /// Claim → publish → commit for one message with dedupe id `id`: `Duplicate` if it was
    /// published before, `Accepted` once it is durable; a failed publish releases the claim.
    /// Its warnings and errors name `id` (logged as `event_id`) and the carrier's message id.
    async fn publish_once(
        &self,
        id: &str,
        carrier_message_id: Option<&str>,
        queue: &str,
        outbound: &OutboundEvent,
        deadline: Option<Instant>,
    ) -> Result<Outcome, IngestError> {
        let token = match self.dedupe.claim(id).await {
            Ok(Claim::Duplicate) => return Ok(Outcome::Duplicate),
            Ok(Claim::Acquired(token)) => token,
            Err(error) => {
                tracing::error!(%error, carrier_message_id, event_id = id, "dedupe claim failed");
                return Err(error.into());
            }
        };
        let started = std::time::Instant::now();
        let published = self.publisher.publish(queue, outbound, deadline).await;
        metrics::CORE
            .publish_seconds
            .get_or_create(&metrics::BackendLabels {
                backend: self.publisher.name(),
            })
            .observe(started.elapsed().as_secs_f64());
        match published {
            Ok(()) => {
                if let Err(error) = self.dedupe.commit(id, &token).await {
                    // The message is durable; a retry may publish it again, which consumers
                    // absorb by id. Failing the call now would only cause that retry.
                    tracing::warn!(%error, carrier_message_id, event_id = id, "dedupe commit failed after publish");
                }
                Ok(Outcome::Accepted)
            }
            Err(error) => {
                tracing::error!(%error, queue = %crate::publish::queue_name(queue), carrier_message_id, event_id = id, "publish failed");
                if let Err(release) = self.dedupe.release(id, &token).await {
                    tracing::warn!(error = %release, carrier_message_id, event_id = id, "dedupe release failed; claim will lapse");
                }
                Err(error.into())
            }
        }
    }

    /// Keeps one quarantine entry on the quarantine queue, once per record id, with `trace` in
    /// its message attributes.
    pub async fn quarantine(
        self: &Arc<Self>,
        entry: quarantine::Entry,
        trace: Propagated,
        deadline: Option<Instant>,
    ) -> Result<Outcome, IngestError> {
        let this = self.clone();
        let span = tracing::info_span!(
            "quarantine",
            carrier = %entry.carrier,
            reason = %entry.reason,
            record_id = %entry.record_id,
        );
        // Like `ingest`: a caller giving up cannot leave a claim half-settled.
        Detached::new(
            "quarantine",
            async move {
                let mut outbound = entry.to_outbound();
                trace.add_to(&mut outbound.attributes);
                let outcome = this
                    .publish_once(
                        &outbound.event_id,
                        None,
                        &this.routes.quarantine,
                        &outbound,
                        deadline,
                    )
                    .await?;
                if outcome == Outcome::Accepted {
                    metrics::CORE
                        .quarantined
                        .get_or_create(&metrics::QuarantineLabels {
                            carrier: metrics::static_carrier(&entry.carrier),
                            reason: metrics::static_reason(&entry.reason),
                        })
                        .inc();
                    tracing::info!(body_bytes = entry.body_len(), "call quarantined");
                } else {
                    tracing::info!("call already quarantined");
                }
                Ok(outcome)
            }
            .instrument(span),
        )
        .await
    }
}

/// The claim → publish → commit work of one call, run in the caller's task while the caller
/// waits for it, and finished on a task of its own if the caller stops waiting (its deadline
/// passed, its connection closed, the server dropped the call): a claim is never left
/// half-settled, and the event published is committed. A task of its own every time would
/// cost a spawn and a wake-up per event, on the path of every webhook.
///
/// A panic in the work is caught and answered as an internal error, as a failed task was.
struct Detached<T: Send + 'static> {
    /// What the work is, for the log line of a panic.
    what: &'static str,
    /// The work, until it has finished.
    work: Option<BoxFuture<'static, std::thread::Result<Result<T, IngestError>>>>,
    /// The caller's span, which the work keeps if it is finished on a task of its own.
    span: tracing::Span,
}

impl<T: Send + 'static> Detached<T> {
    fn new(
        what: &'static str,
        work: impl Future<Output = Result<T, IngestError>> + Send + 'static,
    ) -> Self {
        Self {
            what,
            work: Some(AssertUnwindSafe(work).catch_unwind().boxed()),
            span: tracing::Span::current(),
        }
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = Result<T, IngestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let work = self
            .work
            .as_mut()
            .expect("Detached polled after it finished");
        let finished = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(finished.unwrap_or_else(|panic| {
            let error = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(error, "{} task failed", self.what);
            Err(IngestError::Internal)
        }))
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(work.instrument(self.span.clone()));
            }
            // Dropped outside any runtime (nothing in this service does): the claim lapses
            // after its lease, and the submitter's retry is taken then.
            Err(_) => tracing::warn!(
                "{}: caller gone outside a runtime; its claim will lapse",
                self.what
            ),
        }
    }
}

fn reply(event_id: String, outcome: Outcome) -> SubmitReply {
    SubmitReply {
        event_id,
        outcome: outcome as i32,
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct IngestGrpc {
    pipeline: Arc<Pipeline>,
}

impl IngestGrpc {
    /// The service over `pipeline`.
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self { pipeline }
    }

    async fn one(
        &self,
        submitted: Submitted,
        prefix: &str,
        span: &trace::Span,
        log_events: bool,
        deadline: Option<Instant>,
    ) -> Result<SubmitReply, Status> {
        let labels = invalid_labels(&submitted);
        let normalized = event::normalize(submitted, prefix).map_err(|v| {
            metrics::CORE.events.get_or_create(&labels).inc();
            IngestError::Invalid(v)
        })?;
        Ok(self
            .pipeline
            .ingest_with(normalized, span.attributes(), log_events, deadline)
            .await?)
    }
}

/// The spans of one call: ours, continuing the submitter's `traceparent` / `tracestate`
/// metadata (the edge's span, or any internal submitter's; in place, its [`CallerSpan`]) or
/// starting a trace, and the log
/// span that puts its trace id on every line of the call. The published events carry this
/// span's context, so a consumer's span is a child of the core call that published it.
///
/// A caller in this process that logs the events itself (`log_events` false, see
/// [`CallerLogsEvents`]) already has its span around the call, with the same trace id: the
/// core's lines fall inside that one, and no second log span is opened.
fn call_spans<T>(
    request: &Request<T>,
    method: &'static str,
    log_events: bool,
) -> (trace::Span, tracing::Span) {
    let parent = match request.extensions().get::<CallerSpan>() {
        Some(CallerSpan(caller)) => Some(SpanContext::new(
            caller.trace_id(),
            caller.span_id(),
            caller.trace_flags(),
            true,
            caller.trace_state().clone(),
        )),
        None => {
            let metadata = request.metadata();
            let get = |key| metadata.get(key).and_then(|v| v.to_str().ok());
            trace::parse(get(TRACEPARENT), get(TRACESTATE))
        }
    };
    let mut span = trace::Span::start(
        Scope::Core,
        || format!("carrier.ingest.v1.IngestService/{method}"),
        parent,
    );
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", "carrier.ingest.v1.IngestService");
    span.set_attribute("rpc.method", method);
    let log = if log_events {
        tracing::info_span!("rpc", method, trace_id = %span.trace_id())
    } else {
        tracing::Span::none()
    };
    (span, log)
}

/// Records the outcome of a call on its span.
fn finish<T>(span: &mut trace::Span, result: &Result<Response<T>, Status>) {
    if !trace::exporting() {
        return;
    }
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if code != Code::Ok {
        span.set_error(code.description());
    }
}

/// Put in a call's extensions by a caller in the same process that logs each event itself (the
/// edge's `webhook accepted` line): the core then skips its own line for accepted and duplicate
/// events, so one webhook costs one log line, and opens no `rpc` log span (its lines are inside
/// the caller's span). Warnings and errors are logged either way. It cannot arrive over the
/// network (extensions are not sent).
#[derive(Debug, Clone, Copy)]
pub struct CallerLogsEvents;

/// Put in a call's extensions by a caller in the same process: the span context it calls in,
/// which a caller over the network sends as `traceparent` and `tracestate` metadata (and the
/// core parses). The core's span is its child either way. It cannot arrive over the network
/// (extensions are not sent), so it is never untrusted input.
#[derive(Debug, Clone)]
pub struct CallerSpan(pub SpanContext);

/// Whether the core logs each event of `request` (not when its caller does).
fn logs_events<T>(request: &Request<T>) -> bool {
    request.extensions().get::<CallerLogsEvents>().is_none()
}

/// When the caller stops waiting: now plus its `grpc-timeout` (digits and a unit: `H`, `M`,
/// `S`, `m`, `u`, `n`), or `None` when it sent none or one that does not parse.
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    grpc_timeout(value).map(|t| Instant::now() + t)
}

fn grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Metric labels for a submission that fails validation.
fn invalid_labels(submitted: &Submitted) -> metrics::EventLabels {
    let (carrier, kind) = match submitted {
        Submitted::Inbound(m) => (m.carrier, EventKind::Inbound),
        Submitted::Status(s) => (s.carrier, EventKind::Status),
    };
    metrics::EventLabels {
        carrier: Carrier::try_from(carrier).map_or("unspecified", event::carrier_name),
        kind: kind.as_str(),
        outcome: "invalid",
    }
}

fn missing(field: &str) -> Status {
    IngestError::Invalid(vec![Violation {
        field: field.to_owned(),
        description: "is required".to_owned(),
    }])
    .into()
}

#[tonic::async_trait]
impl IngestService for IngestGrpc {
    async fn submit_inbound(
        &self,
        request: Request<SubmitInboundRequest>,
    ) -> Result<Response<SubmitReply>, Status> {
        self.single(request, "SubmitInbound", |r| {
            let message = r.message.ok_or_else(|| missing("message"))?;
            Ok((Submitted::Inbound(message), "message."))
        })
        .await
    }

    async fn submit_status(
        &self,
        request: Request<SubmitStatusRequest>,
    ) -> Result<Response<SubmitReply>, Status> {
        self.single(request, "SubmitStatus", |r| {
            let status = r.status.ok_or_else(|| missing("status"))?;
            Ok((Submitted::Status(status), "status."))
        })
        .await
    }

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchReply>, Status> {
        let log_events = logs_events(&request);
        let deadline = deadline_of(&request);
        let (mut span, log) = call_spans(&request, "SubmitBatch", log_events);
        let result = self
            .batch(request.into_inner().events, &span, log_events, deadline)
            .instrument(log)
            .await;
        finish(&mut span, &result);
        result
    }

    async fn quarantine(
        &self,
        request: Request<QuarantineRequest>,
    ) -> Result<Response<QuarantineReply>, Status> {
        let (mut span, log) = call_spans(&request, "Quarantine", logs_events(&request));
        let deadline = deadline_of(&request);
        let result = async {
            let record = request
                .into_inner()
                .record
                .ok_or_else(|| missing("record"))?;
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let entry = quarantine::entry(record, &now).map_err(IngestError::Invalid)?;
            let (record_id, body_sha256) = (entry.record_id.clone(), entry.body_sha256.clone());
            let outcome = self
                .pipeline
                .quarantine(entry, span.attributes(), deadline)
                .await?;
            Ok(Response::new(QuarantineReply {
                record_id,
                outcome: outcome as i32,
                body_sha256,
            }))
        }
        .instrument(log)
        .await;
        finish(&mut span, &result);
        result
    }
}

impl IngestGrpc {
    /// `SubmitInbound` / `SubmitStatus`: the one event `take` finds in the request (with the
    /// prefix of its fields in violations), in the call's spans.
    async fn single<T: Send>(
        &self,
        request: Request<T>,
        method: &'static str,
        take: impl FnOnce(T) -> Result<(Submitted, &'static str), Status> + Send,
    ) -> Result<Response<SubmitReply>, Status> {
        let log_events = logs_events(&request);
        let deadline = deadline_of(&request);
        let (mut span, log) = call_spans(&request, method, log_events);
        let result = async {
            let (submitted, prefix) = take(request.into_inner())?;
            self.one(submitted, prefix, &span, log_events, deadline)
                .await
                .map(Response::new)
        }
        .instrument(log)
        .await;
        finish(&mut span, &result);
        result
    }

    /// `SubmitBatch`: validates every event, then publishes them all.
    async fn batch(
        &self,
        events: Vec<carrier_ingest::v1::BatchEvent>,
        span: &trace::Span,
        log_events: bool,
        deadline: Option<Instant>,
    ) -> Result<Response<SubmitBatchReply>, Status> {
        if events.is_empty() {
            return Err(missing("events"));
        }
        if events.len() > MAX_BATCH {
            return Err(IngestError::Invalid(vec![Violation {
                field: "events".into(),
                description: format!("has more than {MAX_BATCH} events"),
            }])
            .into());
        }
        // Validate the whole batch before publishing any of it.
        let mut normalized = Vec::with_capacity(events.len());
        let mut violations = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let (submitted, prefix) = match Submitted::from_batch(e) {
                Some(s @ Submitted::Inbound(_)) => (s, format!("events[{i}].inbound.")),
                Some(s @ Submitted::Status(_)) => (s, format!("events[{i}].status.")),
                None => {
                    violations.push(Violation {
                        field: format!("events[{i}]"),
                        description: "has no event".into(),
                    });
                    continue;
                }
            };
            let labels = invalid_labels(&submitted);
            match event::normalize(submitted, &prefix) {
                Ok(n) => normalized.push(n),
                Err(v) => {
                    metrics::CORE.events.get_or_create(&labels).inc();
                    violations.extend(v);
                }
            }
        }
        if !violations.is_empty() {
            return Err(IngestError::Invalid(violations).into());
        }
        let trace = span.attributes();
        let results = join_all(normalized.into_iter().map(|n| {
            self.pipeline
                .ingest_with(n, trace.clone(), log_events, deadline)
        }))
        .await;
        let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(SubmitBatchReply { results }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dedupe::MemoryDedupe, publish::PublishError};
    use carrier_ingest::v1::InboundMessage;
    use tokio::sync::Semaphore;

    /// A publisher that holds every publish until the test lets it through, counts what it
    /// published, and panics on an event whose body says so.
    struct Gated {
        gate: Semaphore,
        published: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Publisher for Gated {
        async fn publish(
            &self,
            _queue: &str,
            event: &OutboundEvent,
            _deadline: Option<Instant>,
        ) -> Result<(), PublishError> {
            if event.body.contains("panic-please") {
                panic!("publisher bug");
            }
            self.gate.acquire().await.expect("open").forget();
            self.published.lock().unwrap().push(event.event_id.clone());
            Ok(())
        }
        async fn check(&self, _queue: &str) -> Result<(), PublishError> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "gated"
        }
    }

    fn gated_pipeline() -> (Arc<Pipeline>, Arc<Gated>) {
        let publisher = Arc::new(Gated {
            gate: Semaphore::new(0),
            published: std::sync::Mutex::new(Vec::new()),
        });
        let dedupe = Arc::new(MemoryDedupe::new(
            Duration::from_secs(60),
            1000,
            Duration::from_secs(30),
        ));
        let routes = Routes {
            inbound: "q".into(),
            status: "q".into(),
            quarantine: "q".into(),
            overrides: HashMap::new(),
        };
        (Pipeline::new(dedupe, publisher.clone(), routes), publisher)
    }

    fn normalized(id: &str, text: &str) -> Normalized {
        let message = InboundMessage {
            carrier: Carrier::Messagebird as i32,
            carrier_message_id: id.into(),
            from: "15559876543".into(),
            to: vec!["15551234567".into()],
            text: text.into(),
            carrier_time: "2024-01-15T10:30:00+00:00".into(),
            ..Default::default()
        };
        event::normalize(Submitted::Inbound(message), "ev").expect("valid")
    }

    fn no_trace() -> Propagated {
        Propagated {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: None,
        }
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_leaves_the_publish_to_finish_and_commit() {
        let (pipeline, publisher) = gated_pipeline();
        // The caller gives up while the publish is held (its deadline, a closed connection).
        let call = pipeline.ingest(normalized("m-1", "hi"), no_trace());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), call)
                .await
                .is_err(),
            "held by the publisher"
        );
        assert!(publisher.published.lock().unwrap().is_empty());
        // The publish goes through after the caller left, and its claim is committed: the
        // carrier's retry is a duplicate, not a second event and not a wait on a stuck claim.
        publisher.gate.add_permits(1);
        let retried = tokio::time::timeout(
            Duration::from_secs(5),
            pipeline.ingest(normalized("m-1", "hi"), no_trace()),
        )
        .await
        .expect("the claim was settled")
        .expect("answered");
        assert_eq!(retried.outcome, Outcome::Duplicate as i32);
        assert_eq!(publisher.published.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_caller_that_waits_gets_the_outcome_and_a_panic_is_an_internal_error() {
        let (pipeline, publisher) = gated_pipeline();
        let let_through = |id: &'static str| {
            publisher.gate.add_permits(1);
            pipeline.ingest(normalized(id, "hi"), no_trace())
        };
        let reply = let_through("m-2").await.expect("published");
        assert_eq!(reply.outcome, Outcome::Accepted as i32);
        let panicked = pipeline
            .ingest(normalized("m-3", "panic-please"), no_trace())
            .await;
        assert!(
            matches!(panicked, Err(IngestError::Internal)),
            "{panicked:?}"
        );
        // The call after it is served as usual.
        let reply = let_through("m-4").await.expect("published");
        assert_eq!(reply.outcome, Outcome::Accepted as i32);
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_nothing_else_does() {
        assert_eq!(grpc_timeout("4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("250000u"), Some(Duration::from_millis(250)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "5", "5x", "-5m", "5 m", "123456789m", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    fn violations(n: usize) -> IngestError {
        IngestError::Invalid(
            (0..n)
                .map(|i| Violation {
                    field: format!("events[{i}].inbound.from"),
                    description: "is not an E.164 number".into(),
                })
                .collect(),
        )
    }

    #[test]
    fn many_violations_give_bounded_details_with_a_count_of_the_rest() {
        for n in [
            1,
            MAX_REPORTED_VIOLATIONS,
            MAX_REPORTED_VIOLATIONS + 1,
            100,
            1000,
        ] {
            let status = Status::from(violations(n));
            assert_eq!(status.code(), Code::InvalidArgument);
            let bad = status
                .get_details_bad_request()
                .expect("bad request details");
            let listed = n.min(MAX_REPORTED_VIOLATIONS);
            assert_eq!(bad.field_violations[0].field, "events[0].inbound.from");
            if n > MAX_REPORTED_VIOLATIONS {
                assert_eq!(bad.field_violations.len(), listed + 1, "{n}");
                let last = bad.field_violations.last().unwrap();
                assert_eq!(last.field, MORE_VIOLATIONS_FIELD);
                assert!(last.description.contains(&format!("{} more", n - listed)));
                assert!(
                    status
                        .message()
                        .contains(&format!("and {} more", n - listed))
                );
            } else {
                assert_eq!(bad.field_violations.len(), listed, "{n}");
            }
            // Both headers together stay far below HTTP/2's usual 16 KiB header list.
            let headers = status.details().len() * 4 / 3 + status.message().len();
            assert!(headers < 4096, "{n} violations: {headers} bytes of headers");
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let cut = truncated("é".repeat(1000), 11);
        assert!(cut.len() <= 11 + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(truncated("short".into(), 11), "short");
    }

    #[test]
    fn carrier_overrides_win_and_all_lists_each_queue_once() {
        let routes = Routes {
            inbound: "in".into(),
            status: "st".into(),
            quarantine: "q".into(),
            overrides: HashMap::from([
                ((Carrier::Twilio, EventKind::Status), "tw-st".to_owned()),
                ((Carrier::Bandwidth, EventKind::Inbound), "in".to_owned()),
            ]),
        };
        assert_eq!(routes.queue(Carrier::Twilio, EventKind::Status), "tw-st");
        assert_eq!(routes.queue(Carrier::Twilio, EventKind::Inbound), "in");
        assert_eq!(routes.queue(Carrier::Messagebird, EventKind::Status), "st");
        assert_eq!(routes.all(), ["in", "q", "st", "tw-st"]);
    }
}
