//! The operator's replay, end to end with the real binaries: records kept by an older parser
//! are replayed through today's and the normal submit path; what now becomes events is
//! published exactly once and leaves the quarantine, what still fails stays with its reason.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::Edge;

fn ctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ingestctl"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run ingestctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A record as an older version, whose parser refused this call, would have written it.
fn old_record(id: &str, path: &str, body: &str) -> Value {
    json!({
        "recordId": id, "schemaVersion": 1, "carrier": "bandwidth", "method": "POST",
        "path": path, "query": "", "contentType": "application/json",
        "verifiedBy": "HTTP Basic (1 credential)", "receivedAt": "2024-01-15T10:30:00.000Z",
        "quarantinedAt": "2024-01-15T10:30:00.002Z", "reason": "invalid_request",
        "detail": "invalid event", "violations": [{"field": "[0].type",
        "description": "is not a known Bandwidth message event type"}],
        "bodySha256": "0", "body": body,
    })
}

#[tokio::test]
async fn replay_publishes_what_todays_parser_accepts_once_and_keeps_the_rest() {
    let edge = Edge::dev().await;
    let spool = edge.data.path().join("spool");
    let data = spool.to_str().unwrap();
    // One record an older parser refused (an unknown message-* type), one still malformed, and
    // one the edge quarantines now.
    let fixed = r#"[{"type":"message-rerouted","time":"2024-01-15T10:30:05.000Z","to":"+15551234567","message":{"id":"bw-replay","from":"+15559876543","to":["+15551234567"],"direction":"out"}}]"#;
    let lines = [
        old_record("old-fixed", "/bandwidth/15551234567", fixed),
        old_record("old-broken", "/bandwidth/15551234567", "[{\"type\":"),
    ];
    let mut text = String::new();
    for l in &lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    std::fs::write(edge.spool_path("quarantine"), text).unwrap();
    assert_eq!(edge.post_json("/bandwidth/1", "[]").await.status(), 400);
    let core = format!("http://{}", edge.grpc);

    let (code, out, _) = ctl(&["quarantine", "count", "--data-dir", data], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("3 record(s)"), "{out}");

    // A dry run changes nothing.
    let (code, out, _) = ctl(
        &[
            "quarantine",
            "replay",
            "--dry-run",
            "--data-dir",
            data,
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 1, "two still fail: {out}");
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry.as_array().unwrap().len(), 3);
    assert!(edge.spooled("status").is_empty());

    let (code, out, err) = ctl(
        &[
            "quarantine",
            "replay",
            "--data-dir",
            data,
            "--core-url",
            &core,
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("1 replayed, 2 still failing, of 3"), "{out}");
    let published = edge.spooled("status");
    assert_eq!(published.len(), 1, "published exactly once");
    assert_eq!(published[0]["status"]["rawStatus"], "message-rerouted");

    let (_, out, _) = ctl(&["quarantine", "list", "--data-dir", data, "--json"], &[]);
    let left: Vec<Value> = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = left
        .iter()
        .map(|r| r["recordId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert!(ids.contains(&"old-broken") && !ids.contains(&"old-fixed"));
    let broken = left.iter().find(|r| r["recordId"] == "old-broken").unwrap();
    assert_eq!(broken["reason"], "malformed_request", "the new reason");

    // Twice: nothing new is published.
    let (code, out, _) = ctl(
        &[
            "quarantine",
            "replay",
            "--data-dir",
            data,
            "--core-url",
            &core,
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.contains("0 replayed, 2 still failing, of 2"), "{out}");
    assert_eq!(edge.spooled("status").len(), 1);

    let (code, out, _) = ctl(&["quarantine", "show", "old-br", "--data-dir", data], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("malformed_request") && out.contains("[{\"type\":"),
        "{out}"
    );
    let (code, _, err) = ctl(&["quarantine", "show", "nope", "--data-dir", data], &[]);
    assert_eq!(code, 2, "{err}");

    // The core gone while a record that now parses waits: exit 2, and the record stays.
    let pending = old_record(
        "old-pending",
        "/bandwidth/15551234567",
        &fixed.replace("bw-replay", "bw-pending"),
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(edge.spool_path("quarantine"))
        .unwrap();
    std::io::Write::write_all(&mut file, format!("{pending}\n").as_bytes()).unwrap();
    let (code, _, err) = ctl(
        &[
            "quarantine",
            "replay",
            "--data-dir",
            data,
            "--core-url",
            "http://127.0.0.1:1",
            "--core-timeout-ms",
            "500",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("core"), "{err}");
    let (_, out, _) = ctl(&["quarantine", "list", "--data-dir", data, "--json"], &[]);
    assert!(
        out.contains("old-pending"),
        "not removed when the core was down: {out}"
    );
    assert_eq!(edge.spooled("status").len(), 1);

    let (code, out, _) = ctl(&["outbox", "--data-dir", data], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("quarantine") && out.contains("status"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_quarantine_records_carry_attributes_and_replay_from_the_queue() {
    let moto = crate::servers::Server::moto();
    let endpoint = format!("http://{}", moto.addr());
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    let client = aws_sdk_sqs::Client::new(&aws);
    let create = async |name: &str| {
        client
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    };
    let port = crate::servers::free_port();
    let events = create(&format!("rq-events-{port}")).await;
    let quarantine = create(&format!("rq-kept-{port}")).await;
    let env = [
        ("INGEST_PUBLISHER", "sqs"),
        ("INGEST_INBOUND_QUEUE", events.as_str()),
        ("INGEST_STATUS_QUEUE", events.as_str()),
        ("INGEST_QUARANTINE_QUEUE", quarantine.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let edge = Edge::start(&["--insecure-skip-verify"], &env).await;
    let broken = "[{\"type\":";
    assert_eq!(edge.post_json("/bandwidth/1", broken).await.status(), 400);

    // On the queue, with attributes an operator can filter on.
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while messages.is_empty() && std::time::Instant::now() < deadline {
        let got = client
            .receive_message()
            .queue_url(&quarantine)
            .message_attribute_names("All")
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        messages = got.messages().to_vec();
    }
    assert_eq!(messages.len(), 1);
    let attrs = messages[0].message_attributes().unwrap();
    assert_eq!(attrs["carrier"].string_value(), Some("bandwidth"));
    assert_eq!(attrs["reason"].string_value(), Some("malformed_request"));
    assert_eq!(attrs["kind"].string_value(), Some("quarantine"));

    // ingestctl reads the queue without consuming it, then replays: still broken, so the record
    // stays (sent again with its reason), and exit 1.
    let (code, out, err) = ctl(&["quarantine", "list", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["reason"], "malformed_request");
    let core = format!("http://{}", edge.grpc);
    let (code, out, err) = ctl(&["quarantine", "replay", "--core-url", &core], &env);
    assert_eq!(code, 1, "{out}{err}");
    let (code, out, _) = ctl(&["quarantine", "count"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("1 record(s)"), "still one record: {out}");
}

/// `ingestctl quarantine replay` against a core that requires TLS, a client certificate and a
/// token: without them it cannot reach the core (exit 2, the record kept); with them the record
/// is replayed.
#[tokio::test]
async fn replay_reaches_a_core_that_requires_tls_mtls_and_a_token() {
    let t = crate::grpc_security::secured().await;
    let spool = t.edge.data.path().join("spool");
    let data = spool.to_str().unwrap();
    let fixed = r#"[{"type":"message-rerouted","time":"2024-01-15T10:30:05.000Z","to":"+15551234567","message":{"id":"bw-replay-tls","from":"+15559876543","to":["+15551234567"],"direction":"out"}}]"#;
    let record = old_record("old-tls", "/bandwidth/15551234567", fixed);
    std::fs::write(t.edge.spool_path("quarantine"), format!("{record}\n")).unwrap();
    let path = |name: &str| t.dir.path().join(name).to_str().unwrap().to_owned();
    let (ca, cert, key, token) = (
        path("ca.pem"),
        path("edge.pem"),
        path("edge.key"),
        path("edge-token"),
    );
    let url = format!("https://{}", t.edge.grpc);

    // Plaintext: the core speaks TLS only.
    let plain = format!("http://{}", t.edge.grpc);
    let (code, out, err) = ctl(
        &[
            "quarantine",
            "replay",
            "--data-dir",
            data,
            "--core-url",
            &plain,
        ],
        &[],
    );
    assert_eq!(code, 2, "{out}{err}");
    // TLS and the certificate, but no token.
    let tls = [
        "--core-tls-ca",
        ca.as_str(),
        "--core-tls-server-name",
        crate::pki::SERVER_NAME,
        "--core-tls-cert",
        cert.as_str(),
        "--core-tls-key",
        key.as_str(),
    ];
    let mut args = vec![
        "quarantine",
        "replay",
        "--data-dir",
        data,
        "--core-url",
        &url,
    ];
    args.extend_from_slice(&tls);
    let (code, out, err) = ctl(&args, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(t.edge.spooled("status").is_empty());

    args.extend_from_slice(&["--core-token-file", &token]);
    let (code, out, err) = ctl(&args, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 replayed"), "{out}");
    assert_eq!(t.edge.spooled("status").len(), 1);
}
