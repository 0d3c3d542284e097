//! Real servers for the tests (moto's SQS server, redis-server) on free ports, and a core
//! started on 127.0.0.1:0 with its gRPC client.

pub(crate) use crate::servers::Server;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use carrier_ingest::v1::{
    Carrier, DeliveryStatus, InboundMessage, Outcome, SubmitInboundRequest, SubmitReply,
    SubmitStatusRequest, ingest_service_client::IngestServiceClient,
};
use clap::Parser;
use ingest_core::{
    config::CoreConfig,
    server::{self, Limits},
    service::Pipeline,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client};

/// Core flags: SQS publishing of every kind (events and quarantine) to `queue`.
pub(crate) fn sqs_flags(queue: &str) -> Vec<&str> {
    vec![
        "--publisher=sqs",
        "--inbound-queue",
        queue,
        "--status-queue",
        queue,
        "--quarantine-queue",
        queue,
    ]
}

/// Core flags: SQS publishing of both kinds to `queue`, Redis dedupe under `prefix`, then `extra`.
pub(crate) fn sqs_redis_flags<'a>(
    queue: &'a str,
    redis_url: &'a str,
    prefix: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut flags = sqs_flags(queue);
    flags.extend_from_slice(&[
        "--dedupe=redis",
        "--redis-url",
        redis_url,
        "--redis-key-prefix",
        prefix,
    ]);
    flags.extend_from_slice(extra);
    flags
}

/// A name no other test uses, for queues and key prefixes.
pub(crate) fn unique(stem: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{stem}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// AWS settings for moto: fixed region, dummy static credentials, moto's endpoint.
pub(crate) async fn aws_for(moto: &Server) -> aws_config::SdkConfig {
    aws_at(&format!("http://{}", moto.addr())).await
}

/// The same for any SQS-compatible endpoint at `url` (the fake in `fake_sqs.rs`).
pub(crate) async fn aws_at(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

/// A plain SQS client on moto, for creating queues and reading what the core published.
pub(crate) struct Sqs {
    /// The SDK client.
    pub(crate) client: aws_sdk_sqs::Client,
}

/// One message as a consumer receives it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The body, parsed.
    pub(crate) body: serde_json::Value,
    /// String values of the message attributes.
    pub(crate) attributes: HashMap<String, String>,
    /// Data types of the message attributes.
    pub(crate) attribute_types: HashMap<String, String>,
    /// `MessageGroupId` (FIFO only).
    pub(crate) group_id: Option<String>,
    /// `MessageDeduplicationId` (FIFO only).
    pub(crate) dedup_id: Option<String>,
}

impl Sqs {
    /// A client for `moto`.
    pub(crate) async fn new(moto: &Server) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(&aws_for(moto).await),
        }
    }

    /// Creates a queue (FIFO if `name` ends in `.fifo`) and returns its URL.
    pub(crate) async fn create_queue(&self, name: &str) -> String {
        let mut req = self.client.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("create_queue {name}: {e:?}"))
            .queue_url()
            .expect("queue url")
            .to_owned()
    }

    /// Receives and deletes messages until `want` have arrived (then until the queue stays
    /// empty briefly, to catch extras) or `within` has passed.
    pub(crate) async fn drain_until(
        &self,
        queue: &str,
        want: usize,
        within: Duration,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            out.extend(self.drain(queue).await);
        }
        out.extend(self.drain(queue).await);
        out
    }

    /// Receives and deletes messages until `queue` has been empty for a little while.
    pub(crate) async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut out = Vec::new();
        let mut empty_rounds = 0;
        while empty_rounds < 2 {
            let reply = self
                .client
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(60)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive_message");
            let messages = reply.messages();
            if messages.is_empty() {
                empty_rounds += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            empty_rounds = 0;
            for m in messages {
                let attrs = m.message_attributes().cloned().unwrap_or_default();
                let system = m.attributes().cloned().unwrap_or_default();
                out.push(Received {
                    body: serde_json::from_str(m.body().expect("body")).expect("JSON body"),
                    attributes: attrs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.string_value().unwrap_or("").to_owned()))
                        .collect(),
                    attribute_types: attrs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.data_type().to_owned()))
                        .collect(),
                    group_id: system
                        .get(&MessageSystemAttributeName::MessageGroupId)
                        .cloned(),
                    dedup_id: system
                        .get(&MessageSystemAttributeName::MessageDeduplicationId)
                        .cloned(),
                });
                self.client
                    .delete_message()
                    .queue_url(queue)
                    .receipt_handle(m.receipt_handle().expect("receipt handle"))
                    .send()
                    .await
                    .expect("delete_message");
            }
        }
        out
    }
}

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    core: CoreConfig,
}

/// A core configuration from command-line style flags (environment defaults apply as in the
/// binary).
pub(crate) fn core_config(flags: &[&str]) -> CoreConfig {
    // Each core gets its own data directory (the SQS publisher keeps its outbox there).
    let data_dir = std::env::temp_dir()
        .join("carrier-ingest-tests")
        .join(unique("data"));
    let data_flag = format!("--data-dir={}", data_dir.display());
    let own_dir =
        (!flags.iter().any(|f| f.starts_with("--data-dir"))).then_some(data_flag.as_str());
    let args = std::iter::once("ingest-core")
        .chain(own_dir)
        .chain(flags.iter().copied());
    let config = Args::try_parse_from(args)
        .unwrap_or_else(|e| panic!("bad test flags: {e}"))
        .core;
    let problems = config.problems();
    assert!(problems.is_empty(), "config problems: {problems:?}");
    config
}

/// A core serving on 127.0.0.1:0, stopped when dropped.
pub(crate) struct Core {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its pipeline (dedupe and publisher).
    pub(crate) pipeline: Arc<Pipeline>,
    /// A gRPC client connected to it.
    pub(crate) client: IngestServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Core {
    /// Serves `pipeline` with short limits suited to tests.
    pub(crate) async fn start(pipeline: Arc<Pipeline>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind core");
        let addr = listener.local_addr().expect("core addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = Limits {
            request_timeout: Duration::from_secs(10),
            concurrency: 1024,
            grace: Duration::from_secs(1),
        };
        let task = tokio::spawn({
            let pipeline = pipeline.clone();
            async move {
                server::serve(listener, pipeline, limits, async {
                    let _ = stopped.await;
                })
                .await
                .expect("core serves");
            }
        });
        let client = IngestServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to core");
        Self {
            addr,
            pipeline,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Builds the pipeline from `config` (AWS settings `aws`) and serves it.
    pub(crate) async fn from_config(config: &CoreConfig, aws: &aws_config::SdkConfig) -> Self {
        let pipeline = server::build_pipeline_with(config, Some(aws))
            .await
            .expect("build pipeline");
        Self::start(pipeline).await
    }

    /// The gRPC health status of the ingest service.
    pub(crate) async fn health(&self) -> ServingStatus {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let reply = health_client::HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: server::SERVICE_NAME.into(),
            })
            .await
            .expect("health check");
        reply.into_inner().status()
    }

    /// Waits until health reports `want`, failing the test after `within`.
    pub(crate) async fn wait_health(&self, want: ServingStatus, within: Duration) {
        let give_up = Instant::now() + within;
        loop {
            let status = self.health().await;
            if status == want {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "health stayed {status:?}, wanted {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops serving and waits for the server to end.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An inbound message from `carrier` with id `id`.
pub(crate) fn inbound(carrier: Carrier, id: &str) -> SubmitInboundRequest {
    SubmitInboundRequest {
        message: Some(InboundMessage {
            carrier: carrier as i32,
            carrier_message_id: id.into(),
            from: "+15559876543".into(),
            to: vec!["+15551234567".into()],
            text: "hello".into(),
            carrier_time: "2024-01-15T10:30:00Z".into(),
            ..Default::default()
        }),
    }
}

/// A delivery status from `carrier` for message `id`.
pub(crate) fn status(carrier: Carrier, id: &str, raw: &str) -> SubmitStatusRequest {
    SubmitStatusRequest {
        status: Some(DeliveryStatus {
            carrier: carrier as i32,
            carrier_message_id: id.into(),
            raw_status: raw.into(),
            recipient: "+15551234567".into(),
            status_time: "2024-01-15T10:31:00Z".into(),
            ..Default::default()
        }),
    }
}

/// The outcome of a reply.
pub(crate) fn outcome(reply: &SubmitReply) -> Outcome {
    Outcome::try_from(reply.outcome).expect("known outcome")
}

/// Submits an inbound message and returns the reply or the gRPC status.
pub(crate) async fn submit_inbound(
    client: &IngestServiceClient<Channel>,
    request: SubmitInboundRequest,
) -> Result<SubmitReply, tonic::Status> {
    client
        .clone()
        .submit_inbound(request)
        .await
        .map(tonic::Response::into_inner)
}
