//! Bad input gets a clear 4xx and publishes nothing (an authentic call that cannot become
//! events is quarantined: see `quarantine.rs`).

use crate::harness::{Edge, json_reply};

#[tokio::test]
async fn bad_requests_are_4xx_and_spool_nothing() {
    let edge = Edge::start(
        &["--insecure-skip-verify", "--body-limit-bytes", "4096"],
        &[],
    )
    .await;
    let big = format!(
        r#"[{{"type":"message-received","message":{{"id":"x","text":"{}"}}}}]"#,
        "a".repeat(5000)
    );
    let cases: Vec<(&str, &str, &str, String, u16, &str)> = vec![
        (
            "malformed json",
            "/bandwidth/1",
            "application/json",
            "[{\"type\":".into(),
            400,
            "malformed_request",
        ),
        (
            "not an array",
            "/bandwidth/1",
            "application/json",
            "{\"type\":\"message-received\"}".into(),
            400,
            "malformed_request",
        ),
        (
            "empty array",
            "/bandwidth/1",
            "application/json",
            "[]".into(),
            400,
            "invalid_request",
        ),
        (
            "unknown event type",
            "/bandwidth/1",
            "application/json",
            r#"[{"type":"call-initiated","message":{"id":"m"}}]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "missing message",
            "/bandwidth/1",
            "application/json",
            r#"[{"type":"message-received"}]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "missing from (core)",
            "/bandwidth/1",
            "application/json",
            r#"[{"type":"message-received","message":{"id":"m","to":["+15551234567"]}}]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "wrong content type",
            "/bandwidth/1",
            "text/plain",
            "[]".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "oversized body",
            "/bandwidth/1",
            "application/json",
            big,
            413,
            "payload_too_large",
        ),
        (
            "twilio json",
            "/twilio",
            "application/json",
            "{}".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "twilio missing sid",
            "/twilio",
            "application/x-www-form-urlencoded",
            "AccountSid=AC1&From=%2B15551234567&To=%2B15551234568".into(),
            400,
            "invalid_request",
        ),
        (
            "twilio bad number",
            "/twilio",
            "application/x-www-form-urlencoded",
            "MessageSid=SM1&AccountSid=AC1&From=%2B1&To=%2B15551234568".into(),
            400,
            "invalid_request",
        ),
        (
            "messagebird no id",
            "/messagebird",
            "application/json",
            r#"{"recipient":"31612345678","originator":"x"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "messagebird object id",
            "/messagebird",
            "application/json",
            r#"{"id":{},"recipient":"31612345678"}"#.into(),
            400,
            "malformed_request",
        ),
        (
            "inteliquent malformed",
            "/webhooks/inteliquent",
            "application/json",
            "{nope".into(),
            400,
            "malformed_request",
        ),
        (
            "inteliquent missing fields",
            "/webhooks/inteliquent",
            "application/json",
            r#"{"type":"sms","text":"x"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "inteliquent unknown type",
            "/webhooks/inteliquent",
            "application/json",
            r#"{"messageId":"m","type":"fax","timestamp":"2024-01-15T10:30:00Z"}"#.into(),
            422,
            "invalid_request",
        ),
    ];
    // Every case but the oversized body (refused before it could be verified) is kept.
    let kept = cases.iter().filter(|c| c.4 != 413).count();
    for (name, path, content_type, body, want_status, want_error) in cases {
        let r = edge.post(path, content_type, body, &[]).await;
        let (status, reply) = json_reply(r).await;
        assert_eq!(status, want_status, "{name}: {reply}");
        assert_eq!(reply["success"], false, "{name}");
        assert_eq!(reply["error"], want_error, "{name}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    assert_eq!(edge.spooled_count(), 0);
    assert_eq!(edge.spooled("quarantine").len(), kept);
}

#[tokio::test]
async fn violations_name_fields_without_echoing_values() {
    let edge = Edge::dev().await;
    let body = r#"{"messageId":"m","type":"sms","from":"+1","to":"+15551234568","timestamp":"2024-01-15T10:30:00Z"}"#;
    let (status, reply) = json_reply(edge.post_json("/webhooks/inteliquent", body).await).await;
    assert_eq!(status, 422);
    assert_eq!(reply["violations"][0]["field"], "message.from");
    assert!(
        !reply.to_string().contains("+1\""),
        "value must not be echoed: {reply}"
    );
    let (status, reply) = json_reply(
        edge.post_json("/webhooks/inteliquent", r#"{"type":"sms"}"#)
            .await,
    )
    .await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = reply["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["messageId", "timestamp", "from", "to"]);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let edge = Edge::dev().await;
    let (status, reply) = json_reply(edge.post_json("/nope", "{}").await).await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"], "not_found");
    let r = edge.client.put(edge.url("/twilio")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(edge.spooled_count(), 0);
}

/// A Bandwidth array at the 100-event limit with every event invalid (two violations each):
/// the core's error details are bounded, so the call is a 400 with a small body, never a 500
/// from an HTTP/2 header block that overflowed.
#[tokio::test]
async fn a_hundred_event_invalid_bandwidth_batch_is_400_with_a_bounded_body() {
    let edge = Edge::dev().await;
    let events: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            serde_json::json!({
                "type": "message-received",
                "time": "2024-01-15T10:30:00.000Z",
                "to": "+15551234567",
                "message": {"id": format!("poison-{i}"), "from": "+1", "to": ["+1"], "text": "x"}
            })
        })
        .collect();
    let body = serde_json::Value::Array(events).to_string();
    let r = edge.post_json("/bandwidth/15551234567", &body).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.len() < 4096, "bounded body: {} bytes", text.len());
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["error"], "invalid_request");
    let violations = reply["violations"].as_array().expect("violations listed");
    assert!(
        violations.len() > 1 && violations.len() <= 11,
        "{violations:?}"
    );
    assert_eq!(violations[0]["field"], "events[0].inbound.from");
    let last = violations.last().unwrap();
    assert!(
        last["description"]
            .as_str()
            .unwrap()
            .contains("more violations not listed"),
        "{last}"
    );
    assert!(!text.contains("poison-"), "no message ids or values echoed");
    assert_eq!(
        edge.spooled_count(),
        0,
        "nothing of a rejected batch is taken"
    );
}

/// The embedded core is called in place, and still refuses an event larger than its gRPC
/// server would decode (4 MiB), as a core over the network does: a 400, nothing published.
#[tokio::test]
async fn an_event_larger_than_the_cores_message_limit_is_400_in_place_too() {
    let edge = Edge::start(
        &["--insecure-skip-verify", "--body-limit-bytes", "6000000"],
        &[],
    )
    .await;
    let body = format!(
        r#"[{{"type":"message-received","time":"2024-01-15T10:30:00.000Z","to":"+15551234567",
        "message":{{"id":"msg-huge","owner":"+15551234567","direction":"in",
        "to":["+15551234567"],"from":"+15559876543","text":"{}","media":[]}}}}]"#,
        "a".repeat(4_500_000)
    );
    let r = edge
        .post("/bandwidth/15551234567", "application/json", body, &[])
        .await;
    let (status, reply) = json_reply(r).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["success"], false);
    assert_eq!(edge.spooled_count(), 0, "nothing published");
}
