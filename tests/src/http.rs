//! HTTP for the tests: the application servers answer HTTP on the same ports they echo TCP on
//! (the first bytes decide), and a client that sends one request and reads the answer whole.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Whether the first bytes of a connection are an HTTP/1 request line or the HTTP/2 preface.
pub fn looks_like_http(first: &[u8]) -> bool {
    let method_end = first.iter().position(|b| *b == b' ');
    match method_end {
        Some(n) if n > 0 => first[..n].iter().all(u8::is_ascii_uppercase),
        _ => false,
    }
}

/// Serves HTTP/1.1 or HTTP/2 on `stream`: every request gets 200 and a body naming what
/// arrived (`<method> <path?query>`, then `name: value` per header, lower case, sorted), after
/// reading the request body whole (its length is reported as `body-bytes`).
pub async fn serve(stream: TcpStream) {
    let mut first = [0u8; 24];
    let n = stream.peek(&mut first).await.unwrap_or(0);
    let h2 = first[..n].starts_with(b"PRI * HTTP/2.0");
    let io = TokioIo::new(stream);
    let service = hyper::service::service_fn(answer);
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
    };
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut text = format!(
        "{} {}\n",
        parts.method,
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\n"));
    }
    text.push_str(&format!("body-bytes: {}\n", body.len()));
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Whole body.
    pub body: String,
}

/// Sends one HTTP/1.1 request on `stream` and reads the whole reply.
pub async fn request(
    stream: TcpStream,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Reply, String> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut builder = Request::builder().method(method).uri(path);
    let mut has_host = false;
    for (name, value) in headers {
        has_host |= name.eq_ignore_ascii_case("host");
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !has_host {
        builder = builder.header("host", "test.local");
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request: {e}"))?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
