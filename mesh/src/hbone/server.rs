//! The HBONE server side of one mTLS connection: HTTP/2 with CONNECT streams.
//!
//! Protocol-level refusals (not CONNECT, unreadable authority) are answered here with 400; every
//! well-formed CONNECT goes to the caller's handler as an [`IncomingTunnel`], which the caller
//! accepts (200, then bytes) or rejects with the status its own error mapping chooses. The 200
//! is sent only when the caller accepts, i.e. after its upstream is connected, as upstream
//! ztunnel does, so a client never sees success for a tunnel that leads nowhere.

use std::future::Future;

use bytes::Bytes;
use h2::server::{self, SendResponse};
use h2::{Ping, PingPong, RecvStream};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::headers::Authority;
use super::{H2Settings, H2Stream, SERVER_MAX_CONCURRENT_STREAMS};

/// Why a server connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP/2 preface or SETTINGS exchange failed.
    #[error("HTTP/2 handshake failed")]
    Handshake(#[source] h2::Error),
    /// The HTTP/2 preface did not arrive in time.
    #[error("HTTP/2 handshake did not finish within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The connection failed while serving.
    #[error("HTTP/2 connection failed")]
    Connection(#[source] h2::Error),
    /// The client stopped answering PINGs.
    #[error("client did not answer keepalive PING within {0:?}")]
    KeepaliveTimeout(std::time::Duration),
}

/// Why an accepted tunnel could not be answered.
#[derive(Debug, thiserror::Error)]
#[error("sending the CONNECT response failed")]
pub struct RespondError(#[source] h2::Error);

/// A well-formed CONNECT request waiting for the caller's decision.
pub struct IncomingTunnel {
    authority: Authority,
    headers: HeaderMap,
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl IncomingTunnel {
    /// Where the client wants to go.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The request headers (`forwarded`, `baggage`, `traceparent`, ...).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Refuses the tunnel with `status` (headers only, END_STREAM).
    pub fn reject(mut self, status: StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        // The client may already be gone; nothing else to tell it.
        let _ = self.respond.send_response(response, true);
    }

    /// Answers 200 with `headers` and returns the tunnel's byte stream.
    pub fn accept(mut self, headers: HeaderMap) -> Result<H2Stream, RespondError> {
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let send = self
            .respond
            .send_response(response, false)
            .map_err(RespondError)?;
        Ok(H2Stream::new(send, self.recv, None))
    }
}

/// Longest the client may take to send the HTTP/2 preface after TLS.
const H2_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/2 on an established mTLS stream until the client closes, the connection fails,
/// or `shutdown` fires (then: GOAWAY, and open streams finish on their own). Each tunnel's
/// handler runs as its own task.
pub async fn serve_connection<IO, H, Fut>(
    io: IO,
    settings: H2Settings,
    shutdown: CancellationToken,
    mut handler: H,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: FnMut(IncomingTunnel) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handshake = server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buffer_size(settings.max_send_buffer)
        .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(H2_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ServeError::HandshakeTimeout(H2_HANDSHAKE_TIMEOUT))?
        .map_err(ServeError::Handshake)?;
    let keepalive = conn.ping_pong();
    let peer_dead = CancellationToken::new();
    let keepalive_task =
        keepalive.map(|pings| tokio::spawn(run_keepalive(pings, settings, peer_dead.clone())));
    let mut draining = false;
    let result = loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => dispatch(request, respond, &mut handler),
                Some(Err(err)) => break Err(ServeError::Connection(err)),
                None => break Ok(()),
            },
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            () = peer_dead.cancelled() => {
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                break Err(ServeError::KeepaliveTimeout(settings.keepalive_timeout));
            }
        }
    };
    if let Some(task) = keepalive_task {
        task.abort();
    }
    result
}

fn dispatch<H, Fut>(request: Request<RecvStream>, mut respond: SendResponse<Bytes>, handler: &mut H)
where
    H: FnMut(IncomingTunnel) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let refuse = |respond: &mut SendResponse<Bytes>, status: StatusCode| {
        let mut response = Response::new(());
        *response.status_mut() = status;
        let _ = respond.send_response(response, true);
    };
    if request.method() != Method::CONNECT {
        warn!(method = %request.method(), "connection failed: HBONE request is not CONNECT");
        refuse(&mut respond, StatusCode::BAD_REQUEST);
        return;
    }
    let raw = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default();
    let authority = match Authority::parse(raw) {
        Ok(authority) => authority,
        Err(err) => {
            warn!(error = %err, "connection failed: bad CONNECT authority");
            refuse(&mut respond, StatusCode::BAD_REQUEST);
            return;
        }
    };
    let (parts, recv) = request.into_parts();
    debug!(%authority, "CONNECT received");
    tokio::spawn(handler(IncomingTunnel {
        authority,
        headers: parts.headers,
        respond,
        recv,
    }));
}

/// PINGs the peer every interval; cancels `dead` when one goes unanswered too long.
pub(crate) async fn run_keepalive(
    mut pings: PingPong,
    settings: H2Settings,
    dead: CancellationToken,
) {
    loop {
        tokio::time::sleep(settings.keepalive_interval).await;
        match tokio::time::timeout(settings.keepalive_timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection is closing for another reason; the owner will see it.
            Ok(Err(_)) => return,
            Err(_) => {
                dead.cancel();
                return;
            }
        }
    }
}
