//! Dedupe shared by every replica, in Redis.
//!
//! One key per event id (`prefix + event_id`). A claim is `SET key token NX PX lease`: only one
//! caller across all replicas holds it. Commit replaces the token with a committed marker kept
//! for the dedupe TTL, and release deletes the key, each only if the caller still holds the
//! claim (compare-and-set in a Lua script), so a claim that lapsed and was taken over is never
//! settled by its old holder. A caller that finds a live claim polls until it is committed
//! (duplicate) or gone (claims again), for at most `claim_wait`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use ::redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use async_trait::async_trait;
use tokio::time::Instant;

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
    /// How long a claim is held before another caller may take it over.
    pub lease: Duration,
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

    /// Records `id` as already published for `ttl`, unless Redis already has an entry for it (a
    /// live claim of another replica, or a commit). Used to hand over what was deduped in
    /// memory during an outage.
    pub async fn mark_committed(&self, id: &str, ttl: Duration) -> Result<(), DedupeError> {
        let mut conn = self.conn.clone();
        let key = self.key(id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.timed(async move {
            ::redis::cmd("SET")
                .arg(&key)
                .arg(COMMITTED)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<Option<String>>(&mut conn)
                .await
        })
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
                1 => return Ok(Claim::Acquired(ClaimToken(token))),
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
            timeout: Duration::from_millis(100),
            claim_wait: Duration::from_secs(1),
        };
        assert!(RedisDedupe::new("not a url", settings).is_err());
    }
}
