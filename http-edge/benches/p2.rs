//! P2: edge → core → SQS through the release binaries, as separate processes, against an
//! SQS-compatible endpoint that answers every call after a fixed latency (20 ms by default).
//! wrk sends the spec's Bandwidth inbound webhook (Basic auth on, each with its own message id)
//! over 128 connections; at the end every 200 must be on the queue exactly once. Prints
//! events/s, `SendMessageBatch` calls per event, latency, each process's CPU per event and the
//! host's idle and stolen CPU time during the run.
//!
//! `bash http-edge/benches/p2.sh [SECONDS=10] [CONNECTIONS=128] [SQS_LATENCY_MS=20]`, which
//! builds the core and hands it to this bench (`cargo bench` holds the build lock).
//! `EDGE_BIN` and `INGEST_CORE_BIN` point it at other builds (before/after comparisons);
//! `P2_CORE_ARGS` adds flags to the core (e.g. `--sqs-linger-ms 1`); `P2_CORE_THREADS` and
//! `P2_EDGE_THREADS` set each binary's `TOKIO_WORKER_THREADS`, `P2_RUST_LOG` both `RUST_LOG`
//! (experiments: the binaries otherwise run with an empty environment and their defaults).

#[path = "../../ingest-core/tests/backends/fake_sqs.rs"]
#[allow(dead_code)]
mod fake_sqs;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use fake_sqs::{Behaviour, FakeSqs};

// The SQS stand-in runs in this process, on the machine being measured: the allocator the
// binaries use keeps its share small.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .filter(|a| !a.starts_with('-'))
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// The whole machine's CPU time so far from `/proc/stat`'s first line, in ticks: idle + iowait,
/// steal, and all of it. Steal is time the hypervisor gave this VM's CPUs to someone else: a run
/// with much of it measured a slower machine. `None` where there is no such line.
fn host_ticks() -> Option<[u64; 3]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal (then guest time, already in user)
    let t: Vec<u64> = fields
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (t.len() == 8).then(|| [t[3] + t[4], t[7], t.iter().sum()])
}

/// The shares of idle and stolen time between two [`host_ticks`], in percent.
fn host_shares(before: Option<[u64; 3]>, after: Option<[u64; 3]>) -> Option<(f64, f64)> {
    let (b, a) = (before?, after?);
    let all = a[2].checked_sub(b[2]).filter(|&d| d > 0)? as f64;
    let share = |i: usize| 100.0 * a[i].saturating_sub(b[i]) as f64 / all;
    Some((share(0), share(1)))
}

/// CPU time (user + system) that process `pid` (or `self`) has used, in microseconds. `/proc`
/// counts it in USER_HZ ticks, 100 per second on Linux.
fn cpu_us(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) * 10_000
}

/// Kills the child when the bench ends, however it ends.
struct Reaped(Child);

impl Reaped {
    /// Peak resident memory so far, in MiB.
    fn peak_rss_mib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The metrics page served at `url` (empty if it cannot be read).
async fn metrics_page(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(reply) => reply.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The mean, in milliseconds, of the histogram `name` with `labels` in the metrics `text`.
fn mean_ms(text: &str, name: &str, labels: &str) -> Option<f64> {
    let value = |suffix: &str| {
        let prefix = format!("{name}_{suffix}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (sum, count) = (value("sum")?, value("count")?);
    (count > 0.0).then(|| sum / count * 1e3)
}

/// The services' log files in the bench's data directory.
const CORE_LOG: &str = "core.log";
const EDGE_LOG: &str = "edge.log";

/// Waits for `url` to answer 200; if it never does, panics with the services' logs in `dir`
/// (a port taken between `free_port` and the bind shows there, as a bind error).
async fn wait_ready(url: &str, dir: &std::path::Path) {
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let logs: String = [CORE_LOG, EDGE_LOG]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            format!("--- {name}:\n{text}\n")
        })
        .collect();
    panic!("not ready: {url}\n{logs}");
}

/// `key=value` of wrk's `RESULT` line (benches/bandwidth.lua).
fn result(wrk: &str, key: &str) -> f64 {
    let line = wrk
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| panic!("no RESULT line in wrk's output:\n{wrk}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

// One thread: the stand-in and the bookkeeping take as little of the two cores it shares with
// the edge, the core and wrk as they can (a real SQS takes none of them).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds = arg(1, 10);
    let connections = arg(2, 128);
    let latency_ms = arg(3, 20);
    let core_bin = std::env::var("INGEST_CORE_BIN").expect("INGEST_CORE_BIN (run benches/p2.sh)");
    let fake = FakeSqs::start(Behaviour {
        latency: Duration::from_millis(latency_ms),
        forget_entries: true,
        ..Default::default()
    })
    .await;
    let queue = fake.queue_url("p2-inbound");
    let data = tempfile::tempdir().unwrap();
    let (http, grpc, core_admin, edge_admin) = (free_port(), free_port(), free_port(), free_port());
    let log = |name: &str| std::fs::File::create(data.path().join(name)).unwrap();

    let core = Reaped(
        Command::new(&core_bin)
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--admin-listen", &format!("127.0.0.1:{core_admin}")])
            .arg("--data-dir")
            .arg(data.path().join("core"))
            .args(["--publisher", "sqs"])
            .args(
                std::env::var("P2_CORE_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .args(["--inbound-queue", &queue, "--status-queue", &queue])
            .args(["--quarantine-queue", &queue])
            .env_clear()
            .envs(std::env::var("P2_CORE_THREADS").map(|t| ("TOKIO_WORKER_THREADS", t)))
            .envs(std::env::var("P2_RUST_LOG").map(|t| ("RUST_LOG", t)))
            .env("AWS_ENDPOINT_URL", format!("http://{}", fake.addr))
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdout(Stdio::null())
            .stderr(log(CORE_LOG))
            .spawn()
            .expect("start ingest-core"),
    );
    // EDGE_BIN measures another build of the edge (a before/after comparison), as in p1.sh.
    let edge_bin =
        std::env::var("EDGE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_http-edge").into());
    let edge = Reaped(
        Command::new(edge_bin)
            .args(["--core-url", &format!("http://127.0.0.1:{grpc}")])
            .args(["--bandwidth-basic-auth", "bench:bench"])
            // wrk is one client: the per-client limit stays on, far above its rate.
            .args([
                "--rate-limit-per-sec",
                "10000000",
                "--rate-limit-burst",
                "10000000",
            ])
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--admin-listen", &format!("127.0.0.1:{edge_admin}")])
            .env_clear()
            .envs(std::env::var("P2_EDGE_THREADS").map(|t| ("TOKIO_WORKER_THREADS", t)))
            .envs(std::env::var("P2_RUST_LOG").map(|t| ("RUST_LOG", t)))
            .stdout(Stdio::null())
            .stderr(log(EDGE_LOG))
            .spawn()
            .expect("start http-edge"),
    );
    wait_ready(&format!("http://127.0.0.1:{http}/readyz"), data.path()).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/bandwidth.lua");
    let pids = [
        edge.0.id().to_string(),
        core.0.id().to_string(),
        "self".to_owned(),
    ];
    let cpu_before: Vec<u64> = pids.iter().map(|p| cpu_us(p)).collect();
    let host_before = host_ticks();
    let wrk = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["-s", script, &format!("http://127.0.0.1:{http}")])
        .env("WRK_RUN", format!("p2-{}", std::process::id()))
        .output()
        .await
        .expect("run wrk (apt-get install -y wrk)");
    let wrk = String::from_utf8_lossy(&wrk.stdout).into_owned();
    let (requests, non200) = (result(&wrk, "requests"), result(&wrk, "non200"));
    let acked = (requests - non200) as usize;

    let host = host_shares(host_before, host_ticks());
    let cpu: Vec<u64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, before)| cpu_us(p).saturating_sub(*before))
        .collect();
    // Calls still in flight when wrk stopped finish within the latency.
    tokio::time::sleep(Duration::from_millis(500 + 4 * latency_ms)).await;
    let accepted = fake.accepted();
    let twice = accepted.values().filter(|&&n| n > 1).count();
    let calls = fake.batch_calls();
    let events = accepted.len();
    println!(
        "P2: edge → core (gRPC, separate processes) → SQS answering after {latency_ms} ms, \
         wrk -t1 -c{connections} -d{seconds}s"
    );
    println!(
        "  {:.0} events/s acknowledged (200), {non200} non-200; p50 {:.2} ms, p99 {:.2} ms",
        result(&wrk, "rate") * (1.0 - non200 / requests.max(1.0)),
        result(&wrk, "p50_ms"),
        result(&wrk, "p99_ms"),
    );
    println!(
        "  on the queue: {events} events, {twice} delivered twice; {calls} SendMessageBatch calls \
         = {:.4} calls/event",
        calls as f64 / events.max(1) as f64
    );
    let per_event = |us: u64| us as f64 / requests.max(1.0);
    println!(
        "  CPU per event while wrk ran: http-edge {:.0} µs, ingest-core {:.0} µs, \
         the SQS stand-in (this bench process) {:.0} µs",
        per_event(cpu[0]),
        per_event(cpu[1]),
        per_event(cpu[2]),
    );
    match host {
        Some((idle, steal)) => println!(
            "  the host's CPUs while wrk ran: {idle:.1} % idle, {steal:.1} % stolen by the hypervisor"
        ),
        None => println!("  the host's CPUs while wrk ran: unknown (no /proc/stat)"),
    }
    // Where a webhook's time went, from the services' own histograms (means over the run).
    let edge_metrics = metrics_page(&format!("http://127.0.0.1:{edge_admin}/metrics")).await;
    let core_metrics = metrics_page(&format!("http://127.0.0.1:{core_admin}/metrics")).await;
    let ms = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.2} ms"));
    let means: Vec<String> = [
        (
            &edge_metrics,
            "ingest_webhook_duration_seconds",
            r#"carrier="bandwidth""#,
        ),
        (
            &edge_metrics,
            "ingest_core_call_duration_seconds",
            r#"call="submit",outcome="ok""#,
        ),
        (
            &core_metrics,
            "ingest_publish_duration_seconds",
            r#"backend="sqs""#,
        ),
        (
            &core_metrics,
            "ingest_sqs_call_duration_seconds",
            r#"queue="p2-inbound",outcome="ok""#,
        ),
    ]
    .into_iter()
    .map(|(text, name, labels)| ms(mean_ms(text, name, labels)))
    .collect();
    println!(
        "  time per webhook (means): edge handler {}, of which the core call {}; in the core, \
         the publish {}, of which the SendMessageBatch call {} (the stand-in's own wait {})",
        means[0],
        means[1],
        means[2],
        means[3],
        ms(fake.mean_latency().map(|d| d.as_secs_f64() * 1e3)),
    );
    println!(
        "  peak RSS: http-edge {} MiB, ingest-core {} MiB",
        edge.peak_rss_mib(),
        core.peak_rss_mib()
    );
    let mut failed = false;
    if non200 > 0.0 {
        eprintln!("FAIL: {non200} non-200 replies");
        failed = true;
    }
    if twice > 0 {
        eprintln!("FAIL: {twice} events delivered twice");
        failed = true;
    }
    // Every 200 is on the queue; at most one call per connection was in flight at the end.
    if events < acked || events > acked + connections as usize {
        eprintln!("FAIL: {acked} acknowledged but {events} on the queue");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
}
