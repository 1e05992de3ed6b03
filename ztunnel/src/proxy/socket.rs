//! The socket options the data path depends on: reading where a redirected connection was
//! going, marking our own sockets so capture rules let them pass, connecting to an application
//! from the client's address so it sees who really called, and making every socket of an
//! enrolled pod inside that pod's network namespace.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::capture::netns::{HostNetns, PodNetns};

/// Mark on every socket ztunnel opens; capture rules skip marked packets so our own upstream
/// connections are never redirected back to us (upstream's value, `PACKET_MARK`).
pub const SOCKET_MARK: u32 = 0x539;

/// Listen backlog of in-pod listeners (upstream's).
const POD_BACKLOG: u32 = 128;

/// Where the client meant to go: the pre-NAT destination of an iptables REDIRECT
/// (`SO_ORIGINAL_DST`), or the local address when the connection arrived unmodified (TPROXY, or
/// a listener bound on the destination itself).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let sock = SockRef::from(stream);
    // IPv4 first even on an IPv6 socket: a dual-stack listener's IPv4 connections have an IPv4
    // conntrack entry, which only the IPv4 option reads.
    let redirected = sock
        .original_dst_v4()
        .or_else(|_| sock.original_dst_v6())
        .ok()
        .and_then(|addr| addr.as_socket());
    match redirected {
        Some(original) => Ok(unmapped(original)),
        // No NAT entry: the destination is the address we were reached on.
        None => Ok(unmapped(local)),
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so addresses compare equal to the ones in the config.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Makes the socket's close a reset (RST) rather than a FIN, so the application on that side
/// sees its connection cut, not finished. Best effort: the close happens either way.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// How an upstream socket is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSocket {
    /// Apply [`SOCKET_MARK`].
    pub mark: bool,
    /// Connect from this address. When it is not an address of this host, the socket is made
    /// transparent (`IP_TRANSPARENT` + freebind), which needs `CAP_NET_ADMIN`.
    pub source: Option<IpAddr>,
}

/// Where sockets are made: ztunnel's own network namespace, or an enrolled pod's.
#[derive(Debug, Clone)]
pub enum Origin {
    /// ztunnel's own namespace (dedicated mode: workloads are told apart by address).
    Host,
    /// Inside one pod's namespace (in-pod mode).
    Pod(Arc<PodSockets>),
}

/// A pod's namespace and the way back from it.
#[derive(Debug)]
pub struct PodSockets {
    netns: PodNetns,
    host: Arc<HostNetns>,
}

impl PodSockets {
    /// Sockets for the pod whose namespace is `netns`.
    pub fn new(netns: PodNetns, host: Arc<HostNetns>) -> Self {
        Self { netns, host }
    }

    /// The pod's namespace.
    pub fn netns(&self) -> &PodNetns {
        &self.netns
    }
}

impl Origin {
    /// Tells origins apart in the HBONE pool key: connections from one pod's namespace are
    /// never reused by another (nor by a recreated sandbox of the same pod).
    pub fn pool_origin(&self) -> u64 {
        match self {
            Self::Host => 0,
            Self::Pod(pod) => pod.netns.id().ino,
        }
    }

    fn socket(&self, domain: Domain) -> io::Result<Socket> {
        let make = || {
            Socket::new(
                domain,
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )
        };
        match self {
            Self::Host => make(),
            Self::Pod(pod) => pod.netns.run(&pod.host, make).map_err(io::Error::other)?,
        }
    }

    /// A listener on `addr` (marked when in a pod), with `SO_REUSEPORT` when `reuse_port` (so a new ztunnel
    /// can bind beside a draining one during an upgrade). In a pod's namespace the bind happens
    /// inside it, so a wildcard address means the pod's addresses.
    pub fn listen(&self, addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let in_pod = matches!(self, Self::Pod(_));
        let bind = |socket: &Socket| -> io::Result<()> {
            socket.set_reuse_address(true)?;
            if reuse_port {
                socket.set_reuse_port(true)?;
            }
            if in_pod {
                // Accepted sockets inherit it, so connections to the app pass the capture rules.
                socket.set_mark(SOCKET_MARK)?;
            }
            if addr.is_ipv6() {
                // Dual-stack: one `[::]` listener takes the pod's IPv4 connections too.
                socket.set_only_v6(false)?;
            }
            socket.bind(&addr.into())?;
            socket.listen(POD_BACKLOG as i32)
        };
        let domain = Domain::for_address(addr);
        let socket = match self {
            Self::Host => {
                let socket = self.socket(domain)?;
                bind(&socket)?;
                socket
            }
            Self::Pod(pod) => pod
                .netns
                .run(&pod.host, || {
                    let socket = Socket::new(
                        domain,
                        Type::STREAM.nonblocking().cloexec(),
                        Some(Protocol::TCP),
                    )?;
                    bind(&socket)?;
                    Ok::<_, io::Error>(socket)
                })
                .map_err(io::Error::other)??,
        };
        TcpListener::from_std(socket.into())
    }
}

/// Connects to `dst` as `how` says, with a socket made at `origin`.
pub async fn connect(
    dst: SocketAddr,
    how: UpstreamSocket,
    origin: &Origin,
) -> io::Result<TcpStream> {
    let socket = origin.socket(Domain::for_address(dst))?;
    if how.mark {
        socket.set_mark(SOCKET_MARK)?;
    }
    if let Some(source) = how.source {
        match source {
            IpAddr::V4(_) => {
                socket.set_ip_transparent_v4(true)?;
                socket.set_freebind_v4(true)?;
            }
            IpAddr::V6(_) => {
                socket.set_ip_transparent_v6(true)?;
                socket.set_freebind_v6(true)?;
            }
        }
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Dials HBONE next hops as the source workload, marked: in dedicated mode from the workload's
/// address, in in-pod mode from inside the pod (where its own address is the natural source).
impl mesh::hbone::pool::Dialer for Origin {
    fn dial<'a>(
        &'a self,
        key: &'a mesh::hbone::pool::PoolKey,
    ) -> mesh::hbone::pool::DialFuture<'a> {
        let source = match self {
            Self::Host => key.source_ip,
            Self::Pod(_) => None,
        };
        Box::pin(connect(
            key.destination,
            UpstreamSocket { mark: true, source },
            self,
        ))
    }
}
