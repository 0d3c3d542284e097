//! Dedupe shared by every replica, in Redis.
//!
//! One key per event id (`prefix + event_id`). A claim is `SET key token NX PX lease`: only one
//! caller across all replicas holds it. Commit replaces the token with a committed marker kept
//! for the dedupe TTL, and release deletes the key, each only if the caller still holds the
//! claim (compare-and-set in a Lua script), so a claim that lapsed and was taken over is never
//! settled by its old holder. A caller that finds a live claim polls until it is committed
//! (duplicate) or gone (claims again), for at most `claim_wait`.
//!
//! The lease is short (about a second or two) and the holder renews it while its publish runs,
//! so the claims of a replica that dies (SIGKILL, node loss) lapse within one lease and a
//! carrier's retry on another replica takes over well inside the edge's deadline, while a live
//! holder's slow publish keeps its claim. Renewal stops after `max_hold`, so a holder that is
//! alive but stuck cannot keep an event from being published forever.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ::redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use async_trait::async_trait;
use tokio::{task::AbortHandle, time::Instant};

use super::{Claim, ClaimToken, DedupeError, DedupeStore};

/// The value of a committed key. Claim tokens never equal it (they contain a `:`).
const COMMITTED: &str = "committed";
/// First and longest pause between polls of a claim held by another caller.
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// Returns 1 when claimed, 2 when already committed, 0 while another caller holds the claim.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[3] then return 2 end
return 0
";
/// Sets the committed marker with the dedupe TTL if the caller still holds the claim.
const COMMIT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";
/// Extends the claim's lease if the caller still holds it; 0 once it lapsed or was settled.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";
/// Sets the committed marker with the given TTL unless the key holds a commit or another
/// store's claim; a claim of this store's own (its token starts with `ARGV[3]`) is replaced.
/// Returns 1 when set.
const HAND_OVER: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";
/// Deletes the key if the caller still holds the claim.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// How the Redis store names keys, times out and waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Prefix of every key; the event id follows it.
    pub key_prefix: String,
    /// How long a committed id is remembered.
    pub ttl: Duration,
    /// How long a claim lives without renewal; its holder renews it every third of this, so
    /// it is about how long a dead holder's claim blocks another caller.
    pub lease: Duration,
    /// The longest a holder keeps renewing one claim; past it the claim lapses even though its
    /// holder is alive (stuck), and another caller may take over.
    pub max_hold: Duration,
    /// Timeout of one Redis call, and of connecting.
    pub timeout: Duration,
    /// How long a claim waits for another caller's live claim to settle before giving up.
    pub claim_wait: Duration,
}

/// Claim / commit / release in Redis, through a connection manager that reconnects on its own.
pub struct RedisDedupe {
    conn: ConnectionManager,
    settings: RedisSettings,
    /// Distinguishes this process's tokens from every other replica's.
    node: String,
    next_token: AtomicU64,
    claim: Script,
    commit: Script,
    release: Script,
    renew: Script,
    hand_over: Script,
    /// The renewal task of every claim this process holds, by token.
    renewals: Mutex<HashMap<String, AbortHandle>>,
}

impl std::fmt::Debug for RedisDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedupe")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisDedupe {
    /// A store on the Redis at `url`. It connects lazily: an unreachable Redis is not an error
    /// here, but on each call (which times out after `settings.timeout`).
    pub fn new(url: &str, settings: RedisSettings) -> Result<Self, DedupeError> {
        let client =
            Client::open(url).map_err(|e| DedupeError::Unavailable(format!("bad URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            // Calls have their own short timeout; reconnecting keeps going in the background.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| DedupeError::Unavailable(e.to_string()))?;
        Ok(Self {
            conn,
            node: format!("{:016x}", fastrand::u64(..)),
            next_token: AtomicU64::new(1),
            claim: Script::new(CLAIM),
            commit: Script::new(COMMIT),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            hand_over: Script::new(HAND_OVER),
            renewals: Mutex::new(HashMap::new()),
            settings,
        })
    }

    /// The Redis key for an event id.
    pub fn key(&self, id: &str) -> String {
        format!("{}{id}", self.settings.key_prefix)
    }

    /// Checks that Redis answers, within the call timeout.
    pub async fn ping(&self) -> Result<(), DedupeError> {
        let mut conn = self.conn.clone();
        self.timed(async move { ::redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(drop)
    }

    /// Records `id` as already published for `ttl`, unless Redis already has a commit for it or
    /// another replica's claim (that replica is publishing it and will commit). Used to hand over
    /// what was deduped in memory during an outage.
    ///
    /// A claim of this store's own is replaced. It can only be a stale one: when Redis hung
    /// rather than went away, the claims sent to it while it hung timed out here, and this store
    /// fell back to memory for those events; but Redis still had the commands in its socket and
    /// ran them once it went on, leaving claims nobody will settle. Left alone, such a claim
    /// would block the hand-over until its lease lapsed, and a retry on another replica after
    /// that would publish the event again.
    pub async fn mark_committed(&self, id: &str, ttl: Duration) -> Result<(), DedupeError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let own = format!("{}:", self.node);
        self.run(
            &self.hand_over,
            &self.key(id),
            &[COMMITTED, &ttl_ms.to_string(), &own],
        )
        .await
        .map(drop)
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, DedupeError> {
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(DedupeError::Unavailable(e.to_string())),
            Err(_) => Err(DedupeError::Unavailable(format!(
                "no answer within {} ms",
                self.settings.timeout.as_millis()
            ))),
        }
    }

    async fn run(&self, script: &Script, key: &str, args: &[&str]) -> Result<i64, DedupeError> {
        let mut invocation = script.key(key);
        for a in args {
            invocation.arg(*a);
        }
        let mut conn = self.conn.clone();
        self.timed(invocation.invoke_async::<i64>(&mut conn)).await
    }

    fn renewals(&self) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
        // Every update is one map operation: a panic elsewhere leaves it consistent.
        self.renewals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the claim `token` on `key` alive until it is settled, lapses, or `max_hold` ends.
    fn start_renewal(&self, key: String, token: String) {
        let mut conn = self.conn.clone();
        let script = self.renew.clone();
        let every = self.settings.lease / 3;
        let lease = millis(self.settings.lease);
        let timeout = self.settings.timeout;
        let until = Instant::now() + self.settings.max_hold;
        let task_token = token.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if Instant::now() >= until {
                    tracing::warn!(
                        "dedupe: claim held past its longest hold; letting it lapse so a retry can publish"
                    );
                    return;
                }
                let mut renew = script.key(&key);
                renew.arg(&task_token).arg(&lease);
                match tokio::time::timeout(timeout, renew.invoke_async::<i64>(&mut conn)).await {
                    Ok(Ok(0)) => return,
                    Ok(Ok(_)) => {}
                    // Redis is slow or away: try again; if it stays away the claim lapses,
                    // which is what a degraded store accepts.
                    Ok(Err(error)) => tracing::debug!(%error, "dedupe: lease renewal failed"),
                    Err(_) => tracing::debug!("dedupe: lease renewal timed out"),
                }
            }
        });
        let mut renewals = self.renewals();
        // Settled ones are removed as they settle; a finished task (lapsed, max hold) is dropped
        // here so the map stays as small as the claims in flight.
        renewals.retain(|_, t| !t.is_finished());
        renewals.insert(token, task.abort_handle());
    }

    fn stop_renewal(&self, token: &ClaimToken) {
        if let Some(task) = self.renewals().remove(&token.0) {
            task.abort();
        }
    }

    /// How many claims this store is renewing (claims in flight).
    pub fn renewing(&self) -> usize {
        self.renewals()
            .values()
            .filter(|t| !t.is_finished())
            .count()
    }
}

impl Drop for RedisDedupe {
    /// A dropped store holds nothing any more: its claims lapse as a dead process's would.
    fn drop(&mut self) {
        for (_, task) in self.renewals().drain() {
            task.abort();
        }
    }
}

/// `d` in whole milliseconds, at least 1 (`PX 0` is an error).
fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

#[async_trait]
impl DedupeStore for RedisDedupe {
    async fn claim(&self, id: &str) -> Result<Claim, DedupeError> {
        let key = self.key(id);
        let token = format!(
            "{}:{}",
            self.node,
            self.next_token.fetch_add(1, Ordering::Relaxed)
        );
        let lease = millis(self.settings.lease);
        let give_up = Instant::now() + self.settings.claim_wait;
        let mut poll = FIRST_POLL;
        loop {
            match self
                .run(&self.claim, &key, &[&token, &lease, COMMITTED])
                .await?
            {
                1 => {
                    self.start_renewal(key, token.clone());
                    return Ok(Claim::Acquired(ClaimToken(token)));
                }
                2 => return Ok(Claim::Duplicate),
                _ => {}
            }
            if Instant::now() + poll > give_up {
                return Err(DedupeError::Contended);
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    async fn commit(&self, id: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        self.stop_renewal(token);
        let ttl = millis(self.settings.ttl);
        let done = self
            .run(&self.commit, &self.key(id), &[&token.0, COMMITTED, &ttl])
            .await?;
        if done == 0 {
            tracing::warn!(
                "dedupe: claim lapsed before commit (another caller may publish this event again)"
            );
        }
        Ok(())
    }

    async fn release(&self, id: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        self.stop_renewal(token);
        self.run(&self.release, &self.key(id), &[&token.0]).await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_look_committed_and_px_is_positive() {
        assert!(!COMMITTED.contains(':'));
        assert_eq!(millis(Duration::ZERO), "1");
        assert_eq!(millis(Duration::from_secs(2)), "2000");
    }

    #[test]
    fn bad_urls_are_rejected_without_connecting() {
        let settings = RedisSettings {
            key_prefix: "p:".into(),
            ttl: Duration::from_secs(1),
            lease: Duration::from_secs(1),
            max_hold: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            claim_wait: Duration::from_secs(1),
        };
        assert!(RedisDedupe::new("not a url", settings).is_err());
    }
}
