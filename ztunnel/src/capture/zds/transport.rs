//! The ZDS socket: a Unix `SOCK_SEQPACKET` connection carrying one message per record, with a
//! network-namespace descriptor passed by `SCM_RIGHTS` alongside an `add`. Both ends live here
//! (ztunnel connects; the node agent listens), so the two sides frame records the same way.
//!
//! Sockets come from socket2 (safe creation, bind, accept); records go through nix's
//! `sendmsg`/`recvmsg`, the only safe wrappers for ancillary data; readiness from tokio's
//! `AsyncFd`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::message::MAX_RECORD;

/// One received record.
#[derive(Debug)]
pub struct Record {
    /// The bytes (at most [`MAX_RECORD`]).
    pub bytes: Vec<u8>,
    /// The kernel cut the record or its control data (`MSG_TRUNC`/`MSG_CTRUNC`).
    pub truncated: bool,
    /// Descriptors that came with it, already owned so they close if the record is refused.
    pub fds: Vec<OwnedFd>,
}

/// A connected ZDS socket.
#[derive(Debug)]
pub struct Connection {
    socket: AsyncFd<Socket>,
}

/// Room for the control data of one record: as many descriptors as one SCM_RIGHTS message can
/// carry (the kernel's SCM_MAX_FD), so the control data is never cut. A cut message would leave
/// the descriptors the kernel did install unreachable (leaked); this way every one is owned,
/// and a record with more than the one allowed is refused and closes them all.
const CONTROL_FDS: usize = 253;

impl Connection {
    /// Connects to the node agent's socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        // Non-blocking from the start: a Unix connect to a full backlog fails with EAGAIN at
        // once (the caller retries with backoff) instead of stalling the control thread.
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.nonblocking().cloexec(), None)?;
        socket.connect(&SockAddr::unix(path)?)?;
        Self::from_socket(socket)
    }

    fn from_socket(socket: Socket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        Ok(Self {
            socket: register(socket)?,
        })
    }

    /// A connected pair, for tests.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
        Ok((Self::from_socket(a)?, Self::from_socket(b)?))
    }

    /// Sends one record, with `fd` as its `SCM_RIGHTS` descriptor when given.
    pub async fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        self.socket
            .async_io(Interest::WRITABLE, |socket| {
                let iov = [IoSlice::new(bytes)];
                let rights = [ControlMessage::ScmRights(&fds)];
                let control: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
                sendmsg::<()>(
                    socket.as_raw_fd(),
                    &iov,
                    control,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await
            .and_then(|sent| {
                if sent == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "record cut on send: {sent} of {} bytes",
                        bytes.len()
                    )))
                }
            })
    }

    /// Receives one record. An empty record is returned as such (the peer's end of stream).
    pub async fn recv(&self) -> io::Result<Record> {
        self.socket
            .async_io(Interest::READABLE, |socket| {
                // One byte more than the limit so an oversized record shows as truncated even
                // where the kernel would not flag it.
                let mut buf = vec![0u8; MAX_RECORD + 1];
                let mut control = nix::cmsg_space!([RawFd; CONTROL_FDS]);
                let (len, flags, raw_fds) = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let msg = recvmsg::<()>(
                        socket.as_raw_fd(),
                        &mut iov,
                        Some(&mut control),
                        MsgFlags::MSG_CMSG_CLOEXEC,
                    )
                    .map_err(io::Error::from)?;
                    let mut raw_fds = Vec::new();
                    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                        match cmsg {
                            ControlMessageOwned::ScmRights(fds) => raw_fds.extend(fds),
                            other => tracing::warn!(
                                control = ?other,
                                "ignoring a non-SCM_RIGHTS control message on the ZDS socket"
                            ),
                        }
                    }
                    (msg.bytes, msg.flags, raw_fds)
                };
                let fds = raw_fds.into_iter().map(own).collect();
                let truncated = len > MAX_RECORD
                    || flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                buf.truncate(len.min(MAX_RECORD));
                Ok(Record {
                    bytes: buf,
                    truncated,
                    fds,
                })
            })
            .await
    }
}

/// Takes ownership of a descriptor the kernel just installed in this process for us.
#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` comes from an SCM_RIGHTS message received just now: the kernel created it in
    // our table for this receive alone, nothing else holds or closes it, and it is wrapped once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Hands a socket to tokio's reactor.
#[allow(unsafe_code)]
fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: a socket2 `Socket` owns its descriptor: it stays open, and `as_raw_fd` returns the
    // same one, until the `Socket` (here moved into the `AsyncFd`) is dropped.
    unsafe { AsyncFd::register(socket) }.map_err(|err| err.into_parts().1)
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

/// The node agent's listening socket.
#[derive(Debug)]
pub struct Listener {
    socket: AsyncFd<Socket>,
}

impl Listener {
    /// Binds `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let socket = seqpacket()?;
        socket.bind(&SockAddr::unix(path)?)?;
        socket.listen(16)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: register(socket)?,
        })
    }

    /// Accepts the next connection.
    pub async fn accept(&self) -> io::Result<Connection> {
        let socket = self
            .socket
            .async_io(Interest::READABLE, |socket| socket.accept().map(|(s, _)| s))
            .await?;
        Connection::from_socket(socket)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsFd;

    use super::*;

    #[tokio::test]
    async fn a_record_and_its_descriptor_arrive_together() {
        let (a, b) = Connection::pair().unwrap();
        let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
        a.send(b"\x1a\x00", Some(netns.as_fd())).await.unwrap();
        let record = b.recv().await.unwrap();
        assert_eq!(record.bytes, b"\x1a\x00");
        assert!(!record.truncated);
        assert_eq!(record.fds.len(), 1);
        let sent = nix::sys::stat::fstat(netns.as_fd()).unwrap();
        let got = nix::sys::stat::fstat(record.fds[0].as_fd()).unwrap();
        assert_eq!((sent.st_dev, sent.st_ino), (got.st_dev, got.st_ino));
    }

    #[tokio::test]
    async fn an_oversized_record_is_reported_truncated() {
        let (a, b) = Connection::pair().unwrap();
        a.send(&vec![7u8; MAX_RECORD + 200], None).await.unwrap();
        let record = b.recv().await.unwrap();
        assert!(record.truncated);
        assert_eq!(record.bytes.len(), MAX_RECORD);
    }

    #[tokio::test]
    async fn end_of_stream_is_an_empty_record() {
        let (a, b) = Connection::pair().unwrap();
        drop(a);
        let record = b.recv().await.unwrap();
        assert!(record.bytes.is_empty());
    }
}
