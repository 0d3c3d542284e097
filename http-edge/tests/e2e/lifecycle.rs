//! Durability across SIGKILL, graceful SIGTERM, and a core that cannot be reached.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;

use crate::{
    harness::{BlackHole, Edge, acknowledged_event_id, json_reply, scrape},
    servers::free_port,
    spec::BANDWIDTH_INBOUND,
};

#[tokio::test]
async fn a_2xx_event_survives_sigkill_right_after_the_reply() {
    let mut edge = Edge::dev().await;
    let twilio =
        "MessageSid=SMdurable&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=keep+me";
    let r = edge.post_form("/twilio", twilio).await;
    assert_eq!(r.status(), 200);
    edge.kill();
    let spooled = edge.spooled("inbound");
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0]["inbound"]["carrierMessageId"], "SMdurable");
}

/// A crash of the machine can lose the end of the `.jsonl` that the page cache held: the spool
/// appends to it without an fsync and makes each group durable in its write-ahead log. A SIGKILL
/// does not lose the page cache, so after one the test cuts the file as such a crash would: the
/// last 1 MiB gone and zeros where some of it was (the WAL's two 2 MiB halves always hold more
/// than that). Every acknowledged event must be back, once, after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_tail_lost_in_a_crash_is_restored_from_its_wal_at_the_next_start() {
    const SENT: usize = 5000;
    // One client sending fast: no per-client rate limit in the way.
    let args = ["--insecure-skip-verify", "--rate-limit-per-sec", "0"];
    let mut edge = Edge::start(&args, &[]).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let (client, url) = (edge.client.clone(), edge.url("/twilio"));
    let sender = {
        let (acked, done) = (acked.clone(), done.clone());
        tokio::spawn(async move {
            // Each webhook sent once, 16 at a time, as a carrier that never retries.
            futures_util::stream::iter(0..SENT)
                .for_each_concurrent(16, |i| {
                    let (client, url, acked, done) =
                        (client.clone(), url.clone(), acked.clone(), done.clone());
                    async move {
                        let body = format!(
                            "MessageSid=SMwal{i:05}&AccountSid=AC1&From=%2B15559876543\
                             &To=%2B15551234567&Body=line+{i}+{}",
                            "x".repeat(1200)
                        );
                        let reply = client
                            .post(&url)
                            .header("content-type", "application/x-www-form-urlencoded")
                            .header("x-twilio-signature", "abc123signature456")
                            .body(body)
                            .send()
                            .await;
                        if let Some(id) = reply.ok().as_ref().and_then(acknowledged_event_id) {
                            acked.lock().unwrap().insert(id);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .await;
        })
    };
    // Killed mid-run, with webhooks in flight.
    while done.load(Ordering::Relaxed) < SENT * 4 / 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    edge.kill();
    sender.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= SENT * 3 / 4,
        "only {} acknowledged",
        acked.len()
    );

    let path = edge.spool_path("inbound");
    let len = std::fs::metadata(&path).unwrap().len();
    let wal = std::fs::metadata(path.with_extension("wal")).unwrap().len();
    assert!(
        len > wal,
        "more lines ({len} bytes) than the WAL holds: its halves switched"
    );
    let cut = len - (1 << 20);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(cut + 4096).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0; 4096], cut).unwrap();
    drop(file);

    let edge = Edge::restart_in(edge.take_data(), &args, &[]).await;
    let ids: Vec<String> = edge
        .spooled("inbound")
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an event in the spool twice");
    let missing = acked.iter().filter(|id| !distinct.contains(id)).count();
    assert_eq!(
        missing,
        0,
        "of {} acknowledged, {missing} missing",
        acked.len()
    );
    assert!(
        edge.log()
            .contains("spool restored from its write-ahead log"),
        "{}",
        edge.log()
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let mut edge = Edge::dev().await;
    assert_eq!(
        edge.post_json("/bandwidth/1", BANDWIDTH_INBOUND)
            .await
            .status(),
        200
    );
    let status = edge.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", edge.log());
    assert!(edge.log().contains("shutdown: draining"), "{}", edge.log());
}

#[tokio::test]
async fn core_unreachable_is_503_and_not_ready() {
    let dead_core = format!("http://127.0.0.1:{}", free_port());
    let edge = Edge::without_core(&dead_core, &["--core-timeout-ms", "1000"]).await;
    let ready = edge.client.get(edge.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let (status, body) = json_reply(edge.post_json("/bandwidth/1", BANDWIDTH_INBOUND).await).await;
    assert!(status == 503 || status == 504, "{status} {body}");
    assert_eq!(body["success"], false);
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no internals in replies: {body}"
    );
}

#[tokio::test]
async fn metrics_on_the_admin_listener_count_outcomes() {
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let edge = Edge::start(
        &["--insecure-skip-verify", "--admin-listen", &admin_addr],
        &[],
    )
    .await;
    let twilio = "MessageSid=SMmetrics&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=x";
    assert_eq!(edge.post_form("/twilio", twilio).await.status(), 200);
    assert_eq!(edge.post_form("/twilio", twilio).await.status(), 200);
    assert_eq!(
        edge.post_form(
            "/twilio",
            "MessageSid=SMbad&AccountSid=AC1&From=%2B1&To=%2B15551234567"
        )
        .await
        .status(),
        400
    );
    let text = scrape(&admin_addr).await;
    for line in [
        r#"ingest_webhook_requests_total{carrier="twilio",status="200"} 2"#,
        r#"ingest_webhook_requests_total{carrier="twilio",status="400"} 1"#,
        r#"ingest_events_total{carrier="twilio",kind="inbound",outcome="accepted"} 1"#,
        r#"ingest_events_total{carrier="twilio",kind="inbound",outcome="duplicate"} 1"#,
        r#"ingest_events_total{carrier="twilio",kind="inbound",outcome="invalid"} 1"#,
        // The accepted event and the quarantine record of the invalid call.
        r#"ingest_publish_duration_seconds_count{backend="spool"} 2"#,
        r#"ingest_quarantined_total{carrier="twilio",reason="invalid_request"} 1"#,
        // The edge's calls to the core: two taken, one refused as invalid, one quarantine.
        r#"ingest_core_call_duration_seconds_count{call="submit",outcome="ok"} 2"#,
        r#"ingest_core_call_duration_seconds_count{call="submit",outcome="error"} 1"#,
        r#"ingest_core_call_duration_seconds_count{call="quarantine",outcome="ok"} 1"#,
        "ingest_core_ready 1",
        // The embedded core's in-memory dedupe remembers the event and the quarantine record
        // (kept once however often the call comes), and has forgotten none.
        "ingest_dedupe_memory_keys 2",
        "ingest_dedupe_memory_evicted_total 0",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(!text.contains("5559876543"), "no phone numbers in metrics");
}

#[tokio::test]
async fn a_client_too_slow_to_send_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = Edge::start(
        &["--insecure-skip-verify", "--http-header-timeout-ms", "300"],
        &[],
    )
    .await;
    let addr = edge.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /twilio HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "connection still open after the header timeout"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    // Well-behaved clients are unaffected. A fresh connection: the harness's pooled one has
    // been idle past the 300 ms deadline, so the server may be closing it right now.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert_eq!(
        fresh.get(edge.url("/livez")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_is_shared_by_every_route_and_sheds_with_503() {
    // A "core" that accepts connections and never answers.
    let blackhole = BlackHole::start().await;
    let core = format!("http://{}", blackhole.addr);
    let edge = Edge::without_core(
        &core,
        &["--core-timeout-ms", "3000", "--http-concurrency-limit", "1"],
    )
    .await;
    let client = edge.client.clone();
    let base = edge.base.clone();
    let stuck = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/twilio");
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("MessageSid=SM1&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567")
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // A different route: shed at once, not queued behind the stuck call.
    let started = std::time::Instant::now();
    let r = client
        .post(format!("{base}/webhooks/inteliquent"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json_reply(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "shed, not queued"
    );
    assert!(
        stuck.await.unwrap().is_server_error(),
        "the stuck call ends in a 5xx"
    );
}
