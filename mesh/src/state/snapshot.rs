//! One immutable view of everything this node knows, with its indexes built once per load.
//!
//! The data path loads a snapshot once per connection and holds the `Arc`; nothing here locks
//! or awaits. A writer builds a whole new snapshot and swaps it in (see `directory`). Lookups
//! are keyed by `(network, ip)` through a map per network, so a lookup never allocates.

use crate::policy::PolicySet;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{NamespacedHostname, Service, TunnelProtocol, Workload};

/// Workloads and services, indexed for the proxy's lookups. Cloning copies the indexes
/// but shares every entry (`Arc`s), for writers that derive the next snapshot from the current one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    generation: u64,
    /// By uid; a `BTreeMap` so iteration (and every tie-break built from it) is deterministic.
    workloads: BTreeMap<String, Arc<Workload>>,
    /// network → ip → the workload that wins that address.
    workloads_by_ip: HashMap<String, HashMap<IpAddr, Arc<Workload>>>,
    services: BTreeMap<NamespacedHostname, Arc<Service>>,
    /// network → VIP → the service that wins that address.
    services_by_vip: HashMap<String, HashMap<IpAddr, Arc<Service>>>,
    /// Service key → the workloads listing it in their `services`, sorted by uid. Kept even for
    /// services not (yet) known, as xds.md §3.3 stages such endpoints.
    endpoints: HashMap<NamespacedHostname, Vec<Arc<Workload>>>,
    policies: PolicySet,
}

impl Snapshot {
    /// Indexes workloads and services. Keys are assumed unique (sources check); should two
    /// entries share a uid or `namespace/hostname`, the later one replaces the earlier.
    ///
    /// On an IP shared by several workloads, one whose uid contains `//Pod/` wins, then an HBONE
    /// one (xds.md §3.2), then the smallest uid. On a VIP shared by several services, a
    /// `canonical` one wins, then the smallest `namespace/hostname`.
    pub fn new(
        workloads: impl IntoIterator<Item = Workload>,
        services: impl IntoIterator<Item = Service>,
        policies: PolicySet,
    ) -> Self {
        let workloads: BTreeMap<String, Arc<Workload>> = workloads
            .into_iter()
            .map(|w| (w.uid.clone(), Arc::new(w)))
            .collect();
        let services: BTreeMap<NamespacedHostname, Arc<Service>> = services
            .into_iter()
            .map(|s| (s.key(), Arc::new(s)))
            .collect();
        Self {
            generation: 0,
            workloads_by_ip: index_workload_ips(&workloads),
            services_by_vip: index_service_vips(&services),
            endpoints: index_endpoints(&workloads),
            workloads,
            services,
            policies,
        }
    }

    /// An empty snapshot (nothing known: every destination is passthrough).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Which swap installed this snapshot (0 until one does); see `Directory::replace`.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The workload with this uid.
    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.workloads.get(uid).cloned()
    }

    /// The workload reached at `ip` on `network` (empty = default network). The same IP on
    /// another network is a different address and does not match.
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        self.workloads_by_ip.get(network)?.get(&ip).cloned()
    }

    /// The service stored under `namespace/hostname`.
    pub fn service(&self, key: &NamespacedHostname) -> Option<Arc<Service>> {
        self.services.get(key).cloned()
    }

    /// The service whose VIP is `ip` on `network`.
    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<Arc<Service>> {
        self.services_by_vip.get(network)?.get(&ip).cloned()
    }

    /// The workloads listing the service in their `services` (healthy or not), sorted by uid.
    pub fn endpoints(&self, key: &NamespacedHostname) -> &[Arc<Workload>] {
        self.endpoints.get(key).map_or(&[], Vec::as_slice)
    }

    /// Endpoints listing a service this snapshot does not hold (yet), by service key.
    pub fn staged_endpoints(
        &self,
    ) -> impl Iterator<Item = (&NamespacedHostname, &[Arc<Workload>])> {
        self.endpoints
            .iter()
            .filter(|(key, _)| !self.services.contains_key(*key))
            .map(|(key, workloads)| (key, workloads.as_slice()))
    }

    /// All workloads, by uid.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// All services, by `namespace/hostname`.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The workloads running on `node` (the ones this agent proxies), by uid.
    pub fn local_workloads<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads.values().filter(move |w| w.node == node)
    }

    /// Number of workloads.
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Authorization policies, keyed by `namespace/name`.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }
}

/// Higher wins a shared IP: Pods over other kinds, then HBONE over TCP.
fn ip_rank(workload: &Workload) -> (bool, bool) {
    (
        workload.is_pod(),
        workload.protocol == TunnelProtocol::Hbone,
    )
}

fn index_workload_ips(
    workloads: &BTreeMap<String, Arc<Workload>>,
) -> HashMap<String, HashMap<IpAddr, Arc<Workload>>> {
    let mut index: HashMap<String, HashMap<IpAddr, Arc<Workload>>> = HashMap::new();
    // Visited by ascending uid and replaced only on a strictly better rank, so the smallest
    // uid wins a tie.
    for workload in workloads.values() {
        let by_ip = index.entry(workload.network.clone()).or_default();
        for ip in &workload.ips {
            match by_ip.get(ip) {
                Some(held) if ip_rank(held) >= ip_rank(workload) => {}
                _ => {
                    by_ip.insert(*ip, Arc::clone(workload));
                }
            }
        }
    }
    index
}

fn index_service_vips(
    services: &BTreeMap<NamespacedHostname, Arc<Service>>,
) -> HashMap<String, HashMap<IpAddr, Arc<Service>>> {
    let mut index: HashMap<String, HashMap<IpAddr, Arc<Service>>> = HashMap::new();
    // Visited by ascending key; a later service takes a VIP only by being canonical when the
    // holder is not.
    for service in services.values() {
        for vip in &service.vips {
            let by_vip = index.entry(vip.network.clone()).or_default();
            match by_vip.get(&vip.ip) {
                Some(held) if held.canonical || !service.canonical => {}
                _ => {
                    by_vip.insert(vip.ip, Arc::clone(service));
                }
            }
        }
    }
    index
}

fn index_endpoints(
    workloads: &BTreeMap<String, Arc<Workload>>,
) -> HashMap<NamespacedHostname, Vec<Arc<Workload>>> {
    let mut index: HashMap<NamespacedHostname, Vec<Arc<Workload>>> = HashMap::new();
    for workload in workloads.values() {
        for key in workload.services.keys() {
            index
                .entry(key.clone())
                .or_default()
                .push(Arc::clone(workload));
        }
    }
    index
}
