//! A consecutive-failures circuit breaker for one SQS queue: after a few failed calls in a row
//! new events stop waiting on SQS (they go to the outbox) until a call succeeds again.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// Whether SQS calls for one queue are currently worth waiting for.
#[derive(Debug)]
pub struct Breaker {
    queue: String,
    threshold: u32,
    consecutive: AtomicU32,
    open: AtomicBool,
    opened_at: Mutex<Option<Instant>>,
}

impl Breaker {
    /// A closed breaker for `queue` that opens after `threshold` consecutive failures.
    pub fn new(queue: &str, threshold: u32) -> Self {
        // The gauge exists (at 0) from the start, so dashboards and alerts see every queue.
        crate::metrics::CORE
            .sqs_circuit_open
            .get_or_create(&crate::metrics::queue_labels(queue))
            .set(0);
        Self {
            queue: queue.to_owned(),
            threshold: threshold.max(1),
            consecutive: AtomicU32::new(0),
            open: AtomicBool::new(false),
            opened_at: Mutex::new(None),
        }
    }

    /// Whether new events should skip SQS.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Records a failed call; returns true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold && !self.open.swap(true, Ordering::Relaxed) {
            *self.opened_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            crate::metrics::CORE
                .sqs_circuit_open
                .get_or_create(&crate::metrics::queue_labels(&self.queue))
                .set(1);
            tracing::warn!(
                queue = %self.queue,
                consecutive_failures = n,
                "sqs: outage started; new events go to the local outbox"
            );
            return true;
        }
        false
    }

    /// Records a successful call; returns how long the breaker had been open if this closed it.
    pub fn success(&self) -> Option<Duration> {
        self.consecutive.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::Relaxed) {
            crate::metrics::CORE
                .sqs_circuit_open
                .get_or_create(&crate::metrics::queue_labels(&self.queue))
                .set(0);
            let since = self
                .opened_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return Some(since.map_or(Duration::ZERO, |t| t.elapsed()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_success() {
        let b = Breaker::new("q", 3);
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.success().is_none(), "a success resets the count");
        assert!(!b.failure() && !b.failure());
        assert!(!b.is_open());
        assert!(b.failure(), "the third in a row opens it");
        assert!(b.is_open());
        assert!(!b.failure(), "opening is reported once");
        assert!(b.success().is_some());
        assert!(!b.is_open());
        assert!(b.success().is_none());
    }
}
