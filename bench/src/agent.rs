//! The ztunnel under measurement, as a child process of the namespace thread (so it lives in
//! that namespace). Its logs go to a file rather than through this process, so reading them
//! costs the benchmark nothing; both agents run at their default log level (info: one access
//! log line per connection). Killed when dropped.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::topology::{CLIENT_NAME, HBONE_PORT, NAMESPACE, OUTBOUND_PORT, SERVICE_ACCOUNT};

/// How long an agent may take to have its listeners up.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Pause between two looks at the socket table while waiting for the listeners.
const READY_POLL: Duration = Duration::from_millis(20);
/// Lines of the agent's log quoted in an error.
const LOG_TAIL_LINES: usize = 25;

/// Which ztunnel, and so which flags and environment it understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// This project's ztunnel.
    Ours,
    /// Istio's ztunnel (or any binary configured the same way).
    Upstream,
}

impl Flavour {
    /// Short name used in the table, the JSON and the log file.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Upstream => "upstream",
        }
    }
}

/// Why an agent could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    /// The log file could not be created.
    #[error("cannot create the agent log {path}")]
    Log {
        /// The log's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The binary could not be executed.
    #[error("cannot start {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// It exited while starting.
    #[error(
        "{flavour} ztunnel exited ({status}) before listening on {OUTBOUND_PORT} and {HBONE_PORT}\nits log ends:\n{tail}"
    )]
    Exited {
        /// Which agent.
        flavour: &'static str,
        /// How it ended.
        status: ExitStatus,
        /// The end of its log.
        tail: String,
    },
    /// It did not listen in time.
    #[error(
        "{flavour} ztunnel did not listen on {OUTBOUND_PORT} and {HBONE_PORT} within {READY_WITHIN:?}\nits log ends:\n{tail}"
    )]
    NotReady {
        /// Which agent.
        flavour: &'static str,
        /// The end of its log.
        tail: String,
    },
    /// The namespace's socket table could not be read.
    #[error("cannot read the socket table {path}")]
    SocketTable {
        /// The table's path.
        path: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A running agent.
pub(crate) struct Agent {
    flavour: Flavour,
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts `binary` as a `flavour` agent serving the workloads in `config`, logging to a file
    /// in `log_dir`, and waits until its outbound and HBONE listeners are up.
    pub(crate) fn start(
        flavour: Flavour,
        binary: &Path,
        config: &Path,
        log_dir: &Path,
    ) -> Result<Self, AgentError> {
        Self::start_with(flavour, binary, config, log_dir, None)
    }

    /// [`Agent::start`], with our ztunnel signing with `signer` (certificate, key) instead of a
    /// root of its own, so a process whose certificate comes from the same CA trusts it.
    pub(crate) fn start_with(
        flavour: Flavour,
        binary: &Path,
        config: &Path,
        log_dir: &Path,
        signer: Option<(&Path, &Path)>,
    ) -> Result<Self, AgentError> {
        let log = log_dir.join(format!("ztunnel-{}.log", flavour.name()));
        let out = File::create(&log).map_err(|source| AgentError::Log {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| AgentError::Log {
            path: log.clone(),
            source,
        })?;
        let mut command = Command::new(binary);
        command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        match flavour {
            Flavour::Ours => {
                command
                    .args(["--proxy-mode", "dedicated"])
                    .arg("--local-xds-path")
                    .arg(config)
                    .args(["--node-name", e2e::world::NODE]);
                if let Some((cert, key)) = signer {
                    command.arg("--ca-cert").arg(cert).arg("--ca-key").arg(key);
                }
            }
            // Dedicated mode, local config, built-in test CA: upstream's single-host setup.
            Flavour::Upstream => {
                command
                    .env("PROXY_MODE", "dedicated")
                    .env("FAKE_CA", "true")
                    .env("XDS_ADDRESS", "")
                    .env("LOCAL_XDS_PATH", config)
                    .env(
                        "PROXY_WORKLOAD_INFO",
                        format!("{NAMESPACE}/{CLIENT_NAME}/{SERVICE_ACCOUNT}"),
                    );
            }
        }
        let child = command.spawn().map_err(|source| AgentError::Spawn {
            path: binary.to_owned(),
            source,
        })?;
        let mut agent = Self {
            flavour,
            child,
            log,
        };
        agent.wait_listening()?;
        Ok(agent)
    }

    /// The agent's process id, for its `/proc` figures.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the agent's log, for error reports.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "(empty)".to_owned();
        }
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines.get(start..).unwrap_or_default().join("\n")
    }

    fn wait_listening(&mut self) -> Result<(), AgentError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(AgentError::Exited {
                    flavour: self.flavour.name(),
                    status,
                    tail: self.log_tail(),
                });
            }
            let listening = listening_ports()?;
            if [OUTBOUND_PORT, HBONE_PORT]
                .iter()
                .all(|p| listening.contains(p))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(AgentError::NotReady {
                    flavour: self.flavour.name(),
                    tail: self.log_tail(),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Killed, not drained: nothing is in flight once the measurements are over.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Local ports in LISTEN state in this thread's namespace (`/proc/thread-self/net`; `/proc/net`
/// would show the main thread's namespace), IPv4 and IPv6 (upstream binds `[::]`).
fn listening_ports() -> Result<Vec<u16>, AgentError> {
    let mut ports = Vec::new();
    for path in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let table = std::fs::read_to_string(path)
            .map_err(|source| AgentError::SocketTable { path, source })?;
        ports.extend(table.lines().skip(1).filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN.
            if cols.get(3) != Some(&"0A") {
                return None;
            }
            let (_, port) = cols.get(1)?.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        }));
    }
    Ok(ports)
}
