//! The Redis claim / commit / release semantics, straight against redis-server.

use std::{sync::Arc, time::Duration};

use ingest_core::dedupe::{
    Claim, ClaimToken, DedupeError, DedupeStore, RedisDedupe, RedisSettings,
};

use crate::support::{Server, unique};

fn store(redis: &Server, prefix: &str, lease: Duration, claim_wait: Duration) -> RedisDedupe {
    store_holding(redis, prefix, lease, Duration::from_secs(30), claim_wait)
}

fn store_holding(
    redis: &Server,
    prefix: &str,
    lease: Duration,
    max_hold: Duration,
    claim_wait: Duration,
) -> RedisDedupe {
    RedisDedupe::new(
        &format!("redis://{}", redis.addr()),
        RedisSettings {
            key_prefix: prefix.to_owned(),
            ttl: Duration::from_secs(60),
            lease,
            max_hold,
            timeout: Duration::from_millis(500),
            claim_wait,
        },
    )
    .expect("redis store")
}

async fn acquire(s: &RedisDedupe, key: &str) -> ClaimToken {
    match s.claim(key).await.expect("claim") {
        Claim::Acquired(t) => t,
        Claim::Duplicate => panic!("{key} unexpectedly duplicate"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_across_stores_and_settled_only_by_their_owner() {
    let redis = Server::redis();
    let prefix = unique("store") + ":";
    let wait = Duration::from_secs(5);
    let a = Arc::new(store(&redis, &prefix, Duration::from_secs(30), wait));
    let b = Arc::new(store(&redis, &prefix, Duration::from_secs(30), wait));

    // Commit makes a duplicate for the other replica.
    let t = acquire(&a, "k1").await;
    a.commit("k1", &t).await.unwrap();
    assert_eq!(b.claim("k1").await.unwrap(), Claim::Duplicate);

    // A waiter on a live claim gets the outcome: duplicate after commit...
    let t = acquire(&a, "k2").await;
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.claim("k2").await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "must wait while the claim is live");
    // ...and neither a stranger's token nor a forged one settles it.
    b.commit("k2", &ClaimToken("someone:1".into()))
        .await
        .unwrap();
    b.release("k2", &ClaimToken("someone:1".into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "a non-owner cannot settle the claim");
    a.commit("k2", &t).await.unwrap();
    assert_eq!(waiter.await.unwrap(), Claim::Duplicate);

    // ...or the claim itself after a release.
    let t = acquire(&a, "k3").await;
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.claim("k3").await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.release("k3", &t).await.unwrap();
    assert!(matches!(waiter.await.unwrap(), Claim::Acquired(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_claims_are_taken_over_and_waiting_is_bounded() {
    let redis = Server::redis();
    let prefix = unique("lease") + ":";
    let short = store(
        &redis,
        &prefix,
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    let impatient = store(
        &redis,
        &prefix,
        Duration::from_secs(30),
        Duration::from_millis(150),
    );

    // A holder that vanished (its store dropped, as when its process dies): its lease lapses,
    // the next claimer takes over, and the old holder's late commit does not overwrite the new
    // claim.
    let vanished = store(
        &redis,
        &prefix,
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    let old = acquire(&vanished, "k").await;
    drop(vanished);
    let new = acquire(&short, "k").await;
    assert_ne!(old, new);
    short.commit("k", &old).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(100), impatient.claim("k")).await;
    assert!(
        matches!(r, Err(_) | Ok(Err(DedupeError::Contended))),
        "the new claim is still live: {r:?}"
    );
    short.commit("k", &new).await.unwrap();
    assert_eq!(impatient.claim("k").await.unwrap(), Claim::Duplicate);

    // Waiting on a claim that outlives claim_wait ends in Contended, not a guess.
    let _held = acquire(&impatient, "busy").await;
    let started = std::time::Instant::now();
    let r = impatient.claim("busy").await;
    assert!(matches!(r, Err(DedupeError::Contended)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(impatient.key("busy").starts_with(&prefix));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_keeps_its_claim_past_the_lease_and_a_dead_ones_lapses_within_it() {
    let redis = Server::redis();
    let prefix = unique("renew") + ":";
    let lease = Duration::from_millis(300);
    let holder = store(&redis, &prefix, lease, Duration::from_secs(5));
    let impatient = store(&redis, &prefix, lease, Duration::from_millis(200));

    // A publish that takes several leases: the live holder renews, nobody takes over.
    let t = acquire(&holder, "slow").await;
    assert_eq!(holder.renewing(), 1);
    tokio::time::sleep(lease * 4).await;
    let r = impatient.claim("slow").await;
    assert!(
        matches!(r, Err(DedupeError::Contended)),
        "a renewed claim stays held: {r:?}"
    );
    holder.commit("slow", &t).await.unwrap();
    assert_eq!(holder.renewing(), 0, "settling stops the renewal");
    assert_eq!(impatient.claim("slow").await.unwrap(), Claim::Duplicate);

    // The holder dies mid-publish: a waiter takes over within about one lease, far inside an
    // edge deadline of seconds, and publishes.
    let dying = store(&redis, &prefix, lease, Duration::from_secs(5));
    let _held = acquire(&dying, "orphan").await;
    tokio::time::sleep(lease * 2).await;
    drop(dying);
    let waiter = store(&redis, &prefix, lease, Duration::from_secs(5));
    let started = std::time::Instant::now();
    let t = acquire(&waiter, "orphan").await;
    let waited = started.elapsed();
    assert!(
        waited <= lease + Duration::from_millis(250),
        "a dead holder's claim lapses within a lease: waited {waited:?}"
    );
    waiter.commit("orphan", &t).await.unwrap();
    assert_eq!(impatient.claim("orphan").await.unwrap(), Claim::Duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_holder_stops_renewing_after_its_longest_hold() {
    let redis = Server::redis();
    let prefix = unique("stuck") + ":";
    let lease = Duration::from_millis(200);
    let max_hold = Duration::from_millis(800);
    let stuck = store_holding(&redis, &prefix, lease, max_hold, Duration::from_secs(5));
    let other = store(&redis, &prefix, lease, Duration::from_secs(5));
    let started = std::time::Instant::now();
    let _never_settled = acquire(&stuck, "k").await;
    let taken = acquire(&other, "k").await;
    let waited = started.elapsed();
    assert!(
        waited >= max_hold && waited <= max_hold + lease + Duration::from_millis(300),
        "renewed up to the longest hold, then lapsed: {waited:?}"
    );
    other.commit("k", &taken).await.unwrap();
    assert_eq!(stuck.claim("k").await.unwrap(), Claim::Duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_replaces_only_its_own_claims_and_never_a_commit() {
    let redis = Server::redis();
    let prefix = unique("handover") + ":";
    let wait = Duration::from_millis(300);
    let a = store(&redis, &prefix, Duration::from_secs(30), wait);
    let b = store(&redis, &prefix, Duration::from_secs(30), wait);
    let ttl = Duration::from_secs(60);

    // Nothing there: marked committed.
    a.mark_committed("free", ttl).await.unwrap();
    assert_eq!(b.claim("free").await.unwrap(), Claim::Duplicate);

    // Its own claim (what a claim Redis ran late, after a hang, leaves): replaced, so a retry
    // on another replica is a duplicate at once instead of waiting out the lease.
    let _stale = acquire(&a, "own").await;
    a.mark_committed("own", ttl).await.unwrap();
    assert_eq!(b.claim("own").await.unwrap(), Claim::Duplicate);

    // Another replica's live claim: kept. That replica is publishing the event; its commit
    // settles it.
    let theirs = acquire(&b, "theirs").await;
    a.mark_committed("theirs", ttl).await.unwrap();
    assert!(
        matches!(a.claim("theirs").await, Err(DedupeError::Contended)),
        "the claim still holds"
    );
    b.commit("theirs", &theirs).await.unwrap();
    assert_eq!(a.claim("theirs").await.unwrap(), Claim::Duplicate);
}
