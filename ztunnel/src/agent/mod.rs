//! `ztunnel node-agent`: the standalone stand-in for istio-cni's node agent, for machines
//! without it. It reads which pods to capture from a file ([`pods_file`]), installs the in-pod
//! capture rules in each pod's network namespace ([`crate::capture::rules`]), and hands the
//! namespaces to ztunnel over the ZDS socket ([`server`]) — so ztunnel cannot tell it from
//! istio-cni, and upstream ztunnel works under it too.
//!
//! It lives in the ztunnel binary (a subcommand, one image for the DaemonSet) because rules,
//! namespaces and ZDS are all `capture` concerns of this crate.
//!
//! Rules are left in place when the agent stops: a restarted agent finds them already there,
//! changes nothing, and re-sends the same namespaces, so captured traffic never escapes the
//! mesh across an agent restart and ztunnel keeps its listeners and connections.

pub mod pods_file;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use clap::ValueEnum;
use mesh::errors::chain;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::capture::netns::PodNetns;
use crate::capture::rules::{self, Backend, Outcome, RuleOptions};
use crate::capture::zds::transport::Listener;
use crate::config::parse_duration;
use pods_file::PodSpec;
use server::{SendError, ZdsServer};

/// Which rule engine writes the in-pod capture rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RulesEngine {
    /// `iptables-restore`, as istio-cni does by default.
    Iptables,
    /// `nft`, istio-cni's native nftables mode.
    Nftables,
}

impl From<RulesEngine> for Backend {
    fn from(engine: RulesEngine) -> Self {
        match engine {
            RulesEngine::Iptables => Backend::Iptables,
            RulesEngine::Nftables => Backend::Nftables,
        }
    }
}

/// The node agent's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Pods on this node to capture (YAML; see `docs/`), re-read when it changes.
    #[arg(long, env = "NODE_AGENT_PODS")]
    pub pods: PathBuf,

    /// The ZDS socket ztunnel connects to (ztunnel's `INPOD_UDS`).
    #[arg(
        long,
        env = "ZTUNNEL_UDS_ADDRESS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub ztunnel_uds_address: PathBuf,

    /// Rule engine for the in-pod capture rules.
    #[arg(long, value_enum, default_value = "iptables")]
    pub rules: RulesEngine,

    /// Also redirect the pod's DNS to ztunnel's port 15053. Off by default: with no DNS proxy
    /// listening there, enrolling a pod would break its name resolution.
    #[arg(long)]
    pub dns_capture: bool,

    /// Capture IPv6 as well (when the pod's namespace has IPv6).
    #[arg(long, env = "IPV6_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipv6: bool,

    /// After a pod is un-enrolled, how long the rules its open connections still need (connmark,
    /// reply routing) stay: at least ztunnel's drain deadline, so those connections can finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub unenroll_drain: Duration,

    /// How often the pods file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
}

/// Why the node agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The pods file is unusable at start-up (there is no last good one yet).
    #[error("pods file")]
    PodsFile(#[from] pods_file::PodsFileError),
    /// The ZDS socket could not be bound.
    #[error("binding the ZDS socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
}

/// A pod this agent captures.
struct Enrolled {
    spec: PodSpec,
    /// `None` while the namespace cannot be opened (announced as `keep`, retried each tick).
    netns: Option<Arc<PodNetns>>,
}

/// An un-enrolled pod's namespace whose remaining rules wait for its connections to drain.
struct Draining {
    uid: String,
    until: Instant,
}

/// The agent's state between ticks.
struct NodeAgent {
    server: ZdsServer,
    backend: Backend,
    options: RuleOptions,
    drain: Duration,
    enrolled: BTreeMap<String, Enrolled>,
    /// By namespace path: a namespace enrolled again (by any pod) is no longer draining.
    draining: BTreeMap<PathBuf, Draining>,
}

/// Runs the node agent until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let mut agent = NodeAgent {
        server: ZdsServer::default(),
        backend: Backend::from(config.rules),
        options: RuleOptions {
            dns_capture: config.dns_capture,
            ipv6: config.ipv6,
        },
        drain: config.unenroll_drain,
        enrolled: BTreeMap::new(),
        draining: BTreeMap::new(),
    };
    let mut desired = pods_file::load(&config.pods)?;
    // Pods first, socket second: the first ztunnel to connect gets the whole snapshot.
    agent.reconcile(&desired).await;
    let listener =
        Listener::bind(&config.ztunnel_uds_address).map_err(|cause| AgentError::Bind {
            path: config.ztunnel_uds_address.clone(),
            cause,
        })?;
    tokio::spawn(agent.server.clone().serve(listener));
    info!(socket = %config.ztunnel_uds_address.display(), pods = agent.enrolled.len(),
        rules = ?config.rules, "node agent ready");

    let mut last_text = std::fs::read_to_string(&config.pods).ok();
    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let text = std::fs::read_to_string(&config.pods).ok();
        if text != last_text {
            match pods_file::load(&config.pods) {
                Ok(next) => {
                    info!(pods = next.len(), "pods file changed");
                    desired = next;
                }
                Err(err) => error!(error = %chain(&err),
                    "pods file refused; the last good one stays in force"),
            }
            last_text = text;
        }
        agent.reconcile(&desired).await;
        agent.finish_drained(Instant::now()).await;
    }
    // Enrolled pods keep their rules for the next agent; un-enrolled ones are finished now, as
    // the next agent will not know them.
    agent.finish_drained(Instant::now() + agent.drain).await;
    info!("node agent stopping; capture rules stay in place for the next agent");
    Ok(())
}

impl NodeAgent {
    /// Brings the enrolled pods to `desired`: un-enrolls what left (or changed), enrolls what
    /// came, and retries namespaces that could not be opened.
    async fn reconcile(&mut self, desired: &BTreeMap<String, PodSpec>) {
        let leaving: Vec<String> = self
            .enrolled
            .iter()
            .filter(|(uid, pod)| desired.get(*uid) != Some(&pod.spec))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in leaving {
            if let Some(pod) = self.enrolled.remove(&uid)
                && let Err(pod) = self.unenroll(&uid, pod).await
            {
                // Still captured: keep serving it through ztunnel and try again next tick.
                self.enrolled.insert(uid, pod);
            }
        }
        for (uid, spec) in desired {
            let waiting = self
                .enrolled
                .get(uid)
                .is_some_and(|pod| pod.netns.is_none());
            if self.enrolled.contains_key(uid) && !waiting {
                continue;
            }
            // Back before its drain ended: its rules are completed, not removed.
            self.draining.remove(&spec.netns);
            if let Some(pod) = self.enroll(spec, waiting).await {
                self.enrolled.insert(uid.clone(), pod);
            }
        }
    }

    /// Rules first, then the namespace to ztunnel: upstream's order, so ztunnel is only told
    /// about a pod whose traffic already comes its way. `None` when the rules could not be
    /// installed (retried at the next tick).
    async fn enroll(&self, spec: &PodSpec, retrying: bool) -> Option<Enrolled> {
        let pod = format!("{}/{}", spec.info.namespace, spec.info.name);
        let netns = match PodNetns::open(&spec.netns) {
            Ok(netns) => Arc::new(netns),
            Err(err) => {
                if !retrying {
                    warn!(uid = %spec.uid, %pod, netns = %spec.netns.display(), error = %err,
                        "cannot open the pod's network namespace; announcing keep, retrying");
                    let _ = self
                        .server
                        .publish(&spec.uid, spec.info.clone(), None)
                        .await;
                }
                return Some(Enrolled {
                    spec: spec.clone(),
                    netns: None,
                });
            }
        };
        let (path, backend, options) = (spec.netns.clone(), self.backend, self.options.clone());
        let installed =
            tokio::task::spawn_blocking(move || rules::install(&path, backend, &options)).await;
        match installed {
            Ok(Ok(outcome)) => {
                let already = outcome == Outcome::AlreadyInPlace;
                info!(uid = %spec.uid, %pod, netns = %spec.netns.display(),
                    already_in_place = already, "capture rules installed");
            }
            Ok(Err(err)) => {
                error!(uid = %spec.uid, %pod, error = %chain(&err),
                    "capture rules failed; the pod is not enrolled, retrying");
                return None;
            }
            Err(join) => {
                error!(uid = %spec.uid, %pod, error = %join, "capture rules task failed; retrying");
                return None;
            }
        }
        match self
            .server
            .publish(&spec.uid, spec.info.clone(), Some(Arc::clone(&netns)))
            .await
        {
            Ok(()) => info!(uid = %spec.uid, %pod, via = "add", "pod enrolled"),
            // The next ztunnel to connect gets it in its snapshot.
            Err(SendError::NoConnection) => {
                info!(uid = %spec.uid, %pod, "pod ready; waiting for ztunnel to connect")
            }
            // ztunnel keeps a pod whose proxy failed and retries it itself.
            Err(err) => {
                warn!(uid = %spec.uid, %pod, error = %err, "ztunnel has not taken the pod yet")
            }
        }
        Some(Enrolled {
            spec: spec.clone(),
            netns: Some(netns),
        })
    }

    /// Capture off first (new connections go direct at once), then ztunnel told (connections
    /// it already carries drain there); what those connections still need is removed once the
    /// drain time has passed.
    async fn unenroll(&mut self, uid: &str, pod: Enrolled) -> Result<(), Enrolled> {
        let name = format!("{}/{}", pod.spec.info.namespace, pod.spec.info.name);
        if pod.netns.is_some() {
            let (path, backend) = (pod.spec.netns.clone(), self.backend);
            match tokio::task::spawn_blocking(move || rules::stop_capture(&path, backend)).await {
                Ok(Ok(())) => {
                    self.draining.insert(
                        pod.spec.netns.clone(),
                        Draining {
                            uid: uid.to_owned(),
                            until: Instant::now() + self.drain,
                        },
                    );
                }
                // The namespace is gone with the pod: nothing is captured any more.
                Ok(Err(_)) if !pod.spec.netns.exists() => {}
                // Still redirected: telling ztunnel to stop listening would cut the pod off.
                Ok(Err(err)) => {
                    warn!(%uid, pod = %name, error = %chain(&err),
                        "stopping capture failed; the pod stays enrolled, retrying");
                    return Err(pod);
                }
                Err(join) => {
                    warn!(%uid, pod = %name, error = %join, "capture stop task failed; retrying");
                    return Err(pod);
                }
            }
        }
        self.server.unpublish(uid);
        info!(%uid, pod = %name, drain = ?self.drain, "pod un-enrolled");
        Ok(())
    }

    /// Removes the remaining rules of namespaces whose drain ends before `now`.
    async fn finish_drained(&mut self, now: Instant) {
        let done: Vec<PathBuf> = self
            .draining
            .iter()
            .filter(|(_, d)| d.until <= now)
            .map(|(path, _)| path.clone())
            .collect();
        for path in done {
            let Some(Draining { uid, .. }) = self.draining.remove(&path) else {
                continue;
            };
            let (netns, backend) = (path.clone(), self.backend);
            match tokio::task::spawn_blocking(move || rules::remove(&netns, backend)).await {
                Ok(Ok(())) => info!(%uid, netns = %path.display(),
                    "drain over; remaining capture rules removed"),
                Ok(Err(err)) => warn!(%uid, netns = %path.display(), error = %chain(&err),
                    "removing capture rules failed (gone with the pod?)"),
                Err(join) => warn!(%uid, error = %join, "rule removal task failed"),
            }
        }
    }
}
