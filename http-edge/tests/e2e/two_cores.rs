//! Two real ingest-core processes behind one real edge, a sender that sends each event once,
//! and a fault of one core mid-run: a SIGKILL followed by a restart, or a SIGSTOP (a hung pod,
//! or one whose network black-holes packets: its connections stay open and nothing answers)
//! followed by a SIGCONT. Shared by the e2e tests (small counts) and the failover bench (large
//! counts), which includes this file by path.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::harness::acknowledged_event_id;

/// The `ingest-core` binary: `INGEST_CORE_BIN` if set (the failover bench builds it first, as
/// `cargo bench` holds the build lock while the bench runs), else the one of the same profile as
/// the `http-edge` binary under test, built first (cargo does nothing when it is current): an
/// integration test of one package cannot otherwise depend on another package's binary.
pub(crate) fn ingest_core_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("INGEST_CORE_BIN") {
                return PathBuf::from(path);
            }
            let edge = Path::new(env!("CARGO_BIN_EXE_http-edge"));
            let profile_dir = edge.parent().expect("binary directory");
            let target_dir = profile_dir.parent().expect("target directory");
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => "dev",
                Some(other) => other,
                None => "dev",
            };
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "ingest-core",
                    "--bin",
                    "ingest-core",
                ])
                .args(["--profile", profile])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build for ingest-core");
            assert!(status.success(), "building ingest-core failed");
            let binary = profile_dir.join("ingest-core");
            assert!(binary.is_file(), "{} missing", binary.display());
            binary
        })
        .clone()
}

/// One ingest-core process on a fixed address, which can be killed and started again there.
pub(crate) struct CoreProcess {
    pub(crate) addr: SocketAddr,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
}

impl CoreProcess {
    /// Starts a core on `addr` with `args` (besides the listen address and data directory) and
    /// `env`, and waits until it listens.
    pub(crate) fn start(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut core = Self {
            addr,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dir: tempfile::tempdir().expect("core data dir"),
            child: None,
            starts: 0,
        };
        core.restart();
        core
    }

    /// (Re)starts the process and waits until it accepts connections.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "core {} already running", self.addr);
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("core-{}.log", self.starts)))
            .expect("core log");
        let child = Command::new(ingest_core_binary())
            .args(["--grpc-listen", &self.addr.to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(&self.args)
            .env_clear()
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ingest-core");
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err()
        {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ingest-core exited at start-up ({status}):\n{}",
                    self.logs()
                );
            }
            assert!(Instant::now() < give_up, "ingest-core never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process stops where it is, its sockets stay open, nothing answers.
    pub(crate) fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a frozen process goes on from where it stopped.
    pub(crate) fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let child = self.child.as_ref().expect("core running");
        let status = Command::new("kill")
            .args([which, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} {}", child.id());
    }

    /// SIGKILL, at once: no drain, no settling of claims (a stopped process dies too).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every log this core wrote, across restarts.
    pub(crate) fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("core-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for CoreProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What happens to the victim core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL, then a restart on the same address and data.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Freeze,
}

/// What to send, and when the fault starts and ends.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Webhooks to send, each a different event, each once.
    pub(crate) events: usize,
    /// Webhooks in flight at a time.
    pub(crate) concurrency: usize,
    /// Webhooks started per second (spread evenly), so the kill and restart fall mid-run.
    pub(crate) rate_per_sec: f64,
    /// What happens to the core.
    pub(crate) fault: Fault,
    /// The fault starts when this webhook is about to be sent.
    pub(crate) fault_at: usize,
    /// How long after that the core is restarted (or thawed).
    pub(crate) recover_after: Duration,
    /// Tag in every message id, so runs never share events.
    pub(crate) tag: String,
}

/// One webhook's fate.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// When it was sent, from the start of the run.
    pub(crate) at: Duration,
    /// How long the reply took.
    pub(crate) took: Duration,
    /// The HTTP status (0: no reply at all).
    pub(crate) status: u16,
    /// The event id the edge answered with, on a 2xx.
    pub(crate) event_id: Option<String>,
}

/// The whole run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) sent: Vec<Sent>,
    /// When the fault started and when the core was restarted (or thawed), from the start of
    /// the run.
    pub(crate) fault_at: Duration,
    pub(crate) recovered_at: Duration,
    pub(crate) elapsed: Duration,
}

impl Run {
    /// Replies by HTTP status.
    pub(crate) fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut by = BTreeMap::new();
        for s in &self.sent {
            *by.entry(s.status).or_default() += 1;
        }
        by
    }

    /// Webhooks not answered 2xx.
    pub(crate) fn refused(&self) -> usize {
        self.sent
            .iter()
            .filter(|s| !(200..300).contains(&s.status))
            .count()
    }

    /// The event ids acknowledged with a 2xx.
    pub(crate) fn acknowledged(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter_map(|s| s.event_id.clone())
            .collect()
    }

    /// The `q` quantile (0–1) of the latency of webhooks in flight at some time in
    /// `[from, to)` (so those caught by a fault at `from` count too).
    pub(crate) fn latency_quantile(&self, q: f64, from: Duration, to: Duration) -> Duration {
        let mut took: Vec<Duration> = self
            .sent
            .iter()
            .filter(|s| in_flight(s, from, to))
            .map(|s| s.took)
            .collect();
        if took.is_empty() {
            return Duration::ZERO;
        }
        took.sort();
        let rank = ((took.len() as f64) * q).ceil() as usize;
        took[rank.clamp(1, took.len()) - 1]
    }

    /// Webhooks in flight at some time in `[from, to)`.
    pub(crate) fn sent_between(&self, from: Duration, to: Duration) -> usize {
        self.sent.iter().filter(|s| in_flight(s, from, to)).count()
    }
}

fn in_flight(s: &Sent, from: Duration, to: Duration) -> bool {
    s.at < to && s.at + s.took >= from
}

/// A single-event Bandwidth inbound webhook for message `id`.
pub(crate) fn bandwidth_inbound(id: &str) -> String {
    serde_json::json!([{
        "type": "message-received",
        "time": "2024-01-15T10:30:00.000Z",
        "description": "Incoming message received",
        "to": "+15551234567",
        "message": {
            "id": id,
            "owner": "+15559876543",
            "time": "2024-01-15T10:30:00.000Z",
            "direction": "in",
            "to": ["+15551234567"],
            "from": "+15559876543",
            "text": "failover",
            "media": []
        }
    }])
    .to_string()
}

/// Sends `plan.events` webhooks to the edge at `base`, with `plan.fault` happening to `victim`
/// mid-run and ending `plan.recover_after` later.
pub(crate) async fn send_through_a_fault(
    base: &str,
    plan: &Plan,
    victim: Arc<Mutex<CoreProcess>>,
) -> Run {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    // Webhooks sent and not yet answered.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let fault_at = Arc::new(Mutex::new(None::<Duration>));
    let recovery = Arc::new(Mutex::new(None::<tokio::task::JoinHandle<Duration>>));
    let url = format!("{base}/bandwidth/15551234567");
    let workers = (0..plan.concurrency).map(|_| {
        let (client, next, plan, url) = (client.clone(), next.clone(), plan.clone(), url.clone());
        let in_flight = in_flight.clone();
        let (victim, fault_at, recovery) = (victim.clone(), fault_at.clone(), recovery.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.events {
                    return sent;
                }
                let due = start + Duration::from_secs_f64(i as f64 / plan.rate_per_sec);
                tokio::time::sleep_until(due.into()).await;
                if i == plan.fault_at {
                    // The fault is to catch webhooks in flight. At a low pace with SQS batches
                    // lingering, a fixed moment can fall just after both cores' batches left
                    // (one or two in flight): wait, at most 2 s, until at least three are.
                    let wait_until = Instant::now() + Duration::from_secs(2);
                    while in_flight.load(Ordering::Relaxed) < 3 && Instant::now() < wait_until {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    // The fault's moment is the signal's, taken before it is sent: `kill` also
                    // waits for the process to be reaped, and replies that land meanwhile (retried
                    // on the other core, or a batch of the other core leaving) are not ones the
                    // kill missed.
                    *fault_at.lock().unwrap() = Some(start.elapsed());
                    match plan.fault {
                        Fault::Kill => victim.lock().unwrap().kill(),
                        Fault::Freeze => victim.lock().unwrap().freeze(),
                    }
                    let (victim, after, fault) = (victim.clone(), plan.recover_after, plan.fault);
                    *recovery.lock().unwrap() = Some(tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        tokio::task::spawn_blocking(move || {
                            let mut victim = victim.lock().unwrap();
                            match fault {
                                Fault::Kill => victim.restart(),
                                Fault::Freeze => victim.thaw(),
                            }
                            start.elapsed()
                        })
                        .await
                        .expect("recovery")
                    }));
                }
                let body = bandwidth_inbound(&format!("{}-{i}", plan.tag));
                let at = start.elapsed();
                let began = Instant::now();
                in_flight.fetch_add(1, Ordering::Relaxed);
                let reply = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let took = began.elapsed();
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let (status, event_id) = match reply {
                    Ok(r) => {
                        let (status, id) = (r.status().as_u16(), acknowledged_event_id(&r));
                        let _ = r.bytes().await;
                        (status, id)
                    }
                    Err(_) => (0, None),
                };
                sent.push(Sent {
                    at,
                    took,
                    status,
                    event_id,
                });
            }
        })
    });
    let mut sent = Vec::with_capacity(plan.events);
    for worker in workers.collect::<Vec<_>>() {
        sent.extend(worker.await.expect("sender task"));
    }
    let elapsed = start.elapsed();
    let recovery = recovery.lock().unwrap().take().expect("the fault happened");
    let recovered_at = recovery.await.expect("recovery task");
    let fault_at = fault_at.lock().unwrap().expect("the fault happened");
    Run {
        sent,
        fault_at,
        recovered_at,
        elapsed,
    }
}
