//! A tiny SQS-compatible endpoint (JSON 1.0 protocol) for what moto cannot do: a fixed
//! latency for the benchmark, per-entry failures for the retry test, an outage on command
//! (every call answered HTTP 500 `InternalError`) for the store-and-forward tests, and a steady
//! answer under load (FIFO deduplication on request) for the failover test. It answers
//! `SendMessageBatch` and `GetQueueAttributes`, and records what it accepted.
//!
//! Shared by the `backends` tests and the `sqs_publish` bench (`#[path]` include).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

/// How the fake treats entries.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Behaviour {
    /// Delay before every answer.
    pub(crate) latency: Duration,
    /// Fail (retryably, as a server fault) the first attempt of every entry at an odd index.
    pub(crate) fail_odd_first_attempts: bool,
    /// Behave like a FIFO queue for entries with a `MessageDeduplicationId`: one whose id the
    /// queue took before is answered as sent and not kept again (SQS does this for 5 minutes;
    /// here for the fake's life). Off, every accepted entry counts, which is what tests that
    /// prove a publisher never sends twice need.
    pub(crate) fifo_dedupe: bool,
    /// Count accepted entries but do not keep them (`entry` then finds nothing). For the
    /// benchmarks, which run the fake on the machine they measure: keeping every entry grows its
    /// memory by kilobytes per event, and the page faults cost more CPU than the answers.
    pub(crate) forget_entries: bool,
}

#[derive(Debug, Default)]
struct Seen {
    /// Accepted entries per `eventId` of their body.
    accepted: HashMap<String, u32>,
    /// The last accepted entry per `eventId` (attributes, FIFO ids), as sent.
    entries: HashMap<String, Value>,
    /// Event ids whose entry failed once already.
    failed_once: HashMap<String, u32>,
    /// (queue URL, `MessageDeduplicationId`) of the entries kept, with `fifo_dedupe`.
    deduplication_ids: HashSet<(String, String)>,
}

#[derive(Debug)]
struct Fake {
    behaviour: Behaviour,
    batch_calls: AtomicU64,
    entries_failed: AtomicU64,
    calls_failed: AtomicU64,
    calls_hung: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    hanging: std::sync::atomic::AtomicBool,
    /// Calls answered after the latency, and the microseconds they waited in all.
    delayed: AtomicU64,
    delayed_us: AtomicU64,
    seen: Mutex<Seen>,
}

/// A running fake endpoint.
#[derive(Debug)]
pub(crate) struct FakeSqs {
    /// Where it listens (use as `AWS_ENDPOINT_URL`).
    pub(crate) addr: SocketAddr,
    fake: Arc<Fake>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSqs {
    /// Starts the endpoint on a free loopback port.
    pub(crate) async fn start(behaviour: Behaviour) -> Self {
        let fake = Arc::new(Fake {
            behaviour,
            batch_calls: AtomicU64::new(0),
            entries_failed: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            calls_hung: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            hanging: std::sync::atomic::AtomicBool::new(false),
            delayed: AtomicU64::new(0),
            delayed_us: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
        });
        let app = Router::new()
            .route("/", post(handle))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake SQS");
        let addr = listener.local_addr().expect("fake SQS addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake SQS serves");
        });
        Self { addr, fake, task }
    }

    /// A queue URL on this endpoint.
    pub(crate) fn queue_url(&self, name: &str) -> String {
        format!("http://{}/123456789012/{name}", self.addr)
    }

    /// `SendMessageBatch` calls answered so far.
    pub(crate) fn batch_calls(&self) -> u64 {
        self.fake.batch_calls.load(Ordering::Relaxed)
    }

    /// How long calls waited on average before their answer (from the handler's start), if the
    /// fake has a latency and answered any.
    #[allow(dead_code)]
    pub(crate) fn mean_latency(&self) -> Option<Duration> {
        let calls = self.fake.delayed.load(Ordering::Relaxed);
        (calls > 0)
            .then(|| Duration::from_micros(self.fake.delayed_us.load(Ordering::Relaxed) / calls))
    }

    /// Entries failed on purpose so far.
    pub(crate) fn entries_failed(&self) -> u64 {
        self.fake.entries_failed.load(Ordering::Relaxed)
    }

    /// Starts (true) or ends (false) an outage: while it lasts every call fails with HTTP 500.
    #[allow(dead_code)]
    pub(crate) fn set_failing(&self, failing: bool) {
        self.fake.failing.store(failing, Ordering::Relaxed);
    }

    /// Starts (true) or ends (false) a hang: while it lasts every call that arrives is held
    /// open and never answered (the caller's timeout ends it), as an endpoint behind a
    /// black-holed network or a stalled load balancer would do.
    #[allow(dead_code)]
    pub(crate) fn set_hanging(&self, hanging: bool) {
        self.fake.hanging.store(hanging, Ordering::Relaxed);
    }

    /// Calls answered with HTTP 500 during outages so far.
    #[allow(dead_code)]
    pub(crate) fn calls_failed(&self) -> u64 {
        self.fake.calls_failed.load(Ordering::Relaxed)
    }

    /// Calls held without an answer during hangs so far.
    #[allow(dead_code)]
    pub(crate) fn calls_hung(&self) -> u64 {
        self.fake.calls_hung.load(Ordering::Relaxed)
    }

    /// The last accepted entry for `event_id`, as sent (attributes, FIFO ids).
    #[allow(dead_code)]
    pub(crate) fn entry(&self, event_id: &str) -> Option<Value> {
        self.fake
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .get(event_id)
            .cloned()
    }

    /// How many times each event id was accepted.
    pub(crate) fn accepted(&self) -> HashMap<String, u32> {
        self.fake
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accepted
            .clone()
    }
}

impl Drop for FakeSqs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = std::time::Instant::now();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
        return reply(StatusCode::BAD_REQUEST, &error("InvalidParameterValue"));
    };
    if !fake.behaviour.latency.is_zero() {
        wait_until(arrived, fake.behaviour.latency).await;
        fake.delayed.fetch_add(1, Ordering::Relaxed);
        fake.delayed_us
            .fetch_add(arrived.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    if fake.hanging.load(Ordering::Relaxed) {
        fake.calls_hung.fetch_add(1, Ordering::Relaxed);
        return std::future::pending().await;
    }
    if fake.failing.load(Ordering::Relaxed) {
        fake.calls_failed.fetch_add(1, Ordering::Relaxed);
        return reply(StatusCode::INTERNAL_SERVER_ERROR, &error("InternalError"));
    }
    match target {
        "AmazonSQS.SendMessageBatch" => {
            fake.batch_calls.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, &send_message_batch(&fake, &mut request))
        }
        "AmazonSQS.GetQueueAttributes" => reply(
            StatusCode::OK,
            &json!({"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:123456789012:fake"}}),
        ),
        _ => reply(StatusCode::BAD_REQUEST, &error("UnsupportedOperation")),
    }
}

/// The last part of a latency, slept on a blocking thread rather than on tokio's timer.
const FINE_WAIT: Duration = Duration::from_millis(3);

/// Waits until `latency` after `arrived`, to within a fraction of a millisecond. tokio's timer
/// ticks in whole milliseconds and fires late on a busy runtime: in the P2 bench a 20 ms sleep
/// took 21.8 ms on average, so the stand-in answered later than the latency it stands for. The
/// last few milliseconds are therefore slept with the operating system's timer.
async fn wait_until(arrived: std::time::Instant, latency: Duration) {
    let coarse = latency.saturating_sub(FINE_WAIT);
    if !coarse.is_zero() {
        tokio::time::sleep(coarse).await;
    }
    let deadline = arrived + latency;
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(left);
        }
    })
    .await;
}

/// The ids the fake keys entries by, read from a message body without building its tree.
#[derive(serde::Deserialize)]
struct BodyIds<'a> {
    #[serde(rename = "eventId", borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "recordId", borrow)]
    record_id: Option<std::borrow::Cow<'a, str>>,
}

/// Answers one `SendMessageBatch`. The entries are moved out of `request` into the record of
/// what was accepted (no copies: the P2 bench runs this fake on the machine it measures).
fn send_message_batch(fake: &Fake, request: &mut Value) -> Value {
    let entries = match request["Entries"].take() {
        Value::Array(entries) => entries,
        _ => Vec::new(),
    };
    let queue = request["QueueUrl"].as_str().unwrap_or_default();
    let mut successful = Vec::with_capacity(entries.len());
    let mut failed = Vec::new();
    let mut seen = fake.seen.lock().unwrap_or_else(|p| p.into_inner());
    for (index, entry) in entries.into_iter().enumerate() {
        let id = entry["Id"].as_str().unwrap_or_default().to_owned();
        let body = entry["MessageBody"].as_str().unwrap_or_default();
        let event_id = serde_json::from_str::<BodyIds<'_>>(body)
            .ok()
            .and_then(|b| b.event_id.or(b.record_id))
            .map(std::borrow::Cow::into_owned)
            .unwrap_or_default();
        if body.contains("poison") {
            failed.push(
                json!({"Id": id, "SenderFault": true, "Code": "InvalidParameterValue",
                "Message": "rejected"}),
            );
            fake.entries_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if fake.behaviour.fail_odd_first_attempts
            && index % 2 == 1
            && !seen.failed_once.contains_key(&event_id)
        {
            seen.failed_once.insert(event_id, 1);
            failed.push(
                json!({"Id": id, "SenderFault": false, "Code": "InternalError",
                "Message": "try again"}),
            );
            fake.entries_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // A FIFO queue answers a repeated deduplication id as sent, and keeps nothing new.
        let repeated = fake.behaviour.fifo_dedupe
            && entry["MessageDeduplicationId"]
                .as_str()
                .is_some_and(|dedup| {
                    !seen
                        .deduplication_ids
                        .insert((queue.to_owned(), dedup.to_owned()))
                });
        successful.push(json!({"Id": id, "MessageId": format!("m-{index}"),
            "MD5OfMessageBody": "00000000000000000000000000000000"}));
        if !repeated {
            *seen.accepted.entry(event_id.clone()).or_default() += 1;
            if !fake.behaviour.forget_entries {
                seen.entries.insert(event_id, entry);
            }
        }
    }
    json!({"Successful": successful, "Failed": failed})
}

fn error(code: &str) -> Value {
    json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": code})
}

fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
        body.to_string(),
    )
        .into_response()
}
