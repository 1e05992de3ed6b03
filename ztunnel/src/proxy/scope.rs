//! Whom a set of listeners serves. In dedicated mode one set of listeners in ztunnel's own
//! namespace serves every workload of the node, told apart by address. In in-pod mode each
//! enrolled pod has its own listeners inside its namespace, and a connection belongs to the pod
//! whose listener accepted it — never to whatever address a packet claims.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::capture::zds::PodInfo;
use crate::state::{Directory, Snapshot, Workload};

use super::error::ConnectionError;
use super::lock;
use super::socket::{Origin, PodSockets};

/// Whom a proxy serves.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every workload of this node, by address, from ztunnel's own namespace.
    Node,
    /// One enrolled pod.
    Pod(Arc<EnrolledPod>),
}

/// A pod the node agent enrolled: who it is and where its sockets are made.
#[derive(Debug)]
pub struct EnrolledPod {
    /// Kubernetes pod UID (the ZDS key).
    pub uid: String,
    /// Name, namespace and service account, as the node agent described the pod.
    pub info: PodInfo,
    sockets: Arc<PodSockets>,
    /// The config's workload for this pod, kept per snapshot generation so a connection does
    /// not scan the node's workloads.
    matched: Mutex<Option<(u64, Arc<Workload>)>>,
}

impl EnrolledPod {
    /// A pod and its namespace.
    pub fn new(uid: String, info: PodInfo, sockets: PodSockets) -> Self {
        Self {
            uid,
            info,
            sockets: Arc::new(sockets),
            matched: Mutex::new(None),
        }
    }

    /// Where this pod's sockets are made.
    pub fn origin(&self) -> Origin {
        Origin::Pod(Arc::clone(&self.sockets))
    }

    /// `namespace/name`, for log lines.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.info.namespace, self.info.name)
    }

    /// The workload on `node` whose name, namespace and service account are this pod's — how
    /// upstream binds a ZDS pod to its xDS workload (the UIDs of the two are not compared).
    pub fn workload(
        &self,
        snapshot: &Snapshot,
        node: &str,
    ) -> Result<Arc<Workload>, ConnectionError> {
        let generation = snapshot.generation();
        if let Some((seen, workload)) = &*lock(&self.matched)
            && *seen == generation
        {
            return Ok(Arc::clone(workload));
        }
        let found = snapshot
            .local_workloads(node)
            .find(|w| {
                w.name == self.info.name
                    && w.namespace() == self.info.namespace
                    && w.service_account() == self.info.service_account
            })
            .cloned()
            .ok_or_else(|| ConnectionError::PodNotInConfig {
                pod: self.display_name(),
                service_account: self.info.service_account.clone(),
            })?;
        *lock(&self.matched) = Some((generation, Arc::clone(&found)));
        Ok(found)
    }
}

/// How long a connection of a pod waits for the pod's workload to appear in the config, as
/// upstream waits: istiod publishes a new pod's workload a moment after the node agent
/// enrolled it, and the application's first connections come in that moment.
pub const POD_WORKLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Scope {
    /// For an enrolled pod not yet in the config: waits up to [`POD_WORKLOAD_WAIT`] for it to
    /// appear, so the lookups that follow find it. Returns at once in dedicated mode and when
    /// the pod is known; after the wait the lookups fail as usual, naming the pod.
    pub(super) async fn await_known(&self, directory: &Directory, node: &str) {
        let Self::Pod(pod) = self else { return };
        // Subscribed before the first look, so no change can slip between the two.
        let mut updates = directory.subscribe();
        let deadline = tokio::time::Instant::now() + POD_WORKLOAD_WAIT;
        let mut logged = false;
        while pod.workload(&directory.load(), node).is_err() {
            if !logged {
                tracing::info!(pod = %pod.display_name(), wait = ?POD_WORKLOAD_WAIT,
                    "pod has no workload in the config yet; waiting");
                logged = true;
            }
            match tokio::time::timeout_at(deadline, updates.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// Where sockets for this scope's connections are made.
    pub fn origin(&self) -> Origin {
        match self {
            Self::Node => Origin::Host,
            Self::Pod(pod) => pod.origin(),
        }
    }

    /// The local workload at `ip`: in dedicated mode found by address; in in-pod mode the pod
    /// itself, whatever address the connection used.
    pub(super) fn workload_at(
        &self,
        snapshot: &Snapshot,
        network: &str,
        node: &str,
        ip: IpAddr,
        not_found: impl FnOnce() -> ConnectionError,
    ) -> Result<Arc<Workload>, ConnectionError> {
        match self {
            Self::Node => snapshot
                .workload_by_ip(network, ip)
                .filter(|w| w.node == node)
                .ok_or_else(not_found),
            Self::Pod(pod) => pod.workload(snapshot, node),
        }
    }

    /// For log lines: which pod, if any.
    pub fn pod(&self) -> Option<&EnrolledPod> {
        match self {
            Self::Node => None,
            Self::Pod(pod) => Some(pod),
        }
    }
}
