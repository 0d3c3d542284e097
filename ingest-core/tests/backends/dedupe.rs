//! Redis dedupe across core replicas, and its fallback to memory while Redis is down or hangs.

use std::{collections::HashMap, time::Duration};

use carrier_ingest::v1::{Carrier, Outcome};
use futures_util::future::join_all;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{
    Core, Server, Sqs, aws_for, core_config, inbound, outcome, sqs_redis_flags, submit_inbound,
    unique,
};

const READY_WITHIN: Duration = Duration::from_secs(20);

/// Two cores sharing a fresh redis-server (calls to it time out after 300 ms) and a standard
/// queue on moto, both serving.
struct TwoCores {
    /// Kept to the end of the test (bind it: `..` would drop it at once).
    _moto: Server,
    redis: Server,
    sqs: Sqs,
    queue: String,
    a: Core,
    b: Core,
}

async fn two_cores_sharing_redis(stem: &str) -> TwoCores {
    let moto = Server::moto();
    let redis = Server::redis();
    let sqs = Sqs::new(&moto).await;
    let queue = sqs.create_queue(&unique(stem)).await;
    let redis_url = format!("redis://{}", redis.addr());
    let prefix = unique(stem) + ":";
    let config = core_config(&sqs_redis_flags(
        &queue,
        &redis_url,
        &prefix,
        &["--redis-timeout-ms=300"],
    ));
    let aws = aws_for(&moto).await;
    let a = Core::from_config(&config, &aws).await;
    let b = Core::from_config(&config, &aws).await;
    a.wait_health(ServingStatus::Serving, READY_WITHIN).await;
    b.wait_health(ServingStatus::Serving, READY_WITHIN).await;
    TwoCores {
        _moto: moto,
        redis,
        sqs,
        queue,
        a,
        b,
    }
}

/// Submits new events to `core` until its dedupe is back on Redis (a degraded store probes
/// Redis when called); each must be accepted. Returns how many it took.
async fn submit_until_back_on_redis(core: &Core, stem: &str) -> usize {
    let mut probes = 0;
    while core.pipeline.dedupe().degraded() {
        probes += 1;
        assert!(probes < 100, "dedupe did not return to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = submit_inbound(
            &core.client,
            inbound(Carrier::Twilio, &format!("{stem}-{probes}")),
        )
        .await
        .expect("taken while probing");
        assert_eq!(outcome(&r), Outcome::Accepted);
    }
    probes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cores_sharing_redis_publish_each_event_once() {
    const EVENTS: usize = 20;
    const COPIES: usize = 10;
    // A standard queue: SQS itself would not drop duplicates, so only dedupe can.
    let TwoCores {
        sqs,
        queue,
        a,
        b,
        redis: _redis,
        _moto,
    } = two_cores_sharing_redis("shared").await;
    let cores = [a, b];

    let calls = (0..EVENTS * COPIES).map(|n| {
        let event = n % EVENTS;
        let client = cores[(n / EVENTS) % 2].client.clone();
        async move {
            let reply = submit_inbound(
                &client,
                inbound(Carrier::Inteliquent, &format!("iq-{event}")),
            )
            .await
            .expect("every copy is answered");
            (event, reply)
        }
    });
    let mut by_event: HashMap<usize, Vec<Outcome>> = HashMap::new();
    let mut ids: HashMap<usize, String> = HashMap::new();
    for (event, reply) in join_all(calls).await {
        by_event.entry(event).or_default().push(outcome(&reply));
        let id = ids.entry(event).or_insert_with(|| reply.event_id.clone());
        assert_eq!(*id, reply.event_id, "stable event id across replicas");
    }
    for (event, outcomes) in &by_event {
        let accepted = outcomes.iter().filter(|o| **o == Outcome::Accepted).count();
        assert_eq!(accepted, 1, "event {event}: {outcomes:?}");
        assert_eq!(outcomes.len(), COPIES);
    }

    let got = sqs.drain(&queue).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for m in &got {
        *per_id
            .entry(m.body["eventId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        got.len(),
        EVENTS,
        "exactly one message per event: {per_id:?}"
    );
    assert!(per_id.values().all(|n| *n == 1));
    assert!(cores.iter().all(|c| !c.pipeline.dedupe().degraded()));
    for core in cores {
        core.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_memory_and_dedupe_resumes() {
    // Stopped, then started again empty (no persistence): calls are refused meanwhile.
    through_a_redis_outage(RedisOutage::Gone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_an_outage_too_events_are_taken_and_dedupe_resumes() {
    // SIGSTOP, then SIGCONT: its connection stays open and nothing answers, so no error ever
    // arrives, only silence; and once it goes on it runs the commands sent to it meanwhile.
    through_a_redis_outage(RedisOutage::Frozen).await;
}

/// How Redis fails in [`through_a_redis_outage`].
#[derive(Debug, Clone, Copy)]
enum RedisOutage {
    Gone,
    Frozen,
}

/// Two cores sharing Redis; Redis fails and comes back. Events are taken meanwhile (deduped in
/// memory), what was taken is handed over, and afterwards dedupe is shared again: every event
/// on the queue once.
async fn through_a_redis_outage(outage: RedisOutage) {
    let TwoCores {
        mut redis,
        sqs,
        queue,
        a,
        b,
        _moto,
    } = two_cores_sharing_redis("outage").await;

    let before = submit_inbound(&a.client, inbound(Carrier::Twilio, "SM-before"))
        .await
        .expect("redis up");
    assert_eq!(outcome(&before), Outcome::Accepted);
    assert!(!a.pipeline.dedupe().degraded());

    match outage {
        RedisOutage::Gone => redis.stop(),
        RedisOutage::Frozen => redis.freeze(),
    }
    let started = std::time::Instant::now();
    let during = submit_inbound(&a.client, inbound(Carrier::Twilio, "SM-during"))
        .await
        .expect("taken although Redis fails");
    assert_eq!(outcome(&during), Outcome::Accepted);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "bounded by the Redis timeout ({outage:?}): {:?}",
        started.elapsed()
    );
    assert!(a.pipeline.dedupe().degraded(), "fallback is visible");
    let started = std::time::Instant::now();
    let retry = submit_inbound(&a.client, inbound(Carrier::Twilio, "SM-during"))
        .await
        .expect("retry while Redis fails");
    assert_eq!(
        outcome(&retry),
        Outcome::Duplicate,
        "memory dedupes this replica"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "once degraded, calls do not wait for Redis: {:?}",
        started.elapsed()
    );

    // The core probes Redis and switches back, handing over what it took meanwhile.
    match outage {
        RedisOutage::Gone => redis.start(),
        RedisOutage::Frozen => redis.thaw(),
    }
    let probes = submit_until_back_on_redis(&a, "SM-probe").await;

    // What replica a published during the outage was handed over: a retry that now reaches
    // replica b is a duplicate, not a second message. (After a freeze, Redis also ran the claim
    // a sent while it hung; the hand-over must replace it, not wait for it to lapse.)
    let handed_over = submit_inbound(&b.client, inbound(Carrier::Twilio, "SM-during"))
        .await
        .expect("retry on the other replica after the outage");
    assert_eq!(outcome(&handed_over), Outcome::Duplicate);

    // Shared again: the same event through both replicas is published once.
    let first = submit_inbound(&a.client, inbound(Carrier::Twilio, "SM-after"))
        .await
        .expect("after");
    let second = submit_inbound(&b.client, inbound(Carrier::Twilio, "SM-after"))
        .await
        .expect("after, other replica");
    assert_eq!(outcome(&first), Outcome::Accepted);
    assert_eq!(outcome(&second), Outcome::Duplicate);
    assert!(!b.pipeline.dedupe().degraded());

    let got = sqs.drain(&queue).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|m| m.body["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(
        got.len(),
        3 + probes,
        "before, during, probes, after: once each: {ids:?}"
    );
    for id in [&before.event_id, &during.event_id, &first.event_id] {
        assert_eq!(ids.iter().filter(|i| **i == id.as_str()).count(), 1);
    }
    a.shutdown().await;
    b.shutdown().await;
}
