//! Carrier retries: a duplicate is answered as a duplicate and spooled once.

use futures_util::future::join_all;

use crate::{
    harness::Edge,
    spec::{BANDWIDTH_DELIVERED, BANDWIDTH_INBOUND},
};

#[tokio::test]
async fn sequential_retry_is_a_duplicate() {
    let edge = Edge::dev().await;
    let first = edge.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ingest-outcome"], "accepted");
    let id = first.headers()["x-ingest-event-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let second = edge.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await;
    assert_eq!(
        second.status(),
        200,
        "a retry still gets the carrier's success reply"
    );
    assert_eq!(second.headers()["x-ingest-outcome"], "duplicate");
    assert_eq!(second.headers()["x-ingest-event-id"], id.as_str());
    let spooled = edge.spooled("inbound");
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0]["eventId"], id.as_str());
}

#[tokio::test]
async fn concurrent_retries_land_once() {
    let edge = Edge::dev().await;
    let twilio =
        "MessageSid=SMconcurrent&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=hi";
    let replies = join_all((0..20).map(|_| edge.post_form("/twilio", twilio))).await;
    let mut outcomes: Vec<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status(), 200);
            r.headers()["x-ingest-outcome"].to_str().unwrap().to_owned()
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "accepted").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 19);
    assert_eq!(edge.spooled("inbound").len(), 1);
}

#[tokio::test]
async fn a_batch_retry_only_adds_what_is_new() {
    let edge = Edge::dev().await;
    assert_eq!(
        edge.post_json("/bandwidth/1", BANDWIDTH_DELIVERED)
            .await
            .status(),
        200
    );
    // The carrier retries the delivered event together with a new one.
    let delivered: serde_json::Value = serde_json::from_str(BANDWIDTH_DELIVERED).unwrap();
    let mut read = delivered[0].clone();
    read["type"] = "message-read".into();
    let both = serde_json::json!([delivered[0], read]);
    let r = edge.post_json("/bandwidth/1", &both.to_string()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ingest-outcome"], "accepted");
    let raw: Vec<String> = edge
        .spooled("status")
        .iter()
        .map(|e| e["status"]["rawStatus"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(raw, ["message-delivered", "message-read"]);
}
