//! The production publisher: Amazon SQS, with concurrent publishes gathered into
//! `SendMessageBatch` calls.
//!
//! Each queue has a batcher task. A caller hands it one entry and waits for that entry's own
//! result. The batcher fills a batch (at most 10 entries and 256 KiB) until it is full or the
//! linger since its first entry is over, then sends it on a task of its own, with up to
//! `max_in_flight_batches` calls in flight per queue. While every call slot is busy, entries keep
//! queueing, so under load batches leave full. Entries that fail retryably (throttling, server
//! faults, lost connections) go back to the batcher after a backoff with jitter, until the
//! entry's deadline; permanent failures (missing queue, invalid entry) return at once.
//!
//! FIFO queues (URL ending in `.fifo`): `MessageDeduplicationId` is the event id, so SQS drops a
//! republished event within its 5-minute window; `MessageGroupId` is the event's group id: one
//! conversation (carrier, sender, first recipient) for inbound messages, one carrier message for
//! statuses, so a message's status history is consumed in order while unrelated conversations are
//! consumed in parallel. SQS orders a group by arrival: a carrier's webhooks for one message
//! come one after another (each answered only once durable), so they stay in order; events
//! submitted at the same moment have no order between them to keep.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_sqs::{
    Client,
    config::{StalledStreamProtectionConfig, retry::RetryConfig, timeout::TimeoutConfig},
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry},
};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::Instant,
};

use super::{OutboundEvent, PublishError, Publisher, breaker::Breaker};
use crate::metrics;

/// Most entries SQS takes in one `SendMessageBatch`.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Most bytes (bodies plus attributes) SQS takes in one `SendMessageBatch`.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long before its caller's deadline a publish gives up on SQS, leaving the caller time to
/// store the event in the outbox (an fsync) and for the answer to reach it.
const CALLER_RESERVE: Duration = Duration::from_millis(250);
/// The shortest time an event is given to reach SQS, whatever its caller's deadline.
const MIN_PUBLISH_WAIT: Duration = Duration::from_millis(100);
/// First retry delay; each retry doubles it, up to [`MAX_BACKOFF`], with jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Error codes of whole calls or batch entries that are worth retrying.
const RETRYABLE_CODES: &[&str] = &[
    "RequestThrottled",
    "ThrottlingException",
    "Throttling",
    "KmsThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
];

/// How the SQS publisher batches, times out and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqsSettings {
    /// How long a batch waits for more entries after its first one.
    pub linger: Duration,
    /// Most `SendMessageBatch` calls in flight per queue.
    pub max_in_flight_batches: usize,
    /// How long one event may take to reach SQS, retries included.
    pub publish_timeout: Duration,
    /// Timeout of one HTTP call to SQS.
    pub call_timeout: Duration,
    /// Consecutive failed calls to a queue after which its circuit opens (events stop waiting
    /// on SQS and pending retries give up at once).
    pub breaker_failures: u32,
}

impl Default for SqsSettings {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_in_flight_batches: 64,
            publish_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(2),
            breaker_failures: 3,
        }
    }
}

/// Counters of what the publisher did, for tests, benchmarks and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqsStats {
    /// `SendMessageBatch` calls made (each attempt counts).
    pub batch_calls: u64,
    /// Entries SQS confirmed.
    pub messages_sent: u64,
    /// Entries sent again after a retryable failure.
    pub retries: u64,
    /// Entries given up on (their callers got an error).
    pub failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batch_calls: AtomicU64,
    messages_sent: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

/// Publishes to SQS queues given by URL, batching concurrent publishes per queue.
pub struct SqsPublisher {
    client: Client,
    settings: SqsSettings,
    batchers: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsPublisher")
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One event waiting for its result.
struct Pending {
    entry: SendMessageBatchRequestEntry,
    size: usize,
    deadline: Instant,
    attempts: u32,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// What became of one entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    /// SQS stored it.
    Sent,
    /// It failed in a way worth retrying.
    Retry(String),
    /// SQS refused this entry for good (invalid entry).
    Fail(String),
    /// SQS refused the whole call for good (missing queue, no permission).
    Refused(String),
}

/// What one batcher needs, shared with its send tasks.
struct QueueCtx {
    queue: String,
    client: Client,
    settings: SqsSettings,
    counters: Arc<Counters>,
    breaker: Arc<Breaker>,
    /// Weak, so the batcher stops once the publisher (the only strong sender) is gone.
    requeue: mpsc::WeakUnboundedSender<Pending>,
}

impl SqsPublisher {
    /// A publisher using the AWS configuration `sdk` (region, credentials, `AWS_ENDPOINT_URL`).
    /// The SDK's own retries are turned off: this publisher retries per entry, within deadlines.
    pub fn new(sdk: &aws_config::SdkConfig, settings: SqsSettings) -> Self {
        let config = aws_sdk_sqs::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            // A stalled call is already bounded by the attempt timeout below; the SDK's own
            // throughput watch on every body costs a timer and a poll wrapper per call.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.call_timeout.min(Duration::from_secs(1)))
                    .operation_attempt_timeout(settings.call_timeout)
                    .operation_timeout(settings.call_timeout)
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            settings: SqsSettings {
                max_in_flight_batches: settings.max_in_flight_batches.max(1),
                ..settings
            },
            batchers: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    /// The circuit breaker of `queue`.
    pub fn breaker(&self, queue: &str) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up on every publish: no allocation unless the queue is new.
        if let Some(b) = breakers.get(queue) {
            return b.clone();
        }
        let b = Arc::new(Breaker::new(queue, self.settings.breaker_failures));
        breakers.insert(queue.to_owned(), b.clone());
        b
    }

    /// Sends `events` (at most [`MAX_BATCH_ENTRIES`], at most [`MAX_BATCH_BYTES`]) to `queue` in
    /// one `SendMessageBatch` call, with no retries, and says what became of each entry. The
    /// outbox relay uses it, so it keeps its own order and retries.
    pub async fn send_once(&self, queue: &str, events: &[&OutboundEvent]) -> Vec<EntryResult> {
        let entries: Vec<_> = events.iter().map(|e| entry_for(queue, e).0).collect();
        call_batch(
            &self.client,
            queue,
            &self.counters,
            &self.breaker(queue),
            entries,
        )
        .await
    }

    /// What the publisher has done so far.
    pub fn stats(&self) -> SqsStats {
        let c = &self.counters;
        SqsStats {
            batch_calls: c.batch_calls.load(Ordering::Relaxed),
            messages_sent: c.messages_sent.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    fn batcher(&self, queue: &str) -> mpsc::UnboundedSender<Pending> {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = batchers.get(queue)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(QueueCtx {
            queue: queue.to_owned(),
            client: self.client.clone(),
            settings: self.settings,
            counters: self.counters.clone(),
            breaker: self.breaker(queue),
            requeue: tx.downgrade(),
        });
        tokio::spawn(run_batcher(ctx, rx));
        batchers.insert(queue.to_owned(), tx.clone());
        tx
    }
}

/// The SQS entry for `event`; `Id` is set per call. Also returns the bytes it counts against
/// the batch size limit.
pub(crate) fn entry_for(
    queue: &str,
    event: &OutboundEvent,
) -> (SendMessageBatchRequestEntry, usize) {
    let mut attributes = HashMap::with_capacity(event.attributes.len());
    let mut size = event.body.len();
    for a in &event.attributes {
        let data_type = if a.number { "Number" } else { "String" };
        size += a.name.len() + data_type.len() + a.value.len();
        attributes.insert(
            a.name.clone().into_owned(),
            MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(a.value.clone())
                .build()
                .expect("data_type is set"),
        );
    }
    let mut builder = SendMessageBatchRequestEntry::builder()
        .id("0")
        .message_body(event.body.clone())
        .set_message_attributes(Some(attributes));
    if is_fifo(queue) {
        builder = builder
            .message_deduplication_id(event.event_id.clone())
            .message_group_id(event.group_id.clone());
    }
    (builder.build().expect("id and body are set"), size)
}

/// Whether `queue` is a FIFO queue (SQS requires FIFO queue names to end in `.fifo`).
pub fn is_fifo(queue: &str) -> bool {
    queue.ends_with(".fifo")
}

async fn run_batcher(ctx: Arc<QueueCtx>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(ctx.settings.max_in_flight_batches));
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = Batch::new(first);
        let linger = tokio::time::sleep(ctx.settings.linger);
        tokio::pin!(linger);
        while !batch.is_full() {
            let next = tokio::select! {
                biased;
                next = rx.recv() => next,
                () = &mut linger => break,
            };
            match next {
                Some(p) => {
                    carry = batch.add(p);
                    if carry.is_some() {
                        break;
                    }
                }
                None => break,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Entries that arrived while every slot was busy fill the batch before it leaves.
        while carry.is_none() && !batch.is_full() {
            match rx.try_recv() {
                Ok(p) => carry = batch.add(p),
                Err(_) => break,
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            send_batch(&ctx, batch.entries).await;
            drop(slot);
        });
    }
}

struct Batch {
    entries: Vec<Pending>,
    bytes: usize,
}

impl Batch {
    fn new(first: Pending) -> Self {
        Self {
            bytes: first.size,
            entries: vec![first],
        }
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= MAX_BATCH_ENTRIES
    }

    /// Whether `p` can join without breaking the size limit.
    fn fits(&self, p: &Pending) -> bool {
        self.bytes + p.size <= MAX_BATCH_BYTES
    }

    /// Adds `p` if it fits; otherwise returns it, to start the next batch.
    fn add(&mut self, p: Pending) -> Option<Pending> {
        if !self.fits(&p) {
            return Some(p);
        }
        self.bytes += p.size;
        self.entries.push(p);
        None
    }
}

async fn send_batch(ctx: &QueueCtx, batch: Vec<Pending>) {
    let now = Instant::now();
    let (batch, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.deadline > now);
    for p in expired {
        finish(
            ctx,
            p,
            Err("deadline passed before the entry could be sent".into()),
        );
    }
    if batch.is_empty() {
        return;
    }
    let entries = batch.iter().map(|p| p.entry.clone()).collect();
    let results = call_batch(
        &ctx.client,
        &ctx.queue,
        &ctx.counters,
        &ctx.breaker,
        entries,
    )
    .await;
    for (p, result) in batch.into_iter().zip(results) {
        match result {
            EntryResult::Sent => finish(ctx, p, Ok(())),
            EntryResult::Fail(what) | EntryResult::Refused(what) => finish(ctx, p, Err(what)),
            EntryResult::Retry(what) => retry_later(ctx, p, what),
        }
    }
}

/// One `SendMessageBatch` call for `entries` (their ids are set here), with the result of each
/// entry in order. Whole-call failures feed the queue's breaker; an answer closes it.
async fn call_batch(
    client: &Client,
    queue: &str,
    counters: &Counters,
    breaker: &Breaker,
    mut entries: Vec<SendMessageBatchRequestEntry>,
) -> Vec<EntryResult> {
    for (i, entry) in entries.iter_mut().enumerate() {
        entry.id = i.to_string();
    }
    let count = entries.len();
    counters.batch_calls.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let result = client
        .send_message_batch()
        .queue_url(queue)
        .set_entries(Some(entries))
        .send()
        .await;
    observe_call(queue, count, result.is_ok(), started.elapsed());

    let mut results: Vec<Option<EntryResult>> = (0..count).map(|_| None).collect();
    match result {
        Ok(output) => {
            if let Some(outage) = breaker.success() {
                tracing::info!(
                    queue,
                    outage_secs = outage.as_secs_f64(),
                    "sqs: answering again; outage over"
                );
            }
            for ok in output.successful() {
                if let Some(slot) = ok
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *slot = Some(EntryResult::Sent);
                }
            }
            for failed in output.failed() {
                let Some(slot) = failed
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                else {
                    continue;
                };
                let what = format!("SQS rejected the entry: {}", failed.code());
                *slot = Some(
                    if !failed.sender_fault() || RETRYABLE_CODES.contains(&failed.code()) {
                        EntryResult::Retry(what)
                    } else {
                        EntryResult::Fail(what)
                    },
                );
            }
        }
        Err(error) => {
            let retryable = is_retryable(&error);
            let what = format!("SendMessageBatch failed: {}", DisplayErrorContext(&error));
            // Only a failure of the service counts towards an outage; a permanent refusal
            // (missing queue, bad request) is an answer.
            if retryable {
                breaker.failure();
            }
            tracing::warn!(
                queue,
                entries = count,
                retryable,
                error = %what,
                "sqs: batch call failed"
            );
            for slot in &mut results {
                *slot = Some(if retryable {
                    EntryResult::Retry(what.clone())
                } else {
                    EntryResult::Refused(what.clone())
                });
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| EntryResult::Retry("entry missing from the reply".into())))
        .collect()
}

/// Records one `SendMessageBatch` call of `entries` entries that took `took`.
fn observe_call(queue: &str, entries: usize, ok: bool, took: Duration) {
    let labels = metrics::queue_labels(queue);
    metrics::CORE
        .sqs_call_seconds
        .get_or_create(&metrics::QueueCallLabels {
            queue: labels.queue.clone(),
            outcome: if ok { "ok" } else { "error" },
        })
        .observe(took.as_secs_f64());
    metrics::CORE
        .sqs_batch_entries
        .get_or_create(&labels)
        .observe(entries as f64);
}

/// Sends `p` back to its batcher after a backoff, or fails it if that would pass its deadline.
fn retry_later(ctx: &QueueCtx, mut p: Pending, what: String) {
    p.attempts += 1;
    let delay = backoff(p.attempts);
    if ctx.breaker.is_open() {
        // SQS is down: the caller stores the event in the outbox rather than wait it out.
        finish(ctx, p, Err(format!("circuit open: {what}")));
        return;
    }
    if Instant::now() + delay >= p.deadline {
        let attempts = p.attempts;
        finish(
            ctx,
            p,
            Err(format!("gave up after {attempts} attempts: {what}")),
        );
        return;
    }
    let Some(requeue) = ctx.requeue.upgrade() else {
        let _ = p.reply.send(Err(PublishError::Closed));
        return;
    };
    ctx.counters.retries.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Err(mpsc::error::SendError(p)) = requeue.send(p) {
            let _ = p.reply.send(Err(PublishError::Closed));
        }
    });
}

/// Exponential backoff with jitter: between half and all of `BASE * 2^(attempt-1)`, capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let full = BASE_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

fn finish(ctx: &QueueCtx, p: Pending, result: Result<(), String>) {
    let result = match result {
        Ok(()) => {
            ctx.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(what) => {
            ctx.counters.failures.fetch_add(1, Ordering::Relaxed);
            Err(PublishError::Unavailable(what))
        }
    };
    // The caller may have stopped waiting (its own timeout); nothing is left to tell it.
    let _ = p.reply.send(result);
}

/// Whether a failed call may succeed if made again.
fn is_retryable<E: ProvideErrorMetadata, R: std::fmt::Debug>(error: &SdkError<E, R>) -> bool {
    match error {
        SdkError::ConstructionFailure(_) => false,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => e
            .err()
            .code()
            .is_some_and(|code| RETRYABLE_CODES.contains(&code)),
        _ => true,
    }
}

#[async_trait]
impl Publisher for SqsPublisher {
    /// The entry's deadline is the publish timeout, or sooner when the caller's deadline
    /// leaves less: [`CALLER_RESERVE`] before it, so the caller can still store the event in
    /// the outbox and hear back, but never less than [`MIN_PUBLISH_WAIT`] from now.
    async fn publish(
        &self,
        queue: &str,
        event: &OutboundEvent,
        caller_deadline: Option<Instant>,
    ) -> Result<(), PublishError> {
        let (entry, size) = entry_for(queue, event);
        let (reply, result) = oneshot::channel();
        let now = Instant::now();
        let mut deadline = now + self.settings.publish_timeout;
        if let Some(caller) = caller_deadline {
            let by = caller.checked_sub(CALLER_RESERVE).unwrap_or(now);
            deadline = deadline.min(by.max(now + MIN_PUBLISH_WAIT));
        }
        let pending = Pending {
            entry,
            size,
            deadline,
            attempts: 0,
            reply,
        };
        self.batcher(queue)
            .send(pending)
            .map_err(|_| PublishError::Closed)?;
        // The caller's wait ends at the deadline, even while a call with the entry is still out:
        // an SQS that hangs (no answer, no error) would otherwise hold it until that call's own
        // timeout, past the deadline the edge gives the core. The caller then stores the event
        // in the outbox; should the call still succeed, the relay sends it a second time (same
        // event id, which a FIFO queue's deduplication drops).
        match tokio::time::timeout_at(deadline, result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::Closed),
            Err(_) => Err(PublishError::Unavailable(format!(
                "SQS did not answer within {} ms",
                (deadline - now).as_millis()
            ))),
        }
    }

    async fn check(&self, queue: &str) -> Result<(), PublishError> {
        let call = self
            .client
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::QueueArn)
            .send();
        match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Unavailable(format!(
                "GetQueueAttributes failed: {}",
                DisplayErrorContext(&e)
            ))),
            Err(_) => Err(PublishError::Unavailable(
                "GetQueueAttributes timed out".into(),
            )),
        }
    }

    fn name(&self) -> &'static str {
        "sqs"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Attribute;

    fn event(status: &'static str) -> OutboundEvent {
        let mut attributes = vec![
            Attribute::text("carrier", "twilio"),
            Attribute::text("kind", "status"),
        ];
        if !status.is_empty() {
            attributes.push(Attribute::text("status", status));
        }
        attributes.push(Attribute::number("schema_version", 1));
        OutboundEvent {
            event_id: "e1".into(),
            body: r#"{"eventId":"e1"}"#.into(),
            group_id: "g1".into(),
            attributes,
        }
    }

    #[test]
    fn entries_carry_attributes_and_fifo_ids() {
        let (entry, size) = entry_for("http://h/1/q.fifo", &event("delivered"));
        let attrs = entry.message_attributes.as_ref().unwrap();
        let value = |k: &str| attrs[k].string_value().unwrap().to_owned();
        assert_eq!(value("carrier"), "twilio");
        assert_eq!(value("kind"), "status");
        assert_eq!(value("status"), "delivered");
        assert_eq!(value("schema_version"), "1");
        assert_eq!(attrs["schema_version"].data_type(), "Number");
        assert_eq!(entry.message_deduplication_id.as_deref(), Some("e1"));
        assert_eq!(entry.message_group_id.as_deref(), Some("g1"));
        assert!(size > entry.message_body.len());

        let (entry, _) = entry_for("http://h/1/q", &event(""));
        assert!(!entry.message_attributes.unwrap().contains_key("status"));
        assert_eq!(entry.message_deduplication_id, None);
        assert_eq!(entry.message_group_id, None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 1..20 {
            let d = backoff(attempt);
            let full = BASE_BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(30) <= MAX_BACKOFF);
    }

    #[test]
    fn batches_respect_count_and_size_limits() {
        let pending = |size| Pending {
            entry: entry_for("q", &event("")).0,
            size,
            deadline: Instant::now(),
            attempts: 0,
            reply: oneshot::channel().0,
        };
        let mut b = Batch::new(pending(100));
        for _ in 1..MAX_BATCH_ENTRIES {
            assert!(b.add(pending(100)).is_none());
        }
        assert!(b.is_full());
        let mut b = Batch::new(pending(MAX_BATCH_BYTES - 10));
        assert!(b.add(pending(11)).is_some());
        assert!(b.add(pending(10)).is_none());
    }
}
