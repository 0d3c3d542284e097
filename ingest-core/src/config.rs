//! Configuration of the core, from flags and `INGEST_*` environment variables.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use carrier_ingest::v1::Carrier;

use crate::publish::EventKind;

/// Which publisher takes accepted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublisherKind {
    /// Durable local spool (JSON Lines under the data directory): the embedded default.
    Spool,
    /// Amazon SQS (or an SQS-compatible server via `AWS_ENDPOINT_URL`); queues are URLs.
    Sqs,
}

/// Which store remembers published events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupeKind {
    /// In-process memory, bounded in size and time: the embedded default.
    Memory,
    /// Redis, shared by every replica; falls back to memory while Redis is unreachable.
    Redis,
}

/// A Redis connection URL. It may carry a password, so it never prints: `Debug` and `Display`
/// show only the scheme and host.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The full URL, for the Redis client only; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl RedisUrl {
    /// Whether the URL has a scheme the Redis client takes.
    pub fn is_valid(&self) -> bool {
        ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| self.0.starts_with(scheme) && self.0.len() > scheme.len())
    }
}

/// Parsing never fails, so that clap never echoes a URL (which may hold a password) in an
/// error; [`CoreConfig::problems`] reports an invalid one without its value.
impl FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.trim().to_owned()))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("redis", ""));
        // Drop credentials (before '@') and the path or query after the host.
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split(['/', '?']).next().unwrap_or_default();
        write!(f, "{scheme}://{host}")
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// A secret given on the command line or in the environment (inline tokens). `Debug` shows
/// only that it is set; parsing never fails, so clap never echoes it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// The value; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
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
    /// Queue for quarantined calls: authentic webhooks that could not become events (spool:
    /// file name; SQS: queue URL).
    #[arg(long, env = "INGEST_QUARANTINE_QUEUE", default_value = "quarantine")]
    pub quarantine_queue: String,
    /// Dedupe backend.
    #[arg(long, env = "INGEST_DEDUPE", value_enum, default_value = "memory")]
    pub dedupe: DedupeKind,
    /// How long a published event is remembered (Bandwidth retries for 24 h).
    #[arg(long, env = "INGEST_DEDUPE_TTL_SECS", default_value_t = 48 * 3600)]
    pub dedupe_ttl_secs: u64,
    /// Most events the in-memory dedupe remembers (oldest forgotten first).
    #[arg(long, env = "INGEST_DEDUPE_CAPACITY", default_value_t = 1_000_000)]
    pub dedupe_capacity: usize,
    /// Redis URL for `--dedupe redis`, e.g. `redis://:password@host:6379/0`. Never logged.
    #[arg(long, env = "INGEST_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<RedisUrl>,
    /// Prefix of every Redis key; the event id follows it.
    #[arg(
        long,
        env = "INGEST_REDIS_KEY_PREFIX",
        default_value = "carrier-ingest:"
    )]
    pub redis_key_prefix: String,
    /// Timeout of one Redis call (and of connecting), in milliseconds. Past it the call counts
    /// as Redis being unreachable and dedupe falls back to memory.
    #[arg(long, env = "INGEST_REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// How long events may wait to fill an SQS batch (10 entries), in milliseconds.
    #[arg(long, env = "INGEST_SQS_LINGER_MS", default_value_t = 5)]
    pub sqs_linger_ms: u64,
    /// Most SendMessageBatch calls in flight per queue.
    #[arg(long, env = "INGEST_SQS_MAX_IN_FLIGHT_BATCHES", default_value_t = 64)]
    pub sqs_max_in_flight_batches: usize,
    /// How long one event may take to reach SQS, retries included, in milliseconds; then it is
    /// stored in the outbox. A caller's shorter gRPC deadline shortens it (the event is stored
    /// 250 ms before that deadline). Must be below `--grpc-request-timeout-ms`.
    #[arg(long, env = "INGEST_SQS_PUBLISH_TIMEOUT_MS", default_value_t = 3_000)]
    pub sqs_publish_timeout_ms: u64,
    /// Timeout of one SQS HTTP call, in milliseconds.
    #[arg(long, env = "INGEST_SQS_CALL_TIMEOUT_MS", default_value_t = 2_000)]
    pub sqs_call_timeout_ms: u64,
    /// Consecutive failed SQS calls to a queue after which new events stop waiting for SQS and
    /// go straight to the local outbox (until a call succeeds again).
    #[arg(long, env = "INGEST_SQS_BREAKER_FAILURES", default_value_t = 3)]
    pub sqs_breaker_failures: u32,
    /// Most bytes the local outbox (under `--data-dir`/outbox) holds per queue while SQS is
    /// unreachable; past it events are refused (UNAVAILABLE, the edge answers 503). At ~1 KiB
    /// per event the default holds about a million events.
    #[arg(long, env = "INGEST_OUTBOX_MAX_BYTES", default_value_t = 1 << 30)]
    pub outbox_max_bytes: u64,
    /// Inbound queue for Twilio, overriding `--inbound-queue`.
    #[arg(long, env = "INGEST_TWILIO_INBOUND_QUEUE")]
    pub twilio_inbound_queue: Option<String>,
    /// Status queue for Twilio, overriding `--status-queue`.
    #[arg(long, env = "INGEST_TWILIO_STATUS_QUEUE")]
    pub twilio_status_queue: Option<String>,
    /// Inbound queue for Bandwidth, overriding `--inbound-queue`.
    #[arg(long, env = "INGEST_BANDWIDTH_INBOUND_QUEUE")]
    pub bandwidth_inbound_queue: Option<String>,
    /// Status queue for Bandwidth, overriding `--status-queue`.
    #[arg(long, env = "INGEST_BANDWIDTH_STATUS_QUEUE")]
    pub bandwidth_status_queue: Option<String>,
    /// Inbound queue for MessageBird, overriding `--inbound-queue`.
    #[arg(long, env = "INGEST_MESSAGEBIRD_INBOUND_QUEUE")]
    pub messagebird_inbound_queue: Option<String>,
    /// Status queue for MessageBird, overriding `--status-queue`.
    #[arg(long, env = "INGEST_MESSAGEBIRD_STATUS_QUEUE")]
    pub messagebird_status_queue: Option<String>,
    /// Inbound queue for Inteliquent, overriding `--inbound-queue`.
    #[arg(long, env = "INGEST_INTELIQUENT_INBOUND_QUEUE")]
    pub inteliquent_inbound_queue: Option<String>,
    /// Status queue for Inteliquent, overriding `--status-queue`.
    #[arg(long, env = "INGEST_INTELIQUENT_STATUS_QUEUE")]
    pub inteliquent_status_queue: Option<String>,
    /// Deadline for one gRPC call, in milliseconds.
    #[arg(long, env = "INGEST_GRPC_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub grpc_request_timeout_ms: u64,
    /// Most gRPC calls in flight per connection; more are shed with UNAVAILABLE.
    #[arg(long, env = "INGEST_GRPC_CONCURRENCY_LIMIT", default_value_t = 4096)]
    pub grpc_concurrency_limit: usize,
    /// PEM certificate chain of the gRPC server: turns on TLS (needs --grpc-tls-key). Re-read
    /// every --grpc-reload-secs; new connections get the new certificate.
    #[arg(long, env = "INGEST_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "INGEST_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM bundle of the CA(s) client certificates must chain to: mTLS, every connection needs
    /// a valid client certificate (needs --grpc-tls-cert). Without tokens, the certificate's
    /// first DNS name is the submitter's name.
    #[arg(long, env = "INGEST_GRPC_TLS_CLIENT_CA")]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// File of accepted bearer tokens, one `name:token` per line (`#` comments; the same name
    /// may appear twice while rotating). Every call except grpc.health.v1 then needs
    /// `authorization: Bearer <token>`; the name is the submitter in logs and metrics. Re-read
    /// every --grpc-reload-secs.
    #[arg(long, env = "INGEST_GRPC_TOKENS_FILE")]
    pub grpc_tokens_file: Option<PathBuf>,
    /// Accepted bearer tokens inline, comma-separated `name:token` pairs (added to
    /// --grpc-tokens-file). Never logged.
    #[arg(long, env = "INGEST_GRPC_TOKENS", hide_env_values = true)]
    pub grpc_tokens: Option<SecretString>,
    /// How often the TLS files and the tokens file are checked for changes, in seconds.
    #[arg(long, env = "INGEST_GRPC_RELOAD_SECS", default_value_t = 10)]
    pub grpc_reload_secs: u64,
    /// DEVELOPMENT ONLY: allow the gRPC listener on a non-loopback address without client
    /// certificates or tokens: anyone who reaches it can submit events. Logged loudly.
    #[arg(long, env = "INGEST_GRPC_INSECURE")]
    pub grpc_insecure: bool,
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
        if self.quarantine_queue.trim().is_empty() {
            problems.push("--quarantine-queue must not be empty".to_owned());
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
        self.grpc_security_problems(&mut problems);
        for (carrier, kind, queue) in self.queue_overrides() {
            if queue.trim().is_empty() {
                problems.push(format!(
                    "{} must not be empty",
                    override_flag(carrier, kind)
                ));
            }
        }
        if self.publisher == PublisherKind::Sqs {
            self.sqs_problems(&mut problems);
        }
        if self.dedupe == DedupeKind::Redis {
            match &self.redis_url {
                None => {
                    problems.push("--dedupe redis needs --redis-url (INGEST_REDIS_URL)".to_owned());
                }
                Some(url) if !url.is_valid() => problems.push(
                    "--redis-url must be a redis://, rediss:// or unix:// URL (value not shown)"
                        .to_owned(),
                ),
                Some(_) => {}
            }
            if self.redis_key_prefix.is_empty() {
                problems.push("--redis-key-prefix must not be empty".to_owned());
            }
            if self.redis_timeout_ms == 0 {
                problems.push("--redis-timeout-ms must be positive".to_owned());
            }
        }
        problems
    }

    /// Whether calls to the gRPC listener need credentials (client certificates or tokens).
    pub fn grpc_authenticates(&self) -> bool {
        self.grpc_tls_client_ca.is_some()
            || self.grpc_tokens_file.is_some()
            || self.grpc_tokens.is_some()
    }

    fn grpc_security_problems(&self, problems: &mut Vec<String>) {
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(_), None) => problems
                .push("--grpc-tls-cert needs --grpc-tls-key (INGEST_GRPC_TLS_KEY)".to_owned()),
            (None, Some(_)) => problems
                .push("--grpc-tls-key needs --grpc-tls-cert (INGEST_GRPC_TLS_CERT)".to_owned()),
            _ => {}
        }
        if self.grpc_tls_client_ca.is_some() && self.grpc_tls_cert.is_none() {
            problems.push(
                "--grpc-tls-client-ca (mTLS) needs --grpc-tls-cert and --grpc-tls-key".to_owned(),
            );
        }
        if self.grpc_reload_secs == 0 {
            problems.push("--grpc-reload-secs must be positive".to_owned());
        }
        // Fail closed: off loopback, someone must prove who they are.
        if !self.grpc_listen.ip().is_loopback() && !self.grpc_authenticates() && !self.grpc_insecure
        {
            problems.push(format!(
                "--grpc-listen {} is not a loopback address, and calls would need no credential: \
                 set --grpc-tls-client-ca (mTLS) or --grpc-tokens-file / --grpc-tokens \
                 (INGEST_GRPC_TOKENS_FILE / INGEST_GRPC_TOKENS), or, for development only, \
                 --grpc-insecure (INGEST_GRPC_INSECURE)",
                self.grpc_listen
            ));
        }
    }

    fn sqs_problems(&self, problems: &mut Vec<String>) {
        let mut queues = vec![
            (
                "--inbound-queue (INGEST_INBOUND_QUEUE)".to_owned(),
                &self.inbound_queue,
            ),
            (
                "--status-queue (INGEST_STATUS_QUEUE)".to_owned(),
                &self.status_queue,
            ),
            (
                "--quarantine-queue (INGEST_QUARANTINE_QUEUE)".to_owned(),
                &self.quarantine_queue,
            ),
        ];
        for (carrier, kind, queue) in self.queue_overrides() {
            queues.push((override_flag(carrier, kind), queue));
        }
        for (flag, queue) in queues {
            if !is_queue_url(queue) {
                problems.push(format!(
                    "--publisher sqs needs {flag} to be an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
                ));
            }
        }
        if self.sqs_max_in_flight_batches == 0 {
            problems.push("--sqs-max-in-flight-batches must be positive".to_owned());
        }
        if self.sqs_call_timeout_ms == 0 {
            problems.push("--sqs-call-timeout-ms must be positive".to_owned());
        }
        if self.sqs_breaker_failures == 0 {
            problems.push("--sqs-breaker-failures must be positive".to_owned());
        }
        if self.outbox_max_bytes < 64 << 10 {
            problems.push("--outbox-max-bytes must be at least 64 KiB".to_owned());
        }
        if self.sqs_publish_timeout_ms == 0
            || self.sqs_publish_timeout_ms >= self.grpc_request_timeout_ms
        {
            problems.push(
                "--sqs-publish-timeout-ms must be positive and below --grpc-request-timeout-ms"
                    .to_owned(),
            );
        }
    }

    /// Per-carrier queue overrides that are set: `(carrier, kind, queue)`.
    pub fn queue_overrides(&self) -> Vec<(Carrier, EventKind, &String)> {
        let all = [
            (
                Carrier::Twilio,
                EventKind::Inbound,
                &self.twilio_inbound_queue,
            ),
            (
                Carrier::Twilio,
                EventKind::Status,
                &self.twilio_status_queue,
            ),
            (
                Carrier::Bandwidth,
                EventKind::Inbound,
                &self.bandwidth_inbound_queue,
            ),
            (
                Carrier::Bandwidth,
                EventKind::Status,
                &self.bandwidth_status_queue,
            ),
            (
                Carrier::Messagebird,
                EventKind::Inbound,
                &self.messagebird_inbound_queue,
            ),
            (
                Carrier::Messagebird,
                EventKind::Status,
                &self.messagebird_status_queue,
            ),
            (
                Carrier::Inteliquent,
                EventKind::Inbound,
                &self.inteliquent_inbound_queue,
            ),
            (
                Carrier::Inteliquent,
                EventKind::Status,
                &self.inteliquent_status_queue,
            ),
        ];
        all.into_iter()
            .filter_map(|(c, k, q)| q.as_ref().map(|q| (c, k, q)))
            .collect()
    }

    /// How long events may wait to fill an SQS batch.
    pub fn sqs_linger(&self) -> Duration {
        Duration::from_millis(self.sqs_linger_ms)
    }

    /// How long one event may take to reach SQS, retries included.
    pub fn sqs_publish_timeout(&self) -> Duration {
        Duration::from_millis(self.sqs_publish_timeout_ms)
    }

    /// Timeout of one SQS HTTP call.
    pub fn sqs_call_timeout(&self) -> Duration {
        Duration::from_millis(self.sqs_call_timeout_ms)
    }

    /// Timeout of one Redis call.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The gRPC call deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.grpc_request_timeout_ms)
    }
}

fn override_flag(carrier: Carrier, kind: EventKind) -> String {
    let name = crate::event::carrier_name(carrier);
    let kind = kind.as_str();
    format!(
        "--{name}-{kind}-queue (INGEST_{}_{}_QUEUE)",
        name.to_ascii_uppercase(),
        kind.to_ascii_uppercase()
    )
}

/// Whether `queue` looks like an SQS queue URL: `http(s)://host/ACCOUNT/NAME`.
fn is_queue_url(queue: &str) -> bool {
    let Some(rest) = queue
        .strip_prefix("https://")
        .or_else(|| queue.strip_prefix("http://"))
    else {
        return false;
    };
    let mut parts = rest.split('/');
    let host = parts.next().unwrap_or_default();
    let path: Vec<&str> = parts.collect();
    !host.is_empty() && path.len() == 2 && path.iter().all(|p| !p.is_empty())
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
    /// Address of the admin listener serving Prometheus metrics at `/metrics` (off when unset).
    #[arg(long, env = "INGEST_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Log format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "INGEST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Export spans over OTLP/gRPC to this collector endpoint (e.g. `http://otel-collector:4317`);
    /// off when unset. The standard OpenTelemetry variable.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: only `grpc` is built in (the standard variable; unset means `grpc` here).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// `service.name` of exported spans (default: the binary's name).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
}

impl RuntimeConfig {
    /// The shutdown grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Every problem with these settings, so all are reported at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(endpoint) = self.otlp_endpoint() {
            if endpoint.starts_with("https://") {
                problems.push(
                    "OTEL_EXPORTER_OTLP_ENDPOINT: https is not built in; export to a collector over http:// (a node-local agent or sidecar)"
                        .to_owned(),
                );
            } else if !endpoint.starts_with("http://")
                || tonic::transport::Endpoint::from_shared(endpoint.to_owned()).is_err()
            {
                problems.push(
                    "OTEL_EXPORTER_OTLP_ENDPOINT must be an http://host:port URL (OTLP/gRPC, usually port 4317)"
                        .to_owned(),
                );
            }
        }
        if let Some(protocol) = self.otlp_protocol.as_deref().map(str::trim)
            && !protocol.is_empty()
            && protocol != "grpc"
        {
            problems.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not built in; only grpc is"
            ));
        }
        problems
    }

    /// The OTLP endpoint, when export is on.
    fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    /// Installs the global tracing subscriber and, when an OTLP endpoint is set, the span
    /// exporter (service name `OTEL_SERVICE_NAME`, else `default_service`). Call inside the
    /// Tokio runtime, after [`RuntimeConfig::problems`] was checked; keep the result and shut it
    /// down last, so the final spans are flushed.
    pub fn init_tracing(&self, default_service: &str) -> crate::trace::Telemetry {
        self.init_logs();
        let Some(endpoint) = self.otlp_endpoint() else {
            return crate::trace::Telemetry::default();
        };
        let settings = crate::trace::ExportSettings {
            endpoint: endpoint.to_owned(),
            service_name: self
                .otel_service_name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .unwrap_or(default_service)
                .to_owned(),
        };
        match crate::trace::init(&settings) {
            Ok(telemetry) => {
                tracing::info!(endpoint = %settings.endpoint, service = %settings.service_name, "exporting spans over OTLP/gRPC");
                telemetry
            }
            Err(error) => {
                // Traces are a diagnostic: the service runs without them rather than not at all.
                tracing::error!(%error, "span export not started");
                crate::trace::Telemetry::default()
            }
        }
    }

    /// Installs the global tracing subscriber (lines on stderr).
    fn init_logs(&self) {
        use tracing_subscriber::{EnvFilter, fmt};
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        // Written where it is logged: a line is on stderr before the reply it describes is sent
        // (tests and operators read the log right after a reply). A writer thread was faster
        // under load but let a reply overtake its line.
        let builder = fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        core: CoreConfig,
    }

    fn parse(flags: &[&str]) -> CoreConfig {
        Args::try_parse_from(std::iter::once("core").chain(flags.iter().copied()))
            .unwrap()
            .core
    }

    const Q: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/in";

    #[test]
    fn defaults_are_the_embedded_backends() {
        let c = parse(&[]);
        assert_eq!(c.publisher, PublisherKind::Spool);
        assert_eq!(c.dedupe, DedupeKind::Memory);
        assert_eq!(c.redis_key_prefix, "carrier-ingest:");
        assert!(c.problems().is_empty());
    }

    #[test]
    fn sqs_needs_queue_urls_everywhere() {
        let problems = parse(&["--publisher=sqs", "--twilio-status-queue=status"]).problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("INGEST_INBOUND_QUEUE"));
        assert!(problems[1].contains("INGEST_STATUS_QUEUE"));
        assert!(problems[2].contains("INGEST_QUARANTINE_QUEUE"));
        assert!(problems[3].contains("INGEST_TWILIO_STATUS_QUEUE"));
        let ok = parse(&[
            "--publisher=sqs",
            "--inbound-queue",
            Q,
            "--status-queue",
            "http://127.0.0.1:5000/123456789012/st.fifo",
            "--quarantine-queue",
            Q,
        ]);
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let slow = parse(&[
            "--publisher=sqs",
            "--inbound-queue",
            Q,
            "--status-queue",
            Q,
            "--quarantine-queue",
            Q,
            "--sqs-publish-timeout-ms=10000",
        ]);
        assert_eq!(slow.problems().len(), 1);
    }

    #[test]
    fn overrides_are_listed_per_carrier_and_kind() {
        let c = parse(&[
            "--bandwidth-inbound-queue=bw-in",
            "--inteliquent-status-queue=iq-st",
        ]);
        let overrides = c.queue_overrides();
        assert_eq!(overrides.len(), 2);
        assert_eq!(
            (overrides[0].0, overrides[0].1, overrides[0].2.as_str()),
            (Carrier::Bandwidth, EventKind::Inbound, "bw-in")
        );
        assert_eq!(
            (overrides[1].0, overrides[1].1, overrides[1].2.as_str()),
            (Carrier::Inteliquent, EventKind::Status, "iq-st")
        );
        assert_eq!(
            override_flag(Carrier::Messagebird, EventKind::Status),
            "--messagebird-status-queue (INGEST_MESSAGEBIRD_STATUS_QUEUE)"
        );
    }

    #[test]
    fn redis_needs_a_url_that_never_prints_its_password() {
        let problems = parse(&["--dedupe=redis"]).problems();
        assert_eq!(
            problems,
            ["--dedupe redis needs --redis-url (INGEST_REDIS_URL)"]
        );
        // An invalid URL is reported without its value (it may hold a password).
        let bad = parse(&["--dedupe=redis", "--redis-url=http://:pw-s3cret@x"]).problems();
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].contains("value not shown") && !bad[0].contains("s3cret"),
            "{bad:?}"
        );
        let c = parse(&[
            "--dedupe=redis",
            "--redis-url=redis://user:s3cret@cache.internal:6379/2?x=1",
        ]);
        assert!(c.problems().is_empty());
        let url = c.redis_url.unwrap();
        assert_eq!(url.to_string(), "redis://cache.internal:6379");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(url.expose().contains("s3cret"));
    }

    #[test]
    fn a_listener_off_loopback_needs_credentials_or_the_insecure_flag() {
        let open = parse(&["--grpc-listen=0.0.0.0:50051"]).problems();
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(open[0].contains("--grpc-insecure"), "{open:?}");
        for ok in [
            &["--grpc-listen=0.0.0.0:50051", "--grpc-insecure"][..],
            &["--grpc-listen=0.0.0.0:50051", "--grpc-tokens-file=/t"],
            &[
                "--grpc-listen=[::]:50051",
                "--grpc-tokens=edge:xxxxxxxxxxxxxxxxxxxx",
            ],
            &[
                "--grpc-listen=10.1.2.3:50051",
                "--grpc-tls-cert=/c",
                "--grpc-tls-key=/k",
                "--grpc-tls-client-ca=/ca",
            ],
            &["--grpc-listen=127.0.0.2:50051"],
            &["--grpc-listen=[::1]:50051"],
        ] {
            assert!(parse(ok).problems().is_empty(), "{ok:?}");
        }
        // TLS alone authenticates nobody.
        let tls_only = parse(&[
            "--grpc-listen=0.0.0.0:50051",
            "--grpc-tls-cert=/c",
            "--grpc-tls-key=/k",
        ]);
        assert_eq!(tls_only.problems().len(), 1);
    }

    #[test]
    fn tls_flags_come_in_pairs_and_inline_tokens_never_print() {
        let p = parse(&["--grpc-tls-cert=/c", "--grpc-tls-client-ca=/ca"]).problems();
        assert_eq!(
            p,
            ["--grpc-tls-cert needs --grpc-tls-key (INGEST_GRPC_TLS_KEY)"]
        );
        let p = parse(&["--grpc-tls-client-ca=/ca"]).problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("mTLS) needs --grpc-tls-cert"), "{p:?}");
        assert!(parse(&["--grpc-tls-key=/k"]).problems()[0].contains("needs --grpc-tls-cert"));
        let c = parse(&["--grpc-tokens=edge:supersecretsupersecret"]);
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn queue_urls_are_recognized() {
        assert!(is_queue_url(Q));
        assert!(is_queue_url("http://localhost:4566/000000000000/q.fifo"));
        assert!(!is_queue_url("inbound"));
        assert!(!is_queue_url("https://sqs.us-east-1.amazonaws.com/q"));
        assert!(!is_queue_url("https:///1/q"));
    }
}
