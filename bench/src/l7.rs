//! The HTTP phases: kept-alive HTTP/1.1 request/response from the client workload to the HTTP
//! application, over three paths measured side by side in one run —
//!
//! - `direct`: the uncaptured client straight to the application;
//! - `ztunnel`: the mesh client to the application's pod address: capture, our ztunnel,
//!   HBONE to its inbound;
//! - `waypoint`: the mesh client to the service VIP: our ztunnel tunnels to the waypoint, which
//!   authorizes and forwards the request over HBONE to the application's ztunnel.
//!
//! Each path in its own private namespace; requests per second and round-trip percentiles over
//! `concurrency` kept-alive connections, and the CPU and peak memory of ztunnel and the
//! waypoint over the window, per 1000 requests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::timeout;

use crate::agent::{Agent, AgentError, Flavour};
use crate::l7_procs::{ControlPlane, ProcsError, start_waypoint};
use crate::load::{Latency, LoadError, connect, micros, percentile};
use crate::measure::Settings;
use crate::netns::{NetnsError, in_private_netns};
use crate::procstat::{Proc, ProcError};
use crate::server::{Server, ServerError};
use crate::topology::{self, DIRECT_CLIENT, HTTP_PORT, HTTP_VIP, MESH_CLIENT, SERVER, at};

/// Slack beyond warm-up and window before the load counts as hung.
const HANG_SLACK: Duration = Duration::from_secs(15);
/// Most latency samples kept per connection.
const MAX_SAMPLES: usize = 1_000_000;

/// The binaries of the mesh paths.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    /// Our ztunnel.
    pub(crate) ztunnel: PathBuf,
    /// The waypoint.
    pub(crate) waypoint: PathBuf,
    /// The control plane (the waypoint's CA and xDS).
    pub(crate) controlplane: PathBuf,
}

/// An HTTP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L7Path {
    /// No proxy.
    Direct,
    /// Our ztunnel only.
    Ztunnel,
    /// Our ztunnel and the waypoint.
    Waypoint,
}

impl L7Path {
    /// Column name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Ztunnel => "ztunnel",
            Self::Waypoint => "waypoint",
        }
    }
}

/// One process's cost over the measured window.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct ProcessUse {
    /// CPU seconds (user + system) per 1000 requests.
    pub(crate) cpu_s_per_1000_requests: f64,
    /// CPU used over the window, as a share of one core.
    pub(crate) cores: f64,
    /// Highest resident set over the HTTP phase, MiB.
    pub(crate) rss_peak_mib: f64,
}

/// What one HTTP path achieved.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct L7Result {
    /// Completed requests per second.
    pub(crate) requests_per_s: f64,
    /// Requests completed in the window.
    pub(crate) requests: u64,
    /// Request round trips.
    pub(crate) latency: Latency,
    /// Our ztunnel's cost (mesh paths).
    pub(crate) ztunnel: Option<ProcessUse>,
    /// The waypoint's cost (waypoint path).
    pub(crate) waypoint: Option<ProcessUse>,
}

/// Why an HTTP path could not be measured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum L7Error {
    /// The namespace could not be made.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The application did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// ztunnel did not start.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The control plane or the waypoint did not start.
    #[error(transparent)]
    Procs(#[from] ProcsError),
    /// The client runtime could not be built.
    #[error("cannot build the client runtime")]
    Runtime(#[source] std::io::Error),
    /// A connection failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A request failed.
    #[error("request to {dst} failed: {reason}")]
    Request {
        /// Where.
        dst: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The load did not finish in time.
    #[error("the HTTP load did not finish within {0:?}")]
    Hung(Duration),
    /// A `/proc` figure could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
}

/// Measures `path` in a fresh private namespace.
pub(crate) fn measure_l7(
    path: L7Path,
    binaries: &Binaries,
    settings: Settings,
) -> Result<L7Result, L7Error> {
    let name = format!("meshbench-http-{}", path.name());
    let binaries = binaries.clone();
    in_private_netns(&name.clone(), move || run(&name, path, &binaries, settings))
}

fn run(
    name: &str,
    path: L7Path,
    binaries: &Binaries,
    settings: Settings,
) -> Result<L7Result, L7Error> {
    let world = topology::install_http(name, path == L7Path::Waypoint);
    let config = world.write();
    let dir = config
        .parent()
        .unwrap_or(std::path::Path::new("/tmp"))
        .to_owned();
    let _server = Server::start(SERVER)?;
    // The waypoint's CA is the control plane's; ztunnel signs with the same root.
    let control_plane = match path {
        L7Path::Waypoint => Some(ControlPlane::start(&binaries.controlplane, &dir)?),
        _ => None,
    };
    let ztunnel = match path {
        L7Path::Direct => None,
        _ => {
            let signer = control_plane.as_ref().map(ControlPlane::signer);
            Some(Agent::start_with(
                Flavour::Ours,
                &binaries.ztunnel,
                &config,
                &dir,
                signer.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )?)
        }
    };
    let waypoint = match &control_plane {
        Some(cp) => Some(start_waypoint(&binaries.waypoint, cp, &dir)?),
        None => None,
    };
    let (source, dst) = match path {
        L7Path::Direct => (DIRECT_CLIENT, at(SERVER, HTTP_PORT)),
        L7Path::Ztunnel => (MESH_CLIENT, at(SERVER, HTTP_PORT)),
        L7Path::Waypoint => (MESH_CLIENT, at(HTTP_VIP, 80)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(L7Error::Runtime)?;
    let procs: Vec<Proc> = [
        ztunnel.as_ref().map(Agent::pid),
        waypoint.as_ref().map(|w| w.pid()),
    ]
    .into_iter()
    .flatten()
    .map(Proc::new)
    .collect();
    for p in &procs {
        p.reset_peak_rss()?;
    }
    let cpu = || -> Vec<f64> {
        procs
            .iter()
            .map(|p| p.cpu_seconds().unwrap_or(0.0))
            .collect()
    };
    let load = runtime.block_on(http_load(source, dst, settings, cpu));
    let load = match load {
        Ok(load) => load,
        Err(e) => {
            if let Some(w) = &waypoint {
                eprintln!("meshbench: the waypoint's log ends:\n{}", w.log_tail());
            }
            if let Some(cp) = &control_plane {
                eprintln!(
                    "meshbench: the control plane's log ends:\n{}",
                    cp.log_tail()
                );
            }
            if let Some(z) = &ztunnel {
                eprintln!("meshbench: ztunnel's log ends:\n{}", z.log_tail());
            }
            return Err(e);
        }
    };
    let seconds = load.elapsed.as_secs_f64();
    let cost = |index: usize| -> Result<ProcessUse, L7Error> {
        let used = load.cpu_end[index] - load.cpu_start[index];
        Ok(ProcessUse {
            cpu_s_per_1000_requests: used / (load.requests as f64 / 1000.0),
            cores: used / seconds,
            rss_peak_mib: procs[index].peak_rss_kib()? as f64 / 1024.0,
        })
    };
    Ok(L7Result {
        requests_per_s: load.requests as f64 / seconds,
        requests: load.requests,
        latency: load.latency,
        ztunnel: ztunnel.is_some().then(|| cost(0)).transpose()?,
        waypoint: waypoint.is_some().then(|| cost(1)).transpose()?,
    })
}

struct Load {
    requests: u64,
    elapsed: Duration,
    latency: Latency,
    cpu_start: Vec<f64>,
    cpu_end: Vec<f64>,
}

/// `settings.concurrency` connections, each sending GET after GET for warm-up plus window;
/// only requests completed inside the window count.
async fn http_load(
    source: std::net::Ipv4Addr,
    dst: SocketAddr,
    settings: Settings,
    cpu: impl Fn() -> Vec<f64>,
) -> Result<Load, L7Error> {
    let warmup = Duration::from_secs_f64(settings.warmup_s);
    let window = Duration::from_secs_f64(settings.window_s);
    let limit = warmup + window + HANG_SLACK;
    let started = Instant::now();
    let (window_start, window_end) = (started + warmup, started + warmup + window);
    let stop = Arc::new(AtomicBool::new(false));
    let bounded = timeout(limit, async {
        let mut loops = Vec::new();
        for _ in 0..settings.concurrency {
            let stream = connect(source, dst).await?;
            let stop = Arc::clone(&stop);
            loops.push(tokio::spawn(one_connection(
                stream,
                dst,
                window_start,
                window_end,
                stop,
            )));
        }
        tokio::time::sleep_until(window_start.into()).await;
        let cpu_start = cpu();
        tokio::time::sleep_until(window_end.into()).await;
        let cpu_end = cpu();
        stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for handle in loops {
            let done = handle.await.map_err(|e| L7Error::Request {
                dst,
                reason: e.to_string(),
            })??;
            samples.extend(done);
        }
        Ok::<_, L7Error>((samples, cpu_start, cpu_end))
    })
    .await
    .map_err(|_| L7Error::Hung(limit))?;
    let (mut samples, cpu_start, cpu_end) = bounded?;
    samples.sort();
    let pct = |p| percentile(&samples, p).map_or(0.0, micros);
    Ok(Load {
        requests: samples.len() as u64,
        elapsed: window,
        latency: Latency {
            samples: samples.len(),
            p50_us: pct(50),
            p90_us: pct(90),
            p99_us: pct(99),
        },
        cpu_start,
        cpu_end,
    })
}

/// Requests on one kept-alive connection; the round trips that ended inside the window.
async fn one_connection(
    stream: tokio::net::TcpStream,
    dst: SocketAddr,
    window_start: Instant,
    window_end: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Duration>, L7Error> {
    let fail = |reason: String| L7Error::Request { dst, reason };
    let (mut send, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| fail(format!("handshake: {e}")))?;
    tokio::spawn(conn);
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let request = http::Request::get("/")
            .header(http::header::HOST, "http.bench.svc.cluster.local")
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let sent = Instant::now();
        let response = send
            .send_request(request)
            .await
            .map_err(|e| fail(format!("send: {e}")))?;
        if response.status() != http::StatusCode::OK {
            return Err(fail(format!("status {}", response.status())));
        }
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(format!("body: {e}")))?;
        let done = Instant::now();
        if done >= window_start && done <= window_end && samples.len() < MAX_SAMPLES {
            samples.push(done - sent);
        }
    }
    Ok(samples)
}
