//! Store-and-forward through the real binary: an SQS endpoint that fails on command (HTTP 500
//! `InternalError` on every call) or hangs (holds every call without an answer), carriers that
//! send each event once, and counts of what was sent, acknowledged and delivered. A test passes
//! only when nothing acknowledged is missing.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{fake_sqs::FakeSqs, harness::Edge, spec::BANDWIDTH_INBOUND};

/// Core flags for SQS publishing to `queue` on the fake endpoint.
fn sqs_env(fake: &FakeSqs, queue: &str) -> Vec<(&'static str, String)> {
    vec![
        ("INGEST_PUBLISHER", "sqs".into()),
        ("INGEST_INBOUND_QUEUE", queue.to_owned()),
        ("INGEST_STATUS_QUEUE", queue.to_owned()),
        ("INGEST_QUARANTINE_QUEUE", queue.to_owned()),
        ("AWS_ENDPOINT_URL", format!("http://{}", fake.addr)),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A Bandwidth inbound call with its own message id.
fn body(tag: &str, i: usize) -> String {
    BANDWIDTH_INBOUND.replace("msg-abc123def456", &format!("msg-{tag}-{i}"))
}

/// What one call got: status, the event id on success, and how long it took.
#[derive(Debug, Clone)]
struct Sent {
    status: u16,
    event_id: Option<String>,
    elapsed: Duration,
}

async fn send(edge: &Edge, tag: &str, i: usize) -> Sent {
    let started = Instant::now();
    let r = edge
        .post_json("/bandwidth/15551234567", &body(tag, i))
        .await;
    let status = r.status().as_u16();
    let event_id = (status == 200).then(|| {
        r.headers()["x-ingest-event-id"]
            .to_str()
            .unwrap()
            .to_owned()
    });
    Sent {
        status,
        event_id,
        elapsed: started.elapsed(),
    }
}

/// Waits until the fake has accepted every id in `ids`; returns the acceptance counts.
async fn wait_delivered(fake: &FakeSqs, ids: &[String], within: Duration) -> HashMap<String, u32> {
    let deadline = Instant::now() + within;
    loop {
        let accepted = fake.accepted();
        if ids.iter().all(|id| accepted.contains_key(id)) || Instant::now() > deadline {
            // A moment more, so a duplicate sent late would show.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return fake.accepted();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_outage_mid_run_loses_nothing_and_duplicates_nothing() {
    const EVENTS: usize = 600;
    const CONCURRENCY: usize = 16;
    let fake = Arc::new(
        FakeSqs::start(crate::fake_sqs::Behaviour {
            latency: Duration::from_millis(5),
            ..Default::default()
        })
        .await,
    );
    let queue = fake.queue_url("outage-in.fifo");
    let env = sqs_env(&fake, &queue);
    let edge = Arc::new(Edge::start(&["--insecure-skip-verify"], &env_refs(&env)).await);

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outage = Arc::new(std::sync::Mutex::new((None::<Instant>, None::<Instant>)));
    let senders: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (edge, fake, next, outage) =
                (edge.clone(), fake.clone(), next.clone(), outage.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= EVENTS {
                        return sent;
                    }
                    // The outage covers the middle third of the run.
                    if i == EVENTS / 3 {
                        fake.set_failing(true);
                        outage.lock().unwrap().0 = Some(Instant::now());
                    }
                    if i == 2 * EVENTS / 3 {
                        fake.set_failing(false);
                        outage.lock().unwrap().1 = Some(Instant::now());
                    }
                    let at = Instant::now();
                    sent.push((at, send(&edge, "out", i).await));
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for s in senders {
        results.extend(s.await.unwrap());
    }
    let (start, end) = *outage.lock().unwrap();
    let (start, end) = (start.unwrap(), end.unwrap());
    let during: Vec<Duration> = results
        .iter()
        .filter(|(at, _)| *at >= start && *at < end)
        .map(|(_, s)| s.elapsed)
        .collect();
    let refused = results.iter().filter(|(_, s)| s.status != 200).count();
    let ids: Vec<String> = results
        .iter()
        .filter_map(|(_, s)| s.event_id.clone())
        .collect();
    let accepted = wait_delivered(&fake, &ids, Duration::from_secs(30)).await;
    let missing = ids.iter().filter(|id| !accepted.contains_key(*id)).count();
    let twice = accepted.values().filter(|n| **n > 1).count();
    eprintln!(
        "outage: sent {EVENTS}, acknowledged {}, refused {refused}, delivered {}, missing {missing}, \
         delivered twice {twice}, calls failed {}, {} sent during the outage with p99 {:?}",
        ids.len(),
        accepted.len(),
        fake.calls_failed(),
        during.len(),
        p99(during.clone())
    );
    assert_eq!(refused, 0, "every event acknowledged");
    assert!(fake.calls_failed() > 0, "the outage happened");
    assert_eq!(missing, 0, "every acknowledged event reached SQS");
    assert_eq!(twice, 0, "none twice");
    assert_eq!(accepted.len(), EVENTS);
    assert!(
        p99(during) < Duration::from_secs(1),
        "webhooks during the outage are answered from the outbox, not after the publish timeout"
    );
    // A relayed entry is what a direct publish sends: attributes and FIFO ids.
    let entry = fake.entry(&ids[EVENTS / 2]).expect("relayed");
    assert_eq!(entry["MessageDeduplicationId"], ids[EVENTS / 2].as_str());
    assert!(
        entry["MessageGroupId"]
            .as_str()
            .is_some_and(|g| !g.is_empty())
    );
    assert_eq!(
        entry["MessageAttributes"]["carrier"]["StringValue"],
        "bandwidth"
    );
    assert_eq!(entry["MessageAttributes"]["kind"]["StringValue"], "inbound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_that_hangs_mid_run_gets_every_webhook_a_200_within_the_deadline() {
    // One carrier connection sending one webhook at a time: the slowest case for the circuit
    // breaker (one call in flight, each failing only when its 2 s call timeout ends), so the
    // event caught by the hang must go to the outbox at the publish timeout (3 s), before the
    // edge's 5 s core deadline answers 504 for it.
    const BEFORE: usize = 10;
    const DURING: usize = 20;
    const AFTER: usize = 10;
    let fake = FakeSqs::start(crate::fake_sqs::Behaviour::default()).await;
    let queue = fake.queue_url("hang-in.fifo");
    let env = sqs_env(&fake, &queue);
    let edge = Edge::start(&["--insecure-skip-verify"], &env_refs(&env)).await;

    let mut results = Vec::new();
    for i in 0..BEFORE + DURING + AFTER {
        if i == BEFORE {
            fake.set_hanging(true);
        }
        if i == BEFORE + DURING {
            fake.set_hanging(false);
        }
        results.push(send(&edge, "hang", i).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = results.iter().filter_map(|s| s.event_id.clone()).collect();
    let accepted = wait_delivered(&fake, &ids, Duration::from_secs(30)).await;
    let missing = ids.iter().filter(|id| !accepted.contains_key(*id)).count();
    let slowest = results.iter().map(|s| s.elapsed).max().unwrap_or_default();
    let statuses: Vec<u16> = results.iter().map(|s| s.status).collect();
    eprintln!(
        "hang: sent {}, acknowledged {}, delivered {}, missing {missing}, calls held {}, slowest {slowest:?}",
        results.len(),
        ids.len(),
        accepted.len(),
        fake.calls_hung(),
    );
    assert!(fake.calls_hung() > 0, "the hang happened");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every webhook acknowledged: {statuses:?}\n{}",
        edge.log()
    );
    assert!(
        slowest < Duration::from_millis(4500),
        "answered before the edge's deadline: {slowest:?}"
    );
    assert_eq!(missing, 0, "every acknowledged event reached SQS");
    assert!(
        accepted.values().all(|n| *n == 1),
        "none twice: {accepted:?}"
    );
    assert_eq!(accepted.len(), BEFORE + DURING + AFTER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_core_forwards_its_outbox_after_restart() {
    const EVENTS: usize = 40;
    let fake = FakeSqs::start(Default::default()).await;
    fake.set_failing(true);
    let queue = fake.queue_url("restart-in");
    let env = sqs_env(&fake, &queue);
    let mut edge = Edge::start(&["--insecure-skip-verify"], &env_refs(&env)).await;
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        let sent = send(&edge, "kill", i).await;
        assert_eq!(sent.status, 200, "stored in the outbox");
        ids.push(sent.event_id.unwrap());
    }
    assert!(fake.accepted().is_empty(), "nothing reached SQS yet");
    edge.kill();
    let data = edge.take_data();

    fake.set_failing(false);
    let edge = Edge::restart_in(data, &["--insecure-skip-verify"], &env_refs(&env)).await;
    let accepted = wait_delivered(&fake, &ids, Duration::from_secs(20)).await;
    let missing = ids.iter().filter(|id| !accepted.contains_key(*id)).count();
    assert_eq!(missing, 0, "{}", edge.log());
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    assert!(
        edge.log().contains("unsent events found at start-up"),
        "the restart says what it found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_answers_503_and_keeps_everything_it_acknowledged() {
    let fake = FakeSqs::start(Default::default()).await;
    fake.set_failing(true);
    let queue = fake.queue_url("full-in");
    let env = sqs_env(&fake, &queue);
    let edge = Edge::start(
        &["--insecure-skip-verify", "--outbox-max-bytes=65536"],
        &env_refs(&env),
    )
    .await;
    let mut ids = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let sent = send(&edge, "full", i).await;
        match sent.status {
            200 => ids.push(sent.event_id.unwrap()),
            503 => {
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refused = refused.expect("the outbox filled up");
    assert!(ids.len() > 10, "{} stored before it was full", ids.len());
    // Still full: the next call is refused too, and nothing was acknowledged for it.
    assert_eq!(send(&edge, "full", refused + 1).await.status, 503);

    fake.set_failing(false);
    let accepted = wait_delivered(&fake, &ids, Duration::from_secs(20)).await;
    assert!(
        ids.iter().all(|id| accepted.get(id) == Some(&1)),
        "every acknowledged event delivered once"
    );
    assert_eq!(accepted.len(), ids.len(), "refused events were not stored");
    // Room again once SQS took the backlog: the carrier's retry is accepted.
    let retry = send(&edge, "full", refused).await;
    assert_eq!(retry.status, 200);
}
