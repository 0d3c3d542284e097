//! Nothing authentic is lost: an authentic call that cannot become events gets the spec's 4xx
//! only once a quarantine record of it is durable; the same call again is still one record; an
//! unauthenticated call is never stored; lenient parsing publishes what keeps its meaning.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;

use crate::{
    harness::{Edge, json_reply},
    signatures::{PUBLIC, messagebird_legacy, now, twilio_signature},
};

/// Each carrier's endpoint with verification on.
async fn verified_edge() -> Edge {
    Edge::start(
        &[
            "--public-base-url",
            PUBLIC,
            "--messagebird-scheme",
            "legacy",
        ],
        &[
            ("INGEST_TWILIO_AUTH_TOKENS", "tw-token"),
            ("INGEST_BANDWIDTH_BASIC_AUTH", "bw-user:bw-pass"),
            ("INGEST_MESSAGEBIRD_SIGNING_KEYS", "mb-key"),
            ("INGEST_INTELIQUENT_TOKENS", "iq-token"),
        ],
    )
    .await
}

fn records(edge: &Edge) -> Vec<Value> {
    edge.spooled("quarantine")
}

/// One authentic-but-invalid call per carrier: (name, path, content type, headers, body,
/// expected status, expected reason).
/// A call: name, path, content type, headers, body, expected status, expected reason.
type Call = (
    &'static str,
    String,
    &'static str,
    Vec<(String, String)>,
    String,
    u16,
    &'static str,
);

fn authentic_invalid_calls() -> Vec<Call> {
    let twilio_form = "AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=hi".to_owned();
    let twilio_sig = twilio_signature("tw-token", &format!("{PUBLIC}/twilio"), &twilio_form);
    let mb_body = r#"{"recipient":"31612345678","originator":"31698765432","body":"x"}"#.to_owned();
    let t = now();
    let mb_sig = messagebird_legacy("mb-key", t, "", mb_body.as_bytes());
    vec![
        (
            "twilio missing MessageSid",
            "/twilio".into(),
            "application/x-www-form-urlencoded",
            vec![("x-twilio-signature".into(), twilio_sig)],
            twilio_form,
            400,
            "invalid_request",
        ),
        (
            "bandwidth media objects without a url",
            "/bandwidth/15551234567".into(),
            "application/json",
            vec![(
                "authorization".into(),
                format!("Basic {}", STANDARD.encode("bw-user:bw-pass")),
            )],
            r#"[{"type":"message-received","message":{"id":"bw-q","from":"+15559876543","to":["+15551234567"],"media":[{"size":1}]}}]"#.into(),
            400,
            "malformed_request",
        ),
        (
            "messagebird missing id",
            "/messagebird".into(),
            "application/json",
            vec![
                ("messagebird-signature".into(), mb_sig),
                ("messagebird-request-timestamp".into(), t.to_string()),
            ],
            mb_body,
            400,
            "invalid_request",
        ),
        (
            "inteliquent missing fields",
            "/webhooks/inteliquent".into(),
            "application/json",
            vec![("authorization".into(), "Bearer iq-token".into())],
            r#"{"type":"sms","text":"x"}"#.into(),
            422,
            "invalid_request",
        ),
    ]
}

#[tokio::test]
async fn authentic_invalid_calls_are_quarantined_once_and_forged_ones_never() {
    let edge = verified_edge().await;
    let calls = authentic_invalid_calls();
    for round in 0..2 {
        for (name, path, content_type, headers, body, want, reason) in &calls {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let (status, reply) =
                json_reply(edge.post(path, content_type, body.clone(), &headers).await).await;
            assert_eq!(status, *want, "{name} (round {round}): {reply}");
            assert_eq!(reply["error"], *reason, "{name}");
        }
    }
    let kept = records(&edge);
    assert_eq!(
        kept.len(),
        calls.len(),
        "one record per call, repeats deduped"
    );
    for ((name, path, content_type, _, body, _, reason), record) in calls.iter().zip(&kept) {
        assert_eq!(record["path"], path.as_str(), "{name}");
        assert_eq!(record["reason"], *reason, "{name}");
        assert_eq!(record["contentType"], *content_type, "{name}");
        assert_eq!(record["body"], body.as_str(), "{name}");
        assert_eq!(record["method"], "POST");
        assert!(record["verifiedBy"].as_str().is_some_and(|v| !v.is_empty()));
        assert!(
            record["receivedAt"]
                .as_str()
                .is_some_and(|v| v.ends_with('Z'))
        );
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
        assert_eq!(record["bodySha256"], sha.as_str(), "{name}");
        if *reason == "invalid_request" {
            assert!(
                record["violations"][0]["field"].is_string(),
                "{name}: {record}"
            );
        }
        let text = record.to_string();
        let basic = STANDARD.encode("bw-user:bw-pass");
        for secret in ["bw-pass", "iq-token", "tw-token", "mb-key", basic.as_str()] {
            assert!(!text.contains(secret), "{name}: record holds {secret}");
        }
    }

    // Unauthenticated, equally invalid: refused and never stored.
    for (path, content_type, body) in [
        (
            "/twilio",
            "application/x-www-form-urlencoded",
            "AccountSid=AC2",
        ),
        ("/bandwidth/1", "application/json", "[{\"type\":"),
        ("/messagebird", "application/json", "{}"),
        ("/webhooks/inteliquent", "application/json", "{nope"),
    ] {
        let r = edge.post(path, content_type, body.to_owned(), &[]).await;
        assert_eq!(r.status(), 401, "{path}");
    }
    assert_eq!(records(&edge).len(), calls.len(), "nothing more stored");
    assert_eq!(edge.spooled_count(), 0, "no event published");
    let log = edge.log();
    assert!(log.contains("webhook quarantined"));
    assert!(!log.contains("15559876543"), "no phone numbers in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_that_cannot_be_kept_answers_503_and_loses_nothing() {
    // SQS down and the quarantine queue's outbox full: the record cannot be kept.
    let fake = crate::fake_sqs::FakeSqs::start(Default::default()).await;
    fake.set_failing(true);
    let (events, quarantine) = (fake.queue_url("q-events"), fake.queue_url("q-kept"));
    let endpoint = format!("http://{}", fake.addr);
    let edge = Edge::start(
        &["--insecure-skip-verify", "--outbox-max-bytes=65536"],
        &[
            ("INGEST_PUBLISHER", "sqs"),
            ("INGEST_INBOUND_QUEUE", &events),
            ("INGEST_STATUS_QUEUE", &events),
            ("INGEST_QUARANTINE_QUEUE", &quarantine),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    )
    .await;
    let call = |i: usize| {
        format!(
            "[{{\"type\":\"call-{i}\",\"pad\":\"{}\"}}]",
            "x".repeat(2000)
        )
    };
    let mut kept = 0;
    let mut refused = None;
    for i in 0..200 {
        match edge
            .post_json("/bandwidth/1", &call(i))
            .await
            .status()
            .as_u16()
        {
            400 => kept += 1,
            503 => {
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refused = refused.expect("the quarantine's outbox filled up");
    assert!(kept > 5, "{kept}");

    // SQS back: every record answered 400 reaches the quarantine queue once; the refused call,
    // retried by the carrier, is kept now.
    fake.set_failing(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.accepted().len() < kept && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), kept, "every acknowledged record delivered");
    assert!(accepted.values().all(|n| *n == 1));
    assert_eq!(
        edge.post_json("/bandwidth/1", &call(refused))
            .await
            .status(),
        400
    );

    // Core unreachable: nothing can be kept, so 503 too.
    let edge = Edge::without_core("http://127.0.0.1:1", &[]).await;
    let r = edge.post_json("/bandwidth/1", "[{\"type\":").await;
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn lenient_cases_publish_events_with_the_raw_values_kept() {
    let edge = Edge::dev().await;
    // An outbound-message event type Bandwidth added after us: a status, UNKNOWN, raw kept.
    let bw = r#"[{"type":"message-rerouted","time":"2024-01-15T10:30:05.000Z","to":"+15551234567","message":{"id":"bw-new","from":"+15559876543","to":["+15551234567"],"direction":"out"}}]"#;
    assert_eq!(
        edge.post_json("/bandwidth/15551234567", bw).await.status(),
        200
    );
    // Bandwidth media as objects with a URL.
    let media = r#"[{"type":"message-received","message":{"id":"bw-media","from":"+15559876543","to":["+15551234567"],"media":[{"url":"https://m.example/a.jpg"}]}}]"#;
    assert_eq!(
        edge.post_json("/bandwidth/15551234567", media)
            .await
            .status(),
        200
    );
    // Inteliquent epoch seconds, and a time nobody can read.
    let epoch = r#"{"messageId":"iq-epoch","type":"sms","from":"+15559876543","to":"+15551234567","text":"x","timestamp":"1705314600"}"#;
    assert_eq!(
        edge.post_json("/webhooks/inteliquent", epoch)
            .await
            .status(),
        200
    );
    let odd = r#"{"messageId":"iq-odd","type":"sms","from":"+15559876543","to":"+15551234567","text":"x","timestamp":"around noon"}"#;
    assert_eq!(
        edge.post_json("/webhooks/inteliquent", odd).await.status(),
        200
    );

    let status = edge.spooled("status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["status"]["status"], "MESSAGE_STATUS_UNKNOWN");
    assert_eq!(status[0]["status"]["rawStatus"], "message-rerouted");
    let inbound = edge.spooled("inbound");
    assert_eq!(inbound.len(), 3);
    assert_eq!(
        inbound[0]["inbound"]["media"][0]["url"],
        "https://m.example/a.jpg"
    );
    assert_eq!(inbound[1]["inbound"]["carrierTime"], "2024-01-15T10:30:00Z");
    assert!(
        inbound[2]["inbound"]
            .get("carrierTime")
            .is_none_or(|t| t == "")
    );
    assert_eq!(
        inbound[2]["inbound"]["context"]["extras"]["unparsed_carrier_time"],
        "around noon"
    );
    assert!(records(&edge).is_empty(), "nothing needed quarantine");
}

#[tokio::test]
async fn a_long_get_query_is_kept_not_refused() {
    // Found by schemathesis: a GET webhook's fields are in its query, which may be long; the
    // record must still fit, or the call would get 503 forever.
    let edge = Edge::dev().await;
    let target = format!(
        "/messagebird?recipient=31612345678&pad={}",
        "x".repeat(20_000)
    );
    let r = edge
        .request(reqwest::Method::GET, &target, None, &[], "")
        .await;
    assert_eq!(r.status(), 400, "id is missing");
    let kept = records(&edge);
    assert_eq!(kept.len(), 1);
    assert!(kept[0]["query"].as_str().unwrap().len() > 20_000);
}
