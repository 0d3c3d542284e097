//! Every curl example of `spec/carrier-webhooks.md`, sent as written, with the spec's replies and
//! the normalized events that land in the spool.

use serde_json::json;

use crate::harness::{Edge, json_reply};

pub(crate) const BANDWIDTH_INBOUND: &str = r#"[
    {
      "type": "message-received",
      "time": "2024-01-15T10:30:00.000Z",
      "description": "Incoming message received",
      "to": "+15551234567",
      "message": {
        "id": "msg-abc123def456",
        "owner": "+15559876543",
        "applicationId": "app-12345",
        "time": "2024-01-15T10:30:00.000Z",
        "segmentCount": 1,
        "direction": "in",
        "to": ["+15551234567"],
        "from": "+15559876543",
        "text": "Hello, I need help with my order",
        "media": []
      }
    }
  ]"#;

pub(crate) const BANDWIDTH_DELIVERED: &str = r#"[
  {
    "type": "message-delivered",
    "time": "2024-01-15T10:30:05.000Z",
    "description": "Message delivered",
    "to": "+15559876543",
    "message": {
      "id": "msg-abc123def456",
      "owner": "+15551234567",
      "applicationId": "app-12345",
      "direction": "out",
      "to": ["+15559876543"],
      "from": "+15551234567",
      "text": "Your order has been shipped!",
      "segmentCount": 1
    }
  }
]"#;

const BANDWIDTH_OK: &str = "Message received and queued for processing";

#[tokio::test]
async fn bandwidth_inbound_and_status() {
    let edge = Edge::dev().await;
    let (status, body) = json_reply(
        edge.post_json("/bandwidth/15551234567", BANDWIDTH_INBOUND)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"success": true, "message": BANDWIDTH_OK}));
    let (status, body) = json_reply(
        edge.post_json("/bandwidth/15551234567", BANDWIDTH_DELIVERED)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"success": true, "message": BANDWIDTH_OK}));

    let inbound = edge.spooled("inbound");
    assert_eq!(inbound.len(), 1);
    let e = &inbound[0];
    assert_eq!(e["schemaVersion"], 1);
    assert_eq!(e["eventId"].as_str().unwrap().len(), 32);
    let m = &e["inbound"];
    assert_eq!(m["carrier"], "CARRIER_BANDWIDTH");
    assert_eq!(m["carrierMessageId"], "msg-abc123def456");
    assert_eq!(m["from"], "+15559876543");
    assert_eq!(m["to"], json!(["+15551234567"]));
    assert_eq!(m["text"], "Hello, I need help with my order");
    assert_eq!(m["segmentCount"], 1);
    assert_eq!(m["carrierTime"], "2024-01-15T10:30:00Z");
    assert_eq!(m["context"]["applicationId"], "app-12345");
    assert_eq!(m["context"]["destination"], "15551234567");
    assert_eq!(m["context"]["extras"]["owner"], "+15559876543");

    let statuses = edge.spooled("status");
    assert_eq!(statuses.len(), 1);
    let s = &statuses[0]["status"];
    assert_eq!(s["carrier"], "CARRIER_BANDWIDTH");
    assert_eq!(s["rawStatus"], "message-delivered");
    assert_eq!(s["status"], "MESSAGE_STATUS_DELIVERED");
    assert_eq!(s["recipient"], "+15559876543");
    assert_eq!(s["statusTime"], "2024-01-15T10:30:05Z");
    assert!(s.get("errorCode").is_none(), "no error on success: {s}");
}

#[tokio::test]
async fn twilio_inbound_status_and_mms() {
    let edge = Edge::dev().await;
    let inbound = "MessageSid=SM1234567890abcdef&AccountSid=AC1234567890abcdef&From=%2B15559876543&To=%2B15551234567&Body=Hello%2C%20I%20need%20assistance&NumMedia=0";
    let status = "MessageSid=SM1234567890abcdef&AccountSid=AC1234567890abcdef&From=%2B15551234567&To=%2B15559876543&MessageStatus=delivered&SmsSid=SM1234567890abcdef";
    let mms = "MessageSid=MM1234567890abcdef&AccountSid=AC1234567890abcdef&From=%2B15559876543&To=%2B15551234567&Body=Check%20this%20image&NumMedia=1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC123%2FMessages%2FMM123%2FMedia%2FME123&MediaContentType0=image%2Fjpeg";
    for body in [inbound, status, mms] {
        let r = edge.post_form("/twilio", body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/xml");
        assert_eq!(
            r.text().await.unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response></Response>"
        );
    }
    let inbound = edge.spooled("inbound");
    assert_eq!(inbound.len(), 2);
    let m = &inbound[0]["inbound"];
    assert_eq!(m["carrier"], "CARRIER_TWILIO");
    assert_eq!(m["carrierMessageId"], "SM1234567890abcdef");
    assert_eq!(m["text"], "Hello, I need assistance");
    assert_eq!(m["context"]["accountId"], "AC1234567890abcdef");
    let mms = &inbound[1]["inbound"];
    assert_eq!(
        mms["media"][0]["url"],
        "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages/MM123/Media/ME123"
    );
    assert_eq!(mms["media"][0]["contentType"], "image/jpeg");
    let s = &edge.spooled("status")[0]["status"];
    assert_eq!(s["rawStatus"], "delivered");
    assert_eq!(s["status"], "MESSAGE_STATUS_DELIVERED");
    assert_eq!(s["recipient"], "+15559876543");
    assert_eq!(s["sender"], "+15551234567");
}

#[tokio::test]
async fn messagebird_inbound_and_status() {
    let edge = Edge::dev().await;
    let inbound = r#"{
    "id": "mb-msg-123456789",
    "recipient": "15551234567",
    "originator": "15559876543",
    "body": "I would like to schedule an appointment",
    "createdDatetime": "2024-01-15T10:30:00+00:00",
    "reference": "ref-12345"
  }"#;
    let status = r#"{
    "id": "mb-msg-123456789",
    "recipient": "15559876543",
    "originator": "15551234567",
    "status": "delivered",
    "statusDatetime": "2024-01-15T10:30:05+00:00",
    "reference": "ref-12345"
  }"#;
    let headers = [
        ("messagebird-signature", "sha256=abc123def456"),
        ("messagebird-request-timestamp", "1705315800"),
    ];
    for body in [inbound, status] {
        let r = edge
            .post(
                "/messagebird",
                "application/json",
                body.to_owned(),
                &headers,
            )
            .await;
        let (code, reply) = json_reply(r).await;
        assert_eq!(code, 200);
        assert_eq!(
            reply,
            json!({"success": true, "messageId": "mb-msg-123456789"})
        );
    }
    let m = &edge.spooled("inbound")[0]["inbound"];
    assert_eq!(m["carrier"], "CARRIER_MESSAGEBIRD");
    assert_eq!(
        m["from"], "+15559876543",
        "MessageBird numbers gain their +"
    );
    assert_eq!(m["to"], json!(["+15551234567"]));
    assert_eq!(m["carrierTime"], "2024-01-15T10:30:00Z");
    assert_eq!(m["context"]["reference"], "ref-12345");
    let s = &edge.spooled("status")[0]["status"];
    assert_eq!(s["status"], "MESSAGE_STATUS_DELIVERED");
    assert_eq!(s["recipient"], "+15559876543");
    assert_eq!(s["statusTime"], "2024-01-15T10:30:05Z");
}

#[tokio::test]
async fn inteliquent_sms_mms_and_receipts() {
    let edge = Edge::dev().await;
    let auth = [("authorization", "Bearer your-api-key-here")];
    let cases = [
        (
            r#"{
    "messageId": "intq-msg-abc123456",
    "type": "sms",
    "from": "+15559876543",
    "to": "+15551234567",
    "text": "What are your business hours?",
    "timestamp": "2024-01-15T10:30:00.000Z"
  }"#,
            "intq-msg-abc123456",
        ),
        (
            r#"{
    "messageId": "intq-msg-def789012",
    "type": "mms",
    "from": "+15559876543",
    "to": "+15551234567",
    "text": "Here are the photos from the inspection",
    "timestamp": "2024-01-15T10:30:00.000Z",
    "attachments": [
      {"url": "https://media.inteliquent.com/attachments/img1.jpg", "contentType": "image/jpeg", "size": 245678},
      {"url": "https://media.inteliquent.com/attachments/img2.jpg", "contentType": "image/jpeg", "size": 312456},
      {"url": "https://media.inteliquent.com/attachments/doc.pdf", "contentType": "application/pdf", "size": 1024567}
    ]
  }"#,
            "intq-msg-def789012",
        ),
        (
            r#"{
    "messageId": "intq-msg-abc123456",
    "type": "delivery_receipt",
    "status": "delivered",
    "timestamp": "2024-01-15T10:30:05.000Z"
  }"#,
            "intq-msg-abc123456",
        ),
        (
            r#"{
    "messageId": "intq-msg-abc123456",
    "type": "delivery_receipt",
    "status": "failed",
    "timestamp": "2024-01-15T10:30:10.000Z",
    "errorCode": "30008",
    "errorMessage": "Unknown destination handset"
  }"#,
            "intq-msg-abc123456",
        ),
    ];
    for (body, id) in cases {
        let r = edge
            .post(
                "/webhooks/inteliquent",
                "application/json",
                body.to_owned(),
                &auth,
            )
            .await;
        let (code, reply) = json_reply(r).await;
        assert_eq!(code, 200, "{reply}");
        assert_eq!(
            reply,
            json!({"success": true, "messageId": id, "status": "accepted"})
        );
    }
    let inbound = edge.spooled("inbound");
    assert_eq!(inbound.len(), 2);
    let media = inbound[1]["inbound"]["media"].as_array().unwrap();
    assert_eq!(media.len(), 3);
    assert_eq!(media[2]["contentType"], "application/pdf");
    assert_eq!(
        media[2]["sizeBytes"], "1024567",
        "uint64 is a string in canonical JSON"
    );
    let statuses = edge.spooled("status");
    assert_eq!(
        statuses.len(),
        2,
        "delivered and failed are distinct events"
    );
    let failed = &statuses[1]["status"];
    assert_eq!(failed["status"], "MESSAGE_STATUS_FAILED");
    assert_eq!(failed["errorCode"], "30008");
    assert_eq!(failed["errorDescription"], "Unknown destination handset");
    assert_eq!(failed["statusTime"], "2024-01-15T10:30:10Z");
}

#[tokio::test]
async fn preflights_answer_exactly_the_spec_headers() {
    let edge = Edge::dev().await;
    let cases = [
        (
            "/bandwidth/15551234567",
            "https://bandwidth.com",
            "Content-Type",
            vec![
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", "POST, OPTIONS"),
                (
                    "access-control-allow-headers",
                    "Content-Type, X-Bandwidth-Signature",
                ),
            ],
        ),
        (
            "/webhooks/inteliquent",
            "https://inteliquent.com",
            "Content-Type, Authorization",
            vec![
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", "POST, OPTIONS"),
                (
                    "access-control-allow-headers",
                    "Content-Type, Authorization",
                ),
                ("access-control-max-age", "86400"),
            ],
        ),
    ];
    for (path, origin, req_headers, want) in cases {
        let r = edge
            .client
            .request(reqwest::Method::OPTIONS, edge.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", req_headers)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cors: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("access-control-"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let want: Vec<(String, String)> = want
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(cors, want, "{path}");
    }
    assert_eq!(edge.spooled_count(), 0);
}
