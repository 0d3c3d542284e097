//! `ingestctl`: the operator's terminal tool. Lists, counts and shows quarantined calls, replays
//! them through today's parsers and the normal submit path, and shows what the spool and the SQS
//! outbox hold. It works on the embedded spool (`--data-dir`) or on the production quarantine
//! queue (`--quarantine-queue` as an SQS URL), and reads records from nowhere else.
//!
//! On the spool the quarantine file is append-only (the core may be writing it), so replay
//! outcomes go to `<queue>.replayed.jsonl` beside it: a replayed record is gone from the
//! quarantine's view; one that still fails stays, with its new reason. On SQS a replayed message
//! is deleted; one that still fails is sent again with its new reason and the old one deleted.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aws_sdk_sqs::Client;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use ingest_core::{
    publish::{outbox, queue_name},
    quarantine::{Entry, EntryViolation},
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::{Incoming, Verified},
    carriers::parse_for,
    core_client::CoreClient,
    error::EdgeError,
};

/// Exit status: everything asked for was done (every selected record replayed).
pub const EXIT_OK: i32 = 0;
/// Exit status: some selected records still fail with today's parsers (they stay).
pub const EXIT_STILL_FAILING: i32 = 1;
/// Exit status: the tool could not do its work (core or queue unreachable, unreadable files).
pub const EXIT_ERROR: i32 = 2;

/// ingestctl: inspect and replay the quarantine, inspect the spool and the outbox.
#[derive(Debug, clap::Parser)]
#[command(name = "ingestctl", version)]
pub struct Cli {
    /// Data directory of the core (spool, outbox, spool quarantine).
    #[arg(long, env = "INGEST_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// The quarantine: a spool file name under --data-dir, or an SQS queue URL (AWS settings from
    /// the default chain, e.g. AWS_REGION, AWS_ENDPOINT_URL).
    #[arg(
        long,
        env = "INGEST_QUARANTINE_QUEUE",
        default_value = "quarantine",
        global = true
    )]
    pub quarantine_queue: String,
    /// Machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Quarantined calls.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Events per spool queue and the SQS outbox of each queue: count, bytes, oldest entry.
    Outbox,
}

/// Quarantine subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum QuarantineCommand {
    /// One line per record (newest last).
    List(Filter),
    /// Records by carrier and reason.
    Count(Filter),
    /// One record in full, body included.
    Show {
        /// Its record id (a unique prefix is enough).
        record_id: String,
    },
    /// Replays records through today's parsers and the core: those that now become events are
    /// published (dedupe makes repeats harmless) and leave the quarantine; the others stay, with
    /// their new reason.
    Replay {
        /// Which records.
        #[command(flatten)]
        filter: Filter,
        /// Only say what would happen.
        #[arg(long)]
        dry_run: bool,
        /// gRPC URL of ingest-core.
        #[arg(
            long,
            env = "INGEST_CORE_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        core_url: String,
        /// Deadline of each core call, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        core_timeout_ms: u64,
        /// TLS and token for the calls to the core (as the edge's).
        #[command(flatten)]
        core_auth: Box<crate::core_client::CoreAuthConfig>,
    },
}

/// Which records a command looks at.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only this carrier.
    #[arg(long)]
    pub carrier: Option<String>,
    /// Only this reason (`invalid_request`, `malformed_request`, `unsupported_media_type`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only records received at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only records received before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        let at = chrono::DateTime::parse_from_rfc3339(&e.received_at)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc));
        self.carrier.as_deref().is_none_or(|c| c == e.carrier)
            && self.reason.as_deref().is_none_or(|r| r == e.reason)
            && self.since.is_none_or(|s| at.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| at.is_some_and(|t| t < u))
    }
}

/// Why the tool failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The SQS quarantine queue could not be used.
    #[error("quarantine queue: {0}")]
    Sqs(String),
    /// The outbox could not be read.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    /// No such record, or an ambiguous prefix.
    #[error("{0}")]
    NotFound(String),
    /// The core could not be reached or failed; nothing more was replayed.
    #[error("core: {0}")]
    Core(String),
}

/// A record and where it is stored.
#[derive(Debug, Clone)]
struct Stored {
    entry: Entry,
    /// SQS receipt handle (SQS store only).
    receipt: Option<String>,
}

/// What the spool store writes beside the quarantine file for each replay outcome.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    record_id: String,
    /// `replayed` (gone from the quarantine) or `still_failing` (stays, with the new reason).
    outcome: String,
    reason: String,
    detail: String,
    #[serde(default)]
    violations: Vec<EntryViolation>,
    at: String,
}

/// The quarantine: the spool's file or the SQS queue.
enum Store {
    Spool { file: PathBuf, outcomes: PathBuf },
    Sqs { client: Client, queue: String },
}

impl Store {
    async fn open(cli: &Cli) -> Self {
        let q = &cli.quarantine_queue;
        if q.starts_with("https://") || q.starts_with("http://") {
            let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            Self::Sqs {
                client: Client::new(&aws),
                queue: q.clone(),
            }
        } else {
            let stem = queue_name(q);
            Self::Spool {
                file: cli.data_dir.join(format!("{stem}.jsonl")),
                outcomes: cli.data_dir.join(format!("{stem}.replayed.jsonl")),
            }
        }
    }

    /// Every record currently in the quarantine, with its latest reason.
    async fn load(&self) -> Result<Vec<Stored>, CtlError> {
        match self {
            Self::Spool { file, outcomes } => {
                let mut latest: HashMap<String, Outcome> = HashMap::new();
                for o in read_jsonl::<Outcome>(outcomes)? {
                    latest.insert(o.record_id.clone(), o);
                }
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                for mut entry in read_jsonl::<Entry>(file)? {
                    if !seen.insert(entry.record_id.clone()) {
                        continue;
                    }
                    match latest.remove(&entry.record_id) {
                        Some(o) if o.outcome == "replayed" => continue,
                        Some(o) => {
                            entry.reason = o.reason;
                            entry.detail = o.detail;
                            entry.violations = o.violations;
                        }
                        None => {}
                    }
                    out.push(Stored {
                        entry,
                        receipt: None,
                    });
                }
                Ok(out)
            }
            Self::Sqs { client, queue } => {
                let mut out = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut empty = 0;
                // Received messages stay invisible while we work (at most 5 min, unless released
                // or deleted), so one pass sees each message once.
                while empty < 2 && out.len() < 100_000 {
                    let reply = client
                        .receive_message()
                        .queue_url(queue)
                        .max_number_of_messages(10)
                        .visibility_timeout(300)
                        .wait_time_seconds(0)
                        .send()
                        .await
                        .map_err(|e| {
                            CtlError::Sqs(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
                        })?;
                    let messages = reply.messages();
                    if messages.is_empty() {
                        empty += 1;
                        continue;
                    }
                    empty = 0;
                    for m in messages {
                        let Some(entry) =
                            m.body().and_then(|b| serde_json::from_str::<Entry>(b).ok())
                        else {
                            continue;
                        };
                        if seen.insert(entry.record_id.clone()) {
                            out.push(Stored {
                                entry,
                                receipt: m.receipt_handle().map(str::to_owned),
                            });
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Makes received messages visible again at once (SQS), so a listing consumes nothing.
    async fn release(&self, stored: &[Stored]) -> Result<(), CtlError> {
        let Self::Sqs { client, queue } = self else {
            return Ok(());
        };
        for s in stored {
            if let Some(receipt) = &s.receipt {
                client
                    .change_message_visibility()
                    .queue_url(queue)
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .map_err(|e| {
                        CtlError::Sqs(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
                    })?;
            }
        }
        Ok(())
    }

    /// Every record, for a command that only reads.
    async fn read_all(&self) -> Result<Vec<Entry>, CtlError> {
        let stored = self.load().await?;
        self.release(&stored).await?;
        Ok(stored.into_iter().map(|s| s.entry).collect())
    }

    /// Removes a record that became events.
    async fn resolve(&self, s: &Stored) -> Result<(), CtlError> {
        match self {
            Self::Spool { outcomes, .. } => append_jsonl(
                outcomes,
                &Outcome {
                    record_id: s.entry.record_id.clone(),
                    outcome: "replayed".into(),
                    reason: s.entry.reason.clone(),
                    detail: String::new(),
                    violations: Vec::new(),
                    at: now(),
                },
            ),
            Self::Sqs { client, queue } => {
                let Some(receipt) = &s.receipt else {
                    return Ok(());
                };
                client
                    .delete_message()
                    .queue_url(queue)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        CtlError::Sqs(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
                    })
            }
        }
    }

    /// Keeps a record that still fails, with its new reason.
    async fn keep(&self, s: &Stored, updated: &Entry) -> Result<(), CtlError> {
        match self {
            Self::Spool { outcomes, .. } => append_jsonl(
                outcomes,
                &Outcome {
                    record_id: updated.record_id.clone(),
                    outcome: "still_failing".into(),
                    reason: updated.reason.clone(),
                    detail: updated.detail.clone(),
                    violations: updated.violations.clone(),
                    at: now(),
                },
            ),
            Self::Sqs { client, queue } => {
                let out = updated.to_outbound();
                let mut send = client
                    .send_message()
                    .queue_url(queue)
                    .message_body(out.body.clone());
                for a in &out.attributes {
                    send = send.message_attributes(
                        a.name.clone().into_owned(),
                        aws_sdk_sqs::types::MessageAttributeValue::builder()
                            .data_type(if a.number { "Number" } else { "String" })
                            .string_value(a.value.clone())
                            .build()
                            .map_err(|e| CtlError::Sqs(e.to_string()))?,
                    );
                }
                if queue.ends_with(".fifo") {
                    // A new id: the updated record must not be dropped as a repeat of the old.
                    send = send
                        .message_group_id(out.group_id.clone())
                        .message_deduplication_id(format!("{}-{}", out.event_id, now_ms()));
                }
                send.send().await.map_err(|e| {
                    CtlError::Sqs(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
                })?;
                self.resolve(s).await
            }
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, CtlError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CtlError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    // A partial last line (a writer mid-append) is skipped, like any unreadable line.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn append_jsonl<T: Serialize>(path: &Path, value: &T) -> Result<(), CtlError> {
    let io = |source| CtlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut line = serde_json::to_vec(value).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    f.write_all(&line).and_then(|()| f.sync_data()).map_err(io)
}

/// The call a record describes, rebuilt for today's parsers.
fn incoming(e: &Entry) -> Result<Incoming, String> {
    let target = if e.query.is_empty() {
        e.path.clone()
    } else {
        format!("{}?{}", e.path, e.query)
    };
    let uri: Uri = target.parse().map_err(|_| "unusable path".to_owned())?;
    let method = Method::from_bytes(e.method.as_bytes()).map_err(|_| "unusable method")?;
    let mut headers = HeaderMap::new();
    if !e.content_type.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(&e.content_type).map_err(|_| "unusable content type")?,
        );
    }
    let destination = e
        .path
        .strip_prefix("/bandwidth/")
        .map(|d| d.trim_end_matches('/').to_owned());
    Ok(Incoming {
        method,
        uri,
        headers,
        body: Bytes::from(e.body_bytes()),
        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        destination,
    })
}

/// What replaying one record came to.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
enum ReplayResult {
    /// Became events and was published (or would be, with --dry-run).
    Replayed { events: usize, duplicates: usize },
    /// Still cannot become events.
    StillFailing {
        reason: String,
        detail: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        violations: Vec<EntryViolation>,
    },
}

/// Today's parser (and, unless `core` is None, the core's validation and publishing) on one
/// record. `Err` is a failure of the core or transport, which stops the replay.
async fn replay_one(e: &Entry, core: Option<&CoreClient>) -> Result<ReplayResult, CtlError> {
    let still = |error: &EdgeError| ReplayResult::StillFailing {
        reason: error.kind().to_owned(),
        detail: error.to_string(),
        violations: match error {
            EdgeError::Invalid(v) => v
                .iter()
                .map(|v| EntryViolation {
                    field: v.field.clone(),
                    description: v.description.clone(),
                })
                .collect(),
            _ => Vec::new(),
        },
    };
    let incoming = match incoming(e) {
        Ok(i) => i,
        Err(detail) => {
            return Ok(ReplayResult::StillFailing {
                reason: "malformed_request".into(),
                detail,
                violations: Vec::new(),
            });
        }
    };
    // The record was verified on arrival; it comes only from the quarantine itself.
    let verified = Verified::from_quarantine(&incoming);
    let events = match parse_for(&e.carrier, &verified) {
        None => {
            return Ok(ReplayResult::StillFailing {
                reason: "invalid_request".into(),
                detail: format!("unknown carrier {}", e.carrier),
                violations: Vec::new(),
            });
        }
        Some(Err(error)) => return Ok(still(&error)),
        Some(Ok(events)) => events,
    };
    let count = events.len();
    let Some(core) = core else {
        return Ok(ReplayResult::Replayed {
            events: count,
            duplicates: 0,
        });
    };
    match core.submit(events, None).await {
        Ok(replies) => Ok(ReplayResult::Replayed {
            events: count,
            duplicates: replies
                .iter()
                .filter(|r| r.outcome == carrier_ingest::v1::Outcome::Duplicate as i32)
                .count(),
        }),
        Err(error @ EdgeError::Invalid(_)) => Ok(still(&error)),
        Err(error) => Err(CtlError::Core(error.to_string())),
    }
}

/// Runs the command; returns the exit status.
pub async fn run(cli: Cli, out: &mut impl Write) -> Result<i32, CtlError> {
    let store = Store::open(&cli).await;
    match &cli.command {
        Command::Outbox => outbox_state(&cli, out),
        Command::Quarantine(QuarantineCommand::List(filter)) => {
            let records: Vec<Entry> = store
                .read_all()
                .await?
                .into_iter()
                .filter(|e| filter.matches(e))
                .collect();
            if cli.json {
                let summaries: Vec<_> = records.iter().map(summary).collect();
                print_json(out, &summaries);
            } else {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|e| {
                        vec![
                            e.record_id.clone(),
                            e.carrier.clone(),
                            e.reason.clone(),
                            e.received_at.clone(),
                            format!("{} {}", e.method, e.path),
                            e.body_len().to_string(),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &["RECORD", "CARRIER", "REASON", "RECEIVED", "CALL", "BYTES"],
                    &rows,
                );
                writeln!(out, "{} record(s)", records.len()).ok();
            }
            Ok(EXIT_OK)
        }
        Command::Quarantine(QuarantineCommand::Count(filter)) => {
            let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
            for e in store.read_all().await? {
                if filter.matches(&e) {
                    *counts
                        .entry((e.carrier.clone(), e.reason.clone()))
                        .or_default() += 1;
                }
            }
            if cli.json {
                let v: Vec<_> = counts
                    .iter()
                    .map(|((c, r), n)| serde_json::json!({"carrier": c, "reason": r, "count": n}))
                    .collect();
                print_json(out, &v);
            } else {
                let rows: Vec<Vec<String>> = counts
                    .iter()
                    .map(|((c, r), n)| vec![c.clone(), r.clone(), n.to_string()])
                    .collect();
                table(out, &["CARRIER", "REASON", "COUNT"], &rows);
                writeln!(out, "{} record(s)", counts.values().sum::<usize>()).ok();
            }
            Ok(EXIT_OK)
        }
        Command::Quarantine(QuarantineCommand::Show { record_id }) => {
            let matches: Vec<Entry> = store
                .read_all()
                .await?
                .into_iter()
                .filter(|e| e.record_id.starts_with(record_id.as_str()))
                .collect();
            let [entry] = matches.as_slice() else {
                return Err(CtlError::NotFound(format!(
                    "{} records match {record_id:?}",
                    matches.len()
                )));
            };
            if cli.json {
                print_json(out, &entry);
            } else {
                show(out, entry);
            }
            Ok(EXIT_OK)
        }
        Command::Quarantine(QuarantineCommand::Replay {
            filter,
            dry_run,
            core_url,
            core_timeout_ms,
            core_auth,
        }) => {
            let core = if *dry_run {
                None
            } else {
                let credentials = crate::core_client::CoreCredentials::load(core_auth, core_url)
                    .map_err(|problems| CtlError::Core(problems.join("; ")))?;
                ingest_core::security::tls::install_default_provider();
                Some(
                    CoreClient::connect(
                        core_url,
                        Duration::from_millis(*core_timeout_ms),
                        Duration::ZERO,
                        credentials,
                    )
                    .map_err(|e| CtlError::Core(e.to_string()))?,
                )
            };
            let (selected, others): (Vec<Stored>, Vec<Stored>) = store
                .load()
                .await?
                .into_iter()
                .partition(|s| filter.matches(&s.entry));
            store.release(&others).await?;
            let total = selected.len();
            let mut results = Vec::with_capacity(total);
            let mut failing = 0;
            for (i, s) in selected.iter().enumerate() {
                let result = match replay_one(&s.entry, core.as_ref()).await {
                    Ok(r) => r,
                    Err(e) => {
                        // Leave this and the rest where they were.
                        store.release(&selected[i..]).await?;
                        return Err(e);
                    }
                };
                if *dry_run {
                    store.release(std::slice::from_ref(s)).await?;
                } else {
                    match &result {
                        ReplayResult::Replayed { .. } => store.resolve(s).await?,
                        ReplayResult::StillFailing {
                            reason,
                            detail,
                            violations,
                        } => {
                            let mut updated = s.entry.clone();
                            updated.reason.clone_from(reason);
                            updated.detail.clone_from(detail);
                            updated.violations.clone_from(violations);
                            store.keep(s, &updated).await?;
                        }
                    }
                }
                if matches!(result, ReplayResult::StillFailing { .. }) {
                    failing += 1;
                }
                if total >= 50 && (i + 1) % 50 == 0 {
                    eprintln!("replay: {}/{total} done, {failing} still failing", i + 1);
                }
                results.push((s.entry.record_id.clone(), s.entry.carrier.clone(), result));
            }
            report_replay(out, cli.json, *dry_run, &results);
            Ok(if failing == 0 {
                EXIT_OK
            } else {
                EXIT_STILL_FAILING
            })
        }
    }
}

fn summary(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "recordId": e.record_id,
        "carrier": e.carrier,
        "reason": e.reason,
        "receivedAt": e.received_at,
        "method": e.method,
        "path": e.path,
        "bodyBytes": e.body_len(),
        "bodySha256": e.body_sha256,
    })
}

fn show(out: &mut impl Write, e: &Entry) {
    let mut lines = vec![
        ("record", e.record_id.clone()),
        ("carrier", e.carrier.clone()),
        ("call", format!("{} {}", e.method, e.path)),
        ("query", e.query.clone()),
        ("content type", e.content_type.clone()),
        ("verified by", e.verified_by.clone()),
        ("received", e.received_at.clone()),
        ("quarantined", e.quarantined_at.clone()),
        ("reason", e.reason.clone()),
        ("detail", e.detail.clone()),
    ];
    for v in &e.violations {
        lines.push(("violation", format!("{} {}", v.field, v.description)));
    }
    lines.push(("body sha256", e.body_sha256.clone()));
    for (k, v) in lines {
        writeln!(out, "{k:>12}: {v}").ok();
    }
    match (&e.body, &e.body_base64) {
        (Some(text), _) => writeln!(out, "{:>12}:\n{text}", "body").ok(),
        (None, Some(b64)) => writeln!(out, "{:>12}: (base64) {b64}", "body").ok(),
        (None, None) => writeln!(out, "{:>12}: (empty)", "body").ok(),
    };
}

fn report_replay(
    out: &mut impl Write,
    json: bool,
    dry_run: bool,
    results: &[(String, String, ReplayResult)],
) {
    if json {
        let v: Vec<_> = results
            .iter()
            .map(|(id, carrier, r)| serde_json::json!({"recordId": id, "carrier": carrier, "result": r, "dryRun": dry_run}))
            .collect();
        print_json(out, &v);
        return;
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(id, carrier, r)| match r {
            ReplayResult::Replayed { events, duplicates } => vec![
                id.clone(),
                carrier.clone(),
                verb.to_owned(),
                format!("{events} event(s), {duplicates} duplicate(s)"),
            ],
            ReplayResult::StillFailing { reason, detail, .. } => vec![
                id.clone(),
                carrier.clone(),
                "still failing".to_owned(),
                format!("{reason}: {detail}"),
            ],
        })
        .collect();
    table(out, &["RECORD", "CARRIER", "RESULT", "DETAIL"], &rows);
    let ok = results
        .iter()
        .filter(|r| matches!(r.2, ReplayResult::Replayed { .. }))
        .count();
    writeln!(
        out,
        "{ok} {verb}, {} still failing, of {}",
        results.len() - ok,
        results.len()
    )
    .ok();
}

fn outbox_state(cli: &Cli, out: &mut impl Write) -> Result<i32, CtlError> {
    // Spool queues: one JSON Lines file each.
    let mut spool = Vec::new();
    if let Ok(dir) = std::fs::read_dir(&cli.data_dir) {
        let mut files: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        for path in files {
            let bytes = std::fs::read(&path).map_err(|source| CtlError::Io {
                path: path.clone(),
                source,
            })?;
            let lines = bytes.iter().filter(|b| **b == b'\n').count();
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
            spool.push(serde_json::json!({
                "queue": path.file_stem().map(|s| s.to_string_lossy().into_owned()),
                "events": lines,
                "bytes": bytes.len(),
                "lastWrite": modified,
            }));
        }
    }
    let outbox = outbox::inspect(&cli.data_dir.join("outbox"))?;
    if cli.json {
        print_json(out, &serde_json::json!({"spool": spool, "outbox": outbox}));
        return Ok(EXIT_OK);
    }
    writeln!(out, "spool ({})", cli.data_dir.display()).ok();
    let rows: Vec<Vec<String>> = spool
        .iter()
        .map(|s| {
            vec![
                s["queue"].as_str().unwrap_or("").to_owned(),
                s["events"].to_string(),
                s["bytes"].to_string(),
                s["lastWrite"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    table(out, &["FILE", "LINES", "BYTES", "LAST WRITE"], &rows);
    writeln!(
        out,
        "\nSQS outbox ({})",
        cli.data_dir.join("outbox").display()
    )
    .ok();
    let rows: Vec<Vec<String>> = outbox
        .iter()
        .map(|q| {
            vec![
                q.name.clone(),
                q.events.to_string(),
                q.bytes.to_string(),
                q.oldest_ms
                    .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".into()),
                q.rejected.to_string(),
                q.queue.clone(),
            ]
        })
        .collect();
    table(
        out,
        &["QUEUE", "EVENTS", "BYTES", "OLDEST", "REJECTED", "URL"],
        &rows,
    );
    Ok(EXIT_OK)
}

/// Pretty JSON on its own lines, for `--json`.
fn print_json(out: &mut impl Write, value: &impl Serialize) {
    // Serializing plain data cannot fail; a closed stdout is not worth a panic.
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A plain text table with aligned columns.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec())).ok();
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect())).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(carrier: &str, path: &str, body: &str) -> Entry {
        Entry {
            record_id: "r1".into(),
            schema_version: 1,
            carrier: carrier.into(),
            method: "POST".into(),
            path: path.into(),
            query: String::new(),
            content_type: "application/json".into(),
            verified_by: "test".into(),
            received_at: "2024-01-15T10:30:00.000Z".into(),
            quarantined_at: "2024-01-15T10:30:00.001Z".into(),
            reason: "invalid_request".into(),
            detail: String::new(),
            violations: Vec::new(),
            body_sha256: String::new(),
            body: Some(body.into()),
            body_base64: None,
        }
    }

    #[tokio::test]
    async fn dry_run_uses_todays_parsers() {
        let ok = entry(
            "bandwidth",
            "/bandwidth/15551234567",
            r#"[{"type":"message-received","message":{"id":"m","from":"+15559876543","to":["+15551234567"]}}]"#,
        );
        assert!(matches!(
            replay_one(&ok, None).await.unwrap(),
            ReplayResult::Replayed { events: 1, .. }
        ));
        let bad = entry("bandwidth", "/bandwidth/1", "[{\"type\":");
        assert!(matches!(
            replay_one(&bad, None).await.unwrap(),
            ReplayResult::StillFailing { reason, .. } if reason == "malformed_request"
        ));
        let unknown = entry("acme", "/acme", "{}");
        assert!(matches!(
            replay_one(&unknown, None).await.unwrap(),
            ReplayResult::StillFailing { .. }
        ));
    }

    #[test]
    fn filters_by_carrier_reason_and_time() {
        let e = entry("twilio", "/twilio", "");
        let mut f = Filter::default();
        assert!(f.matches(&e));
        f.carrier = Some("bandwidth".into());
        assert!(!f.matches(&e));
        f.carrier = Some("twilio".into());
        f.since = Some("2024-01-15T10:30:00Z".parse().unwrap());
        assert!(f.matches(&e));
        f.until = Some("2024-01-15T10:30:00Z".parse().unwrap());
        assert!(!f.matches(&e));
    }
}
