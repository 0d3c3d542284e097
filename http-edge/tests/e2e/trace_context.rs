//! Trace context from the carrier to the queue through the real binaries: a carrier's
//! `traceparent` continued to the spool line and the SQS message (also after an outage, through
//! the outbox), a new trace for a missing or invalid one, a gRPC submitter's metadata honoured,
//! `X-Request-Id` on every reply, the trace id on the request's log lines (text and JSON), and
//! spans exported over OTLP to a small receiver (the collector's `TraceService`) in this test.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use carrier_ingest::v1::{
    Carrier, DeliveryStatus, SubmitStatusRequest, ingest_service_client::IngestServiceClient,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
};
use serde_json::Value;

use crate::{
    fake_sqs::FakeSqs,
    harness::{BlackHole, Edge, scrape},
    servers::free_port,
    spec::BANDWIDTH_INBOUND,
    two_cores::ingest_core_binary,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A Bandwidth inbound call with its own message id.
fn inbound(id: &str) -> String {
    BANDWIDTH_INBOUND.replace("msg-abc123def456", id)
}

/// `(trace id, parent span id, flags)` of a valid `traceparent`, or a panic.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert!(
        traceparent
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_hexdigit())
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The spooled event `event_id` of `queue`.
fn spooled(edge: &Edge, queue: &str, event_id: &str) -> Value {
    edge.spooled(queue)
        .into_iter()
        .find(|e| e["eventId"] == event_id)
        .unwrap_or_else(|| panic!("{event_id} not in the {queue} spool"))
}

async fn post_with(edge: &Edge, id: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    edge.post(
        "/bandwidth/15551234567",
        "application/json",
        inbound(id),
        headers,
    )
    .await
}

fn event_id(r: &reqwest::Response) -> String {
    r.headers()["x-ingest-event-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_carriers_traceparent_reaches_the_spool_and_every_log_line_of_the_request() {
    let edge = Edge::dev().await;
    let r = post_with(
        &edge,
        "msg-trace-1",
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("x-request-id", "req-trace-1"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-trace-1");
    let id = event_id(&r);
    let line = spooled(&edge, "inbound", &id);
    let (trace, parent, flags) = fields(line["traceparent"].as_str().expect("traceparent"));
    assert_eq!(trace, TRACE_ID, "the carrier's trace is continued");
    assert_ne!(
        parent, PARENT_ID,
        "the parent is our span, not the carrier's"
    );
    assert_eq!(flags, "01");
    assert_eq!(line["tracestate"], "rojo=00f067aa0ba902b7");
    assert_eq!(line["inbound"]["carrierMessageId"], "msg-trace-1");

    // Both sides' lines of this request carry the trace id: the edge's with the request id.
    let log = edge.log();
    let accepted = log
        .lines()
        .find(|l| l.contains("webhook accepted") && l.contains("msg-trace-1"))
        .unwrap_or_else(|| panic!("no accepted line:\n{log}"));
    assert!(
        accepted.contains(&format!("trace_id={TRACE_ID}"))
            && accepted.contains("request_id=req-trace-1"),
        "{accepted}"
    );
    // The embedded core is called in place and leaves the per-event line to the edge: one
    // line per webhook, naming the event.
    assert!(accepted.contains(&format!("event_id={id}")), "{accepted}");
    assert!(
        !log.lines().any(|l| l.contains("event published")),
        "one line per webhook:\n{log}"
    );
    assert!(
        !log.contains("Hello, I need help"),
        "no message text in logs"
    );
}

#[tokio::test]
async fn a_missing_or_invalid_traceparent_starts_a_new_trace_and_is_never_refused() {
    let edge = Edge::dev().await;
    let mut traces = Vec::new();
    for (i, headers) in [
        vec![],
        vec![("traceparent", "garbage"), ("tracestate", "x=1")],
        vec![(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
        vec![("traceparent", &TRACEPARENT.to_uppercase()[..])],
        vec![(
            "traceparent",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    ]
    .into_iter()
    .enumerate()
    {
        let r = post_with(&edge, &format!("msg-new-trace-{i}"), &headers).await;
        assert_eq!(r.status(), 200, "{headers:?}");
        let line = spooled(&edge, "inbound", &event_id(&r));
        let (trace, _, flags) = fields(line["traceparent"].as_str().unwrap());
        assert_ne!(trace, TRACE_ID, "{headers:?}");
        assert_eq!(flags, "01", "a new trace is marked sampled");
        assert!(
            line.get("tracestate").is_none(),
            "no state without a parent"
        );
        traces.push(trace);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 5, "each call its own trace");
}

#[tokio::test]
async fn x_request_id_is_echoed_or_generated_on_every_status() {
    let edge = Edge::dev().await;
    let generated = |r: &reqwest::Response| {
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        id
    };
    // 200, given and generated.
    let r = post_with(&edge, "msg-rid-1", &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let a = generated(&post_with(&edge, "msg-rid-2", &[]).await);
    let b = generated(&post_with(&edge, "msg-rid-3", &[]).await);
    assert_ne!(a, b);
    // An unsafe id is replaced, never echoed.
    let r = post_with(&edge, "msg-rid-4", &[("x-request-id", "evil\" injected=1")]).await;
    assert_eq!(r.status(), 200);
    generated(&r);
    // 4xx from the handler, from the router (404, 405), and the probes.
    let bad = edge
        .post(
            "/bandwidth/15551234567",
            "application/json",
            "{not json",
            &[("x-request-id", "bad-1")],
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["x-request-id"], "bad-1");
    let bad = edge
        .post(
            "/bandwidth/15551234567",
            "application/json",
            "{not json",
            &[],
        )
        .await;
    assert_eq!(bad.status(), 400);
    generated(&bad);
    let missing = edge
        .request(
            reqwest::Method::GET,
            "/nowhere",
            None,
            &[("x-request-id", "nf-1")],
            "",
        )
        .await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-request-id"], "nf-1");
    let not_allowed = edge
        .request(reqwest::Method::DELETE, "/twilio", None, &[], "")
        .await;
    assert_eq!(not_allowed.status(), 405);
    generated(&not_allowed);
    let live = edge
        .request(
            reqwest::Method::GET,
            "/livez",
            None,
            &[("x-request-id", "probe")],
            "",
        )
        .await;
    assert_eq!(live.headers()["x-request-id"], "probe");
    // The refusal is logged with the request id.
    let log = edge.log();
    assert!(
        log.lines()
            .any(|l| l.contains("webhook refused") && l.contains("request_id=bad-1")),
        "{log}"
    );
}

#[tokio::test]
async fn json_logs_carry_the_trace_id_on_the_request_lines() {
    let edge = Edge::start(&["--insecure-skip-verify", "--log-format", "json"], &[]).await;
    let r = post_with(
        &edge,
        "msg-json-log",
        &[("traceparent", TRACEPARENT), ("x-request-id", "json-1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = event_id(&r);
    let lines: Vec<Value> = edge
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let trace_of = |line: &Value| -> Vec<String> {
        line["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["trace_id"].as_str().map(str::to_owned))
            .collect()
    };
    let accepted = lines
        .iter()
        .find(|l| l["message"] == "webhook accepted")
        .expect("accepted line");
    assert_eq!(trace_of(accepted), [TRACE_ID], "{accepted}");
    assert_eq!(accepted["span"]["request_id"], "json-1", "{accepted}");
    assert_eq!(accepted["event_id"], id.as_str(), "{accepted}");
    assert!(
        !lines.iter().any(|l| l["message"] == "event published"),
        "one line per webhook (the embedded core leaves its line to the edge)"
    );
}

#[tokio::test]
async fn a_grpc_submitters_trace_context_is_honoured() {
    let edge = Edge::dev().await;
    let mut client = IngestServiceClient::connect(format!("http://{}", edge.grpc))
        .await
        .unwrap();
    let status = |id: &str| SubmitStatusRequest {
        status: Some(DeliveryStatus {
            carrier: Carrier::Twilio as i32,
            carrier_message_id: id.into(),
            raw_status: "delivered".into(),
            recipient: "+15551234567".into(),
            ..Default::default()
        }),
    };
    let mut request = tonic::Request::new(status("SM-grpc-trace"));
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
    let reply = client.submit_status(request).await.unwrap().into_inner();
    let traced_id = reply.event_id.clone();
    let line = spooled(&edge, "status", &reply.event_id);
    let (trace, parent, _) = fields(line["traceparent"].as_str().unwrap());
    assert_eq!(trace, TRACE_ID);
    assert_ne!(parent, PARENT_ID, "the core's span is the parent");
    assert_eq!(line["tracestate"], "congo=t61rcWkgMzE");

    // Without metadata the core starts a trace of its own.
    let reply = client
        .submit_status(tonic::Request::new(status("SM-grpc-fresh")))
        .await
        .unwrap()
        .into_inner();
    let line = spooled(&edge, "status", &reply.event_id);
    assert_ne!(fields(line["traceparent"].as_str().unwrap()).0, TRACE_ID);
    // The core's line for a network call is in its `rpc` span and names the event.
    assert!(
        edge.log().lines().any(|l| l
            .contains("rpc{method=\"SubmitStatus\" trace_id=4bf92f3577b34da6a3ce929d0e0e4736}")
            && l.contains("event published")
            && l.contains("carrier_message_id=SM-grpc-trace")
            && l.contains(&format!("event_id={traced_id}"))),
        "{}",
        edge.log()
    );
}

/// Core settings for SQS publishing to `queue` on `fake`.
fn sqs_env(fake: &FakeSqs, queue: &str) -> Vec<(&'static str, String)> {
    vec![
        ("INGEST_PUBLISHER", "sqs".into()),
        ("INGEST_INBOUND_QUEUE", queue.to_owned()),
        ("INGEST_STATUS_QUEUE", queue.to_owned()),
        ("INGEST_QUARANTINE_QUEUE", queue.to_owned()),
        ("INGEST_SQS_PUBLISH_TIMEOUT_MS", "500".into()),
        ("AWS_ENDPOINT_URL", format!("http://{}", fake.addr)),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
    ]
}

fn attribute(entry: &Value, name: &str) -> Option<String> {
    let a = &entry["MessageAttributes"][name];
    assert!(a.is_null() || a["DataType"] == "String", "{a}");
    a["StringValue"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_message_carries_the_trace_context_also_when_relayed_from_the_outbox() {
    let fake = FakeSqs::start(Default::default()).await;
    let queue = fake.queue_url("trace-in.fifo");
    let env = sqs_env(&fake, &queue);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let edge = Edge::start(&["--insecure-skip-verify"], &env).await;

    let r = post_with(
        &edge,
        "msg-sqs-trace",
        &[("traceparent", TRACEPARENT), ("tracestate", "rojo=1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let direct = fake.entry(&event_id(&r)).expect("on SQS");
    let (trace, parent, _) = fields(&attribute(&direct, "traceparent").expect("traceparent"));
    assert_eq!(trace, TRACE_ID);
    assert_ne!(parent, PARENT_ID);
    assert_eq!(attribute(&direct, "tracestate").as_deref(), Some("rojo=1"));
    assert_eq!(attribute(&direct, "carrier").as_deref(), Some("bandwidth"));

    // SQS down: the event waits in the outbox with its attributes and is relayed with them.
    fake.set_failing(true);
    let second = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = post_with(&edge, "msg-outbox-trace", &[("traceparent", second)]).await;
    assert_eq!(r.status(), 200, "kept in the outbox");
    let id = event_id(&r);
    assert!(fake.entry(&id).is_none());
    assert!(fake.calls_failed() > 0, "SQS was called and failed");
    fake.set_failing(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    let relayed = loop {
        if let Some(entry) = fake.entry(&id) {
            break entry;
        }
        assert!(Instant::now() < deadline, "never relayed:\n{}", edge.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (trace, _, _) = fields(&attribute(&relayed, "traceparent").expect("traceparent"));
    assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(attribute(&relayed, "tracestate"), None);
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    scope: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/gRPC receiver: the collector's trace service, keeping every span it is sent.
#[derive(Debug, Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                let scope_name = scope.scope.map(|s| s.name).unwrap_or_default();
                for span in scope.spans {
                    spans.push(Exported {
                        service: service.clone(),
                        scope: scope_name.clone(),
                        name: span.name,
                        trace_id: hex::encode(span.trace_id),
                        span_id: hex::encode(span.span_id),
                        parent_span_id: hex::encode(span.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Starts the receiver on a free port; its endpoint URL.
    async fn start(&self) -> String {
        self.start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the receiver on `addr`; its endpoint URL.
    async fn start_on(&self, addr: SocketAddr) -> String {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        url
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

/// Checks what the edge and core exported for one webhook with [`TRACEPARENT`] whose event
/// carries `published` as its `traceparent`; returns (edge span, core span).
fn check_chain(spans: &[Exported], published: &str) -> (Exported, Exported) {
    let ours: Vec<&Exported> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let edge = ours
        .iter()
        .find(|s| s.scope == "http-edge")
        .unwrap_or_else(|| panic!("no edge span: {spans:#?}"));
    assert_eq!(edge.name, "POST /bandwidth/{destination}");
    assert_eq!(
        edge.parent_span_id, PARENT_ID,
        "the carrier's span is the parent"
    );
    let core = ours
        .iter()
        .find(|s| s.scope == "ingest-core")
        .unwrap_or_else(|| panic!("no core span: {spans:#?}"));
    assert_eq!(core.name, "carrier.ingest.v1.IngestService/SubmitInbound");
    assert_eq!(
        core.parent_span_id, edge.span_id,
        "the edge's span is the parent"
    );
    let (trace, parent, _) = fields(published);
    assert_eq!(trace, TRACE_ID);
    assert_eq!(
        parent, core.span_id,
        "the message's parent is the core span"
    );
    ((*edge).clone(), (*core).clone())
}

/// An ingest-core process with its own data directory and environment; SIGTERM flushes it.
struct Core {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Core {
    fn start(env: &[(&str, &str)]) -> Core {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("core.log")).unwrap();
        let child = Command::new(ingest_core_binary())
            .args(["--grpc-listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ingest-core");
        let give_up = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < give_up, "ingest-core never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Core { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("core.log")).unwrap_or_default()
    }

    fn spool(&self) -> &Path {
        self.dir.path()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_core_export_one_trace_over_otlp() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let mut core = Core::start(&env);
    let mut edge = Edge::without_core_env(&format!("http://{}", core.addr), &[], &env).await;
    let r = post_with(&edge, "msg-otlp", &[("traceparent", TRACEPARENT)]).await;
    assert_eq!(r.status(), 200, "{}", edge.log());
    let id = event_id(&r);

    // Shutdown flushes what is buffered.
    assert!(edge.terminate().success(), "{}", edge.log());
    assert!(core.terminate().success(), "{}", core.log());
    let spool = std::fs::read_to_string(core.spool().join("data/inbound.jsonl")).unwrap();
    let line: Value = spool
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["eventId"] == id.as_str())
        .expect("spooled");
    let spans = receiver.spans();
    let (edge_span, core_span) = check_chain(&spans, line["traceparent"].as_str().unwrap());
    assert_eq!(edge_span.service, "http-edge");
    assert_eq!(core_span.service, "ingest-core");
    assert!(
        core.log().contains("exporting spans over OTLP/gRPC"),
        "{}",
        core.log()
    );
    // Probes make no spans.
    assert!(
        spans
            .iter()
            .all(|s| !s.name.contains("readyz") && !s.name.contains("livez"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_core_exports_its_spans_too_under_otel_service_name() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let mut edge = Edge::start(
        &["--insecure-skip-verify"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "sms-ingest"),
        ],
    )
    .await;
    let r = post_with(&edge, "msg-otlp-embedded", &[("traceparent", TRACEPARENT)]).await;
    assert_eq!(r.status(), 200);
    let id = event_id(&r);
    let line = spooled(&edge, "inbound", &id);
    assert!(edge.terminate().success(), "{}", edge.log());
    let (edge_span, core_span) =
        check_chain(&receiver.spans(), line["traceparent"].as_str().unwrap());
    assert_eq!(edge_span.service, "sms-ingest");
    assert_eq!(core_span.service, "sms-ingest");
}

#[tokio::test]
async fn an_unsupported_otlp_setting_is_a_configuration_error() {
    for (name, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
    ] {
        let mut env = vec![(name, value)];
        if name != "OTEL_EXPORTER_OTLP_ENDPOINT" {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"));
        }
        let out = Command::new(env!("CARGO_BIN_EXE_http-edge"))
            .arg("--dev")
            .env_clear()
            .envs(env)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{name}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(name), "{stderr}");
    }
}

/// The value of the counter `series` (name and labels) on the edge's metrics page at `admin`.
async fn counter(admin: &str, series: &str) -> f64 {
    scrape(admin)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_costs_no_webhook_and_shows_in_the_metrics_and_the_log() {
    // A collector that takes connections and never answers.
    let hole = BlackHole::start().await;
    let addr = hole.addr;
    let admin = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("http://{addr}");
    let mut edge = Edge::start(
        &["--insecure-skip-verify", "--admin-listen", &admin],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export every 200 ms, so the test sees a failed export within the 3 s timeout.
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    let failed = r#"ingest_trace_export_spans_total{outcome="failed"}"#;
    let exported = r#"ingest_trace_export_spans_total{outcome="exported"}"#;
    for i in 0..20 {
        let started = Instant::now();
        let r = post_with(&edge, &format!("msg-hung-otlp-{i}"), &[]).await;
        assert_eq!(r.status(), 200, "{}", edge.log());
        // A webhook held up by the export would wait out its 3 s timeout.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a hung collector slows no webhook: {:?}",
            started.elapsed()
        );
    }
    let give_up = Instant::now() + Duration::from_secs(15);
    while counter(&admin, failed).await == 0.0 {
        assert!(
            Instant::now() < give_up,
            "no failed export counted:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counter(&admin, exported).await, 0.0);
    assert!(
        edge.log().contains("BatchSpanProcessor.ExportError"),
        "the failed export is logged:\n{}",
        edge.log()
    );

    // The collector comes back on the same address: spans flow again, and the log says so.
    hole.close().await;
    let receiver = Receiver::default();
    receiver.start_on(addr).await;
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while receiver.spans().is_empty() || counter(&admin, exported).await == 0.0 {
        assert!(
            Instant::now() < give_up,
            "export never resumed:\n{}",
            edge.log()
        );
        let r = post_with(&edge, &format!("msg-back-otlp-{i}"), &[]).await;
        assert_eq!(r.status(), 200);
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        edge.log()
            .contains("trace export: the collector takes spans again"),
        "{}",
        edge.log()
    );
    assert!(edge.terminate().success(), "{}", edge.log());
}
