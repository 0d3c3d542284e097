//! In-memory dedupe, bounded in entries and time: the embedded default for one process.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::{sync::Notify, time::Instant};

use super::{Claim, ClaimToken, DedupeError, DedupeStore};

/// Dedupe held in this process's memory.
///
/// Committed ids are kept for `ttl` and at most `capacity` of them (oldest evicted first). A claim
/// is a lease: if its holder vanishes without committing or releasing, it lapses after `lease`.
///
/// A remembered event id costs about 90 bytes at a million of them (`benches/dedupe_memory.rs`):
/// it is kept as its 16 bytes, not as text, once in a set and once in the expiry queue.
#[derive(Debug)]
pub struct MemoryDedupe {
    inner: Mutex<Inner>,
    ttl: Duration,
    lease: Duration,
    capacity: usize,
    next_token: AtomicU64,
    /// Expiry times are kept as milliseconds since this instant.
    base: Instant,
}

/// A remembered id: the 16 bytes of an event id (32 lowercase hex digits, as the core derives
/// them), or the id itself in any other form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Digest([u8; 16]),
    Other(Box<str>),
}

impl Key {
    fn new(id: &str) -> Self {
        let mut digest = [0u8; 16];
        let lowercase_hex =
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if lowercase_hex && hex::decode_to_slice(id, &mut digest).is_ok() {
            Key::Digest(digest)
        } else {
            Key::Other(id.into())
        }
    }

    /// The id as it was given.
    fn id(&self) -> String {
        match self {
            Key::Digest(d) => hex::encode(d),
            Key::Other(s) => s.to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Committed ids, neither expired nor evicted.
    committed: HashSet<Key>,
    /// The same ids with their expiry (ms since `base`); the TTL is fixed, so commit order is
    /// expiry order.
    expiries: VecDeque<(u64, Key)>,
    /// Claims being held.
    pending: HashMap<Key, Pending>,
}

#[derive(Debug)]
struct Pending {
    token: u64,
    lease_until: Instant,
    settled: Arc<Notify>,
}

impl MemoryDedupe {
    /// A store keeping committed ids for `ttl`, at most `capacity` of them, with claim leases of
    /// `lease`.
    pub fn new(ttl: Duration, capacity: usize, lease: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl,
            lease,
            capacity: capacity.max(1),
            next_token: AtomicU64::new(1),
            base: Instant::now(),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// Every committed id with the time it has left, for handing over to another store.
    pub fn committed(&self) -> Vec<(String, Duration)> {
        let now = self.ms(Instant::now());
        let mut inner = self.lock();
        inner.purge_expired(now);
        inner
            .expiries
            .iter()
            .map(|(expires, key)| (key.id(), Duration::from_millis(expires.saturating_sub(now))))
            .collect()
    }

    /// How many ids are claimed or committed.
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.committed.len() + inner.pending.len()
    }

    /// Whether no id is claimed or committed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is one statement).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn settle(&self, key: &str, token: &ClaimToken, commit: bool) {
        let Ok(token) = token.0.parse::<u64>() else {
            return;
        };
        let key = Key::new(key);
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
            let expires = self.ms(Instant::now() + self.ttl);
            inner.committed.insert(key.clone());
            inner.expiries.push_back((expires, key));
            while inner.expiries.len() > self.capacity {
                if let Some((_, old)) = inner.expiries.pop_front() {
                    inner.committed.remove(&old);
                }
            }
        }
        drop(inner);
        pending.settled.notify_waiters();
    }
}

impl Inner {
    fn purge_expired(&mut self, now_ms: u64) {
        while self
            .expiries
            .front()
            .is_some_and(|(expires, _)| *expires <= now_ms)
        {
            if let Some((_, key)) = self.expiries.pop_front() {
                self.committed.remove(&key);
            }
        }
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
                inner.purge_expired(self.ms(now));
                if inner.committed.contains(&key) {
                    return Ok(Claim::Duplicate);
                }
                match inner.pending.get(&key) {
                    Some(p) if p.lease_until > now => (p.settled.clone(), p.lease_until),
                    _ => {
                        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                        inner.pending.insert(
                            key.clone(),
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
        assert!(matches!(Key::new(id), Key::Digest(_)));
        // Upper case or other lengths stay text: never two spellings of one key.
        for other in [
            "4ADFD996635D6FF523CA9D75C3A5BC11",
            "q-4adfd996635d6ff523ca9d75c3a5bc11",
        ] {
            assert!(matches!(Key::new(other), Key::Other(_)), "{other}");
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
        let s = MemoryDedupe::new(Duration::from_secs(60), 2, Duration::from_secs(5));
        for k in ["a", "b", "c"] {
            let t = acquire(&s, k).await;
            s.commit(k, &t).await.unwrap();
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.claim("c").await.unwrap(), Claim::Duplicate);
        assert!(matches!(s.claim("a").await.unwrap(), Claim::Acquired(_)));
    }
}
