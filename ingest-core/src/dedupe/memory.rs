//! In-memory dedupe, bounded in entries and time: the embedded default for one process.

use std::{
    collections::{HashMap, VecDeque},
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
#[derive(Debug)]
pub struct MemoryDedupe {
    inner: Mutex<Inner>,
    ttl: Duration,
    lease: Duration,
    capacity: usize,
    next_token: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Committed keys by expiry; the TTL is fixed, so commit order is expiry order.
    expiries: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
enum Entry {
    Pending {
        token: u64,
        lease_until: Instant,
        settled: Arc<Notify>,
    },
    Done {
        expires: Instant,
    },
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
        }
    }

    /// Every committed id with the time it has left, for handing over to another store.
    pub fn committed(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge_expired(now);
        inner
            .entries
            .iter()
            .filter_map(|(key, entry)| match entry {
                Entry::Done { expires } => {
                    Some((key.clone(), expires.saturating_duration_since(now)))
                }
                Entry::Pending { .. } => None,
            })
            .collect()
    }

    /// How many ids are claimed or committed.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
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
        let mut inner = self.lock();
        let Some(Entry::Pending {
            token: held,
            settled,
            ..
        }) = inner.entries.get(key)
        else {
            return;
        };
        if *held != token {
            return;
        }
        let settled = settled.clone();
        if commit {
            let expires = Instant::now() + self.ttl;
            inner
                .entries
                .insert(key.to_owned(), Entry::Done { expires });
            inner.expiries.push_back((expires, key.to_owned()));
            while inner.expiries.len() > self.capacity {
                if let Some((_, old)) = inner.expiries.pop_front()
                    && matches!(inner.entries.get(&old), Some(Entry::Done { .. }))
                {
                    inner.entries.remove(&old);
                }
            }
        } else {
            inner.entries.remove(key);
        }
        drop(inner);
        settled.notify_waiters();
    }
}

impl Inner {
    fn purge_expired(&mut self, now: Instant) {
        while let Some((expires, _)) = self.expiries.front() {
            if *expires > now {
                break;
            }
            let Some((expires, key)) = self.expiries.pop_front() else {
                break;
            };
            if matches!(self.entries.get(&key), Some(Entry::Done { expires: e }) if *e == expires) {
                self.entries.remove(&key);
            }
        }
    }
}

#[async_trait]
impl DedupeStore for MemoryDedupe {
    async fn claim(&self, key: &str) -> Result<Claim, DedupeError> {
        loop {
            let now = Instant::now();
            let (settled, lease_until) = {
                let mut inner = self.lock();
                inner.purge_expired(now);
                match inner.entries.get(key) {
                    Some(Entry::Done { expires }) if *expires > now => return Ok(Claim::Duplicate),
                    Some(Entry::Pending {
                        lease_until,
                        settled,
                        ..
                    }) if *lease_until > now => (settled.clone(), *lease_until),
                    _ => {
                        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                        inner.entries.insert(
                            key.to_owned(),
                            Entry::Pending {
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
