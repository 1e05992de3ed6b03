//! The server workload's applications, on their own thread and runtime so that client and
//! server are scheduled like two separate applications:
//!
//! - a sink that reads and discards, counting bytes: throughput is measured at the receiver;
//! - an echo that writes back whatever it reads: request/response and connection rate;
//! - an HTTP/1.1 application answering `200 ok`: the HTTP phases.
//!
//! The same sockets serve the direct and the mesh path.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::topology::{ECHO_PORT, HTTP_PORT, SINK_PORT, at};

/// Read size of the sink: large, so the receiver is never what limits throughput.
const SINK_READ: usize = 256 * 1024;
/// Read size of the echo: requests are tiny.
const ECHO_READ: usize = 16 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The server thread or its runtime could not be started.
    #[error("cannot start the server thread")]
    Thread(#[source] io::Error),
}

/// The running applications; stopped when dropped.
pub(crate) struct Server {
    received: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on the sink and echo ports of `ip` (bound before returning, in the calling
    /// thread's namespace) and serves on a new thread.
    pub(crate) fn start(ip: Ipv4Addr) -> Result<Self, ServerError> {
        let sink = bind(at(ip, SINK_PORT))?;
        let echo = bind(at(ip, ECHO_PORT))?;
        let http = bind(at(ip, HTTP_PORT))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Thread)?;
        let received = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let counter = Arc::clone(&received);
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let serving = async {
                        let (Ok(sink), Ok(echo), Ok(http)) = (
                            TcpListener::from_std(sink),
                            TcpListener::from_std(echo),
                            TcpListener::from_std(http),
                        ) else {
                            return;
                        };
                        tokio::join!(
                            serve_sink(sink, counter),
                            serve_echo(echo),
                            serve_http(http)
                        );
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = serving => {}
                    }
                });
            })
            .map_err(ServerError::Thread)?;
        Ok(Self {
            received,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Bytes the sink has received so far, over all connections.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(listener)
}

async fn serve_sink(listener: TcpListener, received: Arc<AtomicU64>) {
    while let Ok((stream, _)) = listener.accept().await {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut stream = stream;
            let mut buf = vec![0u8; SINK_READ];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
}

async fn serve_echo(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(echo(stream));
    }
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; ECHO_READ];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        let Some(data) = buf.get(..n) else { return };
        if stream.write_all(data).await.is_err() {
            return;
        }
    }
}

/// The smallest useful HTTP/1.1 application: `200 ok` to every request, on kept-alive
/// connections, so what the HTTP phases measure is the path, not the application.
async fn serve_http(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok\n"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
