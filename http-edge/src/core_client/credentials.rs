//! How the edge (and `ingestctl`) prove who they are to ingest-core: TLS with the CA that
//! signed the core's certificate, a client certificate for mTLS, and a bearer token sent on
//! every call. Re-read when their files change (see `CoreClient::watch_credentials`).

use std::path::PathBuf;

use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, ClientTlsConfig, Identity},
};

/// Settings of the connection to ingest-core (flags and `INGEST_CORE_*` variables).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CoreAuthConfig {
    /// PEM CA bundle that the core's certificate must chain to: needed for `https://` core
    /// URLs (the system's roots are never used).
    #[arg(long, env = "INGEST_CORE_TLS_CA")]
    pub core_tls_ca: Option<PathBuf>,
    /// Name the core's certificate must carry (a DNS SAN), when it is not the host of the URL:
    /// needed with --core-dns-refresh-secs (replicas are dialled by address) or IP URLs.
    #[arg(long, env = "INGEST_CORE_TLS_SERVER_NAME")]
    pub core_tls_server_name: Option<String>,
    /// PEM client certificate chain for mTLS (needs --core-tls-key).
    #[arg(long, env = "INGEST_CORE_TLS_CERT")]
    pub core_tls_cert: Option<PathBuf>,
    /// PEM private key of --core-tls-cert.
    #[arg(long, env = "INGEST_CORE_TLS_KEY")]
    pub core_tls_key: Option<PathBuf>,
    /// File holding the bearer token sent to the core on every call (`authorization: Bearer`);
    /// surrounding whitespace is ignored. Never logged.
    #[arg(long, env = "INGEST_CORE_TOKEN_FILE")]
    pub core_token_file: Option<PathBuf>,
    /// The bearer token inline (instead of --core-token-file). Never logged.
    #[arg(long, env = "INGEST_CORE_TOKEN", hide_env_values = true)]
    pub core_token: Option<ingest_core::config::SecretString>,
    /// How often the edge re-reads the CA, client certificate, key and token files, in
    /// seconds; changed ones are used for new connections and calls.
    #[arg(long, env = "INGEST_CORE_RELOAD_SECS", default_value_t = 10)]
    pub core_reload_secs: u64,
}

/// A digest of the credential files' contents (unreadable ones count as empty), to notice a
/// change without keeping their contents.
pub(super) fn fingerprint(config: &CoreAuthConfig) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for path in [
        &config.core_tls_ca,
        &config.core_tls_cert,
        &config.core_tls_key,
        &config.core_token_file,
    ]
    .into_iter()
    .flatten()
    {
        let contents = std::fs::read(path).unwrap_or_default();
        hash.update((contents.len() as u64).to_be_bytes());
        hash.update(&contents);
    }
    hash.finalize().into()
}

/// The loaded credentials: TLS settings for `https://` URLs and the token header value.
#[derive(Clone, Default)]
pub struct CoreCredentials {
    /// TLS for `https://` core URLs.
    pub tls: Option<ClientTlsConfig>,
    /// `Bearer <token>`, marked sensitive (never printed, never HPACK-indexed).
    pub token: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for CoreCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreCredentials")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

fn read(path: &PathBuf, what: &str, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| problems.push(format!("{what}: cannot read {}: {e}", path.display())))
        .ok()
}

impl CoreCredentials {
    /// Loads what `config` names for calls to `url` (comma-separated core URLs), reporting every
    /// problem at once (never a token's value).
    pub fn load(config: &CoreAuthConfig, url: &str) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let https = url.split(',').any(|u| u.trim().starts_with("https://"));
        let http = url.split(',').any(|u| u.trim().starts_with("http://"));
        if https && http {
            problems.push("--core-url mixes http:// and https:// URLs".to_owned());
        }
        let mut tls = None;
        match (&config.core_tls_ca, https) {
            (None, true) => problems.push(
                "https:// core URLs need --core-tls-ca (INGEST_CORE_TLS_CA), the CA of the core's certificate".to_owned(),
            ),
            (Some(_), false) => problems.push(
                "--core-tls-ca is set but the core URL is not https://".to_owned(),
            ),
            (Some(ca), true) => {
                if let Some(pem) = read(ca, "--core-tls-ca", &mut problems) {
                    tls = Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
                }
            }
            (None, false) => {}
        }
        match (&config.core_tls_cert, &config.core_tls_key) {
            (Some(cert), Some(key)) => {
                if tls.is_none() && !https {
                    problems.push(
                        "--core-tls-cert (mTLS) needs an https:// core URL and --core-tls-ca"
                            .to_owned(),
                    );
                }
                let cert = read(cert, "--core-tls-cert", &mut problems);
                let key = read(key, "--core-tls-key", &mut problems);
                if let (Some(cert), Some(key), Some(t)) = (cert, key, tls.take()) {
                    tls = Some(t.identity(Identity::from_pem(cert, key)));
                }
            }
            (Some(_), None) => problems.push("--core-tls-cert needs --core-tls-key".to_owned()),
            (None, Some(_)) => problems.push("--core-tls-key needs --core-tls-cert".to_owned()),
            (None, None) => {}
        }
        if let Some(name) = &config.core_tls_server_name {
            match tls.take() {
                Some(t) => tls = Some(t.domain_name(name.clone())),
                None => {
                    problems.push("--core-tls-server-name needs an https:// core URL".to_owned())
                }
            }
        }
        let token = match (&config.core_token, &config.core_token_file) {
            (Some(_), Some(_)) => {
                problems.push("set --core-token or --core-token-file, not both".to_owned());
                None
            }
            (Some(inline), None) => Some(inline.expose().trim().to_owned()),
            (None, Some(path)) => read(path, "--core-token-file", &mut problems)
                .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned()),
            (None, None) => None,
        };
        let token = match token {
            Some(t) if t.is_empty() => {
                // An empty Secret: nothing to send, and a core that wants tokens refuses.
                None
            }
            Some(t) => match MetadataValue::try_from(format!("Bearer {t}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    Some(value)
                }
                Err(_) => {
                    problems.push(
                        "the core token must be printable ASCII (value not shown)".to_owned(),
                    );
                    None
                }
            },
            None => None,
        };
        if config.core_reload_secs == 0 {
            problems.push("--core-reload-secs must be positive".to_owned());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self { tls, token })
    }

    /// One line for the start-up log: TLS on or off, a token or none (never its value).
    pub fn describe(&self) -> String {
        format!(
            "tls: {}, token: {}",
            if self.tls.is_some() { "on" } else { "off" },
            if self.token.is_some() { "set" } else { "none" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        auth: CoreAuthConfig,
    }

    fn load(flags: &[&str], url: &str) -> Result<CoreCredentials, Vec<String>> {
        let args = Args::try_parse_from(std::iter::once("x").chain(flags.iter().copied())).unwrap();
        CoreCredentials::load(&args.auth, url)
    }

    #[test]
    fn https_needs_a_ca_and_tokens_never_print() {
        let err = load(&[], "https://core:50051").unwrap_err();
        assert!(err[0].contains("--core-tls-ca"), "{err:?}");
        let err = load(&["--core-tls-ca=/nonexistent"], "http://core:50051").unwrap_err();
        assert!(err[0].contains("not https"), "{err:?}");
        let err = load(&["--core-tls-cert=/c"], "http://core:50051").unwrap_err();
        assert!(
            err.iter().any(|e| e.contains("needs --core-tls-key")),
            "{err:?}"
        );
        let err = load(&["--core-tls-server-name=core"], "http://a:1").unwrap_err();
        assert!(err[0].contains("https"), "{err:?}");

        let creds = load(&["--core-token", " tok-secret-value \n"], "http://a:1").unwrap();
        assert_eq!(
            creds.token.as_ref().unwrap().to_str().unwrap(),
            "Bearer tok-secret-value"
        );
        assert!(!format!("{creds:?}").contains("tok-secret"));
        let err = load(&["--core-token", "bad\u{7f}"], "http://a:1").unwrap_err();
        assert!(!err[0].contains("bad"), "{err:?}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "").unwrap();
        let creds = load(&["--core-token-file", file.to_str().unwrap()], "http://a:1").unwrap();
        assert!(creds.token.is_none());
    }
}
