//! Per-entry results of `SendMessageBatch`: retry only the failed retryable entries, fail
//! permanent ones at once. moto never fails single entries, so these run against the fake
//! endpoint in `fake_sqs.rs`.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::future::join_all;
use ingest_core::publish::{
    Attribute, OutboundEvent, PublishError, Publisher, SqsPublisher, SqsSettings,
};

use crate::fake_sqs::{Behaviour, FakeSqs};

fn event(id: &str) -> OutboundEvent {
    OutboundEvent {
        event_id: id.to_owned(),
        body: serde_json::json!({ "eventId": id }).to_string(),
        group_id: "g".into(),
        attributes: vec![Attribute::text("carrier", "twilio")],
    }
}

async fn publisher_for(fake: &FakeSqs) -> Arc<SqsPublisher> {
    publisher_with(
        fake,
        SqsSettings {
            linger: Duration::from_millis(20),
            ..SqsSettings::default()
        },
    )
    .await
}

async fn publisher_with(fake: &FakeSqs, settings: SqsSettings) -> Arc<SqsPublisher> {
    let aws = crate::support::aws_at(&format!("http://{}", fake.addr)).await;
    Arc::new(SqsPublisher::new(&aws, settings))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partially_failed_batches_retry_only_the_failed_entries() {
    const EVENTS: usize = 40;
    let fake = FakeSqs::start(Behaviour {
        latency: Duration::from_millis(5),
        fail_odd_first_attempts: true,
        ..Behaviour::default()
    })
    .await;
    let queue = fake.queue_url("retry");
    let publisher = publisher_for(&fake).await;
    publisher.check(&queue).await.expect("queue answers");

    let ids: Vec<String> = (0..EVENTS).map(|i| format!("ev-{i}")).collect();
    let poison = "poison-1".to_owned();
    let results = join_all(ids.iter().chain(std::iter::once(&poison)).map(|id| {
        let publisher = publisher.clone();
        let queue = queue.clone();
        async move {
            (
                id.clone(),
                publisher.publish(&queue, &event(id), None).await,
            )
        }
    }))
    .await;

    for (id, result) in &results {
        if *id == poison {
            assert!(
                matches!(result, Err(PublishError::Unavailable(_))),
                "a permanent failure comes back as an error: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "{id}: {result:?}");
        }
    }
    let accepted = fake.accepted();
    let all: HashSet<&String> = ids.iter().collect();
    assert_eq!(accepted.keys().collect::<HashSet<_>>(), all);
    assert!(
        accepted.values().all(|n| *n == 1),
        "no entry is sent again once accepted: {accepted:?}"
    );
    let stats = publisher.stats();
    assert!(fake.entries_failed() > 1, "the fake failed some entries");
    // Every failed entry except the poison one was retried, and nothing else was.
    assert_eq!(stats.retries, fake.entries_failed() - 1);
    assert_eq!(stats.failures, 1);
    assert_eq!(stats.messages_sent, EVENTS as u64);
    assert_eq!(stats.batch_calls, fake.batch_calls());
    assert!(stats.batch_calls < EVENTS as u64, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_an_sqs_that_hangs_gives_up_at_its_deadline() {
    let fake = FakeSqs::start(Behaviour::default()).await;
    let queue = fake.queue_url("hang");
    let publish_timeout = Duration::from_millis(600);
    let publisher = publisher_with(
        &fake,
        SqsSettings {
            linger: Duration::from_millis(5),
            publish_timeout,
            // Longer than the publish timeout: the call with the entry is still out when the
            // deadline passes.
            call_timeout: Duration::from_millis(1500),
            ..SqsSettings::default()
        },
    )
    .await;
    publisher.check(&queue).await.expect("queue answers");

    fake.set_hanging(true);
    let started = std::time::Instant::now();
    let result = publisher.publish(&queue, &event("held"), None).await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(PublishError::Unavailable(_))),
        "an error the caller stores in the outbox: {result:?}"
    );
    assert!(
        took >= publish_timeout && took < publish_timeout + Duration::from_millis(300),
        "answered at the deadline, not when the call gives up: {took:?}"
    );
    assert!(fake.calls_hung() >= 1, "the call reached the fake");

    // Once the endpoint answers again, so does the publisher.
    fake.set_hanging(false);
    publisher
        .publish(&queue, &event("after"), None)
        .await
        .expect("published once SQS answers");
    assert_eq!(fake.accepted().get("after"), Some(&1));
    assert_eq!(
        fake.accepted().get("held"),
        None,
        "a held call takes nothing"
    );
}
