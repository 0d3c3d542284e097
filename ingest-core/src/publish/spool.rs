//! The embedded default publisher: a durable local spool, one JSON Lines file per queue.
//!
//! Each queue has a writer thread. Callers hand it a line and wait; the thread takes every line
//! that is waiting, appends them in one write, fsyncs once and then answers all of them (group
//! commit), so throughput does not collapse to one fsync per event.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{OutboundEvent, PublishError, Publisher};

/// Most lines written with one fsync.
const MAX_GROUP: usize = 4096;

type Reply = oneshot::Sender<Result<(), Arc<io::Error>>>;
type Writer = mpsc::UnboundedSender<(Vec<u8>, Reply)>;

/// Appends events to `<dir>/<queue>.jsonl`, fsynced before each acknowledgement.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    writers: Mutex<HashMap<String, Writer>>,
}

impl Spool {
    /// A spool under `dir`, which is created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// The file that holds `queue`'s events.
    pub fn path_for(&self, queue: &str) -> PathBuf {
        self.dir.join(format!("{}.jsonl", file_stem(queue)))
    }

    fn writer(&self, queue: &str) -> io::Result<Writer> {
        // One writer per file: two queue names for the same file (`inbound` and a URL ending in
        // `/inbound`) must not have two threads appending to it.
        let stem = file_stem(queue);
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = writers.get(&stem)
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        let file = open_repaired(&self.path_for(queue))?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("spool-{stem}"))
            .spawn(move || write_loop(file, rx))?;
        writers.insert(stem, tx.clone());
        Ok(tx)
    }
}

/// A file name for a queue: the last path segment of a queue URL, limited to safe characters.
fn file_stem(queue: &str) -> String {
    let last = queue.rsplit('/').find(|s| !s.is_empty()).unwrap_or("queue");
    let stem: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.trim_matches('.').is_empty() {
        "queue".to_owned()
    } else {
        stem
    }
}

/// Opens `path` for appending, first cutting off a partial last line left by a crash mid-write
/// (that event was never acknowledged, so its carrier will retry it).
fn open_repaired(path: &Path) -> io::Result<File> {
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let keep = end_of_last_line(&mut file, len)?;
        if keep != len {
            tracing::warn!(path = %path.display(), cut = len - keep, "spool: removing a partial last line");
            file.set_len(keep)?;
            file.sync_all()?;
        }
    }
    if created && let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
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

/// The file operations the writer needs; a trait so tests can make them fail or stall.
trait SpoolFile: Write {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Makes written bytes durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl SpoolFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

fn write_loop<F: SpoolFile>(mut file: F, mut rx: mpsc::UnboundedReceiver<(Vec<u8>, Reply)>) {
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    while let Some((line, reply)) = rx.blocking_recv() {
        buf.clear();
        buf.extend_from_slice(&line);
        replies.push(reply);
        while replies.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok((line, reply)) => {
                    buf.extend_from_slice(&line);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let result = append_durably(&mut file, &buf).map_err(Arc::new);
        for reply in replies.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

fn append_durably<F: SpoolFile>(file: &mut F, bytes: &[u8]) -> io::Result<()> {
    let before = file.len()?;
    let result = file.write_all(bytes).and_then(|()| file.sync());
    if result.is_err() {
        // Leave no partial line behind for the next group to append to.
        let _ = file.truncate(before);
    }
    result
}

#[async_trait]
impl Publisher for Spool {
    async fn publish(&self, queue: &str, event: &OutboundEvent) -> Result<(), PublishError> {
        let mut line = Vec::with_capacity(event.body.len() + 1);
        line.extend_from_slice(event.body.as_bytes());
        line.push(b'\n');
        let (reply, done) = oneshot::channel();
        self.writer(queue)?
            .send((line, reply))
            .map_err(|_| PublishError::Closed)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Io(io::Error::new(e.kind(), e.to_string()))),
            Err(_) => Err(PublishError::Closed),
        }
    }

    async fn check(&self, queue: &str) -> Result<(), PublishError> {
        self.writer(queue)?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "spool"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::EventKind;

    fn event(id: &str) -> OutboundEvent {
        OutboundEvent {
            event_id: id.to_owned(),
            body: format!(r#"{{"eventId":"{id}"}}"#),
            group_id: "g".into(),
            carrier: "twilio",
            kind: EventKind::Inbound,
            status: "",
            schema_version: 1,
        }
    }

    #[tokio::test]
    async fn concurrent_publishes_land_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.publish("inbound", &event(&i.to_string())).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(spool.path_for("inbound")).unwrap();
        let mut ids: Vec<u32> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["eventId"].as_str().unwrap().parse().unwrap()
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn partial_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.publish("status", &event("x")).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"eventId\":\"x\"}\n");
    }

    /// An in-memory file whose every sync waits for the test to say how it ends.
    struct GatedFile {
        data: Arc<std::sync::Mutex<Vec<u8>>>,
        gate: std::sync::mpsc::Receiver<io::Result<()>>,
    }

    impl Write for GatedFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SpoolFile for GatedFile {
        fn len(&self) -> io::Result<u64> {
            Ok(self.data.lock().unwrap().len() as u64)
        }

        fn sync(&mut self) -> io::Result<()> {
            self.gate.recv().expect("test hung up")
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.data.lock().unwrap().truncate(len as usize);
            Ok(())
        }
    }

    #[tokio::test]
    async fn replies_wait_for_the_sync_and_a_failed_sync_is_an_error_with_nothing_kept() {
        let data = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (open_gate, gate) = std::sync::mpsc::channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let file = GatedFile {
            data: data.clone(),
            gate,
        };
        std::thread::spawn(move || write_loop(file, rx));

        let (reply, mut done) = oneshot::channel();
        tx.send((b"one\n".to_vec(), reply)).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            done.try_recv().is_err(),
            "acknowledged before the sync finished"
        );
        open_gate.send(Ok(())).unwrap();
        assert!(done.await.unwrap().is_ok());

        let (reply, done) = oneshot::channel();
        tx.send((b"two\n".to_vec(), reply)).unwrap();
        open_gate.send(Err(io::Error::other("disk gone"))).unwrap();
        assert!(
            done.await.unwrap().is_err(),
            "a failed sync must fail the publish"
        );
        assert_eq!(
            *data.lock().unwrap(),
            b"one\n",
            "the unsynced line is cut off"
        );
    }

    #[tokio::test]
    async fn one_writer_per_file_even_under_two_queue_names() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.publish("inbound", &event("a")).await.unwrap();
        spool
            .publish("https://sqs.example/123/inbound", &event("b"))
            .await
            .unwrap();
        assert_eq!(spool.writers.lock().unwrap().len(), 1);
        let text = std::fs::read_to_string(spool.path_for("inbound")).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn queue_urls_map_to_safe_file_names() {
        assert_eq!(file_stem("inbound"), "inbound");
        assert_eq!(
            file_stem("https://sqs.us-east-1.amazonaws.com/123456789012/in.fifo"),
            "in.fifo"
        );
        assert_eq!(file_stem("../../etc/passwd"), "passwd");
        assert_eq!(file_stem(".."), "queue");
        assert_eq!(file_stem("a b"), "a_b");
    }
}
