//! The production backends end to end: carrier webhooks through the real edge and core land on
//! moto's SQS queues (standard and FIFO) with attributes and canonical JSON bodies, deduped in a
//! real redis-server.

use std::collections::HashMap;

use aws_sdk_sqs::{
    Client,
    types::{MessageSystemAttributeName, QueueAttributeName},
};
use serde_json::Value;

use crate::{
    harness::Edge,
    servers::{Server, free_port},
    spec::{BANDWIDTH_DELIVERED, BANDWIDTH_INBOUND},
};

async fn sqs(port: u16) -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    Client::new(&config)
}

async fn create(client: &Client, name: &str) -> String {
    let mut req = client.create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        req = req.attributes(QueueAttributeName::FifoQueue, "true");
    }
    req.send().await.unwrap().queue_url.unwrap()
}

/// Every message on `url`, received until the queue is empty; bodies parsed.
async fn drain(
    client: &Client,
    url: &str,
) -> Vec<(Value, HashMap<String, String>, HashMap<String, String>)> {
    let mut all = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return all;
        }
        for m in messages {
            let attrs = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.string_value.unwrap_or_default()))
                .collect();
            let system = m
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect();
            all.push((
                serde_json::from_str(m.body.as_deref().unwrap()).unwrap(),
                attrs,
                system,
            ));
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_land_on_sqs_once_with_attributes_via_redis_dedupe() {
    let moto = Server::moto();
    let redis = Server::redis();
    let (moto_port, redis_port) = (moto.addr().port(), redis.addr().port());
    let client = sqs(moto_port).await;
    let inbound = create(&client, &format!("edge-in-{}", free_port())).await;
    let status = create(&client, &format!("edge-st-{}.fifo", free_port())).await;
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let edge = Edge::start(
        &["--insecure-skip-verify"],
        &[
            ("INGEST_PUBLISHER", "sqs"),
            ("INGEST_INBOUND_QUEUE", &inbound),
            ("INGEST_STATUS_QUEUE", &status),
            ("INGEST_QUARANTINE_QUEUE", &status),
            ("INGEST_DEDUPE", "redis"),
            ("INGEST_REDIS_URL", &redis_url),
            ("INGEST_REDIS_KEY_PREFIX", "edge-e2e:"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    )
    .await;

    for _ in 0..3 {
        assert_eq!(
            edge.post_json("/bandwidth/15551234567", BANDWIDTH_INBOUND)
                .await
                .status(),
            200
        );
        assert_eq!(
            edge.post_json("/bandwidth/15551234567", BANDWIDTH_DELIVERED)
                .await
                .status(),
            200
        );
    }
    let twilio =
        "MessageSid=SMsqs1&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=hi&NumMedia=0";
    assert_eq!(edge.post_form("/twilio", twilio).await.status(), 200);
    assert_eq!(
        edge.post_form("/twilio", twilio).await.headers()["x-ingest-outcome"],
        "duplicate"
    );

    let inbound_msgs = drain(&client, &inbound).await;
    assert_eq!(inbound_msgs.len(), 2, "one per event, retries deduped");
    let (body, attrs, _) = inbound_msgs
        .iter()
        .find(|(b, _, _)| b["inbound"]["carrier"] == "CARRIER_BANDWIDTH")
        .expect("bandwidth inbound on the inbound queue");
    assert_eq!(body["schemaVersion"], 1);
    assert_eq!(body["inbound"]["from"], "+15559876543");
    assert_eq!(attrs["carrier"], "bandwidth");
    assert_eq!(attrs["kind"], "inbound");
    assert!(!attrs.contains_key("status"));

    let status_msgs = drain(&client, &status).await;
    assert_eq!(status_msgs.len(), 1);
    let (body, attrs, system) = &status_msgs[0];
    assert_eq!(body["status"]["status"], "MESSAGE_STATUS_DELIVERED");
    assert_eq!(attrs["status"], "delivered");
    assert_eq!(attrs["kind"], "status");
    assert_eq!(
        system["MessageDeduplicationId"],
        body["eventId"].as_str().unwrap()
    );
    assert!(system.get("MessageGroupId").is_some_and(|g| !g.is_empty()));
    assert_eq!(
        edge.spooled_count(),
        0,
        "nothing goes to the local spool in SQS mode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_queue_vanished_is_acknowledged_and_relayed_once_it_is_back() {
    let moto = Server::moto();
    let moto_port = moto.addr().port();
    let client = sqs(moto_port).await;
    let inbound = create(&client, &format!("batch-in-{}", free_port())).await;
    let status_name = format!("batch-st-{}", free_port());
    let status = create(&client, &status_name).await;
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let edge = Edge::start(
        &["--insecure-skip-verify", "--sqs-publish-timeout-ms", "1500"],
        &[
            ("INGEST_PUBLISHER", "sqs"),
            ("INGEST_INBOUND_QUEUE", &inbound),
            ("INGEST_STATUS_QUEUE", &status),
            ("INGEST_QUARANTINE_QUEUE", &status),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    )
    .await;
    // One call carrying an inbound message and a delivery status.
    let inbound_event: Value = serde_json::from_str(BANDWIDTH_INBOUND).unwrap();
    let status_event: Value = serde_json::from_str(BANDWIDTH_DELIVERED).unwrap();
    let batch = serde_json::json!([inbound_event[0], status_event[0]]).to_string();

    // The status queue disappears: the inbound event is published, the status waits in the
    // outbox, and the call is acknowledged (a carrier that never retries loses nothing).
    client
        .delete_queue()
        .queue_url(&status)
        .send()
        .await
        .unwrap();
    let r = edge.post_json("/bandwidth/15551234567", &batch).await;
    assert_eq!(r.status(), 200, "stored in the outbox");

    // It comes back: the relay forwards the stored status; a carrier retry is a duplicate.
    assert_eq!(create(&client, &status_name).await, status);
    let mut status_msgs = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while status_msgs.is_empty() && std::time::Instant::now() < deadline {
        status_msgs.extend(drain(&client, &status).await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = edge.post_json("/bandwidth/15551234567", &batch).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ingest-outcome"], "duplicate");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    status_msgs.extend(drain(&client, &status).await);

    let inbound_msgs = drain(&client, &inbound).await;
    assert_eq!(
        inbound_msgs.len(),
        1,
        "the event taken on the first try is not published twice"
    );
    assert_eq!(
        status_msgs.len(),
        1,
        "the stored event is relayed once the queue exists again"
    );
    assert_eq!(status_msgs[0].0["status"]["rawStatus"], "message-delivered");
}
