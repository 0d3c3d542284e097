//! Redis dedupe that never turns events away: while Redis is unreachable, claims go to an
//! in-memory store, and they return to Redis once it answers again.
//!
//! Events are never rejected for want of dedupe. During an outage each replica dedupes only its
//! own traffic, so a carrier retry that reaches another replica *during the outage* may be
//! published twice; consumers absorb that by the stable `event_id`. A lost event could not be
//! recovered. When Redis answers again, the ids committed in memory are copied into it before
//! claims return there, so retries after the outage are duplicates on every replica.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Claim, ClaimToken, DedupeError, DedupeStore, MemoryDedupe, RedisDedupe};

/// Token prefixes saying which store issued a claim, so it is settled in the same one.
const REDIS: &str = "r:";
const MEMORY: &str = "m:";

/// Redis first, in-memory while Redis is unreachable.
#[derive(Debug)]
pub struct FallbackDedupe {
    redis: Arc<RedisDedupe>,
    memory: Arc<MemoryDedupe>,
    state: Arc<State>,
    probe_every: Duration,
}

#[derive(Debug)]
struct State {
    degraded: AtomicBool,
    fallback_claims: AtomicU64,
    /// When Redis was last probed while degraded; held by the one caller probing.
    last_probe: Mutex<Instant>,
}

impl State {
    fn enter_degraded(&self, error: &DedupeError) {
        if !self.degraded.swap(true, Ordering::SeqCst) {
            crate::metrics::CORE.dedupe_degraded.set(1);
            tracing::warn!(
                %error,
                "dedupe: Redis unreachable; falling back to in-memory dedupe (replicas no longer share dedupe)"
            );
        }
    }

    fn leave_degraded(&self) {
        if self.degraded.swap(false, Ordering::SeqCst) {
            crate::metrics::CORE.dedupe_degraded.set(0);
            tracing::warn!("dedupe: Redis reachable again; dedupe is shared across replicas again");
        }
    }
}

impl FallbackDedupe {
    /// Uses `redis`, falling back to `memory` while Redis fails; while degraded, Redis is probed
    /// at most once per `probe_every`.
    pub fn new(redis: RedisDedupe, memory: MemoryDedupe, probe_every: Duration) -> Self {
        Self {
            redis: Arc::new(redis),
            memory: Arc::new(memory),
            state: Arc::new(State {
                degraded: AtomicBool::new(false),
                fallback_claims: AtomicU64::new(0),
                last_probe: Mutex::new(Instant::now()),
            }),
            probe_every,
        }
    }

    /// Whether claims currently go to memory because Redis is unreachable.
    pub fn is_degraded(&self) -> bool {
        self.state.degraded.load(Ordering::SeqCst)
    }

    /// How many claims were answered by the in-memory store so far.
    pub fn fallback_claims(&self) -> u64 {
        self.state.fallback_claims.load(Ordering::Relaxed)
    }

    /// Starts a probe of Redis in the background unless one ran within `probe_every`.
    fn maybe_probe(&self) {
        let Ok(mut last) = self.state.last_probe.try_lock() else {
            return;
        };
        if last.elapsed() < self.probe_every {
            return;
        }
        *last = Instant::now();
        drop(last);
        let redis = self.redis.clone();
        let memory = self.memory.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let _hold = state.last_probe.lock().await;
            if let Err(error) = redis.ping().await {
                tracing::debug!(%error, "dedupe: Redis still unreachable");
                return;
            }
            // Hand over what was published during the outage before claims go back to Redis,
            // so a retry reaching another replica is still a duplicate; once more after the
            // switch, for commits that landed in between.
            if hand_over(&redis, &memory).await.is_err() {
                return;
            }
            state.leave_degraded();
            let _ = hand_over(&redis, &memory).await;
        });
    }

    async fn claim_in_memory(&self, key: &str) -> Result<Claim, DedupeError> {
        self.state.fallback_claims.fetch_add(1, Ordering::Relaxed);
        Ok(match self.memory.claim(key).await? {
            Claim::Acquired(t) => Claim::Acquired(ClaimToken(format!("{MEMORY}{}", t.0))),
            Claim::Duplicate => Claim::Duplicate,
        })
    }
}

/// Copies every id committed in memory into Redis (keeping its remaining time).
async fn hand_over(redis: &RedisDedupe, memory: &MemoryDedupe) -> Result<(), DedupeError> {
    let committed = memory.committed();
    for (id, ttl) in &committed {
        if let Err(error) = redis.mark_committed(id, *ttl).await {
            tracing::warn!(%error, "dedupe: handing over in-memory dedupe to Redis failed; will retry");
            return Err(error);
        }
    }
    if !committed.is_empty() {
        tracing::info!(
            events = committed.len(),
            "dedupe: in-memory dedupe handed over to Redis"
        );
    }
    Ok(())
}

#[async_trait]
impl DedupeStore for FallbackDedupe {
    async fn claim(&self, key: &str) -> Result<Claim, DedupeError> {
        if self.is_degraded() {
            self.maybe_probe();
            return self.claim_in_memory(key).await;
        }
        match self.redis.claim(key).await {
            Ok(Claim::Acquired(t)) => Ok(Claim::Acquired(ClaimToken(format!("{REDIS}{}", t.0)))),
            Ok(Claim::Duplicate) => Ok(Claim::Duplicate),
            Err(error @ DedupeError::Unavailable(_)) => {
                self.state.enter_degraded(&error);
                self.claim_in_memory(key).await
            }
            Err(error @ DedupeError::Contended) => Err(error),
        }
    }

    async fn commit(&self, key: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        if let Some(t) = token.0.strip_prefix(REDIS) {
            let result = self.redis.commit(key, &ClaimToken(t.to_owned())).await;
            if let Err(error @ DedupeError::Unavailable(_)) = &result {
                self.state.enter_degraded(error);
            }
            result
        } else if let Some(t) = token.0.strip_prefix(MEMORY) {
            self.memory.commit(key, &ClaimToken(t.to_owned())).await
        } else {
            Ok(())
        }
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        if let Some(t) = token.0.strip_prefix(REDIS) {
            let result = self.redis.release(key, &ClaimToken(t.to_owned())).await;
            if let Err(error @ DedupeError::Unavailable(_)) = &result {
                self.state.enter_degraded(error);
            }
            result
        } else if let Some(t) = token.0.strip_prefix(MEMORY) {
            self.memory.release(key, &ClaimToken(t.to_owned())).await
        } else {
            Ok(())
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn degraded(&self) -> bool {
        self.is_degraded()
    }
}
