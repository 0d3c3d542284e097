//! Publishing of accepted events to a durable queue, behind one small trait.

mod spool;
mod sqs;

pub use spool::Spool;
pub use sqs::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, SqsPublisher, SqsSettings, SqsStats, is_fifo};

use async_trait::async_trait;

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

/// One event ready to publish: the queue body plus what a queue can carry beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundEvent {
    /// Deterministic event id (also the FIFO deduplication id).
    pub event_id: String,
    /// The `Envelope` in protobuf canonical JSON, one line, no trailing newline.
    pub body: String,
    /// Ordering group for FIFO queues: one conversation, or one message's status history.
    pub group_id: String,
    /// Carrier name, e.g. `twilio`.
    pub carrier: &'static str,
    /// Inbound or status.
    pub kind: EventKind,
    /// Normalized status name (`delivered`), empty for inbound messages.
    pub status: &'static str,
    /// `Envelope.schema_version`.
    pub schema_version: u32,
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
}

/// A durable queue.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `event` to `queue`, returning only once it is durable.
    async fn publish(&self, queue: &str, event: &OutboundEvent) -> Result<(), PublishError>;
    /// Checks that `queue` can be published to (used for readiness).
    async fn check(&self, queue: &str) -> Result<(), PublishError>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}
