//! Configuration of the edge, from flags and `INGEST_*` environment variables.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ingest_core::config::{CoreConfig, RuntimeConfig};

use crate::{
    abuse::AbuseConfig,
    auth::{
        AllOf, BasicVerifier, BearerVerifier, BodyHmacVerifier, Disabled, FailClosed,
        MessageBirdPolicy, MessageBirdScheme, MessageBirdVerifier, PublicUrl, TwilioVerifier,
        Verifier,
    },
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
    /// TLS and token for the calls to the core.
    #[command(flatten)]
    pub core_auth: crate::core_client::CoreAuthConfig,
    /// Per-client rate limits and source allowlists.
    #[command(flatten)]
    pub abuse: AbuseConfig,
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
    /// gRPC URL of ingest-core (ignored with --embedded-core). Several replicas may be listed,
    /// comma-separated (`http://10.0.0.5:50051,http://10.0.0.6:50051`): calls are spread over
    /// them, and a call that a replica cannot take (unreachable, connection lost, UNAVAILABLE)
    /// is retried on another within --core-timeout-ms.
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
    /// Longest wait for a request's headers (also bounds idle keep-alive connections), in
    /// milliseconds.
    #[arg(long, env = "INGEST_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// Most open HTTP connections; past it the listener stops accepting until one closes.
    #[arg(long, env = "INGEST_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "INGEST_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub body_limit_bytes: usize,
    /// Most webhook requests in flight; more are shed with 503.
    #[arg(long, env = "INGEST_HTTP_CONCURRENCY_LIMIT", default_value_t = 2048)]
    pub http_concurrency_limit: usize,
    /// Re-resolve the core URL's host name every this many seconds and balance calls over every
    /// address it returns (a headless Service in Kubernetes), failing over between them. 0: one
    /// connection per URL in --core-url.
    #[arg(long, env = "INGEST_CORE_DNS_REFRESH_SECS", default_value_t = 0)]
    pub core_dns_refresh_secs: u64,
    /// Public base URL carriers call (e.g. `https://hooks.example.com`), used to check
    /// signatures over the URL the carrier signed.
    #[arg(long, env = "INGEST_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Proxies in front of the edge (comma-separated addresses or CIDR ranges) whose
    /// `Forwarded` / `X-Forwarded-Proto` / `X-Forwarded-Host` headers say which public URL was
    /// called. From any other peer those headers are ignored.
    #[arg(long, env = "INGEST_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Twilio AccountSids (comma-separated) whose signed calls are accepted; a genuine call from
    /// another account gets 403. Unset: any account whose auth token is configured.
    #[arg(long, env = "INGEST_TWILIO_ACCOUNT_SIDS")]
    pub twilio_account_sids: Option<String>,
    /// MessageBird signatures accepted: `jwt` (MessageBird-Signature-JWT), `legacy`
    /// (MessageBird-Signature + MessageBird-Request-Timestamp) or `any` (JWT when present, else
    /// `MessageBird-Signature: sha256=<hex>` of the body, else legacy).
    #[arg(long, env = "INGEST_MESSAGEBIRD_SCHEME", value_enum, default_value_t = MessageBirdScheme::Any)]
    pub messagebird_scheme: MessageBirdScheme,
    /// Legacy MessageBird timestamps further than this from our clock, either way, are rejected.
    #[arg(long, env = "INGEST_MESSAGEBIRD_MAX_AGE_SECS", default_value_t = 300)]
    pub messagebird_max_age_secs: u64,
    /// Clock leeway, in seconds, for the `nbf` and `exp` of a MessageBird-Signature-JWT.
    #[arg(long, env = "INGEST_MESSAGEBIRD_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub messagebird_jwt_leeway_secs: u64,
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
    /// Bandwidth `X-Bandwidth-Signature` keys, comma-separated: when set, the header (HMAC-SHA256
    /// of the raw body) is required, besides Basic credentials if those are set too.
    #[arg(long, env = "INGEST_BANDWIDTH_SIGNING_KEYS", hide_env_values = true, value_parser = secret::parse_list)]
    pub bandwidth_signing_keys: Option<SecretList>,
    /// File holding Bandwidth signing keys.
    #[arg(long, env = "INGEST_BANDWIDTH_SIGNING_KEYS_FILE")]
    pub bandwidth_signing_keys_file: Option<PathBuf>,
    /// Inteliquent `X-Inteliquent-Signature` keys, comma-separated: when set, the header
    /// (HMAC-SHA256 of the raw body) is required, besides a bearer token if tokens are set too.
    #[arg(long, env = "INGEST_INTELIQUENT_HMAC_KEYS", hide_env_values = true, value_parser = secret::parse_list)]
    pub inteliquent_hmac_keys: Option<SecretList>,
    /// File holding Inteliquent HMAC keys.
    #[arg(long, env = "INGEST_INTELIQUENT_HMAC_KEYS_FILE")]
    pub inteliquent_hmac_keys_file: Option<PathBuf>,
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

fn boxed(v: impl Verifier) -> Box<dyn Verifier> {
    Box::new(v)
}

/// The first and, when both are configured, the second: each configured check is required.
/// Neither: fail closed.
fn both(first: Option<Box<dyn Verifier>>, second: Option<Box<dyn Verifier>>) -> Arc<dyn Verifier> {
    match (first, second) {
        (None, None) => Arc::new(FailClosed),
        (Some(one), None) | (None, Some(one)) => Arc::from(one),
        (Some(a), Some(b)) => Arc::new(AllOf::new(vec![a, b])),
    }
}

/// `--twilio-account-sids`: `AC…` identifiers. A value that is not one is reported without
/// echoing it (it may be an auth token pasted into the wrong setting).
fn account_sids(list: Option<&str>, problems: &mut Vec<String>) -> Vec<String> {
    let sids: Vec<String> = list
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if sids
        .iter()
        .any(|s| !s.starts_with("AC") || !s.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        problems.push(
            "--twilio-account-sids must be comma-separated Twilio account SIDs (AC…)".to_owned(),
        );
    }
    sids
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
        let mut load = |inline: &Option<SecretList>, file: &Option<PathBuf>| {
            combined(inline, file, &mut problems)
        };
        let bandwidth = load(
            &secrets.bandwidth_basic_auth,
            &secrets.bandwidth_basic_auth_file,
        );
        let bandwidth_keys = load(
            &secrets.bandwidth_signing_keys,
            &secrets.bandwidth_signing_keys_file,
        );
        let inteliquent = load(
            &secrets.inteliquent_tokens,
            &secrets.inteliquent_tokens_file,
        );
        let inteliquent_keys = load(
            &secrets.inteliquent_hmac_keys,
            &secrets.inteliquent_hmac_keys_file,
        );
        let twilio = load(
            &secrets.twilio_auth_tokens,
            &secrets.twilio_auth_tokens_file,
        );
        let messagebird = load(
            &secrets.messagebird_signing_keys,
            &secrets.messagebird_signing_keys_file,
        );
        for pair in bandwidth.iter() {
            if !pair.expose().contains(&b':') {
                problems.push("Bandwidth credentials must be user:password pairs".to_owned());
                break;
            }
        }
        let public_url = PublicUrl::new(
            edge.public_base_url.as_deref(),
            edge.trusted_proxies.as_deref(),
        )
        .unwrap_or_else(|p| {
            problems.extend(p);
            PublicUrl::default()
        });
        let account_sids = account_sids(edge.twilio_account_sids.as_deref(), &mut problems);
        if edge.messagebird_max_age_secs == 0 || edge.messagebird_max_age_secs > 3_600 {
            problems.push("--messagebird-max-age-secs must be between 1 and 3600".to_owned());
        }
        if edge.messagebird_jwt_leeway_secs > 300 {
            problems.push("--messagebird-jwt-leeway-secs must be at most 300".to_owned());
        }
        if !edge.skip_verify() && !public_url.is_configured() {
            // Rebuilding the signed URL from the Host header breaks behind any proxy and silently
            // rejects genuine calls: refuse to start instead.
            let fix = "set --public-base-url (INGEST_PUBLIC_BASE_URL) to the URL the carrier calls, or --trusted-proxies (INGEST_TRUSTED_PROXIES)";
            if !twilio.is_empty() {
                problems.push(format!("Twilio signatures cover the public URL: {fix}"));
            }
            if !messagebird.is_empty() && edge.messagebird_scheme != MessageBirdScheme::Legacy {
                problems.push(format!(
                    "MessageBird JWT signatures cover the public URL: {fix}, or use --messagebird-scheme legacy"
                ));
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
        let public_url = Arc::new(public_url);
        let policy = MessageBirdPolicy {
            scheme: edge.messagebird_scheme,
            max_age_secs: edge.messagebird_max_age_secs,
            jwt_leeway_secs: edge.messagebird_jwt_leeway_secs,
        };
        Ok(Self {
            bandwidth: both(
                (!bandwidth.is_empty()).then(|| boxed(BasicVerifier::new(bandwidth))),
                (!bandwidth_keys.is_empty())
                    .then(|| boxed(BodyHmacVerifier::bandwidth(bandwidth_keys))),
            ),
            inteliquent: both(
                (!inteliquent.is_empty()).then(|| boxed(BearerVerifier::new(inteliquent))),
                (!inteliquent_keys.is_empty())
                    .then(|| boxed(BodyHmacVerifier::inteliquent(inteliquent_keys))),
            ),
            twilio: both(
                (!twilio.is_empty()).then(|| {
                    boxed(TwilioVerifier::new(
                        twilio,
                        public_url.clone(),
                        account_sids,
                    ))
                }),
                None,
            ),
            messagebird: both(
                (!messagebird.is_empty())
                    .then(|| boxed(MessageBirdVerifier::new(messagebird, policy, public_url))),
                None,
            ),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn verifiers(args: &[&str]) -> Result<Verifiers, Vec<String>> {
        let mut argv = vec!["http-edge"];
        argv.extend_from_slice(args);
        let cli = EdgeCli::try_parse_from(argv).unwrap();
        Verifiers::from_config(&cli.edge, &cli.secrets)
    }

    #[test]
    fn url_signing_schemes_need_a_public_url_unless_verification_is_off() {
        let err = verifiers(&["--twilio-auth-tokens", "t"]).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains("Twilio signatures cover the public URL"));
        let err = verifiers(&["--messagebird-signing-keys", "k"]).unwrap_err();
        assert!(err[0].contains("MessageBird JWT"), "{err:?}");
        let err = verifiers(&[
            "--messagebird-signing-keys",
            "k",
            "--messagebird-scheme",
            "jwt",
        ])
        .unwrap_err();
        assert!(err[0].contains("MessageBird JWT"), "{err:?}");
        for ok in [
            &[
                "--twilio-auth-tokens",
                "t",
                "--public-base-url",
                "https://h.example",
            ][..],
            &[
                "--twilio-auth-tokens",
                "t",
                "--trusted-proxies",
                "10.0.0.0/8",
            ],
            &[
                "--messagebird-signing-keys",
                "k",
                "--messagebird-scheme",
                "legacy",
            ],
            &["--twilio-auth-tokens", "t", "--insecure-skip-verify"],
        ] {
            assert!(verifiers(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_without_secrets() {
        let err = verifiers(&[
            "--twilio-auth-tokens",
            "tok",
            "--public-base-url",
            "hooks.example.com",
            "--trusted-proxies",
            "10.0.0.0/8,bogus",
            "--twilio-account-sids",
            "AC1,my-secret-token",
            "--messagebird-max-age-secs",
            "0",
            "--messagebird-jwt-leeway-secs",
            "301",
        ])
        .unwrap_err();
        // base URL, proxy, SIDs, max age, leeway, and Twilio without a valid public URL.
        assert_eq!(err.len(), 6, "{err:?}");
        assert!(
            !err.iter().any(|e| e.contains("my-secret-token")),
            "{err:?}"
        );
    }

    #[test]
    fn each_carrier_gets_the_schemes_configured() {
        let v = verifiers(&[
            "--public-base-url",
            "https://hooks.example.com",
            "--twilio-auth-tokens",
            "a,b",
            "--messagebird-signing-keys",
            "k",
            "--bandwidth-basic-auth",
            "u:p",
            "--bandwidth-signing-keys",
            "k1,k2",
            "--inteliquent-hmac-keys",
            "h",
        ])
        .unwrap();
        assert!(
            v.bandwidth
                .describe()
                .starts_with("HTTP Basic (1 credential pairs accepted) AND X-Bandwidth-Signature"),
            "{}",
            v.bandwidth.describe()
        );
        assert!(
            v.inteliquent
                .describe()
                .starts_with("X-Inteliquent-Signature")
        );
        assert!(v.twilio.describe().contains("2 auth token(s)"));
        assert!(v.messagebird.describe().contains("else legacy"));
        let none = verifiers(&[]).unwrap();
        for v in [
            none.bandwidth,
            none.twilio,
            none.messagebird,
            none.inteliquent,
        ] {
            assert!(v.describe().contains("fail closed"));
        }
    }
}
