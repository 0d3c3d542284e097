//! Fail-closed authenticity: without a secret a carrier's calls are rejected; with secrets only
//! genuine calls pass; a rejected call publishes nothing.

use base64::{Engine, engine::general_purpose::STANDARD};

use crate::{
    harness::{Edge, json_reply},
    spec::BANDWIDTH_INBOUND,
};

const IQ_SMS: &str = r#"{"messageId":"iq-auth","type":"sms","from":"+15559876543","to":"+15551234567","text":"x","timestamp":"2024-01-15T10:30:00Z"}"#;
const TWILIO: &str =
    "MessageSid=SMauth&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=x";

#[tokio::test]
async fn without_secrets_every_carrier_fails_closed() {
    let edge = Edge::start(&[], &[]).await;
    let replies = [
        edge.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await,
        edge.post_form("/twilio", TWILIO).await,
        edge.post_json(
            "/messagebird",
            r#"{"id":"a","recipient":"31612345678","originator":"x"}"#,
        )
        .await,
        edge.post(
            "/webhooks/inteliquent",
            "application/json",
            IQ_SMS,
            &[("authorization", "Bearer anything")],
        )
        .await,
    ];
    for r in replies {
        let (status, body) = json_reply(r).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "unauthorized");
    }
    assert_eq!(edge.spooled_count(), 0);
    assert!(
        edge.log().contains("fail closed"),
        "start-up log names the scheme per carrier"
    );
}

#[tokio::test]
async fn bearer_and_basic_credentials_with_rotation_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("iq-tokens");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let edge = Edge::start(
        &[],
        &[
            ("INGEST_INTELIQUENT_TOKENS", "old-token,new-token"),
            (
                "INGEST_INTELIQUENT_TOKENS_FILE",
                token_file.to_str().unwrap(),
            ),
            (
                "INGEST_BANDWIDTH_BASIC_AUTH",
                "bw-user:s3cret-1,bw-user:s3cret-2",
            ),
        ],
    )
    .await;
    let iq = async |auth: &str| {
        edge.post(
            "/webhooks/inteliquent",
            "application/json",
            IQ_SMS,
            &[("authorization", auth)],
        )
        .await
    };
    assert_eq!(iq("Bearer wrong").await.status(), 403);
    assert_eq!(
        edge.post_json("/webhooks/inteliquent", IQ_SMS)
            .await
            .status(),
        401
    );
    assert_eq!(iq("Token old-token").await.status(), 401);
    assert_eq!(edge.spooled_count(), 0);
    for token in ["Bearer old-token", "Bearer new-token", "Bearer file-token"] {
        assert_eq!(iq(token).await.status(), 200, "{token}");
    }
    assert_eq!(
        edge.spooled("inbound").len(),
        1,
        "the same message three times"
    );

    let basic = |pair: &str| format!("Basic {}", STANDARD.encode(pair));
    let bw = async |auth: String| {
        edge.post(
            "/bandwidth/1",
            "application/json",
            BANDWIDTH_INBOUND,
            &[("authorization", &auth)],
        )
        .await
        .status()
    };
    assert_eq!(bw(basic("bw-user:wrong")).await, 401);
    assert_eq!(bw(basic("other:s3cret-1")).await, 401);
    assert_eq!(edge.spooled("inbound").len(), 1);
    assert_eq!(bw(basic("bw-user:s3cret-2")).await, 200);
    assert_eq!(edge.spooled("inbound").len(), 2);

    let log = edge.log();
    for secret in ["old-token", "new-token", "file-token", "s3cret-1"] {
        assert!(!log.contains(secret), "secret {secret} leaked into the log");
    }
    assert!(log.contains("bearer token (3 accepted)"), "{log}");
}
