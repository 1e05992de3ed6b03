//! Requests out: each one to an endpoint picked for it, over an HBONE tunnel to that endpoint's
//! ztunnel (presenting the waypoint's own identity, expecting the endpoint's), speaking the
//! downstream's HTTP version. Tunnels are kept per downstream connection and endpoint, so a
//! kept-alive client costs one tunnel per endpoint it reaches, not one per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::hbone::pool::{DialFuture, Dialer, Pool, PoolError, PoolKey};
use mesh::hbone::{Authority, H2Stream, HBONE_PORT};
use mesh::identity::SpiffeId;
use tokio::net::TcpStream;
use tracing::debug;

use crate::metrics::UpstreamBody;

/// Why a request could not be sent to its endpoint.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The tunnel to the endpoint's ztunnel failed (refused by its policy, unreachable, TLS).
    #[error("tunnel to {endpoint} failed")]
    Tunnel {
        /// The endpoint.
        endpoint: SocketAddr,
        /// Why.
        #[source]
        cause: PoolError,
    },
    /// The endpoint did not answer the request's headers in time.
    #[error("{endpoint} did not answer within {limit:?}")]
    Timeout {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The limit (`REQUEST_TIMEOUT`).
        limit: Duration,
    },
    /// The HTTP exchange with the endpoint failed.
    #[error("request to {endpoint} failed")]
    Http {
        /// The endpoint.
        endpoint: SocketAddr,
        /// Why.
        #[source]
        cause: hyper::Error,
    },
}

/// The HTTP version spoken on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

impl Version {
    /// As OTel's `network.protocol.version` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "1.1",
            Self::Http2 => "2",
        }
    }
}

enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

/// One downstream connection's tunnels, by endpoint address.
#[derive(Default)]
pub struct Upstreams {
    senders: HashMap<SocketAddr, Sender>,
    /// Held while an HTTP/2 tunnel to the endpoint is being opened, so concurrent first
    /// requests wait for it and share it instead of each opening their own.
    connecting: HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
}

impl Upstreams {
    fn live_http2(&self, addr: &SocketAddr) -> Option<Sender> {
        match self.senders.get(addr) {
            Some(Sender::Http2(send)) if !send.is_closed() => Some(Sender::Http2(send.clone())),
            _ => None,
        }
    }
}

/// Where a request goes.
pub struct Endpoint<'a> {
    /// The endpoint's address and target port (the CONNECT authority).
    pub addr: SocketAddr,
    /// Identities its ztunnel may prove.
    pub expected: Vec<SpiffeId>,
    /// CONNECT headers (`forwarded` with the original client, `baggage`, `traceparent`).
    pub headers: HeaderMap,
    /// The waypoint's own identity, presented to the endpoint's ztunnel.
    pub source: &'a SpiffeId,
}

/// Sends requests over HBONE.
pub struct Forwarder {
    pool: Pool,
    connect_timeout: Duration,
    /// Longest wait for a response's headers; `None`: no limit.
    request_timeout: Option<Duration>,
}

impl Forwarder {
    /// A forwarder opening tunnels from `pool`; `request_timeout` of zero means no limit.
    pub fn new(pool: Pool, connect_timeout: Duration, request_timeout: Duration) -> Self {
        Self {
            pool,
            connect_timeout,
            request_timeout: (!request_timeout.is_zero()).then_some(request_timeout),
        }
    }

    /// [`Forwarder::send`] within the request timeout, when there is one.
    pub async fn send_within(
        &self,
        upstreams: &tokio::sync::Mutex<Upstreams>,
        endpoint: Endpoint<'_>,
        version: Version,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let addr = endpoint.addr;
        let sending = self.send(upstreams, endpoint, version, request);
        match self.request_timeout {
            None => sending.await,
            Some(limit) => {
                tokio::time::timeout(limit, sending)
                    .await
                    .map_err(|_| UpstreamError::Timeout {
                        endpoint: addr,
                        limit,
                    })?
            }
        }
    }

    /// Sends `request` to `endpoint`, reusing this connection's tunnel to it when it has one.
    pub async fn send(
        &self,
        upstreams: &tokio::sync::Mutex<Upstreams>,
        endpoint: Endpoint<'_>,
        version: Version,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let addr = endpoint.addr;
        let http = |cause| UpstreamError::Http {
            endpoint: addr,
            cause,
        };
        // HTTP/2 multiplexes: the sender stays shared. HTTP/1.1 carries one exchange at a time:
        // the sender is taken for the request and put back once the response has begun.
        let (reused, connect_lock) = {
            let mut held = upstreams.lock().await;
            match held.senders.get(&addr) {
                Some(Sender::Http2(send)) if !send.is_closed() => {
                    (Some(Sender::Http2(send.clone())), None)
                }
                Some(Sender::Http1(send)) if !send.is_closed() => {
                    (held.senders.remove(&addr), None)
                }
                _ if version == Version::Http2 => {
                    let lock = held.connecting.entry(addr).or_default();
                    (None, Some(Arc::clone(lock)))
                }
                _ => (None, None),
            }
        };
        let mut sender = match (reused, connect_lock) {
            (Some(sender), _) => sender,
            (None, Some(lock)) => {
                let _connecting = lock.lock().await;
                // Whoever held the lock before may have opened the tunnel meanwhile.
                let opened = upstreams.lock().await.live_http2(&addr);
                match opened {
                    Some(sender) => sender,
                    None => {
                        let sender = self.connect(&endpoint, version).await?;
                        if let Sender::Http2(send) = &sender {
                            upstreams
                                .lock()
                                .await
                                .senders
                                .insert(addr, Sender::Http2(send.clone()));
                        }
                        sender
                    }
                }
            }
            (None, None) => self.connect(&endpoint, version).await?,
        };
        let response = match &mut sender {
            Sender::Http1(send) => {
                send.ready().await.map_err(http)?;
                send.send_request(request).await.map_err(http)?
            }
            Sender::Http2(send) => {
                send.ready().await.map_err(http)?;
                send.send_request(request).await.map_err(http)?
            }
        };
        let mut held = upstreams.lock().await;
        match sender {
            Sender::Http1(_) => {
                held.senders.insert(addr, sender);
            }
            Sender::Http2(_) => {
                let live =
                    matches!(held.senders.get(&addr), Some(Sender::Http2(s)) if !s.is_closed());
                if !live {
                    held.senders.insert(addr, sender);
                }
            }
        }
        Ok(response)
    }

    /// Opens an HBONE tunnel to `endpoint` (for HTTP, or bytes as they come for TCP).
    pub async fn tunnel(&self, endpoint: &Endpoint<'_>) -> Result<H2Stream, UpstreamError> {
        let addr = endpoint.addr;
        let key = PoolKey::new(
            endpoint.source.clone(),
            None,
            SocketAddr::new(addr.ip(), HBONE_PORT),
            endpoint.expected.clone(),
        );
        let dialer = Direct(self.connect_timeout);
        self.pool
            .open(
                &key,
                &Authority::Addr(addr),
                endpoint.headers.clone(),
                &dialer,
            )
            .await
            .map_err(|cause| UpstreamError::Tunnel {
                endpoint: addr,
                cause,
            })
    }

    async fn connect(
        &self,
        endpoint: &Endpoint<'_>,
        version: Version,
    ) -> Result<Sender, UpstreamError> {
        let tunnel = self.tunnel(endpoint).await?;
        let addr = endpoint.addr;
        let io = TokioIo::new(tunnel);
        let http = |cause| UpstreamError::Http {
            endpoint: addr,
            cause,
        };
        debug!(endpoint = %addr, ?version, "upstream tunnel opened");
        Ok(match version {
            Version::Http1 => {
                let (send, conn) = http1::handshake(io).await.map_err(http)?;
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(endpoint = %addr, error = %err, "upstream HTTP/1.1 connection ended");
                    }
                });
                Sender::Http1(send)
            }
            Version::Http2 => {
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(http)?;
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(endpoint = %addr, error = %err, "upstream HTTP/2 connection ended");
                    }
                });
                Sender::Http2(send)
            }
        })
    }
}

/// Plain TCP from the waypoint's own network namespace.
struct Direct(Duration);

impl Dialer for Direct {
    fn dial<'a>(&'a self, key: &'a PoolKey) -> DialFuture<'a> {
        let (timeout, addr) = (self.0, key.destination);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }
}
