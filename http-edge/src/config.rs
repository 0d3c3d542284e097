//! Configuration of the edge, from flags and `INGEST_*` environment variables.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ingest_core::config::{CoreConfig, RuntimeConfig};

use crate::{
    auth::{BasicVerifier, BearerVerifier, Disabled, FailClosed, Verifier},
    secret::{self, SecretList},
};

/// carrier-ingest edge: public HTTP webhooks for Bandwidth, Twilio, MessageBird and Inteliquent.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "http-edge", version)]
pub struct EdgeCli {
    /// Edge settings.
    #[command(flatten)]
    pub edge: EdgeConfig,
    /// Carrier credentials.
    #[command(flatten)]
    pub secrets: SecretsConfig,
    /// Core settings, used when the core runs embedded (`--embedded-core`).
    #[command(flatten)]
    pub core: CoreConfig,
    /// Process settings.
    #[command(flatten)]
    pub runtime: RuntimeConfig,
}

/// Settings of the HTTP edge.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeConfig {
    /// Address the HTTP server listens on.
    #[arg(long, env = "INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// gRPC URL of ingest-core (ignored with --embedded-core).
    #[arg(
        long,
        env = "INGEST_CORE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub core_url: String,
    /// Run ingest-core inside this process, listening on --grpc-listen.
    #[arg(long, env = "INGEST_EMBEDDED_CORE")]
    pub embedded_core: bool,
    /// DEVELOPMENT ONLY: accept webhooks without checking their authenticity.
    #[arg(long, env = "INGEST_INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,
    /// Local development: same as --embedded-core --insecure-skip-verify.
    #[arg(long)]
    pub dev: bool,
    /// Deadline of each call to the core, in milliseconds (carriers time out after 10–15 s).
    #[arg(long, env = "INGEST_CORE_TIMEOUT_MS", default_value_t = 5_000)]
    pub core_timeout_ms: u64,
    /// Deadline of a whole webhook request, in milliseconds.
    #[arg(long, env = "INGEST_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 8_000)]
    pub http_request_timeout_ms: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "INGEST_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub body_limit_bytes: usize,
    /// Most webhook requests in flight; more are shed with 503.
    #[arg(long, env = "INGEST_HTTP_CONCURRENCY_LIMIT", default_value_t = 2048)]
    pub http_concurrency_limit: usize,
    /// Re-resolve the core URL's host name every this many seconds and balance calls over every
    /// address it returns (a headless Service in Kubernetes). 0: one connection, no balancing.
    #[arg(long, env = "INGEST_CORE_DNS_REFRESH_SECS", default_value_t = 0)]
    pub core_dns_refresh_secs: u64,
    /// Public base URL carriers call (e.g. `https://hooks.example.com`), used to check
    /// signatures over the URL the carrier signed.
    #[arg(long, env = "INGEST_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
}

impl EdgeConfig {
    /// Whether the core runs in this process.
    pub fn embedded(&self) -> bool {
        self.embedded_core || self.dev
    }

    /// Whether authenticity checks are off.
    pub fn skip_verify(&self) -> bool {
        self.insecure_skip_verify || self.dev
    }

    /// Deadline of each core call.
    pub fn core_timeout(&self) -> Duration {
        Duration::from_millis(self.core_timeout_ms)
    }

    /// Deadline of a whole webhook request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http_request_timeout_ms)
    }
}

/// Carrier credentials, inline or from files (Kubernetes Secrets mounted as files). Both forms
/// may be given; their values are combined. Values never appear in `--help` or logs.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretsConfig {
    /// Bandwidth callback credentials, comma-separated `user:password` pairs.
    #[arg(long, env = "INGEST_BANDWIDTH_BASIC_AUTH", hide_env_values = true, value_parser = secret::parse_list)]
    pub bandwidth_basic_auth: Option<SecretList>,
    /// File holding Bandwidth callback credentials (one pair per line or comma-separated).
    #[arg(long, env = "INGEST_BANDWIDTH_BASIC_AUTH_FILE")]
    pub bandwidth_basic_auth_file: Option<PathBuf>,
    /// Inteliquent bearer tokens, comma-separated (several for rotation).
    #[arg(long, env = "INGEST_INTELIQUENT_TOKENS", hide_env_values = true, value_parser = secret::parse_list)]
    pub inteliquent_tokens: Option<SecretList>,
    /// File holding Inteliquent bearer tokens.
    #[arg(long, env = "INGEST_INTELIQUENT_TOKENS_FILE")]
    pub inteliquent_tokens_file: Option<PathBuf>,
    /// Twilio auth tokens, comma-separated (rotation, subaccounts).
    #[arg(long, env = "INGEST_TWILIO_AUTH_TOKENS", hide_env_values = true, value_parser = secret::parse_list)]
    pub twilio_auth_tokens: Option<SecretList>,
    /// File holding Twilio auth tokens.
    #[arg(long, env = "INGEST_TWILIO_AUTH_TOKENS_FILE")]
    pub twilio_auth_tokens_file: Option<PathBuf>,
    /// MessageBird signing keys, comma-separated.
    #[arg(long, env = "INGEST_MESSAGEBIRD_SIGNING_KEYS", hide_env_values = true, value_parser = secret::parse_list)]
    pub messagebird_signing_keys: Option<SecretList>,
    /// File holding MessageBird signing keys.
    #[arg(long, env = "INGEST_MESSAGEBIRD_SIGNING_KEYS_FILE")]
    pub messagebird_signing_keys_file: Option<PathBuf>,
}

fn combined(
    inline: &Option<SecretList>,
    file: &Option<PathBuf>,
    problems: &mut Vec<String>,
) -> SecretList {
    let mut all = inline.clone().unwrap_or_default();
    if let Some(path) = file {
        match secret::read_list_file(path) {
            // An empty file (a Secret key left blank for a carrier not in use) configures
            // nothing: that carrier fails closed, which the start-up log reports.
            Ok(list) => all.extend(list),
            Err(e) => problems.push(e),
        }
    }
    all
}

/// The verifier of each carrier.
#[derive(Clone)]
pub struct Verifiers {
    /// Bandwidth.
    pub bandwidth: Arc<dyn Verifier>,
    /// Twilio.
    pub twilio: Arc<dyn Verifier>,
    /// MessageBird.
    pub messagebird: Arc<dyn Verifier>,
    /// Inteliquent.
    pub inteliquent: Arc<dyn Verifier>,
}

impl std::fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifiers")
            .field("bandwidth", &self.bandwidth.describe())
            .field("twilio", &self.twilio.describe())
            .field("messagebird", &self.messagebird.describe())
            .field("inteliquent", &self.inteliquent.describe())
            .finish()
    }
}

impl Verifiers {
    /// Builds each carrier's verifier, or lists every configuration problem.
    pub fn from_config(edge: &EdgeConfig, secrets: &SecretsConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let bandwidth = combined(
            &secrets.bandwidth_basic_auth,
            &secrets.bandwidth_basic_auth_file,
            &mut problems,
        );
        let inteliquent = combined(
            &secrets.inteliquent_tokens,
            &secrets.inteliquent_tokens_file,
            &mut problems,
        );
        let twilio = combined(
            &secrets.twilio_auth_tokens,
            &secrets.twilio_auth_tokens_file,
            &mut problems,
        );
        let messagebird = combined(
            &secrets.messagebird_signing_keys,
            &secrets.messagebird_signing_keys_file,
            &mut problems,
        );
        for pair in bandwidth.iter() {
            if !pair.expose().contains(&b':') {
                problems.push("Bandwidth credentials must be user:password pairs".to_owned());
                break;
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        if edge.skip_verify() {
            let off: Arc<dyn Verifier> = Arc::new(Disabled);
            return Ok(Self {
                bandwidth: off.clone(),
                twilio: off.clone(),
                messagebird: off.clone(),
                inteliquent: off,
            });
        }
        fn or_closed(
            list: SecretList,
            make: impl FnOnce(SecretList) -> Arc<dyn Verifier>,
        ) -> Arc<dyn Verifier> {
            if list.is_empty() {
                Arc::new(FailClosed)
            } else {
                make(list)
            }
        }
        Ok(Self {
            bandwidth: or_closed(bandwidth, |l| Arc::new(BasicVerifier::new(l))),
            inteliquent: or_closed(inteliquent, |l| Arc::new(BearerVerifier::new(l))),
            // Real Twilio and MessageBird signature checks are not wired yet: fail closed.
            twilio: or_closed(twilio, |_| Arc::new(FailClosed)),
            messagebird: or_closed(messagebird, |_| Arc::new(FailClosed)),
        })
    }

    /// Logs the scheme in force for each carrier; loudly when verification is off.
    pub fn log(&self, skip: bool) {
        if skip {
            tracing::warn!(
                "!!! AUTHENTICITY CHECKS ARE OFF (--insecure-skip-verify / --dev): anyone can post fake carrier events. Never run this way in production. !!!"
            );
        }
        for (carrier, v) in [
            ("bandwidth", &self.bandwidth),
            ("twilio", &self.twilio),
            ("messagebird", &self.messagebird),
            ("inteliquent", &self.inteliquent),
        ] {
            tracing::info!(carrier, scheme = %v.describe(), "webhook verification");
        }
    }
}
