//! The group-commit writer shared by the spool and the outbox: one thread per file takes every
//! record that is waiting, appends them in one write, makes them durable once and then answers
//! all of them, so throughput does not collapse to one fsync per event. A group is whatever
//! arrived while the previous one was being made durable: the writer never waits for more (an
//! fsync of this disk takes ~0.25 ms; a 300 µs wait before each group made webhooks slower).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom},
    path::Path,
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};

use super::PublishError;

/// Most records written with one fsync.
const MAX_GROUP: usize = 4096;

type Reply = oneshot::Sender<Result<(), Arc<io::Error>>>;

/// Where a group of records goes: `append` returns only once the bytes are durable, and on error
/// leaves nothing of them behind.
pub(crate) trait Journal: Send + 'static {
    /// Appends `bytes` (whole records) durably.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// The handle of one writer thread.
#[derive(Debug, Clone)]
pub(crate) struct GroupWriter {
    tx: mpsc::UnboundedSender<(Vec<u8>, Reply)>,
}

impl GroupWriter {
    /// Starts a writer thread named `name` over `journal`.
    pub(crate) fn spawn<J: Journal>(name: String, journal: J) -> io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || write_loop(&name, journal, rx))?;
        Ok(Self { tx })
    }

    /// Whether the thread has stopped (it never does while a handle is alive, unless it panicked).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Appends one record and waits until it is durable.
    pub(crate) async fn append(&self, record: Vec<u8>) -> Result<(), PublishError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((record, reply))
            .map_err(|_| PublishError::Closed)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Io(io::Error::new(e.kind(), e.to_string()))),
            Err(_) => Err(PublishError::Closed),
        }
    }
}

fn write_loop<J: Journal>(
    name: &str,
    mut journal: J,
    mut rx: mpsc::UnboundedReceiver<(Vec<u8>, Reply)>,
) {
    // What the disk costs, per file: the time of each group's write and fsync (the floor of an
    // acknowledgement's latency), and the records made durable (per group: their ratio).
    let labels = crate::metrics::JournalLabels {
        journal: name.to_owned(),
    };
    let sync_seconds = crate::metrics::CORE
        .journal_sync_seconds
        .get_or_create(&labels)
        .clone();
    let durable = crate::metrics::CORE
        .journal_records
        .get_or_create(&labels)
        .clone();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    while let Some((record, reply)) = rx.blocking_recv() {
        buf.clear();
        buf.extend_from_slice(&record);
        replies.push(reply);
        while replies.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok((record, reply)) => {
                    buf.extend_from_slice(&record);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = journal.append(&buf).map_err(Arc::new);
        sync_seconds.observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            durable.inc_by(replies.len() as u64);
        }
        for reply in replies.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

/// Opens `path` for appending, first cutting off a partial last line left by a crash mid-write
/// (that record was never acknowledged, so its sender will retry it). Returns the file and its
/// length after the repair.
pub(crate) fn open_repaired(path: &Path) -> io::Result<(File, u64)> {
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let keep = cut_partial_line(&mut file, path)?;
    if created {
        sync_parent(path)?;
    }
    Ok((file, keep))
}

/// Cuts off a partial last line of `file` (at `path`, for the log) and returns the length kept.
pub(crate) fn cut_partial_line(file: &mut File, path: &Path) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut keep = len;
    if len > 0 {
        keep = end_of_last_line(file, len)?;
        if keep != len {
            tracing::warn!(path = %path.display(), cut = len - keep, "removing a partial last line");
            file.set_len(keep)?;
            file.sync_all()?;
        }
    }
    Ok(keep)
}

/// Makes the creation, removal or renaming of `path` durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn end_of_last_line(file: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(pos) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + pos as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::sample;

    /// A journal whose every append waits for the test to say how it ends.
    struct Gated {
        data: Arc<std::sync::Mutex<Vec<u8>>>,
        gate: std::sync::mpsc::Receiver<io::Result<()>>,
    }

    impl Journal for Gated {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let result = self.gate.recv().expect("test hung up");
            if result.is_ok() {
                self.data.lock().unwrap().extend_from_slice(bytes);
            }
            result
        }
    }

    #[tokio::test]
    async fn replies_wait_for_the_append_and_carry_its_error() {
        let data = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (open_gate, gate) = std::sync::mpsc::channel();
        let writer = GroupWriter::spawn(
            "t".into(),
            Gated {
                data: data.clone(),
                gate,
            },
        )
        .unwrap();
        let w = writer.clone();
        let mut first = tokio::spawn(async move { w.append(b"one\n".to_vec()).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(1), &mut first)
                .await
                .is_err(),
            "acknowledged before the append finished"
        );
        open_gate.send(Ok(())).unwrap();
        assert!(first.await.unwrap().is_ok());
        open_gate.send(Err(io::Error::other("disk gone"))).unwrap();
        assert!(writer.append(b"two\n".to_vec()).await.is_err());
        assert_eq!(*data.lock().unwrap(), b"one\n");
    }

    #[tokio::test]
    async fn each_group_commit_is_timed_and_its_durable_records_counted() {
        let data = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (open_gate, gate) = std::sync::mpsc::channel();
        let name = format!("test-journal-{}", std::process::id());
        let writer = GroupWriter::spawn(
            name.clone(),
            Gated {
                data: data.clone(),
                gate,
            },
        )
        .unwrap();
        open_gate.send(Ok(())).unwrap();
        writer.append(b"one\n".to_vec()).await.unwrap();
        open_gate.send(Ok(())).unwrap();
        writer.append(b"two\n".to_vec()).await.unwrap();
        open_gate.send(Err(io::Error::other("disk gone"))).unwrap();
        assert!(writer.append(b"three\n".to_vec()).await.is_err());
        let series = |metric: &str| sample(&format!("{metric}{{journal=\"{name}\"}}"));
        assert_eq!(
            series("ingest_journal_sync_duration_seconds_count"),
            Some(3.0),
            "every group is timed"
        );
        assert_eq!(
            series("ingest_journal_records_total"),
            Some(2.0),
            "only durable records are counted"
        );
    }

    #[test]
    fn a_partial_last_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let (_, len) = open_repaired(&path).unwrap();
        assert_eq!(len, 8);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n");
    }
}
