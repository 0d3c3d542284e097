//! The edge's one long-lived gRPC channel to ingest-core, with a per-call deadline.

use std::{collections::HashSet, future::Future, net::SocketAddr, time::Duration};

use carrier_ingest::v1::{
    BatchEvent, QuarantineRecord, QuarantineReply, QuarantineRequest, SubmitBatchRequest,
    SubmitInboundRequest, SubmitReply, SubmitStatusRequest, batch_event::Event,
    ingest_service_client::IngestServiceClient,
};
use tonic::transport::channel::Change;
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::error::{EdgeError, FieldViolation};

/// How long a readiness probe waits for the core's health answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// A client of ingest-core.
#[derive(Debug, Clone)]
pub struct CoreClient {
    ingest: IngestServiceClient<Channel>,
    health: HealthClient<Channel>,
    timeout: Duration,
}

impl CoreClient {
    /// A client for `url` that connects on first use and reconnects as needed.
    ///
    /// With a non-zero `dns_refresh`, the URL's host is re-resolved that often and calls are
    /// balanced over every address (one HTTP/2 connection each), so a headless Service's pods
    /// all take traffic and pods that come and go are followed.
    pub fn connect_lazy(
        url: &str,
        timeout: Duration,
        dns_refresh: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        Self::connect_with_resolver(url, timeout, dns_refresh, |host, port| async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::collect)
        })
    }

    /// Like [`CoreClient::connect_lazy`], resolving host names with `resolve` (tests use it to
    /// stand in for a DNS server that returns several pods).
    pub fn connect_with_resolver<R, F>(
        url: &str,
        timeout: Duration,
        dns_refresh: Duration,
        resolve: R,
    ) -> Result<Self, tonic::transport::Error>
    where
        R: Fn(String, u16) -> F + Send + 'static,
        F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        let endpoint = endpoint(url.to_owned(), timeout)?;
        let channel = if dns_refresh.is_zero() {
            endpoint.connect_lazy()
        } else {
            let (channel, changes) = Channel::balance_channel(64);
            tokio::spawn(resolve_loop(
                endpoint,
                timeout,
                dns_refresh,
                changes,
                resolve,
            ));
            channel
        };
        Ok(Self {
            ingest: IngestServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            timeout,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Submits the events of one webhook call: a single event as itself, several as one batch.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<SubmitReply>, EdgeError> {
        let mut client = self.ingest.clone();
        let call = async {
            if events.len() == 1 {
                let reply = match events.into_iter().next() {
                    Some(Event::Inbound(message)) => {
                        client
                            .submit_inbound(self.request(SubmitInboundRequest {
                                message: Some(message),
                            }))
                            .await?
                    }
                    Some(Event::Status(status)) => {
                        client
                            .submit_status(self.request(SubmitStatusRequest {
                                status: Some(status),
                            }))
                            .await?
                    }
                    None => return Err(Status::internal("no event")),
                };
                Ok(vec![reply.into_inner()])
            } else {
                let events = events
                    .into_iter()
                    .map(|event| BatchEvent { event: Some(event) })
                    .collect();
                let reply = client
                    .submit_batch(self.request(SubmitBatchRequest { events }))
                    .await?;
                Ok(reply.into_inner().results)
            }
        };
        // The gRPC deadline covers the call; this also covers a connect that hangs.
        match tokio::time::timeout(self.timeout + Duration::from_millis(500), call).await {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(status)) => Err(from_status(&status)),
            Err(_) => Err(EdgeError::Core {
                code: Code::DeadlineExceeded,
            }),
        }
    }

    /// Hands a call that could not become events to the core's quarantine; `Ok` only once the
    /// record is durable.
    pub async fn quarantine(&self, record: QuarantineRecord) -> Result<QuarantineReply, EdgeError> {
        let mut client = self.ingest.clone();
        let call = client.quarantine(self.request(QuarantineRequest {
            record: Some(record),
        }));
        match tokio::time::timeout(self.timeout + Duration::from_millis(500), call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(from_status(&status)),
            Err(_) => Err(EdgeError::Core {
                code: Code::DeadlineExceeded,
            }),
        }
    }

    /// Whether the core answers its health check with SERVING.
    pub async fn ready(&self) -> bool {
        let mut health = self.health.clone();
        let mut request = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(HEALTH_TIMEOUT);
        match tokio::time::timeout(HEALTH_TIMEOUT, health.check(request)).await {
            Ok(Ok(reply)) => reply.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    }
}

fn endpoint(url: String, timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Keeps the balanced channel's endpoints equal to what the core's host name resolves to.
async fn resolve_loop<R, F>(
    template: Endpoint,
    timeout: Duration,
    every: Duration,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
    resolve: R,
) where
    R: Fn(String, u16) -> F,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let uri = template.uri().clone();
    let host = uri
        .host()
        .unwrap_or("localhost")
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let mut current: HashSet<SocketAddr> = HashSet::new();
    loop {
        match resolve(host.clone(), port).await {
            Ok(addrs) => {
                let resolved: HashSet<SocketAddr> = addrs.into_iter().collect();
                if resolved.is_empty() {
                    tracing::warn!(%host, "core DNS name resolved to no address; keeping the last set");
                } else {
                    for gone in current.difference(&resolved) {
                        let _ = changes.send(Change::Remove(*gone)).await;
                    }
                    for new in resolved.difference(&current) {
                        match endpoint(format!("{scheme}://{new}"), timeout) {
                            Ok(e) => {
                                let _ = changes.send(Change::Insert(*new, e)).await;
                            }
                            Err(error) => tracing::warn!(%error, "bad core endpoint"),
                        }
                    }
                    if resolved != current {
                        tracing::info!(%host, addresses = resolved.len(), "core endpoints changed");
                    }
                    current = resolved;
                }
            }
            Err(error) => {
                tracing::warn!(%host, %error, "core DNS lookup failed; keeping the last set")
            }
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

fn from_status(status: &Status) -> EdgeError {
    if status.code() == Code::InvalidArgument
        && let Some(bad) = status.get_details_bad_request()
    {
        return EdgeError::Invalid(
            bad.field_violations
                .into_iter()
                .map(|v| FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect(),
        );
    }
    tracing::warn!(code = ?status.code(), message = status.message(), "core call failed");
    EdgeError::Core {
        code: status.code(),
    }
}
