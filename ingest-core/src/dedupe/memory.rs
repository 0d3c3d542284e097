//! In-memory dedupe, bounded in entries and time: the embedded default for one process.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use hashbrown::HashTable;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use sha2::{Digest, Sha256};
use tokio::{sync::Notify, time::Instant};

use super::{Claim, ClaimToken, DedupeError, DedupeStore};

/// Dedupe held in this process's memory.
///
/// Committed ids are kept for `ttl` (rounded up to the next whole second) and at most `capacity`
/// of them (oldest evicted first). A claim is a lease: if its holder vanishes without committing
/// or releasing, it lapses after `lease`.
///
/// A remembered event id costs about 30 bytes at a million of them (`benches/dedupe_memory.rs`):
/// its 16 bytes and its expiry in a ring kept in commit order, and a 4-byte position in a hash
/// table that finds it there.
#[derive(Debug)]
pub struct MemoryDedupe {
    inner: Mutex<Inner>,
    ttl: Duration,
    lease: Duration,
    capacity: usize,
    next_token: AtomicU64,
    /// Expiry times are kept as whole seconds since this instant.
    base: Instant,
    /// Keyed per process, so the ids that land in one bucket cannot be chosen from outside.
    hasher: RandomState,
    /// `ingest_dedupe_memory_keys`: the committed ids held.
    keys: Gauge,
    /// `ingest_dedupe_memory_evicted`: committed ids forgotten before their TTL.
    evicted: Counter,
}

/// A remembered id as 16 bytes: those of an event id (32 lowercase hex digits, as the core
/// derives them), or for an id in any other form the first 16 of its SHA-256, its text kept
/// beside it to be handed over as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    bytes: [u8; 16],
    other: bool,
}

impl Key {
    fn new(id: &str) -> Self {
        let mut bytes = [0u8; 16];
        let lowercase_hex =
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if lowercase_hex && hex::decode_to_slice(id, &mut bytes).is_ok() {
            return Key {
                bytes,
                other: false,
            };
        }
        bytes.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
        Key { bytes, other: true }
    }
}

/// The top bit of [`Entry::expires`]: the entry's key is an `other` one.
const OTHER: u32 = 1 << 31;

/// A committed id in the ring: 20 bytes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: [u8; 16],
    /// Whole seconds since `base` (below [`OTHER`]), or-ed with [`OTHER`] for an `other` key.
    expires: u32,
}

impl Entry {
    fn key(&self) -> Key {
        Key {
            bytes: self.bytes,
            other: self.expires & OTHER != 0,
        }
    }

    fn expires(&self) -> u32 {
        self.expires & !OTHER
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Committed ids, neither expired nor evicted, in commit order: the TTL is fixed, so that is
    /// also expiry order, and the oldest is at the front.
    ring: VecDeque<Entry>,
    /// The sequence number of `ring[0]`; they count up, wrapping, one per commit.
    head: u32,
    /// The sequence number of each entry of `ring`, found by the hash of its key.
    index: HashTable<u32>,
    /// The text of the committed `other` keys.
    others: HashMap<[u8; 16], Box<str>>,
    /// Claims being held.
    pending: HashMap<Key, Pending>,
}

#[derive(Debug)]
struct Pending {
    token: u64,
    lease_until: Instant,
    settled: Arc<Notify>,
}

/// Entries reserved up front at most (about 30 bytes each: 20 in the ring, and the index's 4-byte
/// slots and 1-byte control words, fewer than two of each per entry), as address space that is
/// resident once written, but for the control words; a larger capacity grows them as they fill.
const RESERVE: usize = 1 << 24;

impl MemoryDedupe {
    /// A store keeping committed ids for `ttl`, at most `capacity` of them, with claim leases of
    /// `lease`.
    pub fn new(ttl: Duration, capacity: usize, lease: Duration) -> Self {
        // Sequence numbers are 32 bits: the ring must not hold more.
        let capacity = capacity.clamp(1, (u32::MAX >> 1) as usize);
        // Reserved, not grown by doubling: growing copies the ring and rehashes the index into
        // new memory, and for that moment the process holds both.
        let reserve = capacity.min(RESERVE);
        let inner = Inner {
            ring: VecDeque::with_capacity(reserve),
            index: HashTable::with_capacity(reserve),
            ..Inner::default()
        };
        Self {
            inner: Mutex::new(inner),
            ttl,
            lease,
            capacity,
            next_token: AtomicU64::new(1),
            base: Instant::now(),
            hasher: RandomState::new(),
            keys: crate::metrics::CORE.dedupe_memory_keys.clone(),
            evicted: crate::metrics::CORE.dedupe_memory_evicted.clone(),
        }
    }

    /// The same store counting into its own metrics instead of the process's (for tests).
    #[cfg(test)]
    fn with_own_metrics(self) -> Self {
        Self {
            keys: Gauge::default(),
            evicted: Counter::default(),
            ..self
        }
    }

    /// Drops the committed ids whose TTL has passed.
    fn purge_expired(&self, inner: &mut Inner, now: Instant) {
        let now = now.saturating_duration_since(self.base);
        if inner.purge_expired(&self.hasher, secs(now, false)) {
            self.keys.set(inner.ring.len() as i64);
        }
    }

    /// Every committed id with the time it has left, for handing over to another store.
    pub fn committed(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.base);
        let mut inner = self.lock();
        self.purge_expired(&mut inner, now);
        inner
            .ring
            .iter()
            .filter_map(|entry| {
                let id = if entry.key().other {
                    // Kept for every `other` entry: inserted and removed with it.
                    inner.others.get(&entry.bytes)?.to_string()
                } else {
                    hex::encode(entry.bytes)
                };
                let expires = Duration::from_secs(entry.expires().into());
                Some((id, expires.saturating_sub(elapsed)))
            })
            .collect()
    }

    /// How many ids are claimed or committed.
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.ring.len() + inner.pending.len()
    }

    /// Whether no id is claimed or committed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data: nothing in an update can panic
        // between its changes to the ring and to the index.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn settle(&self, id: &str, token: &ClaimToken, commit: bool) {
        let Ok(token) = token.0.parse::<u64>() else {
            return;
        };
        let key = Key::new(id);
        let mut inner = self.lock();
        let pending = match inner.pending.remove(&key) {
            Some(p) if p.token == token => p,
            // Another caller's claim (this one's lease lapsed and was taken over): it stays.
            Some(other) => {
                inner.pending.insert(key, other);
                return;
            }
            None => return,
        };
        if commit {
            // Saturating: a TTL of any size is "as long as this process runs".
            let since = Instant::now().saturating_duration_since(self.base);
            let expires = secs(since.saturating_add(self.ttl), true);
            if !inner.contains(&self.hasher, &key) {
                // The oldest go first: one more than the capacity would grow the ring and index.
                while inner.ring.len() >= self.capacity {
                    inner.pop_oldest(&self.hasher);
                    self.evicted.inc();
                }
                inner.insert(&self.hasher, key, id, expires);
                self.keys.set(inner.ring.len() as i64);
            }
        }
        drop(inner);
        pending.settled.notify_waiters();
    }
}

/// A time since `base` in whole seconds, rounded up or down, at most [`OTHER`] - 1 (68 years).
fn secs(since: Duration, round_up: bool) -> u32 {
    let secs = since
        .as_secs()
        .saturating_add(u64::from(round_up && since.subsec_nanos() > 0));
    u32::try_from(secs).unwrap_or(u32::MAX).min(OTHER - 1)
}

/// The place in the ring of the entry numbered `seq`, when `ring[0]` is numbered `head`.
fn position(head: u32, seq: u32) -> usize {
    seq.wrapping_sub(head) as usize
}

impl Inner {
    fn contains(&self, hasher: &RandomState, key: &Key) -> bool {
        self.index
            .find(hasher.hash_one(key), |&seq| {
                self.ring[position(self.head, seq)].key() == *key
            })
            .is_some()
    }

    /// Remembers `key` (whose text is `id`, and which it does not hold) as committed until
    /// `expires`.
    fn insert(&mut self, hasher: &RandomState, key: Key, id: &str, expires: u32) {
        let seq = self.head.wrapping_add(self.ring.len() as u32);
        let flag = if key.other { OTHER } else { 0 };
        self.ring.push_back(Entry {
            bytes: key.bytes,
            expires: expires | flag,
        });
        if key.other {
            self.others.insert(key.bytes, id.into());
        }
        let Inner {
            ring, head, index, ..
        } = self;
        index.insert_unique(hasher.hash_one(key), seq, |&s| {
            hasher.hash_one(ring[position(*head, s)].key())
        });
    }

    /// Forgets the oldest committed id.
    fn pop_oldest(&mut self, hasher: &RandomState) {
        let Some(entry) = self.ring.pop_front() else {
            return;
        };
        let seq = self.head;
        self.head = self.head.wrapping_add(1);
        let key = entry.key();
        if let Ok(found) = self.index.find_entry(hasher.hash_one(key), |&s| s == seq) {
            found.remove();
        }
        if key.other {
            self.others.remove(&key.bytes);
        }
    }

    /// Drops the committed ids expired by `now_secs`; whether there were any.
    fn purge_expired(&mut self, hasher: &RandomState, now_secs: u32) -> bool {
        let held = self.ring.len();
        while self
            .ring
            .front()
            .is_some_and(|entry| entry.expires() <= now_secs)
        {
            self.pop_oldest(hasher);
        }
        self.ring.len() != held
    }
}

#[async_trait]
impl DedupeStore for MemoryDedupe {
    async fn claim(&self, key: &str) -> Result<Claim, DedupeError> {
        let key = Key::new(key);
        loop {
            let now = Instant::now();
            let (settled, lease_until) = {
                let mut inner = self.lock();
                self.purge_expired(&mut inner, now);
                if inner.contains(&self.hasher, &key) {
                    return Ok(Claim::Duplicate);
                }
                match inner.pending.get(&key) {
                    Some(p) if p.lease_until > now => (p.settled.clone(), p.lease_until),
                    _ => {
                        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                        inner.pending.insert(
                            key,
                            Pending {
                                token,
                                lease_until: now + self.lease,
                                settled: Arc::new(Notify::new()),
                            },
                        );
                        return Ok(Claim::Acquired(ClaimToken(token.to_string())));
                    }
                }
            };
            // The holder may settle between unlocking and waiting; the lease bounds that race
            // and re-checking every few milliseconds keeps it short.
            let wait = lease_until
                .saturating_duration_since(now)
                .min(Duration::from_millis(50));
            let _ = tokio::time::timeout(wait, settled.notified()).await;
        }
    }

    async fn commit(&self, key: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        self.settle(key, token, true);
        Ok(())
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        self.settle(key, token, false);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> MemoryDedupe {
        MemoryDedupe::new(Duration::from_secs(60), 100, Duration::from_secs(5))
    }

    async fn acquire(s: &MemoryDedupe, key: &str) -> ClaimToken {
        match s.claim(key).await.unwrap() {
            Claim::Acquired(t) => t,
            Claim::Duplicate => panic!("{key} unexpectedly duplicate"),
        }
    }

    #[tokio::test]
    async fn commit_makes_duplicates_and_release_frees() {
        let s = store();
        let t = acquire(&s, "a").await;
        s.commit("a", &t).await.unwrap();
        assert_eq!(s.claim("a").await.unwrap(), Claim::Duplicate);

        let t = acquire(&s, "b").await;
        s.release("b", &t).await.unwrap();
        let t2 = acquire(&s, "b").await;
        assert_ne!(t, t2);
    }

    #[tokio::test]
    async fn concurrent_claim_waits_for_the_outcome() {
        let s = Arc::new(store());
        let t = acquire(&s, "k").await;
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.claim("k").await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "must wait while the claim is live");
        s.commit("k", &t).await.unwrap();
        assert_eq!(waiter.await.unwrap(), Claim::Duplicate);
    }

    #[tokio::test]
    async fn concurrent_claim_takes_over_after_release() {
        let s = Arc::new(store());
        let t = acquire(&s, "k").await;
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.claim("k").await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.release("k", &t).await.unwrap();
        assert!(matches!(waiter.await.unwrap(), Claim::Acquired(_)));
    }

    #[tokio::test]
    async fn only_the_holder_settles() {
        let s = store();
        let _t = acquire(&s, "k").await;
        s.commit("k", &ClaimToken("999".into())).await.unwrap();
        s.release("k", &ClaimToken("nonsense".into()))
            .await
            .unwrap();
        assert_eq!(s.len(), 1);
        let r = tokio::time::timeout(Duration::from_millis(100), s.claim("k")).await;
        assert!(r.is_err(), "the real holder's claim must still be live");
    }

    #[tokio::test(start_paused = true)]
    async fn lapsed_lease_and_expired_commit_free_the_key() {
        let s = MemoryDedupe::new(Duration::from_secs(10), 100, Duration::from_secs(1));
        let _abandoned = acquire(&s, "k").await;
        // Auto-advancing paused time lets the waiter outlive the lease.
        let t = acquire(&s, "k").await;
        s.commit("k", &t).await.unwrap();
        assert_eq!(s.claim("k").await.unwrap(), Claim::Duplicate);
        tokio::time::advance(Duration::from_secs(11)).await;
        acquire(&s, "k").await;
    }

    #[tokio::test]
    async fn event_ids_are_kept_as_bytes_and_handed_over_as_given() {
        let s = store();
        let id = "4adfd996635d6ff523ca9d75c3a5bc11";
        assert!(!Key::new(id).other);
        // Upper case or other lengths stay text: never two spellings of one key.
        for other in [
            "4ADFD996635D6FF523CA9D75C3A5BC11",
            "q-4adfd996635d6ff523ca9d75c3a5bc11",
        ] {
            assert!(Key::new(other).other, "{other}");
        }
        for k in [id, "q-4adfd996635d6ff523ca9d75c3a5bc11", "k"] {
            let t = acquire(&s, k).await;
            s.commit(k, &t).await.unwrap();
            assert_eq!(s.claim(k).await.unwrap(), Claim::Duplicate, "{k}");
        }
        let mut handed: Vec<String> = s.committed().into_iter().map(|(k, _)| k).collect();
        handed.sort();
        assert_eq!(
            handed,
            [
                "4adfd996635d6ff523ca9d75c3a5bc11",
                "k",
                "q-4adfd996635d6ff523ca9d75c3a5bc11"
            ]
        );
        assert!(matches!(
            s.claim("4ADFD996635D6FF523CA9D75C3A5BC11").await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test]
    async fn capacity_evicts_oldest_committed() {
        let s = MemoryDedupe::new(Duration::from_secs(60), 2, Duration::from_secs(5))
            .with_own_metrics();
        for k in ["a", "b", "c"] {
            let t = acquire(&s, k).await;
            s.commit(k, &t).await.unwrap();
        }
        assert_eq!(s.len(), 2);
        // "a" was forgotten before its TTL: what operators are told.
        assert_eq!((s.keys.get(), s.evicted.get()), (2, 1));
        assert_eq!(s.claim("c").await.unwrap(), Claim::Duplicate);
        assert!(matches!(s.claim("a").await.unwrap(), Claim::Acquired(_)));
    }

    #[tokio::test]
    async fn eviction_keeps_exactly_the_newest_across_the_sequence_wrap() {
        let s = MemoryDedupe::new(Duration::from_secs(60), 3, Duration::from_secs(5))
            .with_own_metrics();
        // Sequence numbers are 32 bits and wrap: start just before the wrap.
        s.lock().head = u32::MAX - 5;
        let (ring_room, index_room) = {
            let inner = s.lock();
            (inner.ring.capacity(), inner.index.capacity())
        };
        let ids: Vec<String> = (0..20)
            .map(|n| {
                if n % 2 == 0 {
                    format!("{n:032x}")
                } else {
                    format!("other-{n}")
                }
            })
            .collect();
        for id in &ids {
            let t = acquire(&s, id).await;
            s.commit(id, &t).await.unwrap();
        }
        assert_eq!(s.len(), 3);
        assert_eq!((s.keys.get(), s.evicted.get()), (3, 17));
        {
            let inner = s.lock();
            assert_eq!(inner.index.len(), 3);
            // A full store evicts before it inserts: it never grows past what it reserved.
            assert_eq!(inner.ring.capacity(), ring_room);
            assert!(inner.index.capacity() <= index_room);
            // Only the text of the remembered `other` ids is kept: "other-17", "other-19".
            assert_eq!(inner.others.len(), 2);
        }
        let mut handed: Vec<String> = s.committed().into_iter().map(|(k, _)| k).collect();
        handed.sort();
        assert_eq!(
            handed,
            [format!("{:032x}", 18), "other-17".into(), "other-19".into()]
        );
        for id in &ids[17..] {
            assert_eq!(s.claim(id).await.unwrap(), Claim::Duplicate, "{id}");
        }
        for id in &ids[..17] {
            let t = acquire(&s, id).await;
            s.release(id, &t).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_id_is_remembered_for_at_least_the_ttl_and_at_most_a_second_more() {
        let s = MemoryDedupe::new(Duration::from_secs(2), 100, Duration::from_secs(5))
            .with_own_metrics();
        tokio::time::advance(Duration::from_millis(500)).await;
        let t = acquire(&s, "k").await;
        s.commit("k", &t).await.unwrap();
        assert_eq!(s.keys.get(), 1);
        // Committed at 0.5 s: remembered until 3 s, the expiry (2.5 s) rounded up.
        tokio::time::advance(Duration::from_millis(2_499)).await;
        assert_eq!(s.claim("k").await.unwrap(), Claim::Duplicate);
        tokio::time::advance(Duration::from_millis(1)).await;
        acquire(&s, "k").await;
        // Expired, not evicted.
        assert_eq!((s.keys.get(), s.evicted.get()), (0, 0));
    }
    #[tokio::test]
    async fn a_ttl_beyond_any_clock_remembers_for_the_life_of_the_process() {
        let s = MemoryDedupe::new(Duration::MAX, 100, Duration::from_secs(5));
        let t = acquire(&s, "k").await;
        s.commit("k", &t).await.unwrap();
        assert_eq!(s.claim("k").await.unwrap(), Claim::Duplicate);
        assert!(s.committed()[0].1 > Duration::from_secs(60 * 365 * 24 * 3600));
    }
}
