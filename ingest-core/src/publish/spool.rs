//! The embedded default publisher: a durable local spool, one JSON Lines file per queue.
//!
//! Each queue has a group-commit writer thread (`journal.rs`): every line that is waiting is
//! appended in one write and made durable once, through the file's write-ahead log (`wal.rs`),
//! before all of them are answered.

use std::{collections::HashMap, io, path::PathBuf, sync::Mutex};

use async_trait::async_trait;

use super::{OutboundEvent, PublishError, Publisher, journal::GroupWriter, wal::WalJournal};

/// Appends events to `<dir>/<queue>.jsonl`, durable before each acknowledgement (its
/// write-ahead log is `<dir>/<queue>.wal`).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    writers: Mutex<HashMap<String, GroupWriter>>,
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

    fn writer(&self, queue: &str) -> io::Result<GroupWriter> {
        // One writer per file: two queue names for the same file (`inbound` and a URL ending in
        // `/inbound`) must not have two threads appending to it.
        let stem = file_stem(queue);
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = writers.get(&stem)
            && !w.is_closed()
        {
            return Ok(w.clone());
        }
        let name = format!("spool-{stem}");
        let journal = WalJournal::open(
            &name,
            &self.path_for(queue),
            &self.dir.join(format!("{stem}.wal")),
        )?;
        let writer = GroupWriter::spawn(name, journal)?;
        writers.insert(stem, writer.clone());
        Ok(writer)
    }
}

/// A file name for a queue: the last path segment of a queue URL, limited to safe characters.
pub(crate) fn file_stem(queue: &str) -> String {
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

/// The spool line of `event`: its body, with the trace context attributes (`traceparent`,
/// `tracestate`) added as members of the same names when the body is a JSON object, since a line
/// has nowhere else to carry them. Other attributes repeat what the body says.
fn line_for(event: &OutboundEvent) -> Vec<u8> {
    let body = event.body.as_bytes();
    let trace = event
        .attributes
        .iter()
        .filter(|a| a.name == crate::trace::TRACEPARENT || a.name == crate::trace::TRACESTATE);
    let mut line = Vec::with_capacity(body.len() + 96);
    match body.strip_suffix(b"}") {
        Some(open) if body.starts_with(b"{") => {
            line.extend_from_slice(open);
            let mut empty = open.len() == 1;
            for a in trace {
                if !empty {
                    line.push(b',');
                }
                empty = false;
                // Strings to JSON cannot fail.
                let _ = serde_json::to_writer(&mut line, a.name.as_ref());
                line.push(b':');
                let _ = serde_json::to_writer(&mut line, &a.value);
            }
            line.push(b'}');
        }
        _ => line.extend_from_slice(body),
    }
    line.push(b'\n');
    line
}

#[async_trait]
impl Publisher for Spool {
    /// The spool is the only place it keeps events: the deadline changes nothing.
    async fn publish(
        &self,
        queue: &str,
        event: &OutboundEvent,
        _deadline: Option<tokio::time::Instant>,
    ) -> Result<(), PublishError> {
        self.writer(queue)?.append(line_for(event)).await
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
    use std::sync::Arc;

    use super::*;
    use crate::publish::Attribute;

    fn event(id: &str) -> OutboundEvent {
        OutboundEvent {
            event_id: id.to_owned(),
            body: format!(r#"{{"eventId":"{id}"}}"#),
            group_id: "g".into(),
            attributes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn concurrent_publishes_land_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(
                    async move { spool.publish("inbound", &event(&i.to_string()), None).await },
                )
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

    #[test]
    fn lines_carry_the_trace_context_beside_the_body() {
        let mut e = event("t");
        e.attributes = vec![
            Attribute::text("carrier", "twilio"),
            Attribute::text(crate::trace::TRACEPARENT, "00-ab-cd-01"),
            Attribute::text(crate::trace::TRACESTATE, "k=\"v\""),
        ];
        let line = String::from_utf8(line_for(&e)).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["eventId"], "t");
        assert_eq!(v["traceparent"], "00-ab-cd-01");
        assert_eq!(v["tracestate"], "k=\"v\"");
        assert!(
            v.get("carrier").is_none(),
            "only the trace context is added"
        );
        e.body = "{}".into();
        let v: serde_json::Value = serde_json::from_slice(&line_for(&e)).unwrap();
        assert_eq!(v["traceparent"], "00-ab-cd-01");
        assert_eq!(line_for(&event("plain")), b"{\"eventId\":\"plain\"}\n");
    }

    #[tokio::test]
    async fn partial_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.publish("status", &event("x"), None).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"eventId\":\"x\"}\n");
    }

    #[tokio::test]
    async fn one_writer_per_file_even_under_two_queue_names() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.publish("inbound", &event("a"), None).await.unwrap();
        spool
            .publish("https://sqs.example/123/inbound", &event("b"), None)
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
