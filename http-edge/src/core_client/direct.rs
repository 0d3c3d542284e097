//! The transport of a plaintext core replica: one HTTP/2 connection driven by hyper's client
//! directly, without tonic's `Channel`.
//!
//! `Channel` hands every request to a buffer worker task, which passes it on to hyper's
//! connection task and hands the response future back. Over a loopback or in-cluster hop that
//! is two more task wake-ups per call, which showed in the P2 bench as about 10 % of its rate
//! (see the README's performance table). Here the caller sends on the connection itself.
//!
//! What `Channel` did besides is kept: the connection is opened on first use and again after
//! it closes (one connect at a time; callers in between wait for it), within the connect
//! timeout; TCP_NODELAY; HTTP/2 keepalive pings that close a connection whose peer stopped
//! answering. Errors are the transport's own (connect, I/O, HTTP/2), so the client's
//! classification sees a failed connection as before. The scheme and authority of each request
//! are set by the gRPC clients (`with_origin`), as `Channel` set them. TLS replicas keep
//! `Channel`.

use std::{sync::Arc, task::Poll, time::Duration};

use futures_util::future::BoxFuture;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;
use tower::BoxError;

use super::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, pool::TransportError};

/// A plaintext HTTP/2 connection to one replica, opened when needed.
#[derive(Clone)]
pub(super) struct Direct(Arc<Inner>);

struct Inner {
    /// `host:port` of the replica.
    authority: http::uri::Authority,
    connect_timeout: Duration,
    /// The open connection, if any.
    current: std::sync::Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting, so that concurrent calls wait for one connect.
    connecting: tokio::sync::Mutex<()>,
}

impl Direct {
    /// A transport to `authority` (`host:port`) that connects on first use.
    pub(super) fn new(authority: http::uri::Authority, connect_timeout: Duration) -> Self {
        Self(Arc::new(Inner {
            authority,
            connect_timeout,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }))
    }

    /// The open connection, unless it has closed.
    fn open(&self) -> Option<SendRequest<Body>> {
        let current = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let _connecting = self.0.connecting.lock().await;
        // Another call may have connected while this one waited.
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        // As tonic's channel does: a replica that cannot be reached is UNAVAILABLE.
        let unreachable = |why: String| -> BoxError {
            Box::new(tonic::Status::unavailable(format!(
                "cannot connect to {}: {why}",
                self.0.authority
            )))
        };
        let sender = tokio::time::timeout(self.0.connect_timeout, self.connect())
            .await
            .map_err(|_| unreachable("timed out".to_owned()))?
            .map_err(|e| unreachable(e.to_string()))?;
        *self.0.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let authority = &self.0.authority;
        let port = authority.port_u16().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((authority.host(), port)).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(async move {
            // Its end (the peer closed, a keepalive went unanswered) shows as a closed sender;
            // calls in flight get the error themselves.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

impl tower::Service<http::Request<Body>> for Direct {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HTTP/2 takes any number of calls at once; a broken connection shows in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut sender = this.sender().await.map_err(TransportError::new)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(TransportError::new)?;
            Ok(response.map(Body::new))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::server::TcpIncoming;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tower::util::BoxCloneSyncService;

    /// A gRPC health server on `addr` until `stop` fires (then its connections are closed).
    async fn serve(addr: std::net::SocketAddr) -> tokio::sync::oneshot::Sender<()> {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        stop
    }

    async fn check(
        client: &HealthClient<super::super::pool::Transport>,
    ) -> Result<i32, tonic::Status> {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        Ok(client.clone().check(request).await?.into_inner().status)
    }

    #[tokio::test]
    async fn connects_when_needed_and_again_after_the_connection_closes() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let origin: http::Uri = format!("http://{addr}").parse().unwrap();
        let authority = origin.authority().unwrap().clone();
        let direct = Direct::new(authority, Duration::from_millis(500));
        let client = HealthClient::with_origin(BoxCloneSyncService::new(direct.clone()), origin);

        // Nothing listens: UNAVAILABLE, raised on this side (it has a source, so the client
        // counts it as a transport failure and ejects the replica).
        let down = check(&client).await.unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
        assert!(std::error::Error::source(&down).is_some(), "{down:?}");

        // The server starts: the next call connects.
        let stop = serve(addr).await;
        assert_eq!(check(&client).await.unwrap(), ServingStatus::Serving as i32);
        let first = direct.open().expect("a connection is open");
        assert_eq!(check(&client).await.unwrap(), ServingStatus::Serving as i32);
        assert!(
            direct.open().is_some_and(|s| !s.is_closed()),
            "calls share the connection"
        );

        // The server goes away and closes the connection: calls fail, then the restarted server
        // is reached on a new connection.
        stop.send(()).unwrap();
        let closed = tokio::time::Instant::now();
        while !first.is_closed() {
            assert!(
                closed.elapsed() < Duration::from_secs(5),
                "connection never closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut refused = None;
        for _ in 0..100 {
            match check(&client).await {
                Err(status) => {
                    refused = Some(status);
                    break;
                }
                // The old server may still be winding down its listener.
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let refused = refused.expect("calls fail while the server is down");
        assert!(std::error::Error::source(&refused).is_some(), "{refused:?}");
        let _stop = serve(addr).await;
        assert_eq!(check(&client).await.unwrap(), ServingStatus::Serving as i32);
    }

    #[tokio::test]
    async fn a_call_to_a_replica_that_answers_nothing_fails_within_the_keepalive() {
        // A peer that accepts and then answers nothing at all, as a frozen process or a
        // black-holed network does: the connection stays open.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let origin: http::Uri = format!("http://{addr}").parse().unwrap();
        let direct = Direct::new(origin.authority().unwrap().clone(), Duration::from_secs(1));
        let client = HealthClient::with_origin(BoxCloneSyncService::new(direct), origin);

        let started = tokio::time::Instant::now();
        let silent = tokio::time::timeout(Duration::from_secs(10), check(&client))
            .await
            .expect("the call ends on its own, not at the caller's deadline")
            .unwrap_err();
        let took = started.elapsed();
        // An unanswered ping after a second of silence, and another second for its answer.
        assert!(
            took >= KEEPALIVE_INTERVAL && took < KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT * 2,
            "failed after {took:?}"
        );
        // Raised on this side, with its cause: the client counts it as a broken connection,
        // ejects the replica and retries the call on another.
        assert!(std::error::Error::source(&silent).is_some(), "{silent:?}");
    }
}
