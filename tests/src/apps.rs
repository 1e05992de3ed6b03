//! The applications in a test world: servers that record who called them, and clients that
//! bind their workload's address so capture sees them as that workload.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How a test server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Streams back whatever arrives, then closes its side after the client's EOF.
    Echo,
    /// Reads until the client's EOF, then answers with the byte count as text: proves the
    /// client's half-close reached the server while the reverse direction stayed open.
    ReplyAfterEof,
    /// HTTP (see [`crate::http::serve`]) when the connection starts with an HTTP request,
    /// else [`Behaviour::Echo`]: one port serves the L4 and the L7 cases.
    EchoOrHttp,
}

/// A server listening on `addr`; records the peer address of every connection it accepts.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Server {
    /// Binds `addr` and serves in the background on the current runtime.
    pub async fn start(addr: SocketAddr, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Self::serve(listener, behaviour)
    }

    /// Serves an already bound listener (e.g. one made inside a pod's namespace).
    pub fn serve(listener: TcpListener, behaviour: Behaviour) -> Self {
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer);
                tokio::spawn(serve(stream, behaviour));
            }
        });
        Self { addr, peers }
    }

    /// Peer addresses of accepted connections, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

async fn serve(stream: TcpStream, behaviour: Behaviour) {
    if behaviour == Behaviour::EchoOrHttp && starts_with_http(&stream).await {
        crate::http::serve(stream).await;
        return;
    }
    let (mut r, mut w) = stream.into_split();
    match behaviour {
        Behaviour::Echo | Behaviour::EchoOrHttp => {
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
        Behaviour::ReplyAfterEof => {
            let mut all = Vec::new();
            if r.read_to_end(&mut all).await.is_ok() {
                let _ = w
                    .write_all(format!("got {} bytes", all.len()).as_bytes())
                    .await;
            }
        }
    }
    let _ = w.shutdown().await;
}

/// Peeks until the request line's method is visible (or the client pauses, or closes).
async fn starts_with_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 16];
    for _ in 0..20 {
        let n = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if first[..n].contains(&b' ') || n == first.len() {
            return crate::http::looks_like_http(&first[..n]);
        }
        if !first[..n].iter().all(u8::is_ascii_uppercase) {
            return false;
        }
        // A method split across segments: wait for the rest.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

/// Connects to `dst` from `source` (a workload address), as that workload's application would.
pub async fn connect_from(source: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(dst).await
}

/// A deterministic payload whose every byte depends on its position and on `seed`.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 11)).to_le_bytes()[0] ^ seed)
        .collect()
}

/// FNV-1a over the bytes: a checksum to compare large transfers by.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Sends `data` over `stream`, half-closes, and returns everything that came back.
pub async fn exchange(stream: TcpStream, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back).await;
    let wrote = writer.await.map_err(std::io::Error::other)?;
    read?;
    wrote?;
    Ok(back)
}
