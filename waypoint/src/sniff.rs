//! What a tunnelled stream speaks, read from its first bytes: the HTTP/2 connection preface,
//! an HTTP/1.1 request line, or anything else (TCP, which gets L4 rules only). The bytes read
//! are replayed to whoever serves the stream, through [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token looked at before deciding the stream is not HTTP/1.
const MAX_METHOD_LEN: usize = 20;

/// The stream's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (gRPC included).
    Http2,
    /// Anything else, or a client that waits for the server to speak first.
    Tcp,
}

impl Protocol {
    /// The name used in logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
            Self::Tcp => "TCP",
        }
    }
}

/// Reads until the protocol is known. A client silent for `wait` is TCP: some protocols have
/// the server speak first, and waiting longer would hang them.
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> io::Result<(Protocol, Bytes)> {
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 64];
    loop {
        if let Some(protocol) = decide(&seen) {
            return Ok((protocol, Bytes::from(seen)));
        }
        let read = match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(read) => read?,
            Err(_) => return Ok((Protocol::Tcp, Bytes::from(seen))),
        };
        if read == 0 {
            return Ok((Protocol::Tcp, Bytes::from(seen)));
        }
        seen.extend_from_slice(&chunk[..read]);
    }
}

/// `None` while the bytes so far could still be either HTTP form.
fn decide(seen: &[u8]) -> Option<Protocol> {
    if seen.is_empty() {
        return None;
    }
    let preface_len = seen.len().min(H2_PREFACE.len());
    if seen[..preface_len] == H2_PREFACE[..preface_len] {
        return (seen.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // An HTTP/1 request line starts with a method token and a space.
    for (i, byte) in seen.iter().enumerate() {
        if *byte == b' ' {
            return Some(if i > 0 {
                Protocol::Http1
            } else {
                Protocol::Tcp
            });
        }
        if !is_token_byte(*byte) || i >= MAX_METHOD_LEN {
            return Some(Protocol::Tcp);
        }
    }
    None
}

/// RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A stream whose first bytes were already read: they are returned again before the rest.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn decisions() {
        assert_eq!(decide(b""), None);
        assert_eq!(decide(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(decide(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(decide(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(decide(b"POS"), None);
        assert_eq!(decide(b"PRI * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(decide(b"\x16\x03\x01"), Some(Protocol::Tcp));
        assert_eq!(decide(b" GET"), Some(Protocol::Tcp));
        assert_eq!(decide(&[b'A'; 30]), Some(Protocol::Tcp));
    }

    #[tokio::test]
    async fn bytes_read_are_replayed() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET /x HTTP/1.1\r\n\r\n").await.unwrap();
        drop(client);
        let (protocol, prefix) = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        let mut whole = Vec::new();
        Prefixed::new(prefix, server)
            .read_to_end(&mut whole)
            .await
            .unwrap();
        assert_eq!(whole, b"GET /x HTTP/1.1\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_tcp() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (protocol, prefix) = sniff(&mut server, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!((protocol, prefix.len()), (Protocol::Tcp, 0));
    }
}
