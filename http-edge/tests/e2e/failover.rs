//! Failover across core replicas: two real ingest-core processes (on 127.0.0.2 and 127.0.0.3,
//! one port, like two pods behind a headless Service) sharing Redis dedupe and a FIFO queue on
//! the SQS-compatible fake (moto stalled for seconds under the load of parallel tests, which
//! made this time-critical test fail for reasons that were not failover), one real edge listing
//! both, and one core SIGKILLed mid-run and started again, or frozen (SIGSTOP) for longer than
//! the edge's core deadline and thawed.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    fake_sqs::{Behaviour, FakeSqs},
    harness::Edge,
    pki::{Ca, SERVER_NAME, write, write_leaf},
    servers::{Server, free_port},
    two_cores::{CoreProcess, Fault, Plan, send_through_a_fault},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_sigkilled_mid_run_refuses_nothing_and_loses_or_doubles_nothing() {
    // Started again 3 s later, on the same address and data.
    through_a_fault(Fault::Kill, Duration::from_secs(3), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_frozen_mid_run_refuses_nothing_and_loses_or_doubles_nothing() {
    // Frozen for longer than the edge's 5 s core deadline: its connection stays open and
    // nothing on it answers, so only the edge noticing the silence saves the webhooks sent
    // to it. Thawed, it must come back into rotation.
    through_a_fault(Fault::Freeze, Duration::from_secs(7), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_frozen_mid_run_behind_tls_refuses_nothing_and_loses_or_doubles_nothing() {
    // The same over TLS, where the edge keeps tonic's channel rather than its own connection:
    // the same keepalive must find the silence.
    through_a_fault(Fault::Freeze, Duration::from_secs(7), true).await;
}

/// A CA and a server certificate for [`SERVER_NAME`], as files.
struct Certs {
    _dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("failover CA");
        let ca_file = write(dir.path(), "ca.pem", &ca.pem);
        let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
        let path = |p: std::path::PathBuf| p.display().to_string();
        Self {
            ca: path(ca_file),
            cert: path(cert),
            key: path(key),
            _dir: dir,
        }
    }
}

/// Sends 300 webhooks, each once, through an edge in front of two cores (over TLS if `tls`),
/// one of which suffers `fault` for `lasting`; every one must be acknowledged, and be on SQS
/// once.
async fn through_a_fault(fault: Fault, lasting: Duration, tls: bool) {
    let redis = Server::redis();
    // FIFO, as in production: the event id is the MessageDeduplicationId, which absorbs the
    // one copy a core can publish twice (killed after SQS took the event, before the dedupe
    // commit). Redis dedupe and the edge's failover are what must keep everything else once.
    let sqs = FakeSqs::start(Behaviour {
        latency: Duration::from_millis(5),
        fifo_dedupe: true,
        ..Behaviour::default()
    })
    .await;
    let queue = sqs.queue_url(&format!("failover-{}.fifo", free_port()));
    let redis_url = format!("redis://{}", redis.addr());
    let prefix = format!("failover-{}:", free_port());
    let endpoint = format!("http://{}", sqs.addr);
    let certs = tls.then(Certs::new);
    let mut args = vec![
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
        &prefix,
        // Each event waits up to 300 ms for its SQS batch to fill, so the killed core holds
        // the Redis claims of several events when it dies: their retries on the other core must
        // take those claims over within the edge's deadline.
        "--sqs-linger-ms",
        "300",
    ];
    if let Some(c) = &certs {
        args.extend(["--grpc-tls-cert", &c.cert, "--grpc-tls-key", &c.key]);
    }
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let port = free_port();
    let a = CoreProcess::start(([127, 0, 0, 2], port).into(), &args, &env);
    let b = Arc::new(Mutex::new(CoreProcess::start(
        ([127, 0, 0, 3], port).into(),
        &args,
        &env,
    )));
    let scheme = if tls { "https" } else { "http" };
    let core_url = format!("{scheme}://127.0.0.2:{port},{scheme}://127.0.0.3:{port}");
    let mut edge_args = vec!["--core-timeout-ms", "5000"];
    if let Some(c) = &certs {
        edge_args.extend([
            "--core-tls-ca",
            &c.ca,
            "--core-tls-server-name",
            SERVER_NAME,
        ]);
    }
    let mut edge = Edge::without_core(&core_url, &edge_args).await;
    assert!(
        edge.becomes_ready(Duration::from_secs(15)).await,
        "the cores never served:\n{}",
        edge.log()
    );

    let plan = Plan {
        // A steady pace, so every latency seen is the failover's.
        events: 300,
        concurrency: 16,
        rate_per_sec: 25.0,
        fault,
        fault_at: 75,
        recover_after: lasting,
        tag: format!("fo{}", free_port()),
    };
    let run = send_through_a_fault(&edge.base, &plan, b.clone()).await;
    let statuses = run.statuses();
    let logs = || {
        format!(
            "edge:\n{}\ncore a:\n{}\ncore b:\n{}",
            edge.log(),
            a.logs(),
            b.lock().unwrap().logs()
        )
    };
    assert!(
        run.recovered_at < run.elapsed && run.sent_between(run.fault_at, run.recovered_at) > 50,
        "webhooks were sent while the core was down, and after it came back: {run:?}"
    );
    // The fault must have caught webhooks. A SIGKILL is one syscall, so those in flight at its
    // moment were caught. A freeze is sent by the `kill` command, whose start leaves time for a
    // batch to finish first; its mark is the webhooks it held up, waiting on the silent
    // connection until the keepalive closed it (about 2 s; nothing else here takes 1 s).
    let caught = match fault {
        Fault::Kill => run.sent_between(run.fault_at, run.fault_at),
        Fault::Freeze => run
            .sent
            .iter()
            .filter(|s| s.took >= Duration::from_secs(1))
            .count(),
    };
    assert!(
        caught >= 3,
        "the {fault:?} caught webhooks: {caught}; statuses {statuses:?}, at {:?}, \
         recovered at {:?}, run took {:?}, slowest {:?}\n{}",
        run.fault_at,
        run.recovered_at,
        run.elapsed,
        run.latency_quantile(1.0, Duration::ZERO, run.elapsed),
        logs()
    );
    assert_eq!(
        run.refused(),
        0,
        "every webhook is taken: {statuses:?}\n{}",
        logs()
    );

    let on_sqs = sqs.accepted();
    let acknowledged = run.acknowledged();
    assert_eq!(acknowledged.len(), plan.events);
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !on_sqs.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on SQS: {missing:?}"
    );
    let doubled: Vec<(&String, &u32)> = on_sqs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "on SQS more than once: {doubled:?}");
    assert_eq!(on_sqs.len(), plan.events, "nothing else on the queue");

    let edge_log = edge.log();
    assert!(
        edge_log.contains("out of rotation"),
        "the dead core was ejected:\n{edge_log}"
    );
    assert!(
        edge_log.contains("back in rotation"),
        "the recovered core was readmitted:\n{edge_log}"
    );
    eprintln!(
        "failover ({fault:?}, tls {tls}): {} webhooks, statuses {statuses:?}, p99 {:?} overall, {:?} from the fault to 2 s after the recovery, slowest {:?}",
        plan.events,
        run.latency_quantile(0.99, Duration::ZERO, run.elapsed),
        run.latency_quantile(
            0.99,
            run.fault_at,
            run.recovered_at + Duration::from_secs(2)
        ),
        run.latency_quantile(1.0, Duration::ZERO, run.elapsed),
    );
}
