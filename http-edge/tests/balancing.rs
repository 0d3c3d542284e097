//! Client-side balancing over a headless Service: two real cores behind one name; the name's
//! answer is supplied by the test (this machine's resolver cannot return several addresses).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use carrier_ingest::v1::{Carrier, InboundMessage, batch_event::Event};
use clap::Parser;
use http_edge::core_client::CoreClient;
use ingest_core::server;

#[derive(Parser)]
struct CoreCli {
    #[command(flatten)]
    core: ingest_core::config::CoreConfig,
}

async fn start_core(dir: &std::path::Path) -> SocketAddr {
    let cli = CoreCli::parse_from(["core", "--data-dir", dir.to_str().unwrap()]);
    let pipeline = server::build_pipeline(&cli.core).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = server::Limits::from_config(&cli.core, Duration::from_secs(1));
    tokio::spawn(server::serve(
        listener,
        pipeline,
        limits,
        std::future::pending(),
    ));
    addr
}

fn lines(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("inbound.jsonl")).map_or(0, |t| t.lines().count())
}

fn event(i: usize) -> Event {
    Event::Inbound(InboundMessage {
        carrier: Carrier::Twilio as i32,
        carrier_message_id: format!("SMbalance{i}"),
        from: "+15559876543".into(),
        to: vec!["+15551234567".into()],
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_resolved_core_and_follow_changes() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_core(a_dir.path()).await;
    let b = start_core(b_dir.path()).await;
    let answer = Arc::new(Mutex::new(vec![a, b]));
    let resolver = {
        let answer = answer.clone();
        move |host: String, _port: u16| {
            assert_eq!(host, "ingest-core-headless");
            let addrs = answer.lock().unwrap().clone();
            async move { Ok(addrs) }
        }
    };
    let client = CoreClient::connect_with_resolver(
        "http://ingest-core-headless:50051",
        Duration::from_secs(5),
        Duration::from_millis(100),
        Default::default(),
        resolver,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..60 {
        client.submit(vec![event(i)], None).await.unwrap();
    }
    let (on_a, on_b) = (lines(a_dir.path()), lines(b_dir.path()));
    assert_eq!(on_a + on_b, 60);
    assert!(
        on_a >= 5 && on_b >= 5,
        "both cores take traffic: {on_a} / {on_b}"
    );

    // Core b's pod goes away: once DNS stops returning it, every call goes to a.
    *answer.lock().unwrap() = vec![a];
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 60..90 {
        client.submit(vec![event(i)], None).await.unwrap();
    }
    assert_eq!(
        lines(b_dir.path()),
        on_b,
        "no call reaches a removed endpoint"
    );
    assert_eq!(lines(a_dir.path()), on_a + 30);
}

fn with_token(token: &str) -> http_edge::core_client::CoreCredentials {
    let config = http_edge::core_client::CoreAuthConfig {
        core_token: Some(token.parse().unwrap()),
        core_reload_secs: 1,
        ..Default::default()
    };
    http_edge::core_client::CoreCredentials::load(&config, "http://x:1").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_replicas_get_new_credentials_at_the_next_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let cli = CoreCli::parse_from([
        "core",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--grpc-tokens",
        "edge:new-token-0123456789abcdef",
    ]);
    let security = ingest_core::security::GrpcSecurity::load(&cli.core).unwrap();
    let pipeline = server::build_pipeline(&cli.core).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = server::Limits::from_config(&cli.core, Duration::from_secs(1));
    tokio::spawn(server::serve_secured(
        listener,
        server::CoreServices::new(pipeline).await,
        limits,
        security,
        std::future::pending(),
    ));
    let client = CoreClient::connect_with_resolver(
        "http://ingest-core-headless:50051",
        Duration::from_secs(2),
        Duration::from_millis(100),
        with_token("old-token-0123456789abcdef"),
        move |_: String, _: u16| async move { Ok(vec![addr]) },
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        client.submit(vec![event(1000)], None).await.is_err(),
        "old token refused"
    );
    assert_eq!(lines(dir.path()), 0);

    client.set_credentials(with_token("new-token-0123456789abcdef"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.submit(vec![event(1001)], None).await.unwrap();
    assert_eq!(lines(dir.path()), 1);
}
