//! The control plane's gRPC listener, as istiod's port 15012: TLS on every accepted connection
//! (our rustls configuration, see `mesh::grpc`), then tonic, with the CA and ADS services on the
//! one port, told apart by their gRPC path.
//!
//! Handshakes run concurrently and are bounded in time, so one slow or silent client cannot hold
//! up the others; a failed handshake costs only its connection and a log line.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tracing::debug;

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting to be picked up by the server.
const ACCEPT_BACKLOG: usize = 64;

/// Handshakes in progress at once; beyond this, accepting pauses (the kernel's backlog holds
/// the rest), so clients that connect and stay silent cannot pile up without bound.
const MAX_HANDSHAKES: usize = 256;

/// A TLS connection from a client.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: Option<SocketAddr>,
}

impl Connected for TlsConnection {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts on `listener` and completes TLS with `config`; the stream yields finished
/// handshakes, for `tonic::transport::Server::serve_with_incoming`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (ready, incoming) = mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&handshakes).acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if ready.is_closed() {
                return;
            }
            let (acceptor, handed) = (acceptor.clone(), ready.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = handed
                            .send(Ok(TlsConnection {
                                stream,
                                peer: Some(peer),
                            }))
                            .await;
                    }
                    Ok(Err(err)) => debug!(%peer, error = %err, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

type Route = BoxCloneService<http::Request<Body>, http::Response<Body>, Infallible>;

/// gRPC services on one listener, chosen by path prefix (`/<package>.<Service>/`).
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(String, Route)>,
}

impl Router {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server (or one wrapped in an interceptor).
    pub fn with<S, B>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        let erased = service.map_response(|response: http::Response<B>| response.map(Body::new));
        self.routes
            .push((format!("/{}/", S::NAME), BoxCloneService::new(erased)));
        self
    }
}

impl NamedService for Router {
    const NAME: &'static str = "controlplane";
}

impl Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Generated tonic servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        match self
            .routes
            .iter_mut()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        {
            Some((_, route)) => route.call(request),
            None => {
                let status = tonic::Status::unimplemented(format!("no service at {path}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
