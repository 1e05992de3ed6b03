//! One path measured end to end, inside its own private namespace: topology, server, agent (for
//! a mesh path), then the phases in order — idle memory, throughput (with agent CPU), latency,
//! connection rate (with agent CPU), peak memory. The namespace and everything in it is gone
//! when [`measure`] returns.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{Agent, AgentError, Flavour};
use crate::load::{self, Latency, LoadError, Target, Window};
use crate::netns::{NetnsError, in_private_netns};
use crate::procstat::{Proc, ProcError};
use crate::server::{Server, ServerError};
use crate::topology::{self, DIRECT_CLIENT, MESH_CLIENT, SERVER};

/// Quiet time after the agent is up before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Bytes in a GB (decimal, as in Gbit/s).
const GB: f64 = 1e9;

/// The path under measurement.
#[derive(Debug, Clone)]
pub(crate) enum Path {
    /// Plain loopback TCP, no agent involved.
    Direct,
    /// Through an agent: captured client, HBONE, server.
    Mesh {
        /// Which agent.
        flavour: Flavour,
        /// Its binary.
        binary: PathBuf,
    },
}

impl Path {
    /// Column name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Mesh { flavour, .. } => flavour.name(),
        }
    }
}

/// How long and how hard to measure.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Settings {
    /// Measured window of each phase, seconds.
    pub(crate) window_s: f64,
    /// Warm-up before each window, seconds.
    pub(crate) warmup_s: f64,
    /// Concurrent loops of the connection-rate phase.
    pub(crate) concurrency: usize,
    /// Rounds over all paths; each metric reported is its median round.
    pub(crate) rounds: usize,
}

impl Settings {
    fn window(self) -> Window {
        Window {
            warmup: Duration::from_secs_f64(self.warmup_s),
            measure: Duration::from_secs_f64(self.window_s),
        }
    }
}

/// Why a path could not be measured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MeasureError {
    /// The namespace could not be made.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The server applications did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The agent did not start.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The client runtime could not be built.
    #[error("cannot build the client runtime")]
    Runtime(#[source] std::io::Error),
    /// A load phase failed.
    #[error("load phase failed")]
    Load {
        /// The failure.
        #[source]
        source: LoadError,
        /// The end of the agent's log, when there is an agent.
        agent_log: Option<String>,
    },
    /// An accounting figure could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
}

/// What one path achieved.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PathResult {
    /// Single-stream throughput at the receiver, Gbit/s.
    pub(crate) throughput_gbit_s: f64,
    /// Bytes received in the throughput window.
    pub(crate) throughput_bytes: u64,
    /// Request/response latency over one kept-alive connection.
    pub(crate) latency: Latency,
    /// New connections completed per second.
    pub(crate) connections_per_s: f64,
    /// Connections completed in the window.
    pub(crate) connections: u64,
    /// The agent's resource use (mesh paths only).
    pub(crate) agent: Option<AgentUse>,
}

/// The agent's memory and CPU.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct AgentUse {
    /// Resident set after start, before any traffic, MiB.
    pub(crate) rss_idle_mib: f64,
    /// Highest resident set during the load phases, MiB.
    pub(crate) rss_peak_mib: f64,
    /// CPU seconds (user + system, all threads) per GB carried in the throughput phase.
    pub(crate) cpu_s_per_gb: f64,
    /// CPU milliseconds per connection in the connection-rate phase.
    pub(crate) cpu_ms_per_connection: f64,
}

impl From<LoadError> for MeasureError {
    fn from(source: LoadError) -> Self {
        Self::Load {
            source,
            agent_log: None,
        }
    }
}

impl MeasureError {
    /// The end of the agent's log, when a load phase failed through an agent.
    pub(crate) fn agent_log(&self) -> Option<&str> {
        match self {
            Self::Load { agent_log, .. } => agent_log.as_deref(),
            Self::Netns(_)
            | Self::Server(_)
            | Self::Agent(_)
            | Self::Runtime(_)
            | Self::Proc(_) => None,
        }
    }
}

/// Measures `path` in a fresh private namespace.
pub(crate) fn measure(path: Path, settings: Settings) -> Result<PathResult, MeasureError> {
    let name = format!("meshbench-{}", path.name());
    in_private_netns(&name.clone(), move || run_phases(&name, &path, settings))
}

fn run_phases(name: &str, path: &Path, settings: Settings) -> Result<PathResult, MeasureError> {
    let world = topology::install(name);
    let config = world.write();
    let server = Server::start(SERVER)?;
    let agent = match path {
        Path::Direct => None,
        Path::Mesh { flavour, binary } => {
            let log_dir = config.parent().unwrap_or(std::path::Path::new("/tmp"));
            Some(Agent::start(*flavour, binary, &config, log_dir)?)
        }
    };
    let target = Target {
        source: if agent.is_some() {
            MESH_CLIENT
        } else {
            DIRECT_CLIENT
        },
        server: SERVER,
    };
    // The agent's log usually says why a phase failed; it goes away with the namespace.
    drive(target, &server, agent.as_ref(), settings).map_err(|e| match (e, &agent) {
        (MeasureError::Load { source, .. }, Some(agent)) => MeasureError::Load {
            source,
            agent_log: Some(agent.log_tail()),
        },
        (e, _) => e,
    })
}

/// The phases, in order, with the agent's memory and CPU read around them.
fn drive(
    target: Target,
    server: &Server,
    agent: Option<&Agent>,
    settings: Settings,
) -> Result<PathResult, MeasureError> {
    let proc = agent.map(|a| Proc::new(a.pid()));
    let cpu = || proc.map(Proc::cpu_seconds).transpose();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MeasureError::Runtime)?;

    std::thread::sleep(SETTLE);
    let rss_idle = proc.map(Proc::rss_kib).transpose()?;
    runtime.block_on(load::probe(target))?;
    if let Some(p) = proc {
        p.reset_peak_rss()?;
    }
    let window = settings.window();
    let stream = runtime.block_on(load::throughput(target, window, || server.received(), cpu))?;
    let latency = runtime.block_on(load::latency(target, window))?;
    let connections = runtime.block_on(load::connection_rate(
        target,
        window,
        settings.concurrency,
        cpu,
    ))?;
    let rss_peak = proc.map(Proc::peak_rss_kib).transpose()?;

    let agent_use = match (rss_idle, rss_peak) {
        (Some(idle), Some(peak)) => Some(AgentUse {
            rss_idle_mib: kib_to_mib(idle),
            rss_peak_mib: kib_to_mib(peak),
            cpu_s_per_gb: cpu_delta(stream.start, stream.end)? / (stream.count as f64 / GB),
            cpu_ms_per_connection: cpu_delta(connections.start, connections.end)? * 1e3
                / connections.count as f64,
        }),
        _ => None,
    };
    Ok(PathResult {
        throughput_gbit_s: stream.count as f64 * 8.0 / stream.elapsed.as_secs_f64() / GB,
        throughput_bytes: stream.count,
        latency,
        connections_per_s: connections.count as f64 / connections.elapsed.as_secs_f64(),
        connections: connections.count,
        agent: agent_use,
    })
}

/// CPU seconds between two snapshots; both exist whenever an agent does.
fn cpu_delta(
    start: Result<Option<f64>, ProcError>,
    end: Result<Option<f64>, ProcError>,
) -> Result<f64, ProcError> {
    Ok(end?.unwrap_or_default() - start?.unwrap_or_default())
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
