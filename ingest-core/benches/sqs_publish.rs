//! Throughput of the core's publishing path against an SQS-compatible endpoint that answers
//! every call after a fixed latency (default 20 ms), at saturation.
//!
//! `cargo bench -p ingest-core --bench sqs_publish -- [--seconds N] [--concurrency N]
//! [--latency-ms N] [--grpc]`
//!
//! By default events go through `Pipeline::ingest` (normalize → in-memory dedupe claim → batched
//! SQS publish → commit), as the gRPC handlers call it; `--grpc` sends them over gRPC to a core
//! served on loopback instead, with the client sharing the same two cores. It prints events/s,
//! SQS calls per event and latency percentiles. moto is far too slow for this, so the endpoint is
//! the small fake in `tests/backends/fake_sqs.rs`.

#[path = "../tests/backends/fake_sqs.rs"]
mod fake_sqs;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use carrier_ingest::v1::{
    Carrier, InboundMessage, Outcome, SubmitInboundRequest,
    ingest_service_client::IngestServiceClient,
};
use fake_sqs::{Behaviour, FakeSqs};
use ingest_core::{
    dedupe::MemoryDedupe,
    event::{self, Submitted},
    publish::{SqsPublisher, SqsSettings},
    server::{self, Limits},
    service::{Pipeline, Routes},
};

struct Options {
    seconds: u64,
    concurrency: usize,
    latency_ms: u64,
    grpc: bool,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 10,
        concurrency: 2048,
        latency_ms: 20,
        grpc: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--seconds" => o.seconds = value("--seconds"),
            "--concurrency" => o.concurrency = value("--concurrency") as usize,
            "--latency-ms" => o.latency_ms = value("--latency-ms"),
            "--grpc" => o.grpc = true,
            // cargo bench passes --bench; anything else is a mistake worth hearing about.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn message(n: u64) -> InboundMessage {
    InboundMessage {
        carrier: Carrier::Bandwidth as i32,
        carrier_message_id: format!("bench-{n}"),
        from: "+15559876543".into(),
        to: vec!["+15551234567".into()],
        text: "benchmark message of a typical length, about eighty bytes of text here.".into(),
        carrier_time: "2024-01-15T10:30:00Z".into(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    let fake = FakeSqs::start(Behaviour {
        latency: Duration::from_millis(o.latency_ms),
        ..Behaviour::default()
    })
    .await;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{}", fake.addr))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let settings = SqsSettings::default();
    let publisher = Arc::new(SqsPublisher::new(&aws, settings));
    let queue = fake.queue_url("bench");
    let routes = Routes {
        inbound: queue.clone(),
        status: queue,
        ..Routes::default()
    };
    let dedupe = Arc::new(MemoryDedupe::new(
        Duration::from_secs(3600),
        10_000_000,
        Duration::from_secs(30),
    ));
    let pipeline = Pipeline::new(dedupe, publisher.clone(), routes);

    let grpc = if o.grpc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            request_timeout: Duration::from_secs(10),
            concurrency: 1 << 16,
            grace: Duration::from_secs(1),
        };
        tokio::spawn(server::serve(
            listener,
            pipeline.clone(),
            limits,
            std::future::pending(),
        ));
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                IngestServiceClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect"),
            );
        }
        Some(clients)
    } else {
        None
    };

    let next = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..o.concurrency {
        let (next, measuring, stop, done, errors) = (
            next.clone(),
            measuring.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
        );
        let pipeline = pipeline.clone();
        let client = grpc.as_ref().map(|c| c[w % c.len()].clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let ok = match &client {
                    Some(client) => client
                        .clone()
                        .submit_inbound(SubmitInboundRequest {
                            message: Some(message(n)),
                        })
                        .await
                        .is_ok_and(|r| r.get_ref().outcome == Outcome::Accepted as i32),
                    None => {
                        let normalized = event::normalize(Submitted::Inbound(message(n)), "")
                            .expect("valid event");
                        pipeline
                            .ingest(
                                normalized,
                                ingest_core::trace::Span::start(
                                    ingest_core::trace::Scope::Core,
                                    || "bench",
                                    None,
                                )
                                .attributes(),
                            )
                            .await
                            .is_ok_and(|r| r.outcome == Outcome::Accepted as i32)
                    }
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                        latencies.push(started.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }

    // Warm up (connections, batcher, allocator), then measure a fixed window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls_before = fake.batch_calls();
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();
    let calls = fake.batch_calls() - calls_before;
    stop.store(true, Ordering::SeqCst);
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let events = done.load(Ordering::Relaxed);
    println!(
        "mode={} concurrency={} endpoint_latency_ms={} linger_ms={} max_in_flight_batches={}",
        if o.grpc { "grpc" } else { "pipeline" },
        o.concurrency,
        o.latency_ms,
        settings.linger.as_millis(),
        settings.max_in_flight_batches
    );
    println!(
        "events={events} errors={} seconds={:.2} events_per_sec={:.0} sqs_calls={calls} calls_per_event={:.4} latency_ms p50={:.1} p99={:.1} max={:.1}",
        errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        calls as f64 / events.max(1) as f64,
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    let accepted = fake.accepted();
    println!(
        "publisher: {:?}; endpoint: {} events accepted, {} more than once, {} entries failed",
        publisher.stats(),
        accepted.len(),
        accepted.values().filter(|n| **n > 1).count(),
        fake.entries_failed()
    );
}
