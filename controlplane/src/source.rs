//! The configuration directory as the source of truth: loaded, translated and published to the
//! ADS server (resources) and the CA (which service accounts run on which node); re-read when
//! it changes. A change that does not load is refused with its error — file, document, field —
//! and the last good state stays served, so a typo never empties the mesh.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use prost_types::Any;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ca::{CaService, NodeWorkloads};
use crate::k8s::{Cluster, LoadError, load_dir};
use crate::translate::{Options, translate};
use crate::xds::Snapshot;
use xds_proto::{JWT_AUTHENTICATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL};

/// `type_url` of `istio.workload.Address`.
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// `type_url` of `istio.security.Authorization`.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// The label a waypoint's pods carry (the Gateway they implement).
const WAYPOINT_POD_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// What one good load produced.
pub struct Published {
    /// For the ADS server.
    pub snapshot: Arc<Snapshot>,
    /// For the CA's impersonation checks.
    pub workloads: NodeWorkloads,
    /// Counts, for the log line.
    pub addresses: usize,
    /// Counts, for the log line.
    pub authorizations: usize,
}

/// Translates a loaded cluster into what is served.
pub fn publish(cluster: &Cluster, options: &Options) -> Published {
    let resources = translate(cluster, options);
    let mut snapshot = Snapshot::default();
    for (name, address) in &resources.addresses {
        snapshot.insert(name.clone(), pack(ADDRESS_TYPE, address));
    }
    for (name, authorization) in &resources.authorizations {
        snapshot.insert(name.clone(), pack(AUTHORIZATION_TYPE, authorization));
    }
    for (name, policy) in &resources.l7_authorizations {
        snapshot.insert(name.clone(), pack(L7_AUTHORIZATION_TYPE_URL, policy));
    }
    for (name, authn) in &resources.jwt_authentications {
        snapshot.insert(name.clone(), pack(JWT_AUTHENTICATION_TYPE_URL, authn));
    }
    let live = || cluster.pods().filter(|pod| !pod.phase.is_terminal());
    let workloads = NodeWorkloads::from_pods(live().filter_map(|pod| {
        let node = pod.node_name.as_deref()?;
        Some((
            node,
            pod.meta.namespace.as_str(),
            pod.service_account.as_str(),
        ))
    }))
    .with_waypoints(
        live()
            .filter(|pod| pod.meta.labels.contains_key(WAYPOINT_POD_LABEL))
            .map(|pod| (pod.meta.namespace.as_str(), pod.service_account.as_str())),
    );
    Published {
        snapshot: Arc::new(snapshot),
        workloads,
        addresses: resources.addresses.len(),
        authorizations: resources.authorizations.len(),
    }
}

fn pack(type_url: &str, message: &impl Message) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

/// Loads and translates the directory once.
pub fn load(dir: &Path, options: &Options) -> Result<Published, LoadError> {
    let cluster = load_dir(dir)?;
    for warning in cluster.warnings() {
        warn!(%warning, "configuration warning");
    }
    Ok(publish(&cluster, options))
}

/// What identifies the directory's content cheaply: every entry's name, size and mtime.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some((entry.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    entries.sort();
    entries
}

/// Follows `dir` until `shutdown`: every change is loaded and, when good, published.
pub async fn follow(
    dir: PathBuf,
    options: Options,
    every: Duration,
    snapshots: watch::Sender<Arc<Snapshot>>,
    ca: Arc<CaService>,
    shutdown: CancellationToken,
) {
    let mut seen = fingerprint(&dir);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&dir, &options) {
            Ok(published) => {
                info!(dir = %dir.display(), addresses = published.addresses,
                    authorizations = published.authorizations, "configuration applied");
                ca.set_workloads(published.workloads);
                snapshots.send_replace(published.snapshot);
            }
            Err(err) => error!(dir = %dir.display(), error = %err,
                "configuration refused; the last good one stays served"),
        }
    }
}
