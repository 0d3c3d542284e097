//! Store-and-forward in front of SQS: an event goes straight to SQS while SQS answers and the
//! queue's outbox is empty; otherwise (SQS failing, its circuit open, or older events still
//! waiting) it is stored durably in the local outbox and the caller is answered at once. One
//! relay per queue forwards the outbox to SQS in order, in `SendMessageBatch`es with the same
//! attributes and FIFO ids, and confirms only what SQS took.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures_util::future::join_all;

use super::{
    MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, OutboundEvent, PublishError, Publisher, SqsPublisher,
    outbox::{self, OutboxError, QueueLog, Record},
    sqs::{EntryResult, entry_for, is_fifo},
};

/// Records one relay round reads (and confirms) at most.
const ROUND: usize = 400;
/// Lanes a FIFO queue's round is spread over: a group always takes the same lane, and a lane
/// sends one call at a time, so each group keeps its order while groups go in parallel.
const FIFO_LANES: usize = 8;
/// Longest pause between relay attempts while SQS fails.
const MAX_RELAY_BACKOFF: Duration = Duration::from_secs(2);
/// How often idle relays refresh the outbox gauges and probe an open circuit.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Where and how much the outbox stores.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The outbox directory (`<data-dir>/outbox`).
    pub dir: PathBuf,
    /// Most bytes stored per queue; past it events are refused with UNAVAILABLE.
    pub max_bytes: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
}

/// The SQS publisher with a durable local outbox behind it.
pub struct StoreAndForward {
    sqs: Arc<SqsPublisher>,
    settings: ForwardSettings,
    logs: Mutex<HashMap<String, Arc<QueueLog>>>,
}

impl std::fmt::Debug for StoreAndForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAndForward")
            .field("sqs", &self.sqs)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StoreAndForward {
    /// Opens the outbox, checks every queue's stored records (refusing a corrupt outbox) and
    /// starts relaying what an earlier run left behind. Must run inside a Tokio runtime.
    pub fn open(sqs: SqsPublisher, settings: ForwardSettings) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(&settings.dir).map_err(|source| OutboxError::Io {
            path: settings.dir.clone(),
            source,
        })?;
        let this = Self {
            sqs: Arc::new(sqs),
            settings,
            logs: Mutex::new(HashMap::new()),
        };
        let queues = outbox::queues(&this.settings.dir).map_err(|source| OutboxError::Io {
            path: this.settings.dir.clone(),
            source,
        })?;
        for queue in queues {
            this.log(&queue)?;
        }
        Ok(this)
    }

    /// The SQS publisher underneath.
    pub fn sqs(&self) -> &SqsPublisher {
        &self.sqs
    }

    /// The outbox of `queue`, opened (and its relay started) on first use.
    fn log(&self, queue: &str) -> Result<Arc<QueueLog>, OutboxError> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = logs.get(queue) {
            return Ok(log.clone());
        }
        let log = Arc::new(QueueLog::open(
            &self.settings.dir,
            queue,
            self.settings.max_bytes,
            self.settings.segment_bytes,
        )?);
        tokio::spawn(relay(self.sqs.clone(), log.clone()));
        logs.insert(queue.to_owned(), log.clone());
        Ok(log)
    }

    fn log_or_unavailable(&self, queue: &str) -> Result<Arc<QueueLog>, PublishError> {
        self.log(queue).map_err(|e| {
            tracing::error!(error = %e, "outbox: cannot open");
            PublishError::Unavailable("outbox unusable".into())
        })
    }
}

#[async_trait]
impl Publisher for StoreAndForward {
    async fn publish(
        &self,
        queue: &str,
        event: &OutboundEvent,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), PublishError> {
        let log = self.log_or_unavailable(queue)?;
        // While older events wait in the outbox, newer ones queue behind them (FIFO order).
        if log.is_empty() && !self.sqs.breaker(queue).is_open() {
            match self.sqs.publish(queue, event, deadline).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::debug!(%error, "sqs publish failed; storing in the outbox");
                }
            }
        }
        let stored = log.append(event).await;
        if let Err(PublishError::Full { stored, max }) = &stored {
            tracing::warn!(
                queue = %queue_label(queue),
                stored,
                max,
                "outbox full: refusing events until SQS takes some"
            );
        }
        stored
    }

    /// Ready while the outbox can take events, whether or not SQS answers: an SQS outage must
    /// not take every core out of service (it shows as `ingest_sqs_circuit_open`).
    async fn check(&self, queue: &str) -> Result<(), PublishError> {
        let log = self.log_or_unavailable(queue)?;
        if log.has_room() {
            Ok(())
        } else {
            Err(PublishError::Unavailable("outbox full".into()))
        }
    }

    fn name(&self) -> &'static str {
        "sqs"
    }
}

fn queue_label(queue: &str) -> String {
    super::queue_name(queue)
}

/// Backoff between relay attempts: 100 ms doubling, capped, with jitter.
fn relay_backoff(attempt: u32) -> Duration {
    let full = Duration::from_millis(100)
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RELAY_BACKOFF);
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

/// Forwards one queue's outbox to SQS for as long as the process runs.
async fn relay(sqs: Arc<SqsPublisher>, log: Arc<QueueLog>) {
    let Some(mut reader) = log.take_reader() else {
        return;
    };
    let queue = log.queue().to_owned();
    let name = queue_label(&queue);
    let labels = log.labels();
    let breaker = sqs.breaker(&queue);
    let mut drained_since: Option<(Instant, u64)> = None;
    let mut probe_attempt = 0;
    loop {
        log.update_metrics();
        if log.is_empty() {
            if let Some((since, relayed)) = drained_since.take() {
                tracing::info!(
                    queue = %name,
                    relayed,
                    secs = since.elapsed().as_secs_f64(),
                    "outbox: drained; publishing straight to SQS again"
                );
            }
            if breaker.is_open() {
                // Nothing to relay, but the circuit is open: probe so it can close.
                probe_attempt += 1;
                tokio::time::sleep(relay_backoff(probe_attempt)).await;
                if sqs.check(&queue).await.is_ok() && breaker.success().is_some() {
                    tracing::info!(queue = %name, "sqs: answering again; outage over");
                }
                continue;
            }
            probe_attempt = 0;
            let _ = tokio::time::timeout(IDLE_TICK, log.shared.appended.notified()).await;
            continue;
        }
        let (back, read) = {
            let log = log.clone();
            match tokio::task::spawn_blocking(move || {
                let read = log.read(&mut reader, ROUND);
                (reader, read)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, queue = %name, "outbox: relay reader failed; relay stopped");
                    return;
                }
            }
        };
        reader = back;
        let batch = match read {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, queue = %name, "outbox: cannot read; relay stopped, records kept");
                return;
            }
        };
        if batch.records.is_empty() {
            // Reserved but not yet durable: wait for the writer.
            let _ = tokio::time::timeout(IDLE_TICK, log.shared.appended.notified()).await;
            continue;
        }
        let started = drained_since.get_or_insert((Instant::now(), 0));
        log.shared
            .oldest_ms
            .store(batch.records[0].at, std::sync::atomic::Ordering::Relaxed);
        log.update_metrics();
        if is_fifo(&queue) {
            let mut lanes: Vec<Vec<&Record>> = vec![Vec::new(); FIFO_LANES];
            for r in &batch.records {
                lanes[lane(&r.event.group_id)].push(r);
            }
            join_all(lanes.into_iter().filter(|l| !l.is_empty()).map(|lane| {
                let (sqs, log, queue) = (&sqs, &log, &queue);
                async move {
                    for chunk in split(queue, lane) {
                        deliver(sqs, log, queue, chunk).await;
                    }
                }
            }))
            .await;
        } else {
            let chunks = split(&queue, batch.records.iter());
            join_all(chunks.into_iter().map(|c| deliver(&sqs, &log, &queue, c))).await;
        }
        started.1 += batch.records.len() as u64;
        // Only now is everything up to the batch's end confirmed.
        let mut attempt = 0;
        while let Err(e) = log.confirm(&batch) {
            attempt += 1;
            tracing::error!(error = %e, queue = %name, "outbox: cannot write the ledger; retrying");
            tokio::time::sleep(relay_backoff(attempt)).await;
        }
        crate::metrics::CORE
            .outbox_relayed
            .get_or_create(&labels)
            .inc_by(batch.records.len() as u64);
    }
}

/// The FIFO lane of a message group.
fn lane(group_id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    group_id.hash(&mut h);
    (h.finish() % FIFO_LANES as u64) as usize
}

/// Splits records into `SendMessageBatch`-sized chunks, in order.
fn split<'a>(queue: &str, records: impl IntoIterator<Item = &'a Record>) -> Vec<Vec<&'a Record>> {
    let mut chunks: Vec<Vec<&Record>> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let size = entry_for(queue, &r.event).1;
        match chunks.last_mut() {
            Some(c) if c.len() < MAX_BATCH_ENTRIES && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                c.push(r);
            }
            _ => {
                bytes = size;
                chunks.push(vec![r]);
            }
        }
    }
    chunks
}

/// Sends one chunk until SQS has taken every entry (or refused one for good, which is kept in
/// `rejected.jsonl`), retrying with backoff and jitter.
async fn deliver(sqs: &SqsPublisher, log: &QueueLog, queue: &str, chunk: Vec<&Record>) {
    let mut pending = chunk;
    let mut attempt = 0;
    loop {
        let events: Vec<&OutboundEvent> = pending.iter().map(|r| &r.event).collect();
        let results = sqs.send_once(queue, &events).await;
        let mut again = Vec::new();
        let mut why = None;
        for (record, result) in pending.into_iter().zip(results) {
            match result {
                EntryResult::Sent => {}
                EntryResult::Retry(what) => {
                    why = Some(what);
                    again.push(record);
                }
                EntryResult::Refused(what) => {
                    // The whole call was refused (missing queue, no permission): an operator
                    // must fix it, and the records wait for that.
                    why = Some(what);
                    again.push(record);
                }
                EntryResult::Fail(what) => {
                    tracing::error!(
                        queue = %queue_label(queue),
                        event_id = %record.event.event_id,
                        reason = %what,
                        "outbox: SQS refused a record for good; kept in rejected.jsonl"
                    );
                    let mut tries = 0;
                    while let Err(e) = log.reject(record, &what) {
                        tries += 1;
                        tracing::error!(error = %e, "outbox: cannot keep a rejected record; retrying");
                        tokio::time::sleep(relay_backoff(tries)).await;
                    }
                }
            }
        }
        if again.is_empty() {
            return;
        }
        crate::metrics::CORE
            .outbox_relay_failures
            .get_or_create(&log.labels())
            .inc();
        attempt += 1;
        if attempt == 1 || attempt % 20 == 0 {
            tracing::warn!(
                queue = %queue_label(queue),
                entries = again.len(),
                attempt,
                reason = why.as_deref().unwrap_or(""),
                "outbox: relay call failed; retrying"
            );
        }
        tokio::time::sleep(relay_backoff(attempt)).await;
        pending = again;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_sqs_limits_and_groups_keep_their_lane() {
        let record = |i: usize, size: usize| Record {
            at: 0,
            event: OutboundEvent {
                event_id: i.to_string(),
                body: "x".repeat(size),
                group_id: format!("g{}", i % 3),
                attributes: Vec::new(),
            },
        };
        let records: Vec<Record> = (0..25).map(|i| record(i, 10)).collect();
        let chunks = split("q", &records);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        let order: Vec<&str> = chunks
            .iter()
            .flatten()
            .map(|r| r.event.event_id.as_str())
            .collect();
        assert_eq!(order, (0..25).map(|i| i.to_string()).collect::<Vec<_>>());
        let big: Vec<Record> = (0..3).map(|i| record(i, MAX_BATCH_BYTES / 2 + 1)).collect();
        assert_eq!(split("q", &big).len(), 3, "the size limit splits too");
        assert_eq!(lane("g1"), lane("g1"));
        assert!(lane("g2") < FIFO_LANES);
    }

    #[test]
    fn relay_backoff_is_capped_with_jitter() {
        for attempt in 1..30 {
            let d = relay_backoff(attempt);
            assert!(d <= MAX_RELAY_BACKOFF, "{attempt}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{attempt}: {d:?}");
        }
    }
}
