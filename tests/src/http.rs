//! HTTP for the tests: the application servers answer HTTP on the same ports they echo TCP on
//! (the first bytes decide), and clients: one that sends one request and reads the answer whole,
//! kept-alive HTTP/1.1 and HTTP/2 connections, and gRPC framed by hand.
//!
//! What the servers answer, by request:
//! - `content-type: application/grpc`: every message echoed as it arrives, then `grpc-status: 0`;
//! - `/bytes/<n>`: `n` bytes of [`crate::apps::payload`] (seed [`BYTES_SEED`]), with the request
//!   body's length and checksum in `x-body-bytes` and `x-body-checksum`;
//! - `/gather/<key>/<n>/...`: held until `n` requests with that key (to any server of this test
//!   process) have arrived, then as below; 504 if they do not within [`GATHER_WAIT`];
//! - anything else: the text description below.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::apps::{checksum, payload};

/// The seed of the bytes `/bytes/<n>` answers with.
pub const BYTES_SEED: u8 = 0x5a;

/// How long a `/gather/` request waits for the rest of its group.
pub const GATHER_WAIT: Duration = Duration::from_secs(30);

/// The host header the clients below send.
pub const HOST: &str = "api.payments.svc.cluster.local";

/// What a server answers with.
type AppBody = BoxBody<Bytes, Infallible>;

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
/// reading the request body whole (its length is reported as `body-bytes`, its checksum as
/// `body-checksum`, hex), and last `server: <ip:port>`, the address the request came in on
/// (which endpoint answered). Some paths and gRPC are answered otherwise (module docs).
pub async fn serve(stream: TcpStream) {
    let mut first = [0u8; 24];
    let n = stream.peek(&mut first).await.unwrap_or(0);
    let h2 = first[..n].starts_with(b"PRI * HTTP/2.0");
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let io = TokioIo::new(stream);
    let service = hyper::service::service_fn(move |request| answer(local, request));
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

async fn answer(
    local: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Ok(grpc_echo(request.into_body()));
    }
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path();
    if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
        let mut response = Response::new(full(payload(n, BYTES_SEED)));
        let headers = response.headers_mut();
        headers.insert("x-body-bytes", HeaderValue::from(body.len()));
        let sum = format!("{:016x}", checksum(&body));
        headers.insert("x-body-checksum", HeaderValue::from_str(&sum).unwrap());
        return Ok(response);
    }
    if let Some(rest) = path.strip_prefix("/gather/") {
        let mut fields = rest.split('/');
        let key = fields.next().unwrap_or_default();
        let n = fields.next().and_then(|n| n.parse().ok()).unwrap_or(1);
        if let Err(arrived) = gather(key, n).await {
            let mut response = Response::new(full(format!("gather {key}: {arrived} of {n}")));
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return Ok(response);
        }
    }
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
    text.push_str(&format!("body-checksum: {:016x}\n", checksum(&body)));
    text.push_str(&format!("server: {local}\n"));
    Ok(Response::new(full(text)))
}

fn full(body: impl Into<Bytes>) -> AppBody {
    Full::new(body.into()).boxed()
}

/// Requests that arrived so far per `/gather/` key, across every server of the process.
static GATHERED: LazyLock<Mutex<BTreeMap<String, watch::Sender<usize>>>> =
    LazyLock::new(Mutex::default);

/// Counts this request in `key`'s group and waits until `n` have arrived; `Err` with how many
/// had, after [`GATHER_WAIT`].
async fn gather(key: &str, n: usize) -> Result<(), usize> {
    let mut arrived = {
        let mut all = GATHERED.lock().unwrap();
        let count = all
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        count.send_modify(|c| *c += 1);
        count.subscribe()
    };
    let waited = tokio::time::timeout(GATHER_WAIT, arrived.wait_for(|c| *c >= n))
        .await
        .is_ok_and(|seen| seen.is_ok());
    if waited {
        Ok(())
    } else {
        Err(*arrived.borrow())
    }
}

/// A body whose frames (data, then perhaps trailers) come from a channel as they are produced:
/// for streaming, where [`Full`] would need everything up front.
pub struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

/// The sending side of a [`ChannelBody`]: dropping it ends the body.
pub type BodySender = mpsc::Sender<Frame<Bytes>>;

/// A streaming body and what feeds it.
pub fn channel_body() -> (BodySender, ChannelBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody(rx))
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// One gRPC message as sent: uncompressed flag, big-endian length, the message (gRPC over
/// HTTP/2, "Length-Prefixed-Message").
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let len = u32::try_from(message.len()).expect("a gRPC message under 4 GiB");
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    framed.freeze()
}

/// The first whole message in `buf`, taken off it; `None` until one has arrived whole.
pub fn grpc_take(buf: &mut BytesMut) -> Option<Bytes> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    Some(buf.split_to(len).freeze())
}

/// The gRPC answer: each message echoed as soon as it has arrived whole, so that a client can
/// wait for reply k before sending message k+1; at the request's end, trailers with
/// `grpc-status: 0` (13, internal, if the request body failed).
fn grpc_echo(mut body: Incoming) -> Response<AppBody> {
    let (tx, rx) = channel_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut status = "0";
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                status = "13";
                break;
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(message) = grpc_take(&mut buf) {
                if tx.send(Frame::data(grpc_frame(&message))).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let mut response = Response::new(rx.boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
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

/// A whole answer, headers and bytes included.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn read_answer(response: Response<Incoming>) -> Result<Answer, String> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// An HTTP/1.1 connection on `stream`, kept alive for as many requests as are sent on it.
pub async fn http1_connect(stream: TcpStream) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let (send, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// An HTTP/2 connection (prior knowledge) on `stream`.
pub async fn http2_connect<B>(stream: TcpStream) -> Result<http2::SendRequest<B>, String>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// Sends one request (to [`HOST`]) on a kept-alive HTTP/1.1 connection; reads the answer whole.
pub async fn send1(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<Answer, String> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    read_answer(response).await
}

/// Sends one request (to `http://`[`HOST`]) on an HTTP/2 connection, which may carry others at
/// the same time; reads the answer whole.
pub async fn send2(
    mut sender: http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<Answer, String> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{HOST}{path}"))
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    read_answer(response).await
}

/// A gRPC call in progress: messages go out as they are sent, replies are read as they come.
pub struct GrpcCall {
    messages: Option<BodySender>,
    body: Incoming,
    buf: BytesMut,
    /// The response headers.
    pub headers: HeaderMap,
    trailers: Option<HeaderMap>,
}

/// Starts a gRPC call to `path` (`/<service>/<method>`): `content-type: application/grpc`,
/// `te: trailers`; returns once the response headers have come (a 200, else an error).
pub async fn grpc_start(
    sender: &mut http2::SendRequest<ChannelBody>,
    path: &str,
) -> Result<GrpcCall, String> {
    let (messages, body) = channel_body();
    let request = Request::builder()
        .method("POST")
        .uri(format!("http://{HOST}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .map_err(|e| format!("request: {e}"))?;
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("gRPC call answered {}", response.status()));
    }
    let (parts, body) = response.into_parts();
    Ok(GrpcCall {
        messages: Some(messages),
        body,
        buf: BytesMut::new(),
        headers: parts.headers,
        trailers: None,
    })
}

impl GrpcCall {
    /// Sends one message.
    pub async fn send(&self, message: &[u8]) -> Result<(), String> {
        let messages = self.messages.as_ref().ok_or("request stream closed")?;
        messages
            .send(Frame::data(grpc_frame(message)))
            .await
            .map_err(|_| "request stream gone".to_owned())
    }

    /// Ends the request stream (the client's half-close).
    pub fn close_send(&mut self) {
        self.messages = None;
    }

    /// The next reply; `None` once the response has ended.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(message) = grpc_take(&mut self.buf) {
                return Ok(Some(message));
            }
            let Some(frame) = self.body.frame().await else {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(format!("{} bytes of a partial message", self.buf.len())),
                };
            };
            let frame = frame.map_err(|e| format!("response body: {e}"))?;
            match frame.into_data() {
                Ok(data) => self.buf.extend_from_slice(&data),
                Err(frame) => self.trailers = frame.into_trailers().ok(),
            }
        }
    }

    /// Closes the request stream, reads the response to its end and returns its trailers; a
    /// reply still unread is an error.
    pub async fn finish(mut self) -> Result<HeaderMap, String> {
        self.close_send();
        if let Some(extra) = self.recv().await? {
            return Err(format!("unexpected reply of {} bytes", extra.len()));
        }
        self.trailers.ok_or_else(|| "no trailers".to_owned())
    }
}

/// Writes `raw` on `stream` and reads until a response head (through its blank line) has
/// arrived or the peer closes; returns what was read, as text.
pub async fn raw_exchange(stream: &mut TcpStream, raw: &[u8]) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(raw).await?;
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    while !read.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        read.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&read).into_owned())
}
