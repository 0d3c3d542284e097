//! P3: the in-memory dedupe's memory per remembered key, at 1M keys (its default capacity).
//!
//! `cargo bench -p ingest-core --bench dedupe_memory -- [KEYS=1000000] [CAPACITY=KEYS]`
//!
//! Claims and commits KEYS event ids (32 hex digits, as the core derives them) in a store of
//! CAPACITY (KEYS or more: a store part full, as under the default 1M capacity), and reports the
//! growth of the process's resident memory divided by KEYS (what the keys really cost, allocator
//! overhead included; the system allocator, as this bench does not install mimalloc). Then checks that every one is a duplicate, and for a full store
//! that one more key evicts exactly the oldest.

use std::time::{Duration, Instant};

use ingest_core::dedupe::{Claim, DedupeStore, MemoryDedupe};
use sha2::{Digest, Sha256};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn event_id(n: u64) -> String {
    hex::encode(&Sha256::digest(n.to_be_bytes())[..16])
}

async fn remember(store: &MemoryDedupe, id: &str) {
    match store.claim(id).await.unwrap() {
        Claim::Acquired(token) => store.commit(id, &token).await.unwrap(),
        Claim::Duplicate => panic!("{id} is new"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let keys = numbers.first().copied().unwrap_or(1_000_000);
    let capacity = numbers.get(1).copied().unwrap_or(keys).max(keys);
    let ids: Vec<String> = (0..=keys).map(event_id).collect();
    // Before the store exists: it reserves its room (and writes the index's control bytes) when
    // it is made.
    let before = rss_bytes();
    let store = MemoryDedupe::new(
        Duration::from_secs(48 * 3600),
        capacity as usize,
        Duration::from_secs(30),
    );
    let started = Instant::now();
    for id in &ids[..keys as usize] {
        remember(&store, id).await;
    }
    let took = started.elapsed();
    let after = rss_bytes();
    assert_eq!(store.len(), keys as usize);
    for id in &ids[..keys as usize] {
        assert_eq!(store.claim(id).await.unwrap(), Claim::Duplicate, "{id}");
    }
    if capacity == keys {
        // One more: the oldest goes, the second oldest stays.
        remember(&store, &ids[keys as usize]).await;
        assert_eq!(store.len(), keys as usize);
        assert!(matches!(
            store.claim(&ids[0]).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert_eq!(store.claim(&ids[1]).await.unwrap(), Claim::Duplicate);
    }
    println!(
        "in-memory dedupe, {keys} keys remembered (capacity {capacity}): resident memory +{:.1} MiB = {:.1} bytes per key; \
         {:.0} claim+commit/s",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / keys as f64,
        keys as f64 / took.as_secs_f64()
    );
}
