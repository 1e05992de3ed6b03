//! HBONE client pool. Pooled so one mTLS handshake serves many tunnels per (source identity,
//! source IP, destination address, acceptable destination identities); streams per connection
//! are capped, so a burst of opens spreads over several HTTP/2 connections instead of queueing
//! behind one peer's stream limit. One dial per key at a time: concurrent openers wait for it
//! rather than racing to open parallel connections. Connections unused for the idle timeout are
//! dropped, and close once their last tunnel ends.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::client::{ClientError, Connection};
use super::headers::Authority;
use super::{H2Settings, H2Stream};
use crate::identity::{CertStore, CertificateError, SpiffeId, StoreError};
use crate::tls::{self, TlsError, TrustBundles};

/// What a pooled connection is for. Two requests share a connection only if their keys are
/// equal, so a connection verified for one set of identities never serves another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity we present.
    pub source: SpiffeId,
    /// The address we connect from (the source workload's), when it matters.
    pub source_ip: Option<IpAddr>,
    /// Where the socket is made, as the dialer's owner tells them apart (e.g. one value per
    /// network namespace; 0 for the caller's own). Connections made in one place are never
    /// handed to a tunnel that must leave from another.
    pub origin: u64,
    /// The next hop, e.g. `10.244.1.7:15008`.
    pub destination: SocketAddr,
    /// Identities the next hop may prove; sorted and deduplicated.
    expected: Vec<SpiffeId>,
}

impl PoolKey {
    /// A key; `expected` is normalized so the same set always hashes the same.
    pub fn new(
        source: SpiffeId,
        source_ip: Option<IpAddr>,
        destination: SocketAddr,
        mut expected: Vec<SpiffeId>,
    ) -> Self {
        expected.sort();
        expected.dedup();
        Self {
            source,
            source_ip,
            origin: 0,
            destination,
            expected,
        }
    }

    /// The same key for sockets made at `origin`.
    pub fn with_origin(mut self, origin: u64) -> Self {
        self.origin = origin;
        self
    }

    /// Identities the next hop may prove.
    pub fn expected(&self) -> &[SpiffeId] {
        &self.expected
    }
}

/// What a dialer returns.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// Makes the TCP connection for a key: where sockets come from (a pod's network namespace, a
/// source address, a socket mark) is the caller's business. Given with each open, since only
/// the caller knows where its connection must leave from; the key's `origin` must say so.
pub trait Dialer: Send + Sync {
    /// Connects to `key.destination`.
    fn dial<'a>(&'a self, key: &'a PoolKey) -> DialFuture<'a>;
}

/// Pool limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Tunnels one connection carries at once before another connection is opened.
    pub max_streams_per_connection: usize,
    /// A connection not used for this long is dropped from the pool.
    pub idle_timeout: Duration,
    /// Longest a TCP connect may take.
    pub connect_timeout: Duration,
    /// HTTP/2 parameters.
    pub h2: H2Settings,
}

impl Default for PoolSettings {
    /// Upstream's: 100 streams per connection, 5 minutes idle, 10 s connect.
    fn default() -> Self {
        Self {
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            h2: H2Settings::client(),
        }
    }
}

/// Why a tunnel could not be opened. Each variant names the hop.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No certificate for the source identity.
    #[error("no certificate to present")]
    Certificate(#[source] StoreError),
    /// The certificate's roots cannot be used as trust anchors.
    #[error("trust bundle unusable")]
    TrustBundle(#[source] CertificateError),
    /// The TLS configuration could not be built.
    #[error("TLS configuration failed")]
    TlsConfig(#[source] TlsError),
    /// The connection's stream accounting was shut down (the pool is being dropped).
    #[error("HBONE pool is shutting down")]
    Closed,
    /// TCP connect failed.
    #[error("connecting to {addr} failed")]
    Dial {
        /// The next hop.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        cause: io::Error,
    },
    /// TCP connect took too long (often a NetworkPolicy dropping port 15008).
    #[error("connecting to {addr} timed out after {timeout:?}")]
    DialTimeout {
        /// The next hop.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The mTLS handshake failed.
    #[error("TLS with {addr} failed")]
    Tls {
        /// The next hop.
        addr: SocketAddr,
        /// What failed.
        #[source]
        cause: TlsError,
    },
    /// HTTP/2 or the CONNECT itself failed.
    #[error("HBONE with {addr} failed")]
    Hbone {
        /// The next hop.
        addr: SocketAddr,
        /// What failed.
        #[source]
        cause: ClientError,
    },
}

struct Pooled {
    conn: Connection,
    slots: Arc<Semaphore>,
    last_used: Instant,
}

#[derive(Default)]
struct Entry {
    conns: Vec<Pooled>,
    dialing: Arc<tokio::sync::Mutex<()>>,
}

struct Inner {
    settings: PoolSettings,
    certs: CertStore,
    // Held only for map lookups and edits, never across an await.
    entries: Mutex<HashMap<PoolKey, Entry>>,
    connections_opened: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every edit under this lock is a single push/retain/remove; the map stays usable after a
    // panic elsewhere, so serve on instead of propagating it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The HBONE connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool presenting certificates from `certs`.
    pub fn new(settings: PoolSettings, certs: CertStore) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                certs,
                entries: Mutex::new(HashMap::new()),
                connections_opened: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a tunnel to `authority` through the next hop named by `key`; `dialer` makes the
    /// TCP connection if no pooled one has room.
    pub async fn open(
        &self,
        key: &PoolKey,
        authority: &Authority,
        headers: HeaderMap,
        dialer: &dyn Dialer,
    ) -> Result<H2Stream, PoolError> {
        let (conn, slot) = self.checkout_or_dial(key, dialer).await?;
        conn.open(authority, headers, Some(slot))
            .await
            .map_err(|cause| PoolError::Hbone {
                addr: key.destination,
                cause,
            })
    }

    /// Connections currently pooled, across all keys.
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.entries)
            .values()
            .map(|e| e.conns.iter().filter(|p| !p.conn.is_closed()).count())
            .sum()
    }

    /// Connections opened since the pool was created.
    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    /// Drops connections idle past the timeout, and closed ones. Returns how many were dropped.
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let max = self.inner.settings.max_streams_per_connection;
        let idle = self.inner.settings.idle_timeout;
        let mut entries = lock(&self.inner.entries);
        let mut dropped = 0;
        for entry in entries.values_mut() {
            let before = entry.conns.len();
            entry.conns.retain(|p| {
                let unused = p.slots.available_permits() == max;
                let idle_too_long = unused && now.duration_since(p.last_used) >= idle;
                !p.conn.is_closed() && !idle_too_long
            });
            dropped += before - entry.conns.len();
        }
        // A key with no connections and no dial in progress is forgotten.
        entries.retain(|_, e| !e.conns.is_empty() || Arc::strong_count(&e.dialing) > 1);
        dropped
    }

    /// Evicts idle connections periodically until `stop` fires or the pool is dropped.
    pub fn spawn_reaper(&self, stop: CancellationToken) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = (self.inner.settings.idle_timeout / 4).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let dropped = Pool { inner }.evict_idle();
                if dropped > 0 {
                    debug!(dropped, "evicted idle HBONE connections");
                }
            }
        });
    }

    async fn checkout_or_dial(
        &self,
        key: &PoolKey,
        dialer: &dyn Dialer,
    ) -> Result<(Connection, OwnedSemaphorePermit), PoolError> {
        if let Some(found) = self.checkout(key) {
            return Ok(found);
        }
        let dialing = Arc::clone(
            &lock(&self.inner.entries)
                .entry(key.clone())
                .or_default()
                .dialing,
        );
        let _one_dial = dialing.lock().await;
        // Someone else's dial may have finished while we waited.
        if let Some(found) = self.checkout(key) {
            return Ok(found);
        }
        let conn = self.dial(key, dialer).await?;
        let slots = Arc::new(Semaphore::new(
            self.inner.settings.max_streams_per_connection.max(1),
        ));
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)?;
        lock(&self.inner.entries)
            .entry(key.clone())
            .or_default()
            .conns
            .push(Pooled {
                conn: conn.clone(),
                slots,
                last_used: Instant::now(),
            });
        Ok((conn, slot))
    }

    fn checkout(&self, key: &PoolKey) -> Option<(Connection, OwnedSemaphorePermit)> {
        let mut entries = lock(&self.inner.entries);
        let entry = entries.get_mut(key)?;
        entry.conns.retain(|p| !p.conn.is_closed());
        entry.conns.iter_mut().find_map(|pooled| {
            let slot = Arc::clone(&pooled.slots).try_acquire_owned().ok()?;
            pooled.last_used = Instant::now();
            Some((pooled.conn.clone(), slot))
        })
    }

    async fn dial(&self, key: &PoolKey, dialer: &dyn Dialer) -> Result<Connection, PoolError> {
        let addr = key.destination;
        let cert = self
            .inner
            .certs
            .get(&key.source)
            .await
            .map_err(PoolError::Certificate)?;
        let bundles = TrustBundles::single(cert.identity().trust_domain().clone(), cert.roots())
            .map_err(PoolError::TrustBundle)?;
        let config = tls::client_config(&cert, Arc::new(bundles), key.expected.clone())
            .map_err(PoolError::TlsConfig)?;
        let timeout = self.inner.settings.connect_timeout;
        let tcp = tokio::time::timeout(timeout, dialer.dial(key))
            .await
            .map_err(|_| PoolError::DialTimeout { addr, timeout })?
            .map_err(|cause| PoolError::Dial { addr, cause })?;
        // Small writes (handshakes, interactive traffic) must not wait for Nagle.
        tcp.set_nodelay(true)
            .map_err(|cause| PoolError::Dial { addr, cause })?;
        let (tls, _peer) = tls::connect(config, addr.ip(), tcp)
            .await
            .map_err(|cause| PoolError::Tls { addr, cause })?;
        let conn = Connection::handshake(tls, self.inner.settings.h2)
            .await
            .map_err(|cause| PoolError::Hbone { addr, cause })?;
        self.inner
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        debug!(%addr, source = %key.source, "opened HBONE connection");
        Ok(conn)
    }
}
