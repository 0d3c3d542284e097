//! Dedupe of carrier retries: a small claim / commit / release store.
//!
//! A caller claims an event id before publishing. The claim is exclusive: a concurrent claimer of
//! the same id waits for the holder's outcome. A committed claim answers later claims as
//! duplicates until it expires; a released claim (failed publish) lets the next claimer publish.

mod fallback;
mod memory;
mod redis;

pub use fallback::FallbackDedupe;
pub use memory::MemoryDedupe;
pub use redis::{RedisDedupe, RedisSettings};

use async_trait::async_trait;

/// Proof of holding a claim; only its holder may commit or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub String);

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the claim and must publish, then commit or release.
    Acquired(ClaimToken),
    /// The event was already durably published.
    Duplicate,
}

/// A failure of the dedupe store itself (never of the event).
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    /// The backing store could not be reached or answered an error.
    #[error("dedupe store unavailable: {0}")]
    Unavailable(String),
    /// Another caller held a live claim on the id for longer than this caller may wait; the
    /// outcome is unknown, so the submitter must retry.
    #[error("event is being published by another caller")]
    Contended,
}

/// A store of claimed and committed event ids.
#[async_trait]
pub trait DedupeStore: Send + Sync + 'static {
    /// Claims `key`, waiting while another caller holds a live claim on it.
    async fn claim(&self, key: &str) -> Result<Claim, DedupeError>;
    /// Marks `key` as durably published, so later claims are duplicates.
    async fn commit(&self, key: &str, token: &ClaimToken) -> Result<(), DedupeError>;
    /// Gives up a claim after a failed publish, so a retry can publish.
    async fn release(&self, key: &str, token: &ClaimToken) -> Result<(), DedupeError>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Whether the store runs degraded (e.g. Redis unreachable and dedupe held in this process
    /// only). Events are still taken; duplicates across replicas become possible.
    fn degraded(&self) -> bool {
        false
    }
}
