//! The SQS publisher end to end over gRPC: routing, attributes, bodies, FIFO ids, batching and
//! outages.

use std::{collections::HashSet, sync::Arc, time::Duration};

use carrier_ingest::v1::{Carrier, Envelope, Outcome, envelope::Event};
use futures_util::future::join_all;
use ingest_core::{
    dedupe::MemoryDedupe,
    metrics::sample,
    publish::{SqsPublisher, SqsSettings},
    service::{Pipeline, Routes},
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    fake_sqs::{Behaviour, FakeSqs},
    support::{
        Core, Server, Sqs, aws_at, aws_for, core_config, inbound, outcome, sqs_flags,
        sqs_redis_flags, status, submit_inbound, unique,
    },
};

const READY_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_on_their_queues_with_attributes_and_fifo_ids() {
    let moto = Server::moto();
    let redis = Server::redis();
    let sqs = Sqs::new(&moto).await;
    let inbound_q = sqs.create_queue(&unique("inbound")).await;
    let twilio_q = sqs.create_queue(&unique("twilio-inbound")).await;
    let status_q = sqs
        .create_queue(&format!("{}.fifo", unique("status")))
        .await;
    let redis_url = format!("redis://{}", redis.addr());
    let prefix = unique("e2e") + ":";
    let config = core_config(&[
        "--publisher=sqs",
        "--inbound-queue",
        &inbound_q,
        "--status-queue",
        &status_q,
        "--quarantine-queue",
        &status_q,
        "--twilio-inbound-queue",
        &twilio_q,
        "--dedupe=redis",
        "--redis-url",
        &redis_url,
        "--redis-key-prefix",
        &prefix,
    ]);
    let core = Core::from_config(&config, &aws_for(&moto).await).await;
    core.wait_health(ServingStatus::Serving, READY_WITHIN).await;
    let mut client = core.client.clone();

    let mb = submit_inbound(&client, inbound(Carrier::Messagebird, "mb-1"))
        .await
        .expect("messagebird inbound");
    assert_eq!(outcome(&mb), Outcome::Accepted);
    let tw = submit_inbound(&client, inbound(Carrier::Twilio, "SM1"))
        .await
        .expect("twilio inbound");
    assert_eq!(outcome(&tw), Outcome::Accepted);
    let mut status_ids = Vec::new();
    for raw in ["message-sending", "message-delivered"] {
        let reply = client
            .submit_status(status(Carrier::Bandwidth, "bw-1", raw))
            .await
            .expect("status")
            .into_inner();
        assert_eq!(outcome(&reply), Outcome::Accepted);
        status_ids.push(reply.event_id);
    }
    // A carrier retry is acknowledged without a second message.
    let again = submit_inbound(&client, inbound(Carrier::Messagebird, "mb-1"))
        .await
        .expect("retry");
    assert_eq!(outcome(&again), Outcome::Duplicate);
    assert_eq!(again.event_id, mb.event_id);

    let got = sqs.drain(&inbound_q).await;
    assert_eq!(got.len(), 1, "one message on the default inbound queue");
    let m = &got[0];
    let envelope: Envelope = serde_json::from_value(m.body.clone()).expect("canonical Envelope");
    assert_eq!(envelope.event_id, mb.event_id);
    assert_eq!(envelope.schema_version, 1);
    let Some(Event::Inbound(msg)) = envelope.event else {
        panic!("not an inbound event")
    };
    assert_eq!(msg.carrier_message_id, "mb-1");
    assert_eq!(msg.from, "+15559876543");
    assert_eq!(m.body["inbound"]["carrier"], "CARRIER_MESSAGEBIRD");
    assert_eq!(m.attributes["carrier"], "messagebird");
    assert_eq!(m.attributes["kind"], "inbound");
    assert_eq!(m.attributes["schema_version"], "1");
    assert_eq!(m.attribute_types["schema_version"], "Number");
    assert!(!m.attributes.contains_key("status"), "no status on inbound");
    assert_eq!(m.group_id, None, "standard queues carry no group id");

    let got = sqs.drain(&twilio_q).await;
    assert_eq!(got.len(), 1, "Twilio inbound goes to its override queue");
    assert_eq!(got[0].body["eventId"], tw.event_id.as_str());
    assert_eq!(got[0].attributes["carrier"], "twilio");

    let got = sqs.drain(&status_q).await;
    assert_eq!(got.len(), 2, "both statuses on the FIFO status queue");
    let ids: Vec<&str> = got
        .iter()
        .map(|m| m.body["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids, status_ids,
        "FIFO keeps one message's statuses in order"
    );
    for (m, id) in got.iter().zip(&status_ids) {
        assert_eq!(m.dedup_id.as_deref(), Some(id.as_str()));
        assert_eq!(m.attributes["kind"], "status");
        assert_eq!(m.attributes["carrier"], "bandwidth");
        assert_eq!(m.body["status"]["carrierMessageId"], "bw-1");
    }
    assert_eq!(got[0].attributes["status"], "sending");
    assert_eq!(got[1].attributes["status"], "delivered");
    let group = got[0].group_id.clone().expect("FIFO group id");
    assert!(!group.is_empty());
    assert_eq!(got[1].group_id.as_deref(), Some(group.as_str()));
    core.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_share_batch_calls() {
    const EVENTS: usize = 200;
    let moto = Server::moto();
    let sqs = Sqs::new(&moto).await;
    let queue = sqs.create_queue(&unique("batched")).await;
    let publisher = Arc::new(SqsPublisher::new(
        &aws_for(&moto).await,
        SqsSettings {
            linger: Duration::from_millis(10),
            ..SqsSettings::default()
        },
    ));
    let dedupe = Arc::new(MemoryDedupe::new(
        Duration::from_secs(60),
        10_000,
        Duration::from_secs(30),
    ));
    let routes = Routes {
        inbound: queue.clone(),
        status: queue.clone(),
        ..Routes::default()
    };
    let core = Core::start(Pipeline::new(dedupe, publisher.clone(), routes)).await;

    let calls = (0..EVENTS).map(|i| {
        let client = core.client.clone();
        async move { submit_inbound(&client, inbound(Carrier::Twilio, &format!("SM{i}"))).await }
    });
    let replies = join_all(calls).await;
    let mut accepted = HashSet::new();
    for r in replies {
        let r = r.expect("accepted");
        assert_eq!(outcome(&r), Outcome::Accepted);
        accepted.insert(r.event_id);
    }
    assert_eq!(accepted.len(), EVENTS);

    let stats = publisher.stats();
    eprintln!("batching: {stats:?}");
    assert_eq!(stats.messages_sent, EVENTS as u64);
    assert!(
        stats.batch_calls * 4 <= EVENTS as u64,
        "{} SendMessageBatch calls for {EVENTS} events",
        stats.batch_calls
    );
    let got = sqs.drain(&queue).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|m| m.body["eventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), EVENTS, "exactly one message per event");
    assert_eq!(ids, accepted);

    // The metrics say how many calls there were and how full they left.
    let name = ingest_core::publish::queue_name(&queue);
    let metric = |series: &str| sample(&format!("{series}{{queue=\"{name}\"}}"));
    assert_eq!(
        metric("ingest_sqs_batch_entries_sum"),
        Some(EVENTS as f64),
        "entries per call add up to the events"
    );
    assert_eq!(
        metric("ingest_sqs_batch_entries_count"),
        Some(stats.batch_calls as f64)
    );
    assert_eq!(
        sample(&format!(
            "ingest_sqs_call_duration_seconds_count{{queue=\"{name}\",outcome=\"ok\"}}"
        )),
        Some(stats.batch_calls as f64),
        "every call timed"
    );
    core.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_queue_stores_events_and_relays_them_once_it_exists() {
    let moto = Server::moto();
    let redis = Server::redis();
    let sqs = Sqs::new(&moto).await;
    let name = unique("late");
    let queue = format!("http://{}/123456789012/{name}", moto.addr());
    let redis_url = format!("redis://{}", redis.addr());
    let prefix = unique("late") + ":";
    let config = core_config(&sqs_redis_flags(
        &queue,
        &redis_url,
        &prefix,
        &["--sqs-publish-timeout-ms=2000"],
    ));
    let core = Core::from_config(&config, &aws_for(&moto).await).await;
    // The outbox can take events, so the core stays in service without its queue.
    core.wait_health(ServingStatus::Serving, READY_WITHIN).await;

    let first = submit_inbound(&core.client, inbound(Carrier::Bandwidth, "bw-9"))
        .await
        .expect("stored in the outbox");
    assert_eq!(outcome(&first), Outcome::Accepted);
    let retry = submit_inbound(&core.client, inbound(Carrier::Bandwidth, "bw-9"))
        .await
        .expect("retry");
    assert_eq!(outcome(&retry), Outcome::Duplicate);
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(sqs.create_queue(&name).await, queue);
    let got = sqs.drain_until(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "exactly one message, relayed from the outbox");
    assert_eq!(got[0].body["eventId"], first.event_id.as_str());
    assert_eq!(got[0].attributes["carrier"], "bandwidth");
    core.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_sqs_opens_the_circuit_and_the_outbox_forwards_after_restart() {
    let mut moto = Server::moto();
    let redis = Server::redis();
    let name = unique("outage");
    let queue = Sqs::new(&moto).await.create_queue(&name).await;
    let redis_url = format!("redis://{}", redis.addr());
    let prefix = unique("outage") + ":";
    let config = core_config(&sqs_redis_flags(
        &queue,
        &redis_url,
        &prefix,
        &["--sqs-publish-timeout-ms=1500"],
    ));
    let core = Core::from_config(&config, &aws_for(&moto).await).await;
    core.wait_health(ServingStatus::Serving, READY_WITHIN).await;

    moto.stop();
    let started = std::time::Instant::now();
    let first = client_status(&core, "SMout")
        .await
        .expect("stored in the outbox while SQS is down");
    assert_eq!(outcome(&first), Outcome::Accepted);
    // Three failed calls open the circuit; the event does not wait out the 1.5 s deadline.
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let second = client_status(&core, "SMout2").await.expect("circuit open");
    assert_eq!(outcome(&second), Outcome::Accepted);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "with the circuit open an event goes straight to the outbox ({:?})",
        started.elapsed()
    );
    assert_eq!(core.health().await, ServingStatus::Serving);
    let name = ingest_core::publish::queue_name(&queue);
    let failed = sample(&format!(
        "ingest_sqs_call_duration_seconds_count{{queue=\"{name}\",outcome=\"error\"}}"
    ));
    assert!(
        failed.is_some_and(|n| n >= 3.0),
        "the failed calls are timed as errors: {failed:?}"
    );

    // moto keeps queues in memory: after a restart the queue is created again, empty.
    moto.start();
    let sqs = Sqs::new(&moto).await;
    assert_eq!(sqs.create_queue(&name).await, queue);
    let got = sqs.drain_until(&queue, 2, Duration::from_secs(15)).await;
    let mut ids: Vec<_> = got
        .iter()
        .map(|m| m.body["eventId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = vec![first.event_id.clone(), second.event_id.clone()];
    want.sort();
    assert_eq!(ids, want, "each stored event forwarded exactly once");
    assert!(got.iter().all(|m| m.attributes["status"] == "delivered"));
    let again = client_status(&core, "SMout").await.expect("retry");
    assert_eq!(outcome(&again), Outcome::Duplicate);
    core.shutdown().await;
}

async fn client_status(
    core: &Core,
    id: &str,
) -> Result<carrier_ingest::v1::SubmitReply, tonic::Status> {
    core.client
        .clone()
        .submit_status(status(Carrier::Twilio, id, "delivered"))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_caught_by_a_hang_is_kept_within_its_callers_deadline() {
    let fake = FakeSqs::start(Behaviour::default()).await;
    let queue = fake.queue_url(&unique("deadline"));
    // The publish timeout (3 s) is longer than the caller's deadline: the deadline decides.
    let config = core_config(&sqs_flags(&queue));
    let aws = aws_at(&format!("http://{}", fake.addr)).await;
    let core = Core::from_config(&config, &aws).await;
    core.wait_health(ServingStatus::Serving, READY_WITHIN).await;

    fake.set_hanging(true);
    let deadline = Duration::from_millis(1500);
    let mut request = tonic::Request::new(inbound(Carrier::Twilio, "SM-deadline"));
    request.set_timeout(deadline);
    let started = std::time::Instant::now();
    let reply = core
        .client
        .clone()
        .submit_inbound(request)
        .await
        .expect("kept in the outbox before the caller gave up")
        .into_inner();
    let took = started.elapsed();
    eprintln!("a hang with a {deadline:?} deadline: answered after {took:?}");
    assert_eq!(outcome(&reply), Outcome::Accepted);
    assert!(took < deadline, "answered within the deadline: {took:?}");
    assert!(
        took >= deadline - Duration::from_millis(400),
        "SQS had most of the deadline: {took:?}"
    );

    // Relayed once SQS answers again.
    fake.set_hanging(false);
    let give_up = std::time::Instant::now() + Duration::from_secs(15);
    while !fake.accepted().contains_key(&reply.event_id) {
        assert!(std::time::Instant::now() < give_up, "never relayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    core.shutdown().await;
}
