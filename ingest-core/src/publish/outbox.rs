//! The durable local outbox behind the SQS publisher: per queue, a directory of append-only
//! segment files written by the group-commit writer, read in order by one relay, and a ledger
//! that records how far SQS has confirmed. A segment is deleted only once the ledger has moved
//! past it, so a crash at any point loses nothing: a restart resumes from the ledger and sends
//! again what SQS may not have confirmed (at least once; FIFO queues drop the repeat by id).
//!
//! Layout under `<data-dir>/outbox/<queue name>/`: `queue` (the full queue URL, so a restart
//! relays to where the records were meant to go), `ledger` (`<segment> <offset>`), segments
//! `00000000000000000001.log` …, each a JSON line per record, and `rejected.jsonl` for records
//! SQS refused for good (kept, never dropped).

use std::{
    fs::{self, File},
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    OutboundEvent, PublishError,
    journal::{GroupWriter, Journal, open_repaired, sync_parent},
};

/// Why an outbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Reading or writing it failed.
    #[error("outbox {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Its files do not hold what the outbox wrote: refuse to start rather than lose records.
    #[error(
        "outbox {path} is corrupt: {what}. Nothing was changed; move the directory aside (keep it: \
         it holds unsent events) and inspect it with `ingest-core outbox`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One stored record: the message and when it was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch when it was stored.
    pub at: u64,
    /// The message, exactly as a direct publish would send it.
    pub event: OutboundEvent,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A position in a queue's log: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// Segment number (file name).
    pub segment: u64,
    /// Bytes into the segment.
    pub offset: u64,
}

/// What a queue's outbox holds, for metrics, readiness and the operator's CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueState {
    /// Short queue name (directory name).
    pub name: String,
    /// Full queue URL the records go to.
    pub queue: String,
    /// Records not yet confirmed by SQS.
    pub events: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// When the oldest was stored (ms since the epoch), if any.
    pub oldest_ms: Option<u64>,
    /// Records SQS refused for good, kept in `rejected.jsonl`.
    pub rejected: u64,
}

/// Counters shared by a queue's writer thread, its relay and its publishers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Up to where the log is durable; the reader never reads past it.
    committed: Mutex<Position>,
    /// Bytes stored and not yet confirmed, counting reservations of appends under way.
    pub(crate) bytes: AtomicU64,
    /// Records durable and not yet confirmed.
    pub(crate) events: AtomicU64,
    /// When the oldest unconfirmed record was stored (ms), 0 when unknown or empty.
    pub(crate) oldest_ms: AtomicU64,
    /// Woken after every durable append.
    pub(crate) appended: Notify,
}

impl Shared {
    fn committed(&self) -> Position {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outbox of one queue.
#[derive(Debug)]
pub struct QueueLog {
    queue: String,
    name: String,
    dir: PathBuf,
    max_bytes: u64,
    writer: GroupWriter,
    pub(crate) shared: Arc<Shared>,
    reader: Mutex<Option<Reader>>,
}

/// Segment file name.
fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// The segment numbers in `dir`, ascending.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn read_ledger(dir: &Path) -> Result<Option<Position>, OutboxError> {
    let path = dir.join("ledger");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset)), None) => Ok(Some(Position { segment, offset })),
        _ => Err(OutboxError::Corrupt {
            path,
            what: "the ledger is not `<segment> <offset>`".into(),
        }),
    }
}

/// Replaces the ledger atomically (write, fsync, rename, fsync the directory).
fn write_ledger(dir: &Path, at: Position) -> io::Result<()> {
    let tmp = dir.join("ledger.tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{} {}", at.segment, at.offset)?;
    file.sync_all()?;
    let path = dir.join("ledger");
    fs::rename(&tmp, &path)?;
    sync_parent(&path)
}

/// What a scan of the unconfirmed records found.
struct Scan {
    events: u64,
    bytes: u64,
    oldest_ms: Option<u64>,
}

/// Checks every record from `from` on, repairing only a partial last line of the last segment.
fn scan(dir: &Path, from: Position, repair: bool) -> Result<Scan, OutboxError> {
    let all = segments(dir).map_err(io_err(dir))?;
    let live: Vec<u64> = all.iter().copied().filter(|s| *s >= from.segment).collect();
    if !live.is_empty() && live[0] != from.segment && from.offset > 0 {
        return Err(OutboxError::Corrupt {
            path: segment_path(dir, from.segment),
            what: "the segment the ledger points into is missing".into(),
        });
    }
    let mut scan = Scan {
        events: 0,
        bytes: 0,
        oldest_ms: None,
    };
    for (i, &segment) in live.iter().enumerate() {
        let path = segment_path(dir, segment);
        let last = i + 1 == live.len();
        let len = if last && repair {
            open_repaired(&path).map_err(io_err(&path))?.1
        } else {
            fs::metadata(&path).map_err(io_err(&path))?.len()
        };
        let start = if segment == from.segment {
            from.offset
        } else {
            0
        };
        if start > len {
            return Err(OutboxError::Corrupt {
                path,
                what: format!("the ledger offset {start} is past the end ({len} bytes)"),
            });
        }
        let mut file = File::open(&path).map_err(io_err(&path))?;
        file.seek(SeekFrom::Start(start)).map_err(io_err(&path))?;
        let mut reader = BufReader::new(file.take(len - start));
        let mut line = Vec::new();
        let mut offset = start;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                return Err(OutboxError::Corrupt {
                    path,
                    what: format!("a partial record at byte {offset}"),
                });
            }
            let record: Record =
                serde_json::from_slice(&line).map_err(|e| OutboxError::Corrupt {
                    path: path.clone(),
                    what: format!("an unreadable record at byte {offset}: {e}"),
                })?;
            scan.oldest_ms.get_or_insert(record.at);
            scan.events += 1;
            scan.bytes += n as u64;
            offset += n as u64;
        }
    }
    Ok(scan)
}

impl QueueLog {
    /// Opens (or creates) the outbox of `queue` under `root`, checking every unconfirmed record.
    pub fn open(
        root: &Path,
        queue: &str,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Self, OutboxError> {
        let name = super::queue_name(queue);
        let dir = root.join(&name);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let url_path = dir.join("queue");
        match fs::read_to_string(&url_path) {
            Ok(recorded) if recorded.trim() != queue => {
                return Err(OutboxError::Corrupt {
                    path: url_path,
                    what: format!(
                        "it belongs to another queue with the same name ({})",
                        recorded.trim()
                    ),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut f = File::create(&url_path).map_err(io_err(&url_path))?;
                writeln!(f, "{queue}")
                    .and_then(|()| f.sync_all())
                    .and_then(|()| sync_parent(&url_path))
                    .map_err(io_err(&url_path))?;
            }
            Err(e) => return Err(io_err(&url_path)(e)),
        }
        let existing = segments(&dir).map_err(io_err(&dir))?;
        let ledger = read_ledger(&dir)?.unwrap_or(Position {
            segment: existing.first().copied().unwrap_or(1),
            offset: 0,
        });
        // Segments wholly before the ledger were confirmed; a crash may have kept them.
        for &old in existing.iter().filter(|s| **s < ledger.segment) {
            let path = segment_path(&dir, old);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let found = scan(&dir, ledger, true)?;
        let last = segments(&dir)
            .map_err(io_err(&dir))?
            .last()
            .copied()
            .unwrap_or(ledger.segment);
        let path = segment_path(&dir, last);
        let (file, len) = open_repaired(&path).map_err(io_err(&path))?;
        let shared = Arc::new(Shared {
            committed: Mutex::new(Position {
                segment: last,
                offset: len,
            }),
            bytes: AtomicU64::new(found.bytes),
            events: AtomicU64::new(found.events),
            oldest_ms: AtomicU64::new(found.oldest_ms.unwrap_or(0)),
            appended: Notify::new(),
        });
        let journal = SegmentJournal {
            dir: dir.clone(),
            segment: last,
            file,
            len,
            segment_bytes: segment_bytes.max(1),
            shared: shared.clone(),
        };
        let writer = GroupWriter::spawn(format!("outbox-{name}"), journal).map_err(io_err(&dir))?;
        if found.events > 0 {
            tracing::warn!(
                queue = %name,
                events = found.events,
                bytes = found.bytes,
                "outbox: unsent events found at start-up; relaying them"
            );
        }
        let log = Self {
            queue: queue.to_owned(),
            name,
            dir,
            max_bytes,
            writer,
            shared,
            reader: Mutex::new(Some(Reader {
                at: ledger,
                file: None,
            })),
        };
        // Every series of this queue exists from the start (at 0), for dashboards and alerts.
        let m = &crate::metrics::CORE;
        let labels = log.labels();
        drop(m.outbox_stored.get_or_create(&labels));
        drop(m.outbox_relayed.get_or_create(&labels));
        drop(m.outbox_relay_failures.get_or_create(&labels));
        drop(m.outbox_full.get_or_create(&labels));
        log.update_metrics();
        Ok(log)
    }

    /// The queue URL.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether every stored record has been confirmed by SQS.
    pub fn is_empty(&self) -> bool {
        self.shared.events.load(Ordering::Acquire) == 0
            && self.shared.bytes.load(Ordering::Acquire) == 0
    }

    /// Whether another record of `bytes` would fit.
    pub fn has_room(&self) -> bool {
        self.shared.bytes.load(Ordering::Relaxed) < self.max_bytes
    }

    /// Appends `event` durably; fails with [`PublishError::Full`] past the bound.
    pub async fn append(&self, event: &OutboundEvent) -> Result<(), PublishError> {
        // The stored form of a `Record`, borrowing the event instead of copying it.
        #[derive(Serialize)]
        struct RecordRef<'a> {
            at: u64,
            event: &'a OutboundEvent,
        }
        let mut line = serde_json::to_vec(&RecordRef {
            at: now_ms(),
            event,
        })
        .map_err(|e| PublishError::Io(io::Error::other(e)))?;
        line.push(b'\n');
        let len = line.len() as u64;
        let before = self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max_bytes {
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            crate::metrics::CORE
                .outbox_full
                .get_or_create(&self.labels())
                .inc();
            return Err(PublishError::Full {
                stored: before,
                max: self.max_bytes,
            });
        }
        let result = self.writer.append(line).await;
        if result.is_err() {
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
        } else {
            crate::metrics::CORE
                .outbox_stored
                .get_or_create(&self.labels())
                .inc();
        }
        result
    }

    pub(crate) fn labels(&self) -> crate::metrics::QueueLabels {
        crate::metrics::QueueLabels {
            queue: self.name.clone(),
        }
    }

    /// Sets the outbox gauges of this queue.
    pub fn update_metrics(&self) {
        let labels = self.labels();
        let m = &crate::metrics::CORE;
        let events = self.shared.events.load(Ordering::Relaxed);
        m.outbox_events.get_or_create(&labels).set(events as i64);
        m.outbox_bytes
            .get_or_create(&labels)
            .set(self.shared.bytes.load(Ordering::Relaxed) as i64);
        let oldest = self.shared.oldest_ms.load(Ordering::Relaxed);
        let age = if events == 0 || oldest == 0 {
            0.0
        } else {
            now_ms().saturating_sub(oldest) as f64 / 1000.0
        };
        m.outbox_oldest_age_seconds.get_or_create(&labels).set(age);
    }

    /// Takes the reader (the relay owns it while it runs).
    pub(crate) fn take_reader(&self) -> Option<Reader> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Reads up to `max` records after the reader's position, never past what is durable.
    pub(crate) fn read(&self, reader: &mut Reader, max: usize) -> io::Result<Batch> {
        reader.read(&self.dir, self.shared.committed(), max)
    }

    /// Records that SQS confirmed everything up to `batch.end`: the ledger moves there, wholly
    /// confirmed segments are deleted and the counters drop.
    pub(crate) fn confirm(&self, batch: &Batch) -> io::Result<()> {
        write_ledger(&self.dir, batch.end)?;
        for segment in segments(&self.dir)? {
            if segment >= batch.end.segment {
                break;
            }
            let path = segment_path(&self.dir, segment);
            fs::remove_file(&path)?;
        }
        self.shared
            .events
            .fetch_sub(batch.records.len() as u64, Ordering::AcqRel);
        self.shared.bytes.fetch_sub(batch.bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Keeps a record SQS refused for good in `rejected.jsonl`, with the reason.
    pub(crate) fn reject(&self, record: &Record, reason: &str) -> io::Result<()> {
        #[derive(Serialize)]
        struct Rejected<'a> {
            record: &'a Record,
            reason: &'a str,
            rejected_at: u64,
        }
        let path = self.dir.join("rejected.jsonl");
        let (mut file, _) = open_repaired(&path)?;
        let mut line = serde_json::to_vec(&Rejected {
            record,
            reason,
            rejected_at: now_ms(),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// Appends groups to the current segment, rolling to a new one past `segment_bytes`.
struct SegmentJournal {
    dir: PathBuf,
    segment: u64,
    file: File,
    len: u64,
    segment_bytes: u64,
    shared: Arc<Shared>,
}

impl Journal for SegmentJournal {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.len >= self.segment_bytes {
            let next = self.segment + 1;
            let (file, len) = open_repaired(&segment_path(&self.dir, next))?;
            self.segment = next;
            self.file = file;
            self.len = len;
        }
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            // Leave no partial record behind for the next group to append to.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes.len() as u64;
        let records = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        if self.shared.events.fetch_add(records, Ordering::AcqRel) == 0 {
            self.shared.oldest_ms.store(now_ms(), Ordering::Relaxed);
        }
        *self
            .shared
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Position {
            segment: self.segment,
            offset: self.len,
        };
        self.shared.appended.notify_one();
        Ok(())
    }
}

/// Records read from the log, and where the reader stands after them.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) records: Vec<Record>,
    pub(crate) bytes: u64,
    pub(crate) end: Position,
}

/// The relay's place in a queue's log.
#[derive(Debug)]
pub(crate) struct Reader {
    at: Position,
    file: Option<BufReader<File>>,
}

impl Reader {
    fn read(&mut self, dir: &Path, committed: Position, max: usize) -> io::Result<Batch> {
        let mut batch = Batch {
            records: Vec::new(),
            bytes: 0,
            end: self.at,
        };
        let mut line = Vec::new();
        while batch.records.len() < max {
            if self.at.segment > committed.segment {
                break;
            }
            let limit = if self.at.segment == committed.segment {
                committed.offset
            } else {
                u64::MAX
            };
            if self.file.is_none() {
                let mut f = File::open(segment_path(dir, self.at.segment))?;
                f.seek(SeekFrom::Start(self.at.offset))?;
                self.file = Some(BufReader::new(f));
            }
            let file = self.file.as_mut().expect("opened above");
            if self.at.offset >= limit {
                if self.at.segment == committed.segment {
                    break;
                }
                // A finished segment: go on with the next.
                self.file = None;
                self.at = Position {
                    segment: self.at.segment + 1,
                    offset: 0,
                };
                continue;
            }
            line.clear();
            let n = (&mut *file)
                .take(limit - self.at.offset)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                // End of an older segment (its length is below u64::MAX).
                self.file = None;
                self.at = Position {
                    segment: self.at.segment + 1,
                    offset: 0,
                };
                continue;
            }
            if line.last() != Some(&b'\n') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("partial record in segment {}", self.at.segment),
                ));
            }
            let record: Record = serde_json::from_slice(&line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.at.offset += n as u64;
            batch.bytes += n as u64;
            batch.records.push(record);
            batch.end = self.at;
        }
        // The buffer may hold bytes past what is durable (a group being written, or one whose
        // failed write is cut off and written anew): never consume those later.
        self.file = None;
        Ok(batch)
    }
}

/// The state of every queue's outbox under `root`, read from disk without changing anything
/// (safe while the core runs).
pub fn inspect(root: &Path) -> Result<Vec<QueueState>, OutboxError> {
    let mut states = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(states),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let queue = fs::read_to_string(dir.join("queue"))
            .map(|q| q.trim().to_owned())
            .unwrap_or_default();
        let existing = segments(&dir).map_err(io_err(&dir))?;
        let ledger = read_ledger(&dir)?.unwrap_or(Position {
            segment: existing.first().copied().unwrap_or(1),
            offset: 0,
        });
        let found = scan(&dir, ledger, false)?;
        let rejected = fs::read(dir.join("rejected.jsonl"))
            .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
            .unwrap_or(0);
        states.push(QueueState {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            queue,
            events: found.events,
            bytes: found.bytes,
            oldest_ms: found.oldest_ms,
            rejected,
        });
    }
    Ok(states)
}

/// The queue URLs that have an outbox directory under `root`.
pub fn queues(root: &Path) -> io::Result<Vec<String>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if let Ok(q) = fs::read_to_string(path.join("queue")) {
            found.push(q.trim().to_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// Opens `path` for appending like the spool does; used by tests that simulate a crash.
#[cfg(test)]
fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Attribute;

    fn event(id: &str) -> OutboundEvent {
        OutboundEvent {
            event_id: id.to_owned(),
            body: format!(r#"{{"eventId":"{id}"}}"#),
            group_id: "g".into(),
            attributes: vec![Attribute::text("carrier", "twilio")],
        }
    }

    const Q: &str = "http://127.0.0.1:1/123456789012/in.fifo";

    fn ids(batch: &Batch) -> Vec<String> {
        batch
            .records
            .iter()
            .map(|r| r.event.event_id.clone())
            .collect()
    }

    #[tokio::test]
    async fn records_survive_a_restart_until_confirmed_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), Q, 1 << 20, 200).unwrap();
        for i in 0..10 {
            log.append(&event(&i.to_string())).await.unwrap();
        }
        assert!(
            segments(&dir.path().join("in.fifo")).unwrap().len() > 2,
            "small segments roll"
        );
        let mut reader = log.take_reader().unwrap();
        let first = log.read(&mut reader, 4).unwrap();
        assert_eq!(ids(&first), ["0", "1", "2", "3"]);
        log.confirm(&first).unwrap();
        // Read but not confirmed: must come back after a restart.
        let unconfirmed = log.read(&mut reader, 3).unwrap();
        assert_eq!(ids(&unconfirmed), ["4", "5", "6"]);
        drop(log);

        let log = QueueLog::open(dir.path(), Q, 1 << 20, 200).unwrap();
        assert_eq!(log.shared.events.load(Ordering::Relaxed), 6);
        let mut reader = log.take_reader().unwrap();
        let rest = log.read(&mut reader, 100).unwrap();
        assert_eq!(ids(&rest), ["4", "5", "6", "7", "8", "9"]);
        log.confirm(&rest).unwrap();
        assert!(log.is_empty());
        assert_eq!(
            segments(&dir.path().join("in.fifo")).unwrap().len(),
            1,
            "confirmed segments are deleted"
        );
        let states = inspect(dir.path()).unwrap();
        assert_eq!(states[0].events, 0);
        assert_eq!(states[0].queue, Q);
    }

    #[tokio::test]
    async fn a_partial_last_record_is_cut_and_a_corrupt_one_refuses_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), Q, 1 << 20, 1 << 20).unwrap();
        log.append(&event("a")).await.unwrap();
        drop(log);
        let seg = segment_path(&dir.path().join("in.fifo"), 1);
        append_raw(&seg, b"{\"at\":1,\"ev");
        let log = QueueLog::open(dir.path(), Q, 1 << 20, 1 << 20).unwrap();
        assert_eq!(log.shared.events.load(Ordering::Relaxed), 1);
        log.append(&event("b")).await.unwrap();
        let mut reader = log.take_reader().unwrap();
        assert_eq!(ids(&log.read(&mut reader, 10).unwrap()), ["a", "b"]);
        drop(log);

        // A damaged record that is not the last line is corruption, not a crash.
        let text = fs::read_to_string(&seg).unwrap();
        fs::write(&seg, text.replacen("\"at\"", "\"at\"x", 1)).unwrap();
        let err = QueueLog::open(dir.path(), Q, 1 << 20, 1 << 20).unwrap_err();
        assert!(matches!(err, OutboxError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("move the directory aside"));
        assert_eq!(
            fs::read_to_string(&seg).unwrap(),
            text.replacen("\"at\"", "\"at\"x", 1),
            "nothing changed"
        );
    }

    #[tokio::test]
    async fn the_reader_never_uses_bytes_past_what_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), Q, 1 << 20, 1 << 20).unwrap();
        log.append(&event("a")).await.unwrap();
        let seg = segment_path(&dir.path().join("in.fifo"), 1);
        let durable = fs::metadata(&seg).unwrap().len();
        // A group being written (not yet synced) when the relay reads: not to be read...
        append_raw(&seg, b"{\"at\":1,\"event\":{\"id\":\"ghost\"");
        let mut reader = log.take_reader().unwrap();
        assert_eq!(ids(&log.read(&mut reader, 10).unwrap()), ["a"]);
        // ...and after its write failed and was cut off, the next group takes its place.
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(durable)
            .unwrap();
        log.append(&event("b")).await.unwrap();
        assert_eq!(ids(&log.read(&mut reader, 10).unwrap()), ["b"]);
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_and_frees_room_once_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), Q, 300, 1 << 20).unwrap();
        let mut stored = 0;
        loop {
            match log.append(&event(&stored.to_string())).await {
                Ok(()) => stored += 1,
                Err(PublishError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(stored >= 2);
        let mut reader = log.take_reader().unwrap();
        let all = log.read(&mut reader, 100).unwrap();
        assert_eq!(all.records.len(), stored);
        log.confirm(&all).unwrap();
        log.append(&event("again")).await.unwrap();
    }

    #[tokio::test]
    async fn a_queue_name_clash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        QueueLog::open(dir.path(), Q, 1 << 20, 1 << 20).unwrap();
        let other = "http://127.0.0.1:1/999999999999/in.fifo";
        assert!(QueueLog::open(dir.path(), other, 1 << 20, 1 << 20).is_err());
    }
}
