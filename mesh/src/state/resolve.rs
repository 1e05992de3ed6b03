//! Where an outbound connection goes: a pure function of (snapshot, source, original
//! destination) returning a [`Resolution`], which the proxy then acts on (hbone.md §3.1).
//!
//! Endpoint selection takes its choice as a function of the candidate count, so tests pass a
//! fixed index and production passes [`random_pick`] or a [`RoundRobin`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::identity::SpiffeId;

use super::model::{
    GatewayAddress, GatewayDestination, HealthPolicy, LoadBalancerMode, LocalityScope,
    NamespacedHostname, Service, Workload,
};
use super::snapshot::Snapshot;

/// What the proxy should do with a connection to some original destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A workload addressed directly by its IP: dial it on `port` (HBONE or plain TCP as its
    /// `protocol` says).
    Workload {
        /// The destination workload.
        workload: Arc<Workload>,
        /// The port the application dialed.
        port: u16,
    },
    /// A service VIP, translated to one endpoint and that endpoint's target port.
    Service {
        /// The service dialed.
        service: Arc<Service>,
        /// The endpoint picked.
        endpoint: Arc<Workload>,
        /// The port to dial on the endpoint.
        target_port: u16,
    },
    /// A service VIP with no endpoint that can take the connection (none healthy, none on
    /// this network, none with the port, or none in a strict locality): close it with a log.
    NoHealthyEndpoint {
        /// The service dialed.
        service: Arc<Service>,
    },
    /// A service VIP on a port the service does not expose: refuse.
    NoPort {
        /// The service dialed.
        service: Arc<Service>,
        /// The port dialed.
        port: u16,
    },
    /// Unknown destination, or a passthrough service: plain TCP to the original address.
    Passthrough {
        /// The passthrough service, when the address was one's VIP.
        service: Option<Arc<Service>>,
    },
    /// The destination has a waypoint: tunnel to one of its instances with the original
    /// destination, untranslated, as the CONNECT target (hbone.md §8); the waypoint picks the
    /// endpoint and applies L7 policy.
    Waypoint {
        /// The waypoint instance picked.
        waypoint: Arc<Workload>,
        /// The waypoint's service, when it was addressed through one (its SANs are accepted).
        waypoint_service: Option<Arc<Service>>,
        /// The waypoint's HBONE port.
        hbone_port: u16,
        /// The service dialed, when the original destination was its VIP.
        service: Option<Arc<Service>>,
    },
    /// The destination has a waypoint, but no instance of it is known or healthy: refuse rather
    /// than go around it (that would skip the policy it enforces).
    WaypointUnavailable {
        /// The waypoint as the control plane named it (`network/ip` or `namespace/hostname`).
        waypoint: String,
        /// What was dialed: `namespace/hostname` of the service, or the workload's uid.
        destination: String,
    },
}

impl Resolution {
    /// Identities the destination's TLS certificate may carry (hbone.md §7): the workload's
    /// own, plus the service's `subject_alt_names` when reached through a service. Empty when
    /// no TLS connection will be made.
    pub fn expected_identities(&self) -> Vec<SpiffeId> {
        match self {
            Self::Workload { workload, .. } => vec![workload.identity()],
            Self::Service {
                service, endpoint, ..
            } => {
                let mut ids = vec![endpoint.identity()];
                for san in &service.subject_alt_names {
                    if !ids.contains(san) {
                        ids.push(san.clone());
                    }
                }
                ids
            }
            Self::Waypoint {
                waypoint,
                waypoint_service,
                ..
            } => {
                let mut ids = vec![waypoint.identity()];
                for san in waypoint_service.iter().flat_map(|s| &s.subject_alt_names) {
                    if !ids.contains(san) {
                        ids.push(san.clone());
                    }
                }
                ids
            }
            Self::NoHealthyEndpoint { .. }
            | Self::NoPort { .. }
            | Self::Passthrough { .. }
            | Self::WaypointUnavailable { .. } => Vec::new(),
        }
    }
}

impl Snapshot {
    /// Resolves `dst` as dialed by `source` (when known) on `network`, picking a service
    /// endpoint at random. See [`Snapshot::resolve_destination_with`].
    pub fn resolve_destination(
        &self,
        network: &str,
        dst: SocketAddr,
        source: Option<&Workload>,
    ) -> Resolution {
        self.resolve_destination_with(network, dst, source, random_pick)
    }

    /// Resolves `dst`: a workload IP first (as upstream does), then a service VIP, else
    /// passthrough. For a VIP, `pick(n)` chooses among the `n` eligible endpoints (see
    /// [`eligible_endpoints`]); an out-of-range answer wraps around.
    pub fn resolve_destination_with(
        &self,
        network: &str,
        dst: SocketAddr,
        source: Option<&Workload>,
        pick: impl FnOnce(usize) -> usize,
    ) -> Resolution {
        if let Some(workload) = self.workload_by_ip(network, dst.ip()) {
            if let Some(waypoint) = &workload.waypoint
                && let Some(instances) = self.waypoint_for(waypoint, network, source)
            {
                return via_waypoint(waypoint, instances, None, &workload.uid, pick);
            }
            return Resolution::Workload {
                workload,
                port: dst.port(),
            };
        }
        let Some(service) = self.service_by_vip(network, dst.ip()) else {
            return Resolution::Passthrough { service: None };
        };
        if let Some(waypoint) = &service.waypoint
            && let Some(instances) = self.waypoint_for(waypoint, network, source)
        {
            let destination = service.key().to_string();
            return via_waypoint(
                waypoint,
                instances,
                Some(Arc::clone(&service)),
                &destination,
                pick,
            );
        }
        if service.is_passthrough() {
            return Resolution::Passthrough {
                service: Some(service),
            };
        }
        let port = dst.port();
        if !service.ports.contains_key(&port) {
            return Resolution::NoPort { service, port };
        }
        let key = service.key();
        let candidates =
            eligible_endpoints(&service, &key, self.endpoints(&key), port, network, source);
        match choose(&candidates, pick) {
            Some((endpoint, target_port)) => Resolution::Service {
                service,
                endpoint: Arc::clone(endpoint),
                target_port: *target_port,
            },
            None => Resolution::NoHealthyEndpoint { service },
        }
    }
}

/// A waypoint's instances (ready or not), and the service they were found through.
type WaypointInstances = (Vec<Arc<Workload>>, Option<Arc<Service>>);

impl Snapshot {
    /// Every instance of the waypoint, healthy or not: the pod at its address, or the endpoints
    /// of the service it names or whose VIP it gives (on the address's network, or on
    /// `network`, the caller's, for a name), with that service.
    fn waypoint_instances(&self, waypoint: &GatewayAddress, network: &str) -> WaypointInstances {
        let (service, network) = match &waypoint.destination {
            GatewayDestination::Address(address) => {
                if let Some(pod) = self.workload_by_ip(&address.network, address.ip) {
                    return (vec![pod], None);
                }
                let vip = self.service_by_vip(&address.network, address.ip);
                (vip, address.network.as_str())
            }
            GatewayDestination::Hostname(key) => (self.service(key), network),
        };
        let Some(service) = service else {
            return (Vec::new(), None);
        };
        let instances = self
            .endpoints(&service.key())
            .iter()
            .filter(|w| w.network == network)
            .cloned()
            .collect();
        (instances, Some(service))
    }

    /// The waypoint's instances and service, or `None` when `source` is itself one of them
    /// (ready or not): a waypoint's own traffic to the destination must not loop back through
    /// a waypoint (hbone.md §8). One lookup answers both.
    fn waypoint_for(
        &self,
        waypoint: &GatewayAddress,
        network: &str,
        source: Option<&Workload>,
    ) -> Option<WaypointInstances> {
        let found = self.waypoint_instances(waypoint, network);
        let is_instance = source.is_some_and(|src| found.0.iter().any(|w| w.uid == src.uid));
        (!is_instance).then_some(found)
    }
}

/// Through one ready instance of `waypoint`, or refused when there is none. A pod named by
/// address (no waypoint service) is taken as it is.
fn via_waypoint(
    waypoint: &GatewayAddress,
    (instances, waypoint_service): WaypointInstances,
    service: Option<Arc<Service>>,
    destination: &str,
    pick: impl FnOnce(usize) -> usize,
) -> Resolution {
    let ready: Vec<&Arc<Workload>> = instances
        .iter()
        .filter(|w| w.is_healthy() || waypoint_service.is_none())
        .collect();
    match choose(&ready, pick) {
        Some(instance) => Resolution::Waypoint {
            waypoint: Arc::clone(instance),
            waypoint_service,
            hbone_port: waypoint.hbone_mtls_port,
            service,
        },
        None => Resolution::WaypointUnavailable {
            waypoint: waypoint.destination.to_string(),
            destination: destination.to_owned(),
        },
    }
}

/// The endpoints that may take a connection to `service_port`, each with its target port:
/// healthy (or any, under [`HealthPolicy::AllowAll`]); on `network` (there are no network
/// gateways here, so other networks are unreachable); with a target port (the endpoint's own
/// mapping wins over the service's; a service target of 0 needs the endpoint's); and, under
/// [`LoadBalancerMode::Strict`] or [`LoadBalancerMode::Failover`], in the best locality rank.
pub fn eligible_endpoints<'a>(
    service: &Service,
    key: &NamespacedHostname,
    endpoints: &'a [Arc<Workload>],
    service_port: u16,
    network: &str,
    source: Option<&Workload>,
) -> Vec<(&'a Arc<Workload>, u16)> {
    let lb = &service.load_balancing;
    let usable = endpoints.iter().filter_map(|endpoint| {
        let healthy = endpoint.is_healthy() || lb.health_policy == HealthPolicy::AllowAll;
        let port = target_port(service, key, endpoint, service_port)?;
        (healthy && endpoint.network == network).then_some((endpoint, port))
    });
    match lb.mode {
        LoadBalancerMode::Standard | LoadBalancerMode::Passthrough => usable.collect(),
        LoadBalancerMode::Strict | LoadBalancerMode::Failover => {
            // Without a known source no scope can be compared, so every rank is 0: Strict then
            // keeps nothing (fail closed) unless it lists no scope, Failover keeps everyone.
            let full = lb.routing_preferences.len();
            let strict = lb.mode == LoadBalancerMode::Strict;
            let ranked: Vec<_> = usable
                .map(|(endpoint, port)| {
                    let rank = source.map_or(0, |src| {
                        locality_rank(&lb.routing_preferences, src, endpoint)
                    });
                    (rank, endpoint, port)
                })
                .filter(|(rank, ..)| !strict || *rank == full)
                .collect();
            let best = ranked.iter().map(|(rank, ..)| *rank).max().unwrap_or(0);
            ranked
                .into_iter()
                .filter(|(rank, ..)| *rank == best)
                .map(|(_, endpoint, port)| (endpoint, port))
                .collect()
        }
    }
}

/// The port to dial on `endpoint` for `service_port`, or `None` when it has none.
fn target_port(
    service: &Service,
    key: &NamespacedHostname,
    endpoint: &Workload,
    service_port: u16,
) -> Option<u16> {
    let own = endpoint
        .services
        .get(key)
        .and_then(|ports| ports.get(&service_port));
    match (own, service.ports.get(&service_port)) {
        (Some(&port), _) if port != 0 => Some(port),
        (_, Some(&port)) if port != 0 => Some(port),
        _ => None,
    }
}

/// How many of `scopes`, in order, `endpoint` shares with `source` before the first miss.
fn locality_rank(scopes: &[LocalityScope], source: &Workload, endpoint: &Workload) -> usize {
    scopes
        .iter()
        .take_while(|scope| match scope {
            LocalityScope::Region => source.locality.region == endpoint.locality.region,
            LocalityScope::Zone => source.locality.zone == endpoint.locality.zone,
            LocalityScope::Subzone => source.locality.subzone == endpoint.locality.subzone,
            LocalityScope::Node => source.node == endpoint.node,
            LocalityScope::Cluster => source.cluster_id == endpoint.cluster_id,
            LocalityScope::Network => source.network == endpoint.network,
        })
        .count()
}

/// Picks one candidate with `pick(len)`; `None` when there are none. An index past the end
/// wraps, so a picker can never make this panic.
pub fn choose<T>(candidates: &[T], pick: impl FnOnce(usize) -> usize) -> Option<&T> {
    match candidates.len() {
        0 => None,
        len => candidates.get(pick(len) % len),
    }
}

/// A uniformly random index below `len` (0 when `len` is 0).
pub fn random_pick(len: usize) -> usize {
    if len == 0 { 0 } else { fastrand::usize(..len) }
}

/// Round-robin picker shared by connections: each call takes the next index.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicUsize);

impl RoundRobin {
    /// A picker starting at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next index below `len`; use as `|n| rr.pick(n)`.
    pub fn pick(&self, len: usize) -> usize {
        let turn = self.0.fetch_add(1, Ordering::Relaxed);
        turn.checked_rem(len).unwrap_or(0)
    }
}
