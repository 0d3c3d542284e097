//! What carriers really send (conformance README): full field sets, every Bandwidth event type,
//! MessageBird's legacy GET webhooks, unknown extra fields.

use serde_json::json;

use crate::harness::{Edge, json_reply};

#[tokio::test]
async fn twilio_full_inbound_field_set_and_failed_status() {
    let edge = Edge::dev().await;
    let inbound = [
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", "MM5ef8732a3c49700934481addd5ce1659"),
        ("NumMedia", "2"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", "MM5ef8732a3c49700934481addd5ce1659"),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", "two pictures"),
        ("FromCountry", "US"),
        ("To", "+14155550100"),
        ("MessagingServiceSid", "MG0123456789abcdef0123456789abcdef"),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", "MM5ef8732a3c49700934481addd5ce1659"),
        ("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("From", "+14155550199"),
        (
            "MediaUrl0",
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME0",
        ),
        ("MediaContentType0", "image/png"),
        (
            "MediaUrl1",
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        ),
        ("MediaContentType1", "video/mp4"),
        ("ApiVersion", "2010-04-01"),
        ("SomeFieldTwilioAddsLater", "tolerated"),
    ];
    let body = serde_urlencoded::to_string(inbound).unwrap();
    assert_eq!(edge.post_form("/twilio", &body).await.status(), 200);
    let m = &edge.spooled("inbound")[0]["inbound"];
    assert_eq!(m["carrierMessageId"], "MM5ef8732a3c49700934481addd5ce1659");
    assert_eq!(m["segmentCount"], 1);
    assert_eq!(m["media"].as_array().unwrap().len(), 2);
    assert_eq!(m["media"][1]["contentType"], "video/mp4");
    assert_eq!(
        m["context"]["messagingServiceId"],
        "MG0123456789abcdef0123456789abcdef"
    );
    assert_eq!(m["context"]["extras"]["FromCity"], "SAN FRANCISCO");
    assert_eq!(m["context"]["extras"]["SmsStatus"], "received");

    let failed = [
        ("MessageStatus", "undelivered"),
        ("SmsStatus", "undelivered"),
        ("ErrorCode", "30003"),
        ("ErrorMessage", "Unreachable destination handset"),
        ("MessageSid", "SM1"),
        ("SmsSid", "SM1"),
        ("AccountSid", "AC1"),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
        ("RawDlrDoneDate", "2401151030"),
        ("ApiVersion", "2010-04-01"),
    ];
    let body = serde_urlencoded::to_string(failed).unwrap();
    assert_eq!(edge.post_form("/twilio", &body).await.status(), 200);
    let s = &edge.spooled("status")[0]["status"];
    assert_eq!(s["status"], "MESSAGE_STATUS_UNDELIVERED");
    assert_eq!(s["errorCode"], "30003");
    assert_eq!(s["errorDescription"], "Unreachable destination handset");
    assert_eq!(s["statusTime"], "2024-01-15T10:30:00Z");

    // A status outside the table is kept raw as UNKNOWN, never rejected.
    let odd = "MessageStatus=partially_delivered&MessageSid=SM2&AccountSid=AC1&From=%2B14155550100&To=%2B14155550199";
    assert_eq!(edge.post_form("/twilio", odd).await.status(), 200);
    let s = &edge.spooled("status")[1]["status"];
    assert_eq!(s["status"], "MESSAGE_STATUS_UNKNOWN");
    assert_eq!(s["rawStatus"], "partially_delivered");
}

fn bw_event(kind: &str, id: &str, to: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut e = json!({
        "type": kind,
        "time": "2024-01-15T10:30:05.000Z",
        "description": kind,
        "to": to,
        "carrierName": "Verizon",
        "message": {
            "id": id, "owner": "+15551234567", "applicationId": "app-1", "time": "2024-01-15T10:30:00.000Z",
            "segmentCount": 1, "direction": "out", "to": [to], "from": "+15551234567",
            "text": "", "tag": "order-7", "priority": "default", "channel": "sms", "media": []
        }
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            e[k] = v;
        }
    }
    e
}

#[tokio::test]
async fn bandwidth_every_event_type_in_one_call() {
    let edge = Edge::dev().await;
    let events = json!([
        bw_event("message-sending", "m1", "+15550000001", json!({})),
        bw_event("message-sent", "m1", "+15550000001", json!({})),
        bw_event("message-delivered", "m1", "+15550000001", json!({})),
        bw_event(
            "message-failed",
            "m2",
            "+15550000002",
            json!({"errorCode": 4720, "description": "Carrier rejected"})
        ),
        bw_event(
            "message-read",
            "m1",
            "+15550000001",
            json!({"someNewField": {"nested": true}})
        ),
    ]);
    let (code, _) = json_reply(edge.post_json("/bandwidth/app", &events.to_string()).await).await;
    assert_eq!(code, 200);
    let statuses = edge.spooled("status");
    let got: Vec<(&str, &str)> = statuses
        .iter()
        .map(|e| {
            (
                e["status"]["rawStatus"].as_str().unwrap(),
                e["status"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    let mut got = got;
    got.sort();
    assert_eq!(
        got,
        [
            ("message-delivered", "MESSAGE_STATUS_DELIVERED"),
            ("message-failed", "MESSAGE_STATUS_FAILED"),
            ("message-read", "MESSAGE_STATUS_READ"),
            ("message-sending", "MESSAGE_STATUS_SENDING"),
            ("message-sent", "MESSAGE_STATUS_SENT"),
        ]
    );
    let failed = statuses
        .iter()
        .find(|e| e["status"]["rawStatus"] == "message-failed")
        .unwrap();
    assert_eq!(failed["status"]["errorCode"], "4720");
    assert_eq!(failed["status"]["errorDescription"], "Carrier rejected");
    assert_eq!(failed["status"]["context"]["reference"], "order-7");
    assert_eq!(
        failed["status"]["context"]["extras"]["carrierName"],
        "Verizon"
    );
}

#[tokio::test]
async fn bandwidth_group_message_statuses_are_one_per_recipient() {
    let edge = Edge::dev().await;
    let events = json!([
        bw_event("message-delivered", "group-1", "+15550000001", json!({})),
        bw_event("message-delivered", "group-1", "+15550000002", json!({})),
    ]);
    assert_eq!(
        edge.post_json("/bandwidth/app", &events.to_string())
            .await
            .status(),
        200
    );
    assert_eq!(edge.spooled("status").len(), 2);
    let inbound_group = json!([{
        "type": "message-received", "time": "2024-01-15T10:30:00Z", "to": "+15550000001",
        "message": {"id": "in-group", "from": "+15559999999", "to": ["+15550000001", "+15550000002"],
                    "text": "hi all", "media": ["https://messaging.bandwidth.com/api/v2/users/1/media/a.jpg"]}
    }]);
    assert_eq!(
        edge.post_json("/bandwidth/app", &inbound_group.to_string())
            .await
            .status(),
        200
    );
    let m = &edge.spooled("inbound")[0]["inbound"];
    assert_eq!(m["to"], json!(["+15550000001", "+15550000002"]));
    assert_eq!(
        m["media"][0]["url"],
        "https://messaging.bandwidth.com/api/v2/users/1/media/a.jpg"
    );
}

#[tokio::test]
async fn messagebird_legacy_get_webhooks() {
    let edge = Edge::dev().await;
    let inbound = "/messagebird?id=e8077d803532c0b5937c639b60216938&recipient=31612345678&originator=31698765432&body=This+is+an+incoming+message&createdDatetime=2016-05-03T14%3A26%3A57%2B00%3A00";
    let r = edge.client.get(edge.url(inbound)).send().await.unwrap();
    let (code, body) = json_reply(r).await;
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({"success": true, "messageId": "e8077d803532c0b5937c639b60216938"})
    );
    let dlr = "/messagebird?id=eef0ab57a9e049be946f3821568c2b2e&reference=FOO&recipient=31612345678&status=delivery_failed&statusDatetime=2019-01-11T09%3A17%3A11%2B00%3A00&statusReason=unknown+subscriber&statusErrorCode=1&mccmnc=20408&ported=1";
    assert_eq!(
        edge.client
            .get(edge.url(dlr))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let m = &edge.spooled("inbound")[0]["inbound"];
    assert_eq!(m["from"], "+31698765432");
    assert_eq!(m["to"], json!(["+31612345678"]));
    assert_eq!(m["text"], "This is an incoming message");
    assert_eq!(m["carrierTime"], "2016-05-03T14:26:57Z");
    let s = &edge.spooled("status")[0]["status"];
    assert_eq!(s["status"], "MESSAGE_STATUS_FAILED");
    assert_eq!(s["errorCode"], "1");
    assert_eq!(s["errorDescription"], "unknown subscriber");
    assert_eq!(s["context"]["extras"]["mccmnc"], "20408");
    assert_eq!(s["context"]["reference"], "FOO");
}

#[tokio::test]
async fn messagebird_json_with_numeric_numbers_and_extra_fields() {
    let edge = Edge::dev().await;
    let body = r#"{"id":"mb-2","recipient":31612345678,"originator":"ACME","body":"code 1234","createdDatetime":"2024-01-15T11:30:00+01:00","type":"sms","typeDetails":{},"gateway":10}"#;
    assert_eq!(edge.post_json("/messagebird", body).await.status(), 200);
    let m = &edge.spooled("inbound")[0]["inbound"];
    assert_eq!(m["to"], json!(["+31612345678"]));
    assert_eq!(m["from"], "ACME", "alphanumeric senders stay as they are");
    assert_eq!(m["carrierTime"], "2024-01-15T10:30:00Z");
}

#[tokio::test]
async fn inteliquent_short_code_and_statuses() {
    let edge = Edge::dev().await;
    let sms = r#"{"messageId":"iq-9","type":"sms","from":"12345","to":"5551234567","text":"STOP","timestamp":"2024-01-15T10:30:00Z","carrierExtra":"x"}"#;
    assert_eq!(
        edge.post_json("/webhooks/inteliquent", sms).await.status(),
        200
    );
    let m = &edge.spooled("inbound")[0]["inbound"];
    assert_eq!(m["from"], "12345", "short codes stay as they are");
    assert_eq!(m["to"], json!(["+15551234567"]));
    for (raw, want) in [
        ("pending", "MESSAGE_STATUS_QUEUED"),
        ("rejected", "MESSAGE_STATUS_REJECTED"),
        ("expired", "MESSAGE_STATUS_EXPIRED"),
        ("sent", "MESSAGE_STATUS_SENT"),
    ] {
        let body = format!(
            r#"{{"messageId":"iq-9","type":"delivery_receipt","status":"{raw}","timestamp":"2024-01-15T10:30:00Z"}}"#
        );
        assert_eq!(
            edge.post_json("/webhooks/inteliquent", &body)
                .await
                .status(),
            200
        );
        let all = edge.spooled("status");
        assert_eq!(all.last().unwrap()["status"]["status"], want);
    }
}

#[tokio::test]
async fn attachments_without_a_url_and_space_separated_times_do_not_cost_the_message() {
    let edge = Edge::dev().await;
    let mms = r#"{"messageId":"iq-att-1","type":"mms","from":"+15559876543","to":"+15551234567","text":"see photo","timestamp":"2024-01-15 10:30:00","attachments":[{"contentType":"image/jpeg","size":1},{"url":"https://media.inteliquent.com/a.jpg","contentType":"image/jpeg"}]}"#;
    let (code, body) = json_reply(edge.post_json("/webhooks/inteliquent", mms).await).await;
    assert_eq!(code, 200, "{body}");
    let m = &edge.spooled("inbound")[0]["inbound"];
    assert_eq!(m["text"], "see photo");
    assert_eq!(m["carrierTime"], "2024-01-15T10:30:00Z");
    assert_eq!(m["media"].as_array().unwrap().len(), 1);
    assert_eq!(m["media"][0]["url"], "https://media.inteliquent.com/a.jpg");
}
