//! Authenticated, encrypted internal gRPC, against the real binaries: the core's listener with
//! TLS, client certificates (mTLS) and bearer tokens; refusals for every missing or wrong
//! credential; the edge with valid credentials end to end; token rotation and certificate
//! reload from the files; fail-closed start-up off loopback.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use carrier_ingest::v1::{
    Carrier, InboundMessage, SubmitInboundRequest, ingest_service_client::IngestServiceClient,
};
use tonic::{
    Code, Request, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    harness::{Edge, scrape},
    pki::{Ca, Leaf, SERVER_NAME, write, write_leaf},
    servers::free_port,
    spec::BANDWIDTH_INBOUND,
    two_cores::ingest_core_binary,
};

pub(crate) const EDGE_TOKEN: &str = "edge-token-0123456789abcdef";
const OLD_TOKEN: &str = "batch-token-old-0123456789";
const NEW_TOKEN: &str = "batch-token-new-0123456789";

/// A core that requires TLS, client certificates and tokens (an edge process with its core
/// embedded: `edge`), and a separate edge in front of it that holds valid ones (`front`; an
/// embedded core is called in place, without gRPC, so the client side needs its own process).
pub(crate) struct Secured {
    pub(crate) ca: Ca,
    /// Holds `ca.pem`, `edge.pem` and `edge.key` (the edge's client certificate), `tokens`.
    pub(crate) dir: tempfile::TempDir,
    tokens: PathBuf,
    /// The process whose core requires the credentials (its spool, its gRPC port, its log).
    pub(crate) edge: Edge,
    /// An edge calling that core over TLS with a client certificate and a token.
    pub(crate) front: Edge,
}

/// An edge alone in front of `core`'s gRPC port, over TLS, with `client_args` (its
/// credentials).
async fn front_of(core: &Edge, client_args: &[&str]) -> Edge {
    let url = format!("https://{}", core.grpc);
    let mut front = Edge::without_core(&url, client_args).await;
    // Wait until it reaches the core (its /readyz asks the core's health over TLS).
    assert!(
        front.becomes_ready(Duration::from_secs(10)).await,
        "the front edge never reached the core:\n{}",
        front.log()
    );
    front
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub(crate) async fn secured() -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
    let (edge_cert, edge_key) = write_leaf(dir.path(), "edge", &ca.client("http-edge"));
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("# submitter:token\nedge:{EDGE_TOKEN}\nbatch:{OLD_TOKEN}\nbatch:{NEW_TOKEN}\n"),
    );
    let edge_token = write(dir.path(), "edge-token", &format!("{EDGE_TOKEN}\n"));
    let args = [
        "--insecure-skip-verify",
        "--grpc-tls-cert",
        s(&cert),
        "--grpc-tls-key",
        s(&key),
        "--grpc-tls-client-ca",
        s(&ca_file),
        "--grpc-tokens-file",
        s(&tokens),
        "--grpc-reload-secs",
        "1",
    ];
    let edge = Edge::start(&args, &[]).await;
    let front = front_of(
        &edge,
        &[
            "--core-tls-ca",
            s(&ca_file),
            "--core-tls-server-name",
            SERVER_NAME,
            "--core-tls-cert",
            s(&edge_cert),
            "--core-tls-key",
            s(&edge_key),
            "--core-token-file",
            s(&edge_token),
        ],
    )
    .await;
    Secured {
        ca,
        dir,
        tokens,
        edge,
        front,
    }
}

/// A channel to `addr` over TLS trusting `ca_pem`, presenting `identity` if given.
fn tls_channel(addr: SocketAddr, ca_pem: &str, identity: Option<&Leaf>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(SERVER_NAME);
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn plaintext_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn submit(channel: Channel, token: Option<&str>, id: &str) -> Result<String, Status> {
    let message = InboundMessage {
        carrier: Carrier::Twilio as i32,
        carrier_message_id: id.to_owned(),
        from: "+15559876543".into(),
        to: vec!["+15551234567".into()],
        text: "over gRPC".into(),
        ..Default::default()
    };
    let request = SubmitInboundRequest {
        message: Some(message),
    };
    IngestServiceClient::new(channel)
        .submit_inbound(with_token(request, token))
        .await
        .map(|r| r.into_inner().event_id)
}

async fn health(channel: Channel) -> Result<i32, Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// The call failed before reaching the service: a transport error (TLS refused), not an
/// answer from the core.
fn assert_transport_refusal(result: Result<String, Status>, what: &str) {
    let status = result.expect_err(what);
    assert!(
        std::error::Error::source(&status).is_some() || status.code() == Code::Unavailable,
        "{what}: expected a connection failure, got {status:?}"
    );
}

#[tokio::test]
async fn the_edge_with_valid_credentials_works_end_to_end() {
    let t = secured().await;
    // The front's /readyz was 200 (front_of waited for it): its health check passed TLS and mTLS.
    let reply = t.front.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await;
    assert_eq!(reply.status(), 200, "{}\n{}", t.front.log(), t.edge.log());
    assert_eq!(reply.headers()["x-ingest-outcome"], "accepted");
    let spooled = t.edge.spooled("inbound");
    assert_eq!(spooled.len(), 1);
    assert_eq!(
        spooled[0]["eventId"],
        reply.headers()["x-ingest-event-id"].to_str().unwrap()
    );
    let log = format!("{}{}", t.edge.log(), t.front.log());
    assert!(
        log.contains("submitter=edge"),
        "the submitter is named in logs:\n{log}"
    );
    assert!(
        !log.contains(EDGE_TOKEN) && !log.contains(OLD_TOKEN),
        "tokens never appear in logs"
    );

    // An internal submitter with its own certificate and token.
    let batch = t.ca.client("batch-loader");
    let channel = tls_channel(t.edge.grpc, &t.ca.pem, Some(&batch));
    submit(channel, Some(NEW_TOKEN), "SMgrpc-ok").await.unwrap();
    assert_eq!(t.edge.spooled("inbound").len(), 2);
}

#[tokio::test]
async fn calls_without_the_right_credentials_are_refused() {
    let t = secured().await;
    let addr = t.edge.grpc;
    let good = t.ca.client("batch-loader");

    // Plaintext to a TLS port.
    assert_transport_refusal(
        submit(plaintext_channel(addr), Some(NEW_TOKEN), "SMplain").await,
        "plaintext",
    );
    // The client does not trust the server (a CA the server's certificate is not from).
    let other = Ca::new("other CA");
    assert_transport_refusal(
        submit(
            tls_channel(addr, &other.pem, Some(&good)),
            Some(NEW_TOKEN),
            "SMca",
        )
        .await,
        "wrong CA",
    );
    // The server does not trust the client: no certificate, an untrusted one, an expired one.
    assert_transport_refusal(
        submit(
            tls_channel(addr, &t.ca.pem, None),
            Some(NEW_TOKEN),
            "SMnocert",
        )
        .await,
        "no client certificate",
    );
    assert_transport_refusal(
        submit(
            tls_channel(addr, &t.ca.pem, Some(&other.client("batch-loader"))),
            Some(NEW_TOKEN),
            "SMuntrusted",
        )
        .await,
        "untrusted client certificate",
    );
    assert_transport_refusal(
        submit(
            tls_channel(addr, &t.ca.pem, Some(&t.ca.expired_client("batch-loader"))),
            Some(NEW_TOKEN),
            "SMexpired",
        )
        .await,
        "expired client certificate",
    );
    // A good connection, but no token or a wrong one.
    let channel = tls_channel(addr, &t.ca.pem, Some(&good));
    for (token, what) in [
        (None, "no token"),
        (Some("batch-token-wrong-0123456789"), "wrong token"),
        (
            Some(&NEW_TOKEN[..NEW_TOKEN.len() - 1]),
            "a prefix of a token",
        ),
    ] {
        let status = submit(channel.clone(), token, "SMtoken").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(!status.message().contains("batch"), "{status:?}");
    }
    // Health needs no token (probes), but does need the TLS and the client certificate.
    assert_eq!(health(channel.clone()).await.unwrap(), 1, "SERVING");
    assert!(health(plaintext_channel(addr)).await.is_err());

    assert!(
        t.edge.spooled("inbound").is_empty(),
        "nothing refused was published"
    );
    let log = t.edge.log();
    assert!(log.contains("gRPC TLS handshake failed"), "{log}");
    assert!(log.contains("gRPC call refused"), "{log}");
    assert!(!log.contains("batch-token-wrong"), "{log}");
}

#[tokio::test]
async fn failures_and_submitters_are_counted() {
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", &format!("loader:{NEW_TOKEN}\n"));
    let edge = Edge::start(
        &[
            "--insecure-skip-verify",
            "--grpc-tokens-file",
            s(&tokens),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ],
        &[],
    )
    .await;
    // Tokens without TLS (loopback): plaintext works with a token, and only with one.
    let channel = plaintext_channel(edge.grpc);
    submit(channel.clone(), Some(NEW_TOKEN), "SMcount")
        .await
        .unwrap();
    let status = submit(channel.clone(), None, "SMcount2").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = submit(channel, Some(OLD_TOKEN), "SMcount3")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let text = scrape(&format!("127.0.0.1:{admin}")).await;
    assert!(
        text.contains(r#"ingest_grpc_authenticated_calls_total{submitter="loader"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ingest_grpc_auth_failures_total{reason="missing_token"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ingest_grpc_auth_failures_total{reason="invalid_token"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn with_mtls_alone_the_certificate_names_the_submitter() {
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
    let (edge_cert, edge_key) = write_leaf(dir.path(), "edge", &ca.client("http-edge"));
    let edge = Edge::start(
        &[
            "--insecure-skip-verify",
            "--grpc-tls-cert",
            s(&cert),
            "--grpc-tls-key",
            s(&key),
            "--grpc-tls-client-ca",
            s(&ca_file),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ],
        &[],
    )
    .await;
    let front = front_of(
        &edge,
        &[
            "--core-tls-ca",
            s(&ca_file),
            "--core-tls-server-name",
            SERVER_NAME,
            "--core-tls-cert",
            s(&edge_cert),
            "--core-tls-key",
            s(&edge_key),
        ],
    )
    .await;
    let reply = front.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await;
    assert_eq!(reply.status(), 200, "{}", front.log());
    // No token needed without tokens configured; the certificate's DNS name is the submitter.
    let batch = ca.client("batch-loader.internal");
    submit(
        tls_channel(edge.grpc, &ca.pem, Some(&batch)),
        None,
        "SMmtls",
    )
    .await
    .unwrap();
    let text = scrape(&format!("127.0.0.1:{admin}")).await;
    for name in ["http-edge", "batch-loader.internal"] {
        assert!(
            text.contains(&format!(
                r#"ingest_grpc_authenticated_calls_total{{submitter="{name}"}} 1"#
            )),
            "{name}: {text}"
        );
    }
    assert!(
        edge.log().contains("submitter=batch-loader.internal"),
        "{}",
        edge.log()
    );
}

/// Polls `what` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut what: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if what().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn token_rotation_takes_effect_when_the_file_changes() {
    let t = secured().await;
    let id = t.ca.client("batch-loader");
    let channel = tls_channel(t.edge.grpc, &t.ca.pem, Some(&id));
    // Both of batch's tokens are accepted while rotating.
    submit(channel.clone(), Some(OLD_TOKEN), "SMrot-1")
        .await
        .unwrap();
    submit(channel.clone(), Some(NEW_TOKEN), "SMrot-2")
        .await
        .unwrap();

    // The old one is removed from the file: refused after the reload, the new one still works,
    // and the edge's own token too.
    write(
        t.dir.path(),
        "tokens",
        &format!("edge:{EDGE_TOKEN}\nbatch:{NEW_TOKEN}\n"),
    );
    let refused = eventually(Duration::from_secs(10), || {
        let channel = channel.clone();
        async move {
            matches!(submit(channel, Some(OLD_TOKEN), "SMrot-3").await,
                Err(s) if s.code() == Code::Unauthenticated)
        }
    })
    .await;
    assert!(
        refused,
        "the removed token is still accepted:\n{}",
        t.edge.log()
    );
    submit(channel, Some(NEW_TOKEN), "SMrot-4").await.unwrap();
    let reply = t.front.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await;
    assert_eq!(reply.status(), 200, "{}", t.front.log());

    // A broken file keeps the tokens in force, and says so.
    std::fs::write(&t.tokens, "this line has no colon and no token").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let channel = tls_channel(t.edge.grpc, &t.ca.pem, Some(&id));
    submit(channel, Some(NEW_TOKEN), "SMrot-5").await.unwrap();
    assert!(t.edge.log().contains("reload failed"), "{}", t.edge.log());
}

#[tokio::test]
async fn new_connections_get_the_new_certificate_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Ca::new("old CA"), Ca::new("new CA"));
    // The edge trusts both (it keeps working across the swap); the test clients trust one each.
    let both = write(dir.path(), "both.pem", &format!("{}{}", old.pem, new.pem));
    let (cert, key) = write_leaf(dir.path(), "server", &old.server());
    let tokens = write(dir.path(), "tokens", &format!("edge:{EDGE_TOKEN}\n"));
    let edge = Edge::start(
        &[
            "--insecure-skip-verify",
            "--grpc-tls-cert",
            s(&cert),
            "--grpc-tls-key",
            s(&key),
            "--grpc-tokens-file",
            s(&tokens),
            "--grpc-reload-secs",
            "1",
            "--core-tls-ca",
            s(&both),
            "--core-tls-server-name",
            SERVER_NAME,
            "--core-token",
            EDGE_TOKEN,
        ],
        &[],
    )
    .await;
    submit(
        tls_channel(edge.grpc, &old.pem, None),
        Some(EDGE_TOKEN),
        "SMold",
    )
    .await
    .unwrap();
    assert_transport_refusal(
        submit(
            tls_channel(edge.grpc, &new.pem, None),
            Some(EDGE_TOKEN),
            "SMnew",
        )
        .await,
        "not yet the new certificate",
    );

    // A key that does not match the certificate is refused; the old certificate stays.
    let fresh = new.server();
    write(dir.path(), "server.pem", &fresh.cert);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    submit(
        tls_channel(edge.grpc, &old.pem, None),
        Some(EDGE_TOKEN),
        "SMstill-old",
    )
    .await
    .unwrap();
    assert!(edge.log().contains("reload failed"), "{}", edge.log());

    // Now the matching key: new connections see the new certificate.
    write(dir.path(), "server.key", &fresh.key);
    let switched = eventually(Duration::from_secs(10), || {
        let channel = tls_channel(edge.grpc, &new.pem, None);
        async move { submit(channel, Some(EDGE_TOKEN), "SMnew-ok").await.is_ok() }
    })
    .await;
    assert!(
        switched,
        "the new certificate was never served:\n{}",
        edge.log()
    );
    assert_transport_refusal(
        submit(
            tls_channel(edge.grpc, &old.pem, None),
            Some(EDGE_TOKEN),
            "SMold-2",
        )
        .await,
        "the old certificate is no longer served",
    );
    // The edge, trusting both, still delivers.
    let reply = edge.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await;
    assert_eq!(reply.status(), 200, "{}", edge.log());
}

#[tokio::test]
async fn the_edge_picks_up_a_new_token_and_ca_from_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert, key) = write_leaf(dir.path(), "server", &old.server());
    let tokens = write(dir.path(), "tokens", &format!("edge:{OLD_TOKEN}\n"));
    let edge_ca = write(dir.path(), "edge-ca.pem", &old.pem);
    let edge_token = write(dir.path(), "edge-token", OLD_TOKEN);
    let edge = Edge::start(
        &[
            "--insecure-skip-verify",
            "--grpc-tls-cert",
            s(&cert),
            "--grpc-tls-key",
            s(&key),
            "--grpc-tokens-file",
            s(&tokens),
            "--grpc-reload-secs",
            "1",
        ],
        &[],
    )
    .await;
    let front = front_of(
        &edge,
        &[
            "--core-tls-ca",
            s(&edge_ca),
            "--core-tls-server-name",
            SERVER_NAME,
            "--core-token-file",
            s(&edge_token),
            "--core-reload-secs",
            "1",
        ],
    )
    .await;
    let delivered = || async {
        front
            .post_json("/bandwidth/1", BANDWIDTH_INBOUND)
            .await
            .status()
            == 200
    };
    assert!(delivered().await, "{}", front.log());

    // Token rotation on both sides: the core accepts only the new token, the edge's file has it.
    write(dir.path(), "edge-token", NEW_TOKEN);
    write(dir.path(), "tokens", &format!("edge:{NEW_TOKEN}\n"));
    assert!(
        eventually(Duration::from_secs(10), delivered).await,
        "the edge never sent its new token:\n{}",
        front.log()
    );

    // The edge now trusts only the new CA: its new connections refuse the old certificate...
    write(dir.path(), "edge-ca.pem", &new.pem);
    assert!(
        eventually(Duration::from_secs(10), || async { !delivered().await }).await,
        "the edge never took up its new CA:\n{}",
        front.log()
    );
    // ...until the core serves one from the new CA.
    let fresh = new.server();
    write(dir.path(), "server.key", &fresh.key);
    write(dir.path(), "server.pem", &fresh.cert);
    assert!(
        eventually(Duration::from_secs(10), delivered).await,
        "{}",
        front.log()
    );
    assert!(
        front.log().contains("core credentials reloaded"),
        "{}",
        front.log()
    );
}

/// Runs `binary args` and returns its exit code and stderr, if it exits within 20 s.
fn run_to_exit(mut cmd: Command) -> (i32, String) {
    let out = cmd
        .env_clear()
        .env("RUST_LOG", "info")
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_core_refuses_to_listen_off_loopback_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut core = Command::new(ingest_core_binary());
    core.args(["--grpc-listen", &format!("0.0.0.0:{port}")])
        .arg("--data-dir")
        .arg(dir.path());
    let (code, stderr) = run_to_exit(core);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("configuration error") && stderr.contains("--grpc-insecure"),
        "{stderr}"
    );

    // The edge's embedded core too.
    let mut edge = Command::new(env!("CARGO_BIN_EXE_http-edge"));
    edge.args(["--embedded-core", "--insecure-skip-verify"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--grpc-listen", &format!("0.0.0.0:{port}")])
        .arg("--data-dir")
        .arg(dir.path());
    let (code, stderr) = run_to_exit(edge);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
}

#[tokio::test]
async fn the_insecure_flag_lets_it_start_and_says_so_loudly() {
    let edge_port = free_port();
    let grpc_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_http-edge"))
        .args([
            "--embedded-core",
            "--insecure-skip-verify",
            "--grpc-insecure",
        ])
        .args(["--listen", &format!("127.0.0.1:{edge_port}")])
        .args(["--grpc-listen", &format!("0.0.0.0:{grpc_port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_clear()
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    let serving = eventually(Duration::from_secs(15), || async {
        matches!(health(plaintext_channel(addr)).await, Ok(1))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(serving, "{text}");
    assert!(
        text.contains("gRPC WITHOUT AUTHENTICATION (--grpc-insecure)"),
        "{text}"
    );
}
