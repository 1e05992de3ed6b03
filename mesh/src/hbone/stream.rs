//! One HBONE tunnel as a byte stream: an HTTP/2 stream's DATA frames in both directions behind
//! `AsyncRead`/`AsyncWrite`, so the proxies can copy between it and a TCP socket with the same
//! code they use for two TCP sockets.
//!
//! Flow-control credit is returned as the reader consumes bytes, not when a frame arrives, so
//! a slow application applies backpressure all the way to the sender instead of making us
//! buffer. Shutting down the write side sends an empty DATA frame with END_STREAM (half-close);
//! a peer's RST_STREAM with NO_ERROR or CANCEL reads as a clean end of stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

/// An established tunnel: what the far end sends is read, what is written reaches it.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received but not yet read; at most one DATA frame.
    pending: Bytes,
    /// Staging for outgoing DATA. Once h2 has written and dropped the previous frame, its
    /// allocation is reclaimed here, so a long transfer reuses one buffer instead of allocating
    /// (and page-faulting) a fresh one per write.
    outgoing: BytesMut,
    read_done: bool,
    write_done: bool,
    /// The peer reset the stream without an error (NO_ERROR, CANCEL): it wants nothing more,
    /// so there is nothing to half-close either.
    peer_withdrew: bool,
    /// The pool's claim on a stream slot of the connection; released when the tunnel drops.
    _slot: Option<OwnedSemaphorePermit>,
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            outgoing: BytesMut::new(),
            read_done: false,
            write_done: false,
            peer_withdrew: false,
            _slot: slot,
        }
    }
}

impl H2Stream {
    /// Ends the tunnel abnormally: RST_STREAM with CONNECT_ERROR, what RFC 9113 §8.5 says a
    /// proxy sends when the TCP connection behind a CONNECT was reset or abnormally closed. The
    /// far end reads an error, not a clean end of stream, so a cut connection is never mistaken
    /// for a complete one.
    pub fn abort(&mut self) {
        self.send.send_reset(h2::Reason::CONNECT_ERROR);
        self.write_done = true;
    }
}

/// Clean endings of a stream: the peer finished or withdrew without claiming an error.
fn is_clean_reset(err: &h2::Error) -> bool {
    matches!(
        err.reason(),
        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL)
    )
}

fn to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, err)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                // Credit goes back only for what was consumed.
                let _ = self.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if self.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => self.pending = chunk,
                None => self.read_done = true,
                Some(Err(err)) if is_clean_reset(&err) => {
                    self.read_done = true;
                    self.peer_withdrew = true;
                }
                Some(Err(err)) => return Poll::Ready(Err(to_io(err))),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.write_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(buf.len());
        let granted = loop {
            let available = self.send.capacity();
            if available > 0 {
                break available;
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Poll::Ready(Err(to_io(err))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        let n = granted.min(buf.len());
        self.outgoing.reserve(n);
        self.outgoing.extend_from_slice(&buf[..n]);
        let chunk = self.outgoing.split().freeze();
        self.send.send_data(chunk, false).map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames out as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_done {
            self.write_done = true;
            // A peer that already reset the stream has nothing left to half-close: once h2 has
            // processed the reset, a send is refused as "inactive stream", which is no failure
            // of ours (the relay would log the tunnel as failed after a complete exchange).
            if self.peer_withdrew {
                return Poll::Ready(Ok(()));
            }
            // Likewise once the peer has finished its own side (END_STREAM read): if it then
            // reset the stream, it wants nothing more, and a half-close can add nothing.
            if let Err(err) = self.send.send_data(Bytes::new(), true)
                && !is_clean_reset(&err)
                && (!self.read_done || err.is_io())
            {
                return Poll::Ready(Err(to_io(err)));
            }
        }
        Poll::Ready(Ok(()))
    }
}
