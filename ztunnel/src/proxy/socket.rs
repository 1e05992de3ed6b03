//! The socket options the data path depends on: reading where a redirected connection was
//! going, marking our own sockets so capture rules let them pass, and connecting to an
//! application from the client's address so it sees who really called.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

/// Mark on every socket ztunnel opens; capture rules skip marked packets so our own upstream
/// connections are never redirected back to us (upstream's value, `PACKET_MARK`).
pub const SOCKET_MARK: u32 = 0x539;

/// Where the client meant to go: the pre-NAT destination of an iptables REDIRECT
/// (`SO_ORIGINAL_DST`), or the local address when the connection arrived unmodified (TPROXY, or
/// a listener bound on the destination itself).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let sock = SockRef::from(stream);
    let redirected = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    match redirected.ok().and_then(|addr| addr.as_socket()) {
        Some(original) => Ok(original),
        // No NAT entry: the destination is the address we were reached on.
        None => Ok(local),
    }
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

/// Connects to `dst` as `how` says.
pub async fn connect(dst: SocketAddr, how: UpstreamSocket) -> io::Result<TcpStream> {
    let socket = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    {
        let sock = SockRef::from(&socket);
        if how.mark {
            sock.set_mark(SOCKET_MARK)?;
        }
        if let Some(source) = how.source {
            match source {
                IpAddr::V4(_) => {
                    sock.set_ip_transparent_v4(true)?;
                    sock.set_freebind_v4(true)?;
                }
                IpAddr::V6(_) => {
                    sock.set_ip_transparent_v6(true)?;
                    sock.set_freebind_v6(true)?;
                }
            }
        }
    }
    if let Some(source) = how.source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Dials HBONE next hops as the source workload: marked, from the workload's address.
pub struct WorkloadDialer;

impl mesh::hbone::pool::Dialer for WorkloadDialer {
    fn dial<'a>(
        &'a self,
        key: &'a mesh::hbone::pool::PoolKey,
    ) -> mesh::hbone::pool::DialFuture<'a> {
        Box::pin(connect(
            key.destination,
            UpstreamSocket {
                mark: true,
                source: key.source_ip,
            },
        ))
    }
}
