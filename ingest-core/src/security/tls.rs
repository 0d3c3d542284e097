//! TLS for the core's gRPC listener: a rustls server configuration built from PEM files
//! (certificate chain, key, and optionally the CA that client certificates must chain to), and
//! the accept loop that hands tonic only connections whose handshake completed.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{net::TcpListener, net::TcpStream, sync::mpsc};
use tokio_rustls::server::TlsStream;

use super::{REFUSAL_LOG, Watched, count_failure};

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past it the accept loop waits for one to finish.
const MAX_HANDSHAKES: usize = 256;

/// The process's crypto provider: aws-lc-rs, the one rustls is already built with here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process-wide rustls provider (the gRPC client and the AWS SDK
/// use the default). Safe to call more than once.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in the file"));
    }
    Ok(certs)
}

/// The server configuration from the PEM contents of the certificate chain, the private key
/// and, for mTLS, the client CA bundle (`contents` in that order).
pub fn server_config(contents: &[Vec<u8>]) -> Result<ServerConfig, String> {
    let (cert, key, client_ca) = match contents {
        [cert, key] => (cert, key, None),
        [cert, key, ca] => (cert, key, Some(ca)),
        _ => return Err("TLS needs a certificate and a key".to_owned()),
    };
    let chain = certificates(cert, "--grpc-tls-cert")?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| "--grpc-tls-key: no PEM private key in the file".to_owned())?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "--grpc-tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--grpc-tls-client-ca: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .map_err(|e| format!("--grpc-tls-client-ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("--grpc-tls-cert/--grpc-tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The submitter named by a client certificate: its first DNS subject alternative name.
pub fn certificate_name(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_dns_names().next().map(str::to_owned)
}

/// Accepts TCP connections on `listener` and completes each TLS handshake (within
/// [`HANDSHAKE_TIMEOUT`], with the configuration current at that moment) in its own task;
/// the stream yields only the connections that completed it. Dropping the stream stops the
/// accept loop.
pub fn incoming(listener: TcpListener, config: Arc<Watched<ServerConfig>>) -> TlsIncoming {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(listener, config, tx));
    TlsIncoming { rx, task }
}

/// The connections that completed their TLS handshake; see [`incoming`].
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsStream<TcpStream>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_util::Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|s| s.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<Watched<ServerConfig>>,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "gRPC accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match handshake(acceptor, tcp, peer).await {
                Some(stream) => {
                    let _ = tx.send(stream).await;
                }
                None => count_failure("tls_handshake"),
            }
        });
    }
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            // The peer's fault (wrong CA, expired or missing client certificate, plaintext):
            // no detail beyond rustls' own message, which never holds key material.
            if let Some(suppressed) = REFUSAL_LOG.permit() {
                tracing::warn!(%peer, %error, suppressed, "gRPC TLS handshake failed");
            }
            None
        }
        Err(_) => {
            if let Some(suppressed) = REFUSAL_LOG.permit() {
                tracing::warn!(%peer, suppressed, "gRPC TLS handshake timed out");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};

    use super::*;

    fn leaf(dns: &str) -> (String, String, Vec<u8>) {
        let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    #[test]
    fn a_matching_pair_builds_and_anything_else_is_refused_with_the_flag_named() {
        let (cert, key, _) = leaf("core.test");
        let (_, other_key, _) = leaf("core.test");
        let config = server_config(&[cert.clone().into(), key.clone().into()]).unwrap();
        assert_eq!(config.alpn_protocols, [b"h2".to_vec()]);
        // mTLS with the certificate as its own CA.
        assert!(
            server_config(&[cert.clone().into(), key.clone().into(), cert.clone().into()]).is_ok()
        );

        let mismatch = server_config(&[cert.clone().into(), other_key.into()]).unwrap_err();
        assert!(
            mismatch.contains("--grpc-tls-cert/--grpc-tls-key"),
            "{mismatch}"
        );
        let no_cert = server_config(&[b"junk".to_vec(), key.clone().into()]).unwrap_err();
        assert!(no_cert.contains("--grpc-tls-cert"), "{no_cert}");
        let no_key = server_config(&[cert.clone().into(), b"junk".to_vec()]).unwrap_err();
        assert!(no_key.contains("--grpc-tls-key"), "{no_key}");
        let bad_ca = server_config(&[cert.into(), key.into(), b"junk".to_vec()]).unwrap_err();
        assert!(bad_ca.contains("--grpc-tls-client-ca"), "{bad_ca}");
    }

    #[test]
    fn a_client_certificate_names_its_first_dns_name() {
        let (_, _, der) = leaf("batch-loader.internal");
        assert_eq!(
            certificate_name(&CertificateDer::from(der)).as_deref(),
            Some("batch-loader.internal")
        );
        assert_eq!(certificate_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
