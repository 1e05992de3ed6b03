//! The pod proxies of in-pod mode: one [`Proxy`] per enrolled pod, listening inside the pod's
//! network namespace. They outlive any one ZDS connection, so existing connections survive a
//! node-agent restart; they end on `del`, at a snapshot that no longer names them, or when
//! ztunnel shuts down.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::capture::netns::{HostNetns, NetnsError, PodNetns};
use crate::capture::zds::{NetnsId, PodInfo};
use crate::proxy::socket::PodSockets;
use crate::proxy::{EnrolledPod, Inputs, Listeners, Proxy, Scope, StartError};

/// Why a pod's proxy did not start (answered to the node agent as an error ack).
#[derive(Debug, thiserror::Error)]
pub enum PodStartError {
    /// The descriptor is unusable.
    #[error("netns descriptor unusable")]
    Netns(#[source] NetnsError),
    /// A listener could not be created in the pod.
    #[error("listeners in the pod's namespace")]
    Listen(#[source] StartError),
    /// The data-plane runtime is shutting down.
    #[error("the data-plane runtime is shutting down")]
    RuntimeGone,
}

/// How a pod stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Listeners close now; open connections get the drain timeout (the pod was deleted or
    /// un-enrolled: its connections may still finish).
    Drain,
    /// Everything ends now (the pod's namespace was replaced: the old one is gone).
    Immediate,
}

/// One enrolled pod as `/config_dump`'s `workloadState` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The node agent's uid for the pod.
    pub uid: String,
    /// Its proxy serves (`Up`); otherwise it failed to start and waits for a retry (`Pending`).
    pub up: bool,
    /// Name, namespace and service account, as the node agent described the pod.
    pub info: PodInfo,
}

struct Running {
    info: PodInfo,
    netns: NetnsId,
    stop: CancellationToken,
    cut: CancellationToken,
}

/// A pod whose proxy failed to start, kept with its namespace to be retried.
struct Pending {
    info: PodInfo,
    netns: OwnedFd,
}

/// The pod proxies of this node.
pub struct PodProxies {
    inputs: Arc<Inputs>,
    host: Arc<HostNetns>,
    listeners: Listeners,
    drain_timeout: Duration,
    running: Mutex<BTreeMap<String, Running>>,
    pending: Mutex<BTreeMap<String, Pending>>,
    tasks: TaskTracker,
    /// The data-plane runtime: listeners register with its reactor and serve on it, whichever
    /// runtime the ZDS conversation runs on.
    data: Handle,
    /// How many proxies run, for readiness and tests.
    count: watch::Sender<usize>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single inserts and removals only: the maps stay consistent after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PodProxies {
    /// No pods yet; each pod will get `listeners` inside its namespace.
    pub fn new(
        inputs: Arc<Inputs>,
        host: Arc<HostNetns>,
        listeners: Listeners,
        drain_timeout: Duration,
        data: Handle,
    ) -> Self {
        Self {
            inputs,
            host,
            listeners,
            drain_timeout,
            running: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            tasks: TaskTracker::new(),
            data,
            count: watch::Sender::new(0),
        }
    }

    /// The namespace a running pod uses.
    pub fn running_netns(&self, uid: &str) -> Option<NetnsId> {
        lock(&self.running).get(uid).map(|r| r.netns)
    }

    /// Every running pod.
    pub fn running_uids(&self) -> Vec<String> {
        lock(&self.running).keys().cloned().collect()
    }

    /// Every pod the node agent gave this proxy, by uid: serving, or waiting for a retry.
    pub fn states(&self) -> Vec<PodState> {
        let mut all: Vec<PodState> = lock(&self.running)
            .iter()
            .map(|(uid, r)| PodState {
                uid: uid.clone(),
                up: true,
                info: r.info.clone(),
            })
            .collect();
        all.extend(lock(&self.pending).iter().map(|(uid, p)| PodState {
            uid: uid.clone(),
            up: false,
            info: p.info.clone(),
        }));
        all.sort_by(|a, b| a.uid.cmp(&b.uid));
        all
    }

    /// Pods waiting for a retry.
    pub fn pending_count(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Follows the number of running pod proxies.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Starts serving `uid` in the namespace `netns`, with its listeners bound before this
    /// returns (the node agent is acked only then). On failure the pod is kept pending.
    pub async fn start(
        &self,
        uid: &str,
        info: &PodInfo,
        netns: OwnedFd,
    ) -> Result<(), PodStartError> {
        let kept = netns.try_clone();
        let started = self.try_start(uid, info, netns).await;
        match (&started, kept) {
            (Ok(()), _) => {
                lock(&self.pending).remove(uid);
            }
            (Err(_), Ok(netns)) => {
                let info = info.clone();
                lock(&self.pending).insert(uid.to_owned(), Pending { info, netns });
            }
            (Err(_), Err(err)) => warn!(%uid, error = %err, "cannot keep the netns for a retry"),
        }
        self.publish_pending();
        started
    }

    async fn try_start(
        &self,
        uid: &str,
        info: &PodInfo,
        netns: OwnedFd,
    ) -> Result<(), PodStartError> {
        let netns = PodNetns::new(netns).map_err(PodStartError::Netns)?;
        let id = netns.id();
        let sockets = PodSockets::new(netns, Arc::clone(&self.host));
        let pod = Arc::new(EnrolledPod::new(uid.to_owned(), info.clone(), sockets));
        let scope = Scope::Pod(Arc::clone(&pod));
        let bind = Proxy::bind(Arc::clone(&self.inputs), scope, self.listeners);
        let proxy = self
            .data
            .spawn(bind)
            .await
            .map_err(|_| PodStartError::RuntimeGone)?
            .map_err(PodStartError::Listen)?;
        let (stop, cut) = (CancellationToken::new(), CancellationToken::new());
        let previous = lock(&self.running).insert(
            uid.to_owned(),
            Running {
                info: info.clone(),
                netns: id,
                stop: stop.clone(),
                cut: cut.clone(),
            },
        );
        if let Some(previous) = previous {
            // Callers replace explicitly; a leftover would otherwise serve on unseen.
            previous.stop.cancel();
            previous.cut.cancel();
        }
        self.publish_count();
        self.inputs.metrics.proxies.started.inc();
        let drain = self.drain_timeout;
        self.tasks
            .spawn_on(proxy.serve(stop, drain, cut), &self.data);
        info!(%uid, pod = %pod.display_name(), service_account = %info.service_account,
            netns_inode = id.ino, "pod proxy started");
        Ok(())
    }

    /// Stops serving `uid`; also forgets it as pending. Unknown pods are a no-op.
    pub fn stop(&self, uid: &str, mode: StopMode) {
        lock(&self.pending).remove(uid);
        self.publish_pending();
        let Some(running) = lock(&self.running).remove(uid) else {
            return;
        };
        self.inputs.metrics.proxies.stopped.inc();
        running.stop.cancel();
        if mode == StopMode::Immediate {
            running.cut.cancel();
        }
        self.publish_count();
        info!(%uid, ?mode, "pod proxy stopping");
    }

    /// Forgets one pending pod (it was deleted before its proxy could start).
    pub fn forget_pending(&self, uid: &str) {
        if lock(&self.pending).remove(uid).is_some() {
            info!(%uid, "pending pod forgotten: deleted before its proxy started");
        }
        self.publish_pending();
    }

    /// Forgets every pending pod (a new ZDS connection re-sends what it still wants).
    pub fn clear_pending(&self) {
        lock(&self.pending).clear();
        self.publish_pending();
    }

    /// Retries the pending pods once; returns how many are still pending.
    pub async fn retry_pending(&self) -> usize {
        let waiting: Vec<(String, Pending)> = std::mem::take(&mut *lock(&self.pending))
            .into_iter()
            .collect();
        for (uid, pending) in waiting {
            match self.start(&uid, &pending.info, pending.netns).await {
                Ok(()) => info!(%uid, "pending pod proxy started on retry"),
                Err(err) => {
                    warn!(%uid, error = %mesh::errors::chain(&err), "pod proxy still cannot start")
                }
            }
        }
        self.pending_count()
    }

    /// Stops every pod gracefully (ztunnel is shutting down) and waits for their connections
    /// to drain, each within the drain timeout.
    pub async fn shutdown(&self) {
        let all = std::mem::take(&mut *lock(&self.running));
        info!(pods = all.len(), "stopping every pod proxy");
        for running in all.into_values() {
            running.stop.cancel();
            self.inputs.metrics.proxies.stopped.inc();
        }
        self.publish_count();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn publish_count(&self) {
        let count = lock(&self.running).len();
        self.inputs
            .metrics
            .proxies
            .active
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.count.send_replace(count);
    }

    fn publish_pending(&self) {
        let pending = self.pending_count();
        self.inputs
            .metrics
            .proxies
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
}
