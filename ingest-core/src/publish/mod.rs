//! Publishing of accepted events to a durable queue, behind one small trait.

mod breaker;
mod forward;
mod journal;
pub mod outbox;
mod spool;
mod sqs;
mod wal;

pub use breaker::Breaker;
pub use forward::{ForwardSettings, StoreAndForward};
pub use spool::Spool;
pub use sqs::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, SqsPublisher, SqsSettings, SqsStats, is_fifo};

use std::borrow::Cow;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What kind of event a message carries; one queue per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An inbound message.
    Inbound,
    /// A delivery status.
    Status,
}

impl EventKind {
    /// The name used in message attributes and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Status => "status",
        }
    }
}

/// One message ready to publish: the queue body plus what a queue can carry beside it. It is
/// also the record the outbox stores, so a relayed message is the one a direct publish sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundEvent {
    /// Deterministic id (the FIFO deduplication id).
    #[serde(rename = "id")]
    pub event_id: String,
    /// The message body, one line, no trailing newline (events: the `Envelope` in protobuf
    /// canonical JSON).
    pub body: String,
    /// Ordering group for FIFO queues: one conversation, or one message's status history.
    #[serde(rename = "group")]
    pub group_id: String,
    /// Message attributes, in order (`carrier`, `kind`, `status`, `schema_version` for events).
    #[serde(rename = "attrs")]
    pub attributes: Vec<Attribute>,
}

/// One message attribute: a name and a string or number value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// Attribute name.
    pub name: Cow<'static, str>,
    /// Value, as text.
    pub value: String,
    /// Whether SQS should type it `Number` rather than `String`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub number: bool,
}

impl Attribute {
    /// A `String` attribute.
    pub fn text(name: &'static str, value: impl Into<String>) -> Self {
        Self {
            name: Cow::Borrowed(name),
            value: value.into(),
            number: false,
        }
    }

    /// A `Number` attribute.
    pub fn number(name: &'static str, value: impl ToString) -> Self {
        Self {
            name: Cow::Borrowed(name),
            value: value.to_string(),
            number: true,
        }
    }
}

impl OutboundEvent {
    /// The value of attribute `name`, if set.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }
}

/// A publish that did not become durable; the event must be retried.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Local storage failed.
    #[error("spool write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The queue service could not be reached or refused the message.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The publisher is shutting down.
    #[error("publisher closed")]
    Closed,
    /// The local outbox is full: nothing more can be stored until SQS takes some of it.
    #[error("outbox full ({stored} of {max} bytes)")]
    Full {
        /// Bytes stored.
        stored: u64,
        /// The configured bound.
        max: u64,
    },
}

/// A durable queue.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `event` to `queue`, returning only once it is durable. `deadline` is when the
    /// caller stops waiting (its gRPC deadline), if it has one: a publisher with a second way to
    /// keep the event (the outbox) turns to it in time for the answer to reach the caller.
    async fn publish(
        &self,
        queue: &str,
        event: &OutboundEvent,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), PublishError>;
    /// Checks that `queue` can be published to (used for readiness).
    async fn check(&self, queue: &str) -> Result<(), PublishError>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// The short name of a queue (a name, or the last segment of a queue URL), as used for spool and
/// outbox file names and metric labels.
pub fn queue_name(queue: &str) -> String {
    spool::file_stem(queue)
}
