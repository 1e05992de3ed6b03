//! The small HTTP/1.1 servers operators and tools talk to (metrics, readiness, admin). They
//! never read a request body, answer from a handler that sees only the request head, and stop
//! accepting on shutdown; each connection is bounded in time so a stuck scraper costs nothing.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A response of these servers: small, in memory.
pub type Reply = Response<Full<Bytes>>;

/// Longest one connection may stay open (a CPU profile may legitimately take minutes).
const CONNECTION_LIMIT: Duration = Duration::from_secs(330);

/// Longest a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` for one of these servers; the error names the address, which names the knob.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| BindError { addr, cause })
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding {addr} failed")]
pub struct BindError {
    /// Where.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub cause: std::io::Error,
}

/// Serves `listener` until `shutdown`, answering every request with `handler`.
pub async fn serve<H, Fut>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let handler = Arc::clone(&handler);
                async move {
                    let (parts, _body) = request.into_parts();
                    Ok::<_, Infallible>(handler(parts).await)
                }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                served = tokio::time::timeout(CONNECTION_LIMIT, connection) => {
                    if let Ok(Err(err)) = served {
                        debug!(%peer, error = %err, "admin connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    with_type(
        status,
        "text/plain; charset=utf-8",
        body.into().into_bytes(),
    )
}

/// A response with the given content type.
pub fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The query parameter `name` of a request: `Some("")` when present without a value.
pub fn query_param(parts: &Parts, name: &str) -> Option<String> {
    let query = parts.uri.query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// Decodes `%XX` and `+` in a query value; an invalid escape is kept as written.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (byte, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (other, None) => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn query_parameters_are_found_and_decoded() {
        let request = parts("/logging?level=ztunnel%3A%3Aproxy%3Ddebug&reset");
        assert_eq!(
            query_param(&request, "level").as_deref(),
            Some("ztunnel::proxy=debug")
        );
        assert_eq!(query_param(&request, "reset").as_deref(), Some(""));
        assert_eq!(query_param(&request, "other"), None);
        assert_eq!(
            query_param(&parts("/x?a=%zz%4"), "a").as_deref(),
            Some("%zz%4")
        );
    }
}
