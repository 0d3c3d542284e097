//! An SQS outage at scale through the release binary, as an operator would try it: http-edge
//! with the core embedded publishing to an SQS-compatible endpoint that answers in 5 ms and fails
//! every call (HTTP 500 `InternalError`) for a while in the middle of the run; a sender that sends
//! each event once, a fixed number at a time, at a fixed rate. Prints what was sent,
//! acknowledged, delivered and duplicated, latency during the outage, the outbox's peak depth and
//! how long it took to drain.
//!
//! `cargo bench -p http-edge --bench outage -- [EVENTS] [RATE_PER_SEC] [OUTAGE_SECS] [CONCURRENCY]
//! [kill] [hang]` (defaults 6000 200 20 16). With `kill`, the process is SIGKILLed in the middle
//! of the outage, with acknowledged events in its outbox, and started again on the same data
//! directory; calls that find it down are counted apart (never acknowledged). With `hang`, the
//! endpoint does not fail calls during the outage but holds them without an answer. Exits
//! non-zero if anything acknowledged is missing or duplicated.

#[path = "../../ingest-core/tests/backends/fake_sqs.rs"]
#[allow(dead_code)]
mod fake_sqs;

use std::{
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use fake_sqs::{Behaviour, FakeSqs};

const BODY: &str = r#"[{"type":"message-received","time":"2024-01-15T10:30:00.000Z","description":"Incoming message received","to":"+15551234567","message":{"id":"ID","owner":"+15559876543","applicationId":"app-12345","time":"2024-01-15T10:30:00.000Z","segmentCount":1,"direction":"in","to":["+15551234567"],"from":"+15559876543","text":"Hello","media":[]}}]"#;

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

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// The value of an unlabelled-or-labelled gauge line `name{...} value` summed over labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (at most 10 s) until the edge answers `/readyz` with 200.
async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..400 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::main]
async fn main() {
    let events = arg(1, 6000) as usize;
    let rate = arg(2, 200);
    let outage_secs = arg(3, 20);
    let concurrency = arg(4, 16) as usize;
    // `kill`: SIGKILL the process in the middle of the outage (its outbox full of acknowledged
    // events) and start it again on the same data directory.
    let kill = std::env::args().any(|a| a == "kill");
    // `hang`: during the outage SQS holds every call without an answer instead of failing it.
    let hang = std::env::args().any(|a| a == "hang");
    let fake = Arc::new(
        FakeSqs::start(Behaviour {
            latency: Duration::from_millis(5),
            ..Default::default()
        })
        .await,
    );
    let queue = fake.queue_url("bench-outage.fifo");
    let data = tempfile::tempdir().unwrap();
    let (http, grpc, admin) = (free_port(), free_port(), free_port());
    let fake_addr = fake.addr;
    let dir = data.path().to_owned();
    let spawn = move || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("edge.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_http-edge"))
            .args(["--embedded-core", "--insecure-skip-verify"])
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--publisher",
                "sqs",
                "--inbound-queue",
                &queue,
                "--status-queue",
                &queue,
                "--quarantine-queue",
                &queue,
            ])
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("AWS_ENDPOINT_URL", format!("http://{fake_addr}"))
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start target/release/http-edge")
    };
    let child = Arc::new(Mutex::new(spawn()));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}");
    wait_ready(&client, &base).await;

    // Watch the outbox depth.
    let peak = Arc::new(Mutex::new(0f64));
    let drained_at = Arc::new(Mutex::new(None::<Instant>));
    let outage_end = Arc::new(Mutex::new(None::<Instant>));
    let watcher = {
        let (client, peak, drained_at, outage_end) = (
            client.clone(),
            peak.clone(),
            drained_at.clone(),
            outage_end.clone(),
        );
        tokio::spawn(async move {
            loop {
                if let Ok(r) = client
                    .get(format!("http://127.0.0.1:{admin}/metrics"))
                    .send()
                    .await
                    && let Ok(text) = r.text().await
                {
                    let depth = metric(&text, "ingest_outbox_events");
                    let mut p = peak.lock().unwrap();
                    *p = p.max(depth);
                    if depth == 0.0
                        && outage_end.lock().unwrap().is_some()
                        && drained_at.lock().unwrap().is_none()
                    {
                        *drained_at.lock().unwrap() = Some(Instant::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let run_secs = events as f64 / rate as f64;
    let outage_from = Duration::from_secs_f64((run_secs - outage_secs as f64).max(0.0) / 2.0);
    let outage_to = outage_from + Duration::from_secs(outage_secs);
    let killer = kill.then(|| {
        let (child, client, base) = (child.clone(), client.clone(), base.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(
                (started + outage_from + (outage_to - outage_from) / 2).into(),
            )
            .await;
            let killed_at = Instant::now();
            {
                let mut c = child.lock().unwrap();
                let _ = c.kill();
                let _ = c.wait();
                *c = spawn();
            }
            wait_ready(&client, &base).await;
            (killed_at - started, killed_at.elapsed())
        })
    });
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(events)));
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, next, results, fake, outage_end) = (
                client.clone(),
                base.clone(),
                next.clone(),
                results.clone(),
                fake.clone(),
                outage_end.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        return;
                    }
                    let due = started + interval * i as u32;
                    tokio::time::sleep_until(due.into()).await;
                    let t = started.elapsed();
                    let failing = t >= outage_from && t < outage_to;
                    if hang {
                        fake.set_hanging(failing);
                    } else {
                        fake.set_failing(failing);
                    }
                    if !failing && t >= outage_to {
                        outage_end.lock().unwrap().get_or_insert_with(Instant::now);
                    }
                    let sent = Instant::now();
                    let reply = client
                        .post(format!("{base}/bandwidth/15551234567"))
                        .header("content-type", "application/json")
                        .body(BODY.replace("\"ID\"", &format!("\"bench-{i}\"")))
                        .send()
                        .await;
                    let elapsed = sent.elapsed();
                    let (status, id) = match reply {
                        Ok(r) => (
                            r.status().as_u16(),
                            r.headers()
                                .get("x-ingest-event-id")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                        ),
                        Err(_) => (0, None),
                    };
                    results.lock().unwrap().push((t, status, id, elapsed));
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    fake.set_failing(false);
    fake.set_hanging(false);
    outage_end.lock().unwrap().get_or_insert_with(Instant::now);
    let results = std::mem::take(&mut *results.lock().unwrap());
    let acked: Vec<&String> = results
        .iter()
        .filter(|r| r.1 == 200)
        .filter_map(|r| r.2.as_ref())
        .collect();
    // Wait for the relay to deliver everything acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let accepted = fake.accepted();
        if acked.iter().all(|id| accepted.contains_key(*id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    let accepted = fake.accepted();
    let missing = acked
        .iter()
        .filter(|id| !accepted.contains_key(**id))
        .count();
    let duplicates = accepted.values().filter(|n| **n > 1).count();
    let mut during: Vec<Duration> = results
        .iter()
        .filter(|r| r.0 >= outage_from && r.0 < outage_to)
        .map(|r| r.3)
        .collect();
    during.sort();
    let mut all: Vec<Duration> = results.iter().map(|r| r.3).collect();
    all.sort();
    // With `kill`, calls that found the process down got no answer (status 0): never acknowledged.
    let down = results.iter().filter(|r| kill && r.1 == 0).count();
    let refused: Vec<u16> = results
        .iter()
        .map(|r| r.1)
        .filter(|s| *s != 200 && !(kill && *s == 0))
        .collect();
    let drain = match (*outage_end.lock().unwrap(), *drained_at.lock().unwrap()) {
        (Some(end), Some(done)) => {
            format!("{:.2} s", done.saturating_duration_since(end).as_secs_f64())
        }
        _ => "not observed".into(),
    };
    println!(
        "sent {} | acknowledged (200) {} | refused {} {:?} | delivered to SQS {} | missing {} | \
         delivered twice {}",
        results.len(),
        acked.len(),
        refused.len(),
        refused.iter().take(5).collect::<Vec<_>>(),
        accepted.len(),
        missing,
        duplicates
    );
    println!(
        "outage {outage_secs} s from t={:.1} s: {} webhooks during it, p50 {:?} p99 {:?} max {:?}; \
         whole run p99 {:?}; SQS calls failed {}, held without an answer {}",
        outage_from.as_secs_f64(),
        during.len(),
        quantile(&during, 0.5),
        quantile(&during, 0.99),
        during.last().copied().unwrap_or_default(),
        quantile(&all, 0.99),
        fake.calls_failed(),
        fake.calls_hung()
    );
    if let Some(killer) = killer {
        let (at, down_for) = killer.await.unwrap();
        println!(
            "SIGKILLed at t={:.1} s during the outage, ready again {:.2} s later; {down} calls \
             found it down (connection refused, never acknowledged)",
            at.as_secs_f64(),
            down_for.as_secs_f64()
        );
    }
    println!(
        "outbox peak depth {} events; drained {} after SQS recovered",
        *peak.lock().unwrap(),
        drain
    );
    {
        let mut child = child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
    if missing > 0 || duplicates > 0 || !refused.is_empty() {
        eprintln!(
            "FAIL:\n{}",
            std::fs::read_to_string(data.path().join("edge.log")).unwrap_or_default()
        );
        std::process::exit(1);
    }
}
