//! The load generators, one code path for every path measured (direct, ours, upstream): only
//! the client's source address differs, and with it whether capture sends the traffic through
//! the agent.
//!
//! Every measurement runs for a fixed time: a warm-up (pools filled, windows grown, caches warm)
//! then a measured window. Rates are counted at the receiver or on completion, between two
//! samples taken at the window's edges; each generator as a whole is bounded by a timeout.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::topology::{ECHO_PORT, SINK_PORT, at};

/// Write size of the throughput client.
const WRITE_CHUNK: usize = 128 * 1024;
/// Slack beyond warm-up and window before a generator counts as hung.
const HANG_SLACK: Duration = Duration::from_secs(15);
/// Bound on one probe round trip (the first one through an agent makes its HBONE connection).
const PROBE_WITHIN: Duration = Duration::from_secs(10);
/// Most latency samples kept (a few seconds at the fastest observed rates).
const MAX_SAMPLES: usize = 2_000_000;

/// Why a generator failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// A socket operation failed.
    #[error("{what} {source_ip} -> {dst} failed")]
    Io {
        /// The step.
        what: &'static str,
        /// The client address.
        source_ip: Ipv4Addr,
        /// The server address.
        dst: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The server closed where a reply was expected.
    #[error("{source_ip} -> {dst}: connection closed before the reply")]
    NoReply {
        /// The client address.
        source_ip: Ipv4Addr,
        /// The server address.
        dst: SocketAddr,
    },
    /// A generator did not finish in time.
    #[error("{what} did not finish within {limit:?}")]
    Hung {
        /// The generator.
        what: &'static str,
        /// Its bound.
        limit: Duration,
    },
    /// The measured window saw no traffic at all.
    #[error("{what}: nothing completed in the measured window")]
    Nothing {
        /// The generator.
        what: &'static str,
    },
}

/// Where the load goes: from `source` to the server workload at `server`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    /// The client's address (captured or not).
    pub(crate) source: Ipv4Addr,
    /// The server workload's address.
    pub(crate) server: Ipv4Addr,
}

/// A warm-up followed by a measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Not counted.
    pub(crate) warmup: Duration,
    /// Counted.
    pub(crate) measure: Duration,
}

impl Window {
    fn limit(self) -> Duration {
        self.warmup + self.measure + HANG_SLACK
    }
}

/// A counted quantity over a measured window, with caller snapshots (e.g. agent CPU time)
/// taken at the window's edges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted<S> {
    /// What was counted in the window (bytes, connections).
    pub(crate) count: u64,
    /// The window's actual length.
    pub(crate) elapsed: Duration,
    /// Snapshot at the window's start.
    pub(crate) start: S,
    /// Snapshot at the window's end.
    pub(crate) end: S,
}

/// Latency percentiles of request/response round trips, in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Latency {
    /// Round trips measured.
    pub(crate) samples: usize,
    /// Median.
    pub(crate) p50_us: f64,
    /// 90th percentile.
    pub(crate) p90_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
}

/// One echo round trip on a new connection: proves the path carries bytes before measuring.
pub(crate) async fn probe(target: Target) -> Result<(), LoadError> {
    timeout(PROBE_WITHIN, one_connection(target))
        .await
        .map_err(|_| LoadError::Hung {
            what: "the probe round trip",
            limit: PROBE_WITHIN,
        })?
}

/// Single-stream throughput: one connection, the client writing as fast as it can to the sink;
/// `received` reads the sink's byte counter (the receiver's view).
pub(crate) async fn throughput<S>(
    target: Target,
    window: Window,
    received: impl Fn() -> u64,
    snapshot: impl FnMut() -> S,
) -> Result<Counted<S>, LoadError> {
    let what = "the throughput stream";
    let dst = at(target.server, SINK_PORT);
    let bounded = timeout(window.limit(), async {
        let mut stream = connect(target.source, dst).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let writing = Arc::clone(&stop);
        let writer = tokio::spawn(async move {
            let chunk = vec![0x5a_u8; WRITE_CHUNK];
            while !writing.load(Ordering::Relaxed) {
                stream.write_all(&chunk).await?;
            }
            Ok::<_, io::Error>(())
        });
        let counted = measure_window(window, received, snapshot).await;
        stop.store(true, Ordering::Relaxed);
        writer
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|source| io_error("write", target, dst, source))?;
        Ok(counted)
    });
    let counted = bounded.await.map_err(|_| LoadError::Hung {
        what,
        limit: window.limit(),
    })??;
    nonzero(counted, what)
}

/// Request/response latency: 1-byte ping-pong over one kept-alive connection to the echo.
pub(crate) async fn latency(target: Target, window: Window) -> Result<Latency, LoadError> {
    let what = "the request/response loop";
    let dst = at(target.server, ECHO_PORT);
    let bounded = timeout(window.limit(), async {
        let mut stream = connect(target.source, dst).await?;
        let warm_until = Instant::now() + window.warmup;
        while Instant::now() < warm_until {
            round_trip(&mut stream, target, dst).await?;
        }
        let end = Instant::now() + window.measure;
        let mut samples = Vec::new();
        while samples.len() < MAX_SAMPLES {
            let started = Instant::now();
            if started >= end {
                break;
            }
            round_trip(&mut stream, target, dst).await?;
            samples.push(started.elapsed());
        }
        Ok(samples)
    });
    let mut samples = bounded.await.map_err(|_| LoadError::Hung {
        what,
        limit: window.limit(),
    })??;
    samples.sort_unstable();
    let (Some(p50), Some(p90), Some(p99)) = (
        percentile(&samples, 50),
        percentile(&samples, 90),
        percentile(&samples, 99),
    ) else {
        return Err(LoadError::Nothing { what });
    };
    Ok(Latency {
        samples: samples.len(),
        p50_us: micros(p50),
        p90_us: micros(p90),
        p99_us: micros(p99),
    })
}

/// New connections per second: `concurrency` loops of connect, 1-byte request, 1-byte
/// response, close. Counts completed connections; any failure ends the measurement.
pub(crate) async fn connection_rate<S>(
    target: Target,
    window: Window,
    concurrency: usize,
    snapshot: impl FnMut() -> S,
) -> Result<Counted<S>, LoadError> {
    let what = "the connection loop";
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bounded = timeout(window.limit(), async {
        let loops: Vec<_> = (0..concurrency)
            .map(|_| {
                let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        one_connection(target).await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, LoadError>(())
                })
            })
            .collect();
        let counted = measure_window(window, || done.load(Ordering::Relaxed), snapshot).await;
        stop.store(true, Ordering::Relaxed);
        for finished in loops {
            finished.await.map_err(|e| LoadError::Io {
                what: "join",
                source_ip: target.source,
                dst: at(target.server, ECHO_PORT),
                source: io::Error::other(e),
            })??;
        }
        Ok(counted)
    });
    let counted = bounded.await.map_err(|_| LoadError::Hung {
        what,
        limit: window.limit(),
    })??;
    nonzero(counted, what)
}

/// Sleeps through the warm-up, then samples `count` and `snapshot` at both edges of the window.
async fn measure_window<S>(
    window: Window,
    count: impl Fn() -> u64,
    mut snapshot: impl FnMut() -> S,
) -> Counted<S> {
    tokio::time::sleep(window.warmup).await;
    let (count_start, started, start) = (count(), Instant::now(), snapshot());
    tokio::time::sleep(window.measure).await;
    let (count_end, elapsed, end) = (count(), started.elapsed(), snapshot());
    Counted {
        count: count_end.saturating_sub(count_start),
        elapsed,
        start,
        end,
    }
}

async fn one_connection(target: Target) -> Result<(), LoadError> {
    let dst = at(target.server, ECHO_PORT);
    let mut stream = connect(target.source, dst).await?;
    round_trip(&mut stream, target, dst).await
}

async fn round_trip(
    stream: &mut TcpStream,
    target: Target,
    dst: SocketAddr,
) -> Result<(), LoadError> {
    stream
        .write_all(b"x")
        .await
        .map_err(|e| io_error("write", target, dst, e))?;
    let mut reply = [0u8; 1];
    match stream.read(&mut reply).await {
        Ok(1) => Ok(()),
        Ok(_) => Err(LoadError::NoReply {
            source_ip: target.source,
            dst,
        }),
        Err(e) => Err(io_error("read", target, dst, e)),
    }
}

/// Connects from `source` (port chosen at connect time: `IP_BIND_ADDRESS_NO_PORT`, so the
/// connection loop is not limited by bind-time port reservation while ports sit in TIME_WAIT).
pub(crate) async fn connect(source: Ipv4Addr, dst: SocketAddr) -> Result<TcpStream, LoadError> {
    let fail = |what, source_err| LoadError::Io {
        what,
        source_ip: source,
        dst,
        source: source_err,
    };
    let socket = TcpSocket::new_v4().map_err(|e| fail("socket", e))?;
    setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)
        .map_err(|e| fail("IP_BIND_ADDRESS_NO_PORT", io::Error::from(e)))?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| fail("bind", e))?;
    let stream = socket.connect(dst).await.map_err(|e| fail("connect", e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| fail("TCP_NODELAY", e))?;
    Ok(stream)
}

fn io_error(what: &'static str, target: Target, dst: SocketAddr, source: io::Error) -> LoadError {
    LoadError::Io {
        what,
        source_ip: target.source,
        dst,
        source,
    }
}

fn nonzero<S>(counted: Counted<S>, what: &'static str) -> Result<Counted<S>, LoadError> {
    if counted.count == 0 {
        return Err(LoadError::Nothing { what });
    }
    Ok(counted)
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], pct: usize) -> Option<Duration> {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=200).map(Duration::from_micros).collect();
        for (pct, want) in [(50, 100), (90, 180), (99, 198), (100, 200)] {
            assert_eq!(
                percentile(&samples, pct),
                Some(Duration::from_micros(want)),
                "p{pct}"
            );
        }
        assert_eq!(
            percentile(&[Duration::from_micros(7)], 99),
            Some(Duration::from_micros(7))
        );
        assert_eq!(percentile(&[], 50), None);
    }
}
