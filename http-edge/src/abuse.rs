//! Abuse limits on the public edge: a rate limit per client address and optional per-carrier
//! source allowlists.
//!
//! Both are decided from the connection and the request headers alone, before the body is read,
//! parsed or sent to the core, so a flood costs a hash lookup and a short JSON reply. Log lines
//! about rejected calls are themselves rate-limited ([`RejectionLog`]), so a flood cannot fill
//! the disk or drown the log pipeline either.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::{Ready, ready},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{body::Body, extract::ConnectInfo, http::StatusCode, response::Response};
use futures_util::future::Either;
use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock,
};
use http::{HeaderMap, Request};
use ingest_core::metrics;
use ipnet::IpNet;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::{
    auth::{PublicUrl, parse_net},
    error::EdgeError,
};

/// How often idle clients are dropped from the limiter's table (a client is idle once its
/// budget has refilled, which takes burst / rate seconds).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Settings of the abuse limits, from flags and `INGEST_*` environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct AbuseConfig {
    /// Webhook calls per second that each client address may sustain (fractions allowed: 0.5 is
    /// one call every 2 s); more get 429 with `Retry-After`. IPv6 clients are counted per /64.
    /// 0 turns the limit off.
    #[arg(long, env = "INGEST_RATE_LIMIT_PER_SEC", default_value_t = 1_000.0)]
    pub rate_limit_per_sec: f64,
    /// Calls a client may make in a burst above its sustained rate.
    #[arg(long, env = "INGEST_RATE_LIMIT_BURST", default_value_t = 2_000)]
    pub rate_limit_burst: u32,
    /// Source addresses or CIDR ranges (comma-separated) allowed to call /bandwidth; any other
    /// source gets 403. Unset: any source.
    #[arg(long, env = "INGEST_BANDWIDTH_ALLOWED_SOURCES")]
    pub bandwidth_allowed_sources: Option<String>,
    /// Source addresses or CIDR ranges allowed to call /twilio. Unset: any source.
    #[arg(long, env = "INGEST_TWILIO_ALLOWED_SOURCES")]
    pub twilio_allowed_sources: Option<String>,
    /// Source addresses or CIDR ranges allowed to call /messagebird. Unset: any source.
    #[arg(long, env = "INGEST_MESSAGEBIRD_ALLOWED_SOURCES")]
    pub messagebird_allowed_sources: Option<String>,
    /// Source addresses or CIDR ranges allowed to call /webhooks/inteliquent. Unset: any source.
    #[arg(long, env = "INGEST_INTELIQUENT_ALLOWED_SOURCES")]
    pub inteliquent_allowed_sources: Option<String>,
}

/// Labels of a call refused by the abuse limits.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    carrier: &'static str,
    reason: &'static str,
}

static REJECTIONS: LazyLock<Family<RejectionLabels, Counter>> = LazyLock::new(|| {
    let family = Family::default();
    metrics::register(
        "ingest_abuse_rejections",
        "Webhook calls refused by the abuse limits, by carrier and reason (rate_limited, source_not_allowed)",
        family.clone(),
    );
    family
});

/// The per-client rate limit, the allowlists, and how the client address is found.
pub struct Abuse {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    quota: Option<Quota>,
    clients: PublicUrl,
    allowlists: HashMap<&'static str, Vec<IpNet>>,
    started: Instant,
    sweep_every: Duration,
    /// Milliseconds after `started` of the next sweep of idle clients.
    next_sweep_ms: AtomicU64,
}

impl std::fmt::Debug for Abuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Abuse {
    /// No limits at all (library default; the binary always configures them).
    pub fn off() -> Self {
        Self::new(None, PublicUrl::default(), HashMap::new())
    }

    /// Validated settings: `trusted_proxies` is `--trusted-proxies`, whose forwarding headers
    /// name the client. Lists every problem.
    pub fn from_config(
        config: &AbuseConfig,
        trusted_proxies: Option<&str>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let rate = config.rate_limit_per_sec;
        let quota = if !rate.is_finite() || !(0.0..=1e9).contains(&rate) {
            problems.push("--rate-limit-per-sec must be a number from 0 to 1e9".to_owned());
            None
        } else if rate == 0.0 {
            None
        } else {
            let period = Duration::from_secs_f64(1.0 / rate);
            match (
                Quota::with_period(period),
                NonZeroU32::new(config.rate_limit_burst),
            ) {
                (Some(quota), Some(burst)) => Some(quota.allow_burst(burst)),
                (_, None) => {
                    problems.push("--rate-limit-burst must be at least 1".to_owned());
                    None
                }
                (None, _) => {
                    problems.push("--rate-limit-per-sec is too large".to_owned());
                    None
                }
            }
        };
        // Only the trusted proxies matter here; the public URL itself is the verifiers' concern
        // (and reported by them), so a bad one is not reported twice.
        let clients = PublicUrl::new(None, trusted_proxies).unwrap_or_else(|p| {
            problems.extend(p);
            PublicUrl::default()
        });
        let mut allowlists = HashMap::new();
        for (carrier, flag, list) in [
            (
                "bandwidth",
                "--bandwidth-allowed-sources",
                &config.bandwidth_allowed_sources,
            ),
            (
                "twilio",
                "--twilio-allowed-sources",
                &config.twilio_allowed_sources,
            ),
            (
                "messagebird",
                "--messagebird-allowed-sources",
                &config.messagebird_allowed_sources,
            ),
            (
                "inteliquent",
                "--inteliquent-allowed-sources",
                &config.inteliquent_allowed_sources,
            ),
        ] {
            let mut nets = Vec::new();
            for item in list
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                match parse_net(item) {
                    Some(net) => nets.push(net),
                    None => problems.push(format!(
                        "{flag}: {item:?} is not an IP address or CIDR range"
                    )),
                }
            }
            // An empty value (a blank environment variable) means no allowlist, like unset.
            if !nets.is_empty() {
                allowlists.insert(carrier, nets);
            }
        }
        if problems.is_empty() {
            Ok(Self::new(quota, clients, allowlists))
        } else {
            Err(problems)
        }
    }

    fn new(
        quota: Option<Quota>,
        clients: PublicUrl,
        allowlists: HashMap<&'static str, Vec<IpNet>>,
    ) -> Self {
        Self {
            limiter: quota.map(RateLimiter::dashmap),
            quota,
            clients,
            allowlists,
            started: Instant::now(),
            sweep_every: SWEEP_EVERY,
            next_sweep_ms: AtomicU64::new(SWEEP_EVERY.as_millis() as u64),
        }
    }

    /// The tower layer that applies these limits to `carrier`'s routes (its allowlist and the
    /// shared per-client rate limit).
    pub fn layer(self: &Arc<Self>, carrier: &'static str) -> AbuseLayer {
        AbuseLayer {
            abuse: self.clone(),
            carrier,
        }
    }

    /// Decides a call to `carrier` from `peer` with `headers`: `Ok` with the client address, or
    /// the rejection and the client address.
    pub fn check(
        &self,
        carrier: &'static str,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<IpAddr, (EdgeError, IpAddr)> {
        let client = self.clients.client_ip(peer, headers);
        if let Some(limiter) = &self.limiter {
            self.sweep(limiter);
            if let Err(not_until) = limiter.check_key(&rate_key(client)) {
                let wait = not_until.wait_time_from(limiter.clock().now());
                // Whole seconds, rounded up: "retry in 0 s" would invite an immediate retry.
                let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err((
                    EdgeError::RateLimited {
                        retry_after_secs: retry_after_secs.max(1),
                    },
                    client,
                ));
            }
        }
        if let Some(nets) = self.allowlists.get(carrier)
            && !nets.iter().any(|net| net.contains(&client))
        {
            return Err((EdgeError::SourceNotAllowed, client));
        }
        Ok(client)
    }

    /// Drops idle clients from the limiter's table now and then, so a stream of distinct
    /// addresses cannot grow it without bound. One caller wins the sweep; the rest skip it.
    fn sweep(&self, limiter: &DefaultKeyedRateLimiter<IpAddr>) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        if now_ms >= due
            && self
                .next_sweep_ms
                .compare_exchange(
                    due,
                    now_ms + self.sweep_every.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Clients currently tracked by the rate limiter.
    pub fn tracked_clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    /// The settings, for the start-up log.
    pub fn describe(&self) -> String {
        let rate = match self.quota {
            None => "no per-client rate limit".to_owned(),
            Some(q) => format!(
                "per-client rate limit {}/s, burst {}",
                1.0 / q.replenish_interval().as_secs_f64(),
                q.burst_size()
            ),
        };
        let key = if self.clients.is_configured() {
            "client = address recorded by --trusted-proxies, else the TCP peer"
        } else {
            "client = TCP peer (no --trusted-proxies: behind a proxy, every caller shares its budget)"
        };
        let mut carriers: Vec<_> = self.allowlists.iter().collect();
        carriers.sort_by_key(|(c, _)| **c);
        let lists: Vec<String> = carriers
            .into_iter()
            .map(|(carrier, nets)| {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                format!("{carrier} only from {}", nets.join(", "))
            })
            .collect();
        let lists = if lists.is_empty() {
            "no source allowlists".to_owned()
        } else {
            lists.join("; ")
        };
        format!("{rate}; {key}; {lists}")
    }
}

/// The rate-limit key of a client: its address, or for IPv6 its /64, since one host usually
/// holds a whole /64 and could otherwise rotate through it.
fn rate_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Log lines about rejected calls, at most a few per second; the next line written says how many
/// were left out. Counters still count every call.
pub struct RejectionLog {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl RejectionLog {
    /// At most `per_sec` lines a second, `burst` at once.
    pub fn new(per_sec: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one written)` when a line may be written now.
    pub fn permit(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl std::fmt::Debug for RejectionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RejectionLog")
            .field("suppressed", &self.suppressed.load(Ordering::Relaxed))
            .finish()
    }
}

const LOG_PER_SEC: NonZeroU32 = NonZeroU32::new(10).expect("non-zero");
const LOG_BURST: NonZeroU32 = NonZeroU32::new(50).expect("non-zero");

/// The log budget of calls refused here (429, 403 by allowlist).
static LIMIT_LOG: LazyLock<RejectionLog> =
    LazyLock::new(|| RejectionLog::new(LOG_PER_SEC, LOG_BURST));

/// The log budget of calls the webhook handler refuses with a 4xx (bad credentials, too large,
/// malformed): anyone on the internet can cause those.
pub static REFUSAL_LOG: LazyLock<RejectionLog> =
    LazyLock::new(|| RejectionLog::new(LOG_PER_SEC, LOG_BURST));

/// Applies [`Abuse`] to one carrier's routes; see [`Abuse::layer`].
#[derive(Debug, Clone)]
pub struct AbuseLayer {
    abuse: Arc<Abuse>,
    carrier: &'static str,
}

impl<S> tower::Layer<S> for AbuseLayer {
    type Service = AbuseService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AbuseService {
            inner,
            abuse: self.abuse.clone(),
            carrier: self.carrier,
        }
    }
}

/// The service of [`AbuseLayer`]: answers a refused call itself, passes the rest on.
#[derive(Debug, Clone)]
pub struct AbuseService<S> {
    inner: S,
    abuse: Arc<Abuse>,
    carrier: &'static str,
}

impl<S> tower::Service<Request<Body>> for AbuseService<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service is an axum route (always ready), so a refused call reserves nothing.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // `app::serve` inserts the peer; without it (a router driven by hand) there is no client.
        let Some(ConnectInfo(peer)) = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
        else {
            return Either::Right(self.inner.call(request));
        };
        match self.abuse.check(self.carrier, peer, request.headers()) {
            Ok(_) => Either::Right(self.inner.call(request)),
            Err((error, client)) => Either::Left(ready(Ok(self.refuse(error, client)))),
        }
    }
}

impl<S> AbuseService<S> {
    fn refuse(&self, error: EdgeError, client: IpAddr) -> Response {
        let reason = match error {
            EdgeError::RateLimited { .. } => "rate_limited",
            _ => "source_not_allowed",
        };
        REJECTIONS
            .get_or_create(&RejectionLabels {
                carrier: self.carrier,
                reason,
            })
            .inc();
        if let Some(suppressed) = LIMIT_LOG.permit() {
            tracing::info!(
                carrier = self.carrier,
                %client,
                %error,
                suppressed,
                "webhook refused by abuse limits"
            );
        }
        // The invalid-field status does not apply to these errors.
        error.into_response_with(StatusCode::BAD_REQUEST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> AbuseConfig {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            abuse: AbuseConfig,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().abuse
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn one_client_over_its_budget_does_not_touch_another() {
        let abuse = Abuse::from_config(
            &config(&["--rate-limit-per-sec", "0.1", "--rate-limit-burst", "3"]),
            None,
        )
        .unwrap();
        let h = HeaderMap::new();
        for _ in 0..3 {
            assert!(abuse.check("twilio", peer("192.0.2.1"), &h).is_ok());
        }
        match abuse.check("twilio", peer("192.0.2.1"), &h) {
            Err((EdgeError::RateLimited { retry_after_secs }, client)) => {
                // One call every 10 s: the next one is due in (just under) 10 s.
                assert!((9..=10).contains(&retry_after_secs), "{retry_after_secs}");
                assert_eq!(client.to_string(), "192.0.2.1");
            }
            other => panic!("{other:?}"),
        }
        // The budget is per client, shared by every carrier.
        assert!(matches!(
            abuse.check("bandwidth", peer("192.0.2.1"), &h),
            Err((EdgeError::RateLimited { .. }, _))
        ));
        assert!(abuse.check("twilio", peer("192.0.2.2"), &h).is_ok());
        assert_eq!(abuse.tracked_clients(), 2);
    }

    #[test]
    fn idle_clients_leave_the_table() {
        let mut abuse = Abuse::from_config(
            &config(&["--rate-limit-per-sec", "1000", "--rate-limit-burst", "1"]),
            None,
        )
        .unwrap();
        abuse.sweep_every = Duration::ZERO;
        abuse.next_sweep_ms = AtomicU64::new(0);
        let h = HeaderMap::new();
        for i in 1..=50 {
            assert!(
                abuse
                    .check("twilio", peer(&format!("192.0.2.{i}")), &h)
                    .is_ok()
            );
        }
        assert!(abuse.tracked_clients() >= 49);
        // Each budget refills in 1 ms; the next call sweeps the idle ones away.
        std::thread::sleep(Duration::from_millis(20));
        assert!(abuse.check("twilio", peer("198.51.100.1"), &h).is_ok());
        assert!(abuse.tracked_clients() <= 1, "{}", abuse.tracked_clients());
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_slash_64() {
        let abuse = Abuse::from_config(
            &config(&["--rate-limit-per-sec", "0.01", "--rate-limit-burst", "1"]),
            None,
        )
        .unwrap();
        let h = HeaderMap::new();
        assert!(abuse.check("twilio", peer("2001:db8:0:1::1"), &h).is_ok());
        assert!(abuse.check("twilio", peer("2001:db8:0:1::2"), &h).is_err());
        assert!(abuse.check("twilio", peer("2001:db8:0:2::1"), &h).is_ok());
        // A v4-mapped peer is its v4 address.
        assert!(abuse.check("twilio", peer("::ffff:192.0.2.9"), &h).is_ok());
        assert!(abuse.check("twilio", peer("192.0.2.9"), &h).is_err());
    }

    #[test]
    fn allowlists_are_per_carrier_and_use_the_client_address() {
        let abuse = Abuse::from_config(
            &config(&[
                "--rate-limit-per-sec",
                "0",
                "--twilio-allowed-sources",
                "198.51.100.0/24, 2001:db8::1",
                "--bandwidth-allowed-sources",
                "",
            ]),
            Some("10.0.0.0/8"),
        )
        .unwrap();
        let h = HeaderMap::new();
        assert!(abuse.check("twilio", peer("198.51.100.20"), &h).is_ok());
        assert!(abuse.check("twilio", peer("2001:db8::1"), &h).is_ok());
        assert!(matches!(
            abuse.check("twilio", peer("203.0.113.1"), &h),
            Err((EdgeError::SourceNotAllowed, _))
        ));
        // No list (or an empty one): any source.
        assert!(abuse.check("bandwidth", peer("203.0.113.1"), &h).is_ok());
        // Behind a trusted proxy the forwarded client counts, not the proxy.
        let mut fwd = HeaderMap::new();
        fwd.insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
        assert!(abuse.check("twilio", peer("10.1.1.1"), &fwd).is_ok());
        fwd.insert("x-forwarded-for", "203.0.113.1".parse().unwrap());
        assert!(abuse.check("twilio", peer("10.1.1.1"), &fwd).is_err());
        // ...and an untrusted peer cannot claim a listed address.
        fwd.insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
        assert!(abuse.check("twilio", peer("203.0.113.1"), &fwd).is_err());
        assert_eq!(abuse.tracked_clients(), 0, "the rate limit is off");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Abuse::from_config(
            &config(&[
                "--rate-limit-per-sec=-1",
                "--rate-limit-burst",
                "0",
                "--twilio-allowed-sources",
                "1.2.3.4/40",
                "--inteliquent-allowed-sources",
                "nope,10.0.0.1",
            ]),
            Some("bogus"),
        )
        .unwrap_err();
        assert_eq!(err.len(), 4, "{err:?}");
        let err = Abuse::from_config(&config(&["--rate-limit-burst", "0"]), None).unwrap_err();
        assert_eq!(err, ["--rate-limit-burst must be at least 1"]);
        let slow = Abuse::from_config(&config(&["--rate-limit-per-sec", "0.5"]), None).unwrap();
        assert!(
            slow.describe().starts_with("per-client rate limit 0.5/s"),
            "{}",
            slow.describe()
        );
        let off = Abuse::from_config(&config(&["--rate-limit-per-sec", "0"]), None).unwrap();
        assert!(off.describe().starts_with("no per-client rate limit"));
        let on = Abuse::from_config(&config(&[]), Some("10.0.0.0/8")).unwrap();
        assert!(
            on.describe()
                .starts_with("per-client rate limit 1000/s, burst 2000; client = address recorded"),
            "{}",
            on.describe()
        );
    }

    #[test]
    fn rejection_log_lines_are_bounded_and_count_what_they_leave_out() {
        let log = RejectionLog::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap());
        assert_eq!(log.permit(), Some(0));
        assert_eq!(log.permit(), Some(0));
        let written = (0..1000).filter_map(|_| log.permit()).count();
        // At 1 line/s, a loop of a thousand refusals writes at most one more line.
        assert!(written <= 1, "{written}");
        assert!(log.suppressed.load(Ordering::Relaxed) >= 999);
    }
}
