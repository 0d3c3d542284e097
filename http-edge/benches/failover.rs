//! The two-core failover scenario at scale, on the release build: two ingest-core processes
//! (127.0.0.2 and 127.0.0.3, one port) sharing a real redis-server, publishing to a fast
//! SQS-compatible fake (5 ms per call; moto is far too slow for this), one http-edge listing
//! both; a sender sends each event once; a quarter of the way in one core is SIGKILLed and
//! started again later (`kill`, the default), or frozen with SIGSTOP and thawed later
//! (`freeze`). Prints what was sent, answered, and what reached SQS, and exits 1 if an
//! acknowledged event is missing.
//!
//!   bash http-edge/benches/failover.sh [EVENTS] [CONCURRENCY] [RATE_PER_SEC] [RESTART_AFTER_SECS] [kill|freeze]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

#[path = "../../ingest-core/tests/backends/fake_sqs.rs"]
#[allow(dead_code)]
mod fake_sqs;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../../ingest-core/tests/backends/servers.rs"]
mod servers;
#[path = "../tests/e2e/two_cores.rs"]
mod two_cores;

use fake_sqs::{Behaviour, FakeSqs};
use two_cores::{CoreProcess, Fault, Plan, send_through_a_fault};

fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    // `cargo bench` passes `--bench`; only positional numbers are ours.
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let events: usize = arg(0, 8_000);
    let concurrency: usize = arg(1, 16);
    let rate: f64 = arg(2, 600.0);
    let restart_after = Duration::from_secs_f64(arg(3, 6.0));
    let fault = match arg(4, String::from("kill")).as_str() {
        "kill" => Fault::Kill,
        "freeze" => Fault::Freeze,
        other => panic!("the fault is kill or freeze, not {other}"),
    };

    let sqs = FakeSqs::start(Behaviour {
        latency: Duration::from_millis(5),
        ..Behaviour::default()
    })
    .await;
    let redis = servers::Server::redis();
    let queue = sqs.queue_url("failover-bench");
    let redis_url = format!("redis://{}", redis.addr());
    let endpoint = format!("http://{}", sqs.addr);
    let args = [
        "--publisher=sqs",
        "--inbound-queue",
        &queue,
        "--status-queue",
        &queue,
        "--quarantine-queue",
        &queue,
        "--dedupe=redis",
        "--redis-url",
        &redis_url,
        "--redis-key-prefix",
        "failover-bench:",
    ];
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let port = servers::free_port();
    let _a = CoreProcess::start(([127, 0, 0, 2], port).into(), &args, &env);
    let b = Arc::new(Mutex::new(CoreProcess::start(
        ([127, 0, 0, 3], port).into(),
        &args,
        &env,
    )));
    let core_url = format!("http://127.0.0.2:{port},http://127.0.0.3:{port}");
    let edge = harness::Edge::without_core(&core_url, &["--core-timeout-ms", "5000"]).await;
    let plan = Plan {
        events,
        concurrency,
        rate_per_sec: rate,
        fault,
        fault_at: events / 4,
        recover_after: restart_after,
        tag: format!("bench{}", servers::free_port()),
    };
    let run = send_through_a_fault(&edge.base, &plan, b.clone()).await;
    // Let the last publishes land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let accepted = sqs.accepted();
    let acknowledged = run.acknowledged();
    let missing = acknowledged
        .iter()
        .filter(|id| !accepted.contains_key(*id))
        .count();
    let copies: u32 = accepted.values().sum();
    let duplicates = copies as usize - accepted.len();
    let ok = run
        .sent
        .iter()
        .filter(|s| (200..300).contains(&s.status))
        .count();
    let non_2xx: Vec<_> = run
        .statuses()
        .into_iter()
        .filter(|(s, _)| !(200..300).contains(s))
        .collect();
    let window_end = run.recovered_at + Duration::from_secs(2);
    println!("failover bench: {events} webhooks, {concurrency} at a time, paced at {rate}/s");
    let (faulted, recovered) = match fault {
        Fault::Kill => ("killed", "restarted"),
        Fault::Freeze => ("frozen", "thawed"),
    };
    println!(
        "  core {faulted} at {:.2}s, {recovered} at {:.2}s, run took {:.2}s",
        run.fault_at.as_secs_f64(),
        run.recovered_at.as_secs_f64(),
        run.elapsed.as_secs_f64()
    );
    println!("  webhooks sent: {}", run.sent.len());
    println!("  2xx: {ok} (refused: {})", run.refused());
    println!("  non-2xx by status (0 = no reply): {non_2xx:?}");
    println!(
        "  events on SQS: {} distinct, {copies} messages; duplicates: {duplicates}; acknowledged but missing: {missing}",
        accepted.len()
    );
    for (name, from, to) in [
        ("whole run".to_owned(), Duration::ZERO, run.elapsed),
        (
            format!("{faulted} to {recovered} + 2 s"),
            run.fault_at,
            window_end,
        ),
    ] {
        println!(
            "  latency {name} ({} webhooks): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            run.sent_between(from, to),
            run.latency_quantile(0.50, from, to).as_secs_f64() * 1e3,
            run.latency_quantile(0.99, from, to).as_secs_f64() * 1e3,
            run.latency_quantile(1.0, from, to).as_secs_f64() * 1e3,
        );
    }
    if missing > 0 {
        println!("FAIL: acknowledged events missing on SQS");
        std::process::exit(1);
    }
}
