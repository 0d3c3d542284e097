//! Configuration of the core, from flags and `INGEST_*` environment variables.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Which publisher takes accepted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublisherKind {
    /// Durable local spool (JSON Lines under the data directory): the embedded default.
    Spool,
}

/// Which store remembers published events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupeKind {
    /// In-process memory, bounded in size and time: the embedded default.
    Memory,
}

/// Settings of the core service. The edge embeds the same flags to run the core in-process.
#[derive(Debug, Clone, clap::Args)]
pub struct CoreConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "INGEST_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Directory for the durable spool.
    #[arg(long, env = "INGEST_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Publisher backend.
    #[arg(long, env = "INGEST_PUBLISHER", value_enum, default_value = "spool")]
    pub publisher: PublisherKind,
    /// Queue for inbound messages (spool: file name; SQS: queue URL).
    #[arg(long, env = "INGEST_INBOUND_QUEUE", default_value = "inbound")]
    pub inbound_queue: String,
    /// Queue for delivery statuses (spool: file name; SQS: queue URL).
    #[arg(long, env = "INGEST_STATUS_QUEUE", default_value = "status")]
    pub status_queue: String,
    /// Dedupe backend.
    #[arg(long, env = "INGEST_DEDUPE", value_enum, default_value = "memory")]
    pub dedupe: DedupeKind,
    /// How long a published event is remembered (Bandwidth retries for 24 h).
    #[arg(long, env = "INGEST_DEDUPE_TTL_SECS", default_value_t = 48 * 3600)]
    pub dedupe_ttl_secs: u64,
    /// Most events the in-memory dedupe remembers (oldest forgotten first).
    #[arg(long, env = "INGEST_DEDUPE_CAPACITY", default_value_t = 1_000_000)]
    pub dedupe_capacity: usize,
    /// Deadline for one gRPC call, in milliseconds.
    #[arg(long, env = "INGEST_GRPC_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub grpc_request_timeout_ms: u64,
    /// Most gRPC calls in flight per connection; more are shed with UNAVAILABLE.
    #[arg(long, env = "INGEST_GRPC_CONCURRENCY_LIMIT", default_value_t = 4096)]
    pub grpc_concurrency_limit: usize,
}

impl CoreConfig {
    /// Every problem with this configuration, so all are reported at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.inbound_queue.trim().is_empty() {
            problems.push("--inbound-queue must not be empty".to_owned());
        }
        if self.status_queue.trim().is_empty() {
            problems.push("--status-queue must not be empty".to_owned());
        }
        if self.dedupe_ttl_secs == 0 {
            problems.push("--dedupe-ttl-secs must be positive".to_owned());
        }
        if self.dedupe_capacity == 0 {
            problems.push("--dedupe-capacity must be positive".to_owned());
        }
        if self.grpc_request_timeout_ms == 0 {
            problems.push("--grpc-request-timeout-ms must be positive".to_owned());
        }
        if self.grpc_concurrency_limit == 0 {
            problems.push("--grpc-concurrency-limit must be positive".to_owned());
        }
        problems
    }

    /// The gRPC call deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.grpc_request_timeout_ms)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Process-level settings shared by both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeConfig {
    /// Longest wait for in-flight calls after SIGTERM/SIGINT, in seconds. Keep it below
    /// Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, env = "INGEST_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Log format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "INGEST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RuntimeConfig {
    /// The shutdown grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Installs the global tracing subscriber.
    pub fn init_tracing(&self) {
        use tracing_subscriber::{EnvFilter, fmt};
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
    }
}

/// Parses a binary's flags; on any error prints it and exits 64 (EX_USAGE), or 0 for `--help`.
pub fn parse_or_exit<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(v) => v,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Reports configuration problems and exits 64 if there are any.
pub fn exit_on_problems(problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    for p in problems {
        eprintln!("configuration error: {p}");
    }
    std::process::exit(64);
}
