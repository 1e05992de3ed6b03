//! The HBONE client side: HTTP/2 over an established mTLS stream, and CONNECT streams on it.
//!
//! The connection is driven by its own task, which also sends keepalive PINGs and marks the
//! connection closed (for the pool) when it ends for any reason.

use std::time::Duration;

use bytes::Bytes;
use h2::client::{self, SendRequest};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::headers::Authority;
use super::server::run_keepalive;
use super::{H2Settings, H2Stream};

/// Longest we wait for the answer to a CONNECT. The server answers only once it has connected
/// the application (10 s dial timeout there), so this leaves room for that dial.
pub const CONNECT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a client connection or tunnel failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP/2 preface or SETTINGS exchange failed.
    #[error("HTTP/2 handshake failed")]
    Handshake(#[source] h2::Error),
    /// The CONNECT could not be sent or its response not read.
    #[error("CONNECT request failed")]
    Request(#[source] h2::Error),
    /// The authority is not a valid URI authority.
    #[error("authority {0} cannot be sent")]
    Authority(String),
    /// The server answered with something other than 200.
    #[error("CONNECT refused with status {0}")]
    Status(StatusCode),
    /// No answer within [`CONNECT_RESPONSE_TIMEOUT`].
    #[error("no CONNECT response within {0:?}")]
    Timeout(Duration),
}

/// One HTTP/2 connection to an HBONE server.
#[derive(Clone)]
pub struct Connection {
    send: SendRequest<Bytes>,
    closed: CancellationToken,
}

impl Connection {
    /// Runs the HTTP/2 handshake on `io` and spawns the task that drives the connection.
    pub async fn handshake<IO>(io: IO, settings: H2Settings) -> Result<Self, ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = client::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.max_send_buffer)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(ClientError::Handshake)?;
        let closed = CancellationToken::new();
        let pings = conn.ping_pong();
        let done = closed.clone();
        tokio::spawn(async move {
            let peer_dead = CancellationToken::new();
            let keepalive =
                pings.map(|p| tokio::spawn(run_keepalive(p, settings, peer_dead.clone())));
            tokio::select! {
                result = &mut conn => {
                    if let Err(err) = result {
                        debug!(error = %err, "HBONE client connection ended");
                    }
                }
                () = peer_dead.cancelled() => {
                    debug!("HBONE server stopped answering keepalive PINGs; dropping the connection");
                }
            }
            if let Some(task) = keepalive {
                task.abort();
            }
            done.cancel();
        });
        Ok(Self { send, closed })
    }

    /// Whether the connection has ended (it then only fails new tunnels).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Fires when the connection ends.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Opens a tunnel to `authority`. `slot` is held for the tunnel's lifetime (the pool's
    /// stream accounting).
    pub async fn open(
        &self,
        authority: &Authority,
        headers: HeaderMap,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<H2Stream, ClientError> {
        let uri: Uri = authority
            .to_string()
            .parse()
            .map_err(|_| ClientError::Authority(authority.to_string()))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let opened = async {
            let mut send = self
                .send
                .clone()
                .ready()
                .await
                .map_err(ClientError::Request)?;
            let (response, stream) = send
                .send_request(request, false)
                .map_err(ClientError::Request)?;
            let response = response.await.map_err(ClientError::Request)?;
            if response.status() != StatusCode::OK {
                return Err(ClientError::Status(response.status()));
            }
            Ok(H2Stream::new(stream, response.into_body(), slot))
        };
        tokio::time::timeout(CONNECT_RESPONSE_TIMEOUT, opened)
            .await
            .map_err(|_| ClientError::Timeout(CONNECT_RESPONSE_TIMEOUT))?
    }
}
