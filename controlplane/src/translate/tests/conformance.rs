//! The shared authorization conformance cases whose enforcement point is ztunnel, run at engine
//! level (conformance/authz/README.md): world + case config → translation → each Authorization
//! through `mesh::policy` → every request evaluated as the destination ztunnel would.
//!
//! Requests are resolved from the translated Address resources, not from the YAML, so the test
//! also checks what ztunnel would be told: a service request goes to each endpoint listing the
//! service (at that endpoint's target port), through the service's waypoint when it has one and
//! the client is in the mesh (the destination then sees the waypoint's identity and address);
//! a destination that is not captured enforces nothing; a plaintext client has no identity.
//! `AUTHZ_CASES` names another cases file in the same format.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh::identity::{SpiffeId, TrustDomain};
use mesh::policy::{ConnectionAttrs, Decision, PolicySet, applicable, evaluate};
use serde::Deserialize;
use xds_proto::istio::workload as pb;
use xds_proto::istio::workload::gateway_address::Destination;

use super::super::{Options, Resources, translate};
use super::shared_authz_dir;
use crate::k8s::Cluster;

#[derive(Debug, Deserialize)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    point: String,
    #[serde(default)]
    config: String,
    requests: Vec<Request>,
}

#[derive(Debug, Deserialize)]
struct Request {
    from: String,
    to: String,
    expect: String,
    #[serde(rename = "dryRun")]
    dry_run: Option<String>,
}

/// The translated world, indexed the way ztunnel looks things up.
struct Mesh<'r> {
    trust_domain: TrustDomain,
    workloads: BTreeMap<String, &'r pb::Workload>,
    services: BTreeMap<String, &'r pb::Service>,
    policies: PolicySet,
}

/// One connection as it reaches the destination ztunnel.
struct Arrival<'r> {
    source_identity: Option<SpiffeId>,
    source_ip: IpAddr,
    destination: &'r pb::Workload,
    port: u16,
}

fn first_ip(workload: &pb::Workload) -> Result<IpAddr, String> {
    let bytes = workload
        .addresses
        .first()
        .ok_or(format!("{} has no address", workload.uid))?;
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).unwrap())),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes.as_slice()).unwrap(),
        )),
        n => Err(format!("{}: address of {n} bytes", workload.uid)),
    }
}

impl<'r> Mesh<'r> {
    fn new(resources: &'r Resources, trust_domain: TrustDomain) -> Result<Self, String> {
        let mut workloads = BTreeMap::new();
        let mut services = BTreeMap::new();
        for address in resources.addresses.values() {
            match &address.r#type {
                Some(pb::address::Type::Workload(w)) => {
                    workloads.insert(format!("{}/{}", w.namespace, w.name), w);
                }
                Some(pb::address::Type::Service(s)) => {
                    services.insert(format!("{}/{}", s.namespace, s.hostname), s);
                }
                None => return Err("an Address with neither workload nor service".to_owned()),
            }
        }
        let mut policies = PolicySet::new();
        for (key, authorization) in &resources.authorizations {
            let policy = mesh::policy::Authorization::try_from(authorization)
                .map_err(|e| format!("{key}: refused by mesh::policy: {e}"))?;
            if policy.key().as_str() != key {
                return Err(format!(
                    "{key}: resource name differs from {}",
                    policy.key()
                ));
            }
            policies.insert(policy);
        }
        Ok(Self {
            trust_domain,
            workloads,
            services,
            policies,
        })
    }

    fn workload(&self, name: &str) -> Result<&'r pb::Workload, String> {
        self.workloads
            .get(name)
            .copied()
            .ok_or(format!("no workload {name}"))
    }

    fn identity(&self, workload: &pb::Workload) -> Result<SpiffeId, String> {
        SpiffeId::istio(
            &self.trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
        .map_err(|e| e.to_string())
    }

    /// The endpoints of a service, each with the target port for `port`.
    fn endpoints(
        &self,
        key: &str,
        service: &pb::Service,
        port: u16,
    ) -> Vec<(&'r pb::Workload, u16)> {
        let service_default = service
            .ports
            .iter()
            .find(|p| p.service_port == u32::from(port))
            .map_or(0, |p| p.target_port);
        self.workloads
            .values()
            .filter_map(|w| {
                let ports = w.services.get(key)?;
                let target = ports
                    .ports
                    .iter()
                    .find(|p| p.service_port == u32::from(port))
                    .map_or(service_default, |p| p.target_port);
                let target = u16::try_from(target).ok().filter(|t| *t != 0)?;
                Some((*w, target))
            })
            .collect()
    }

    /// Every way the request can arrive at a destination ztunnel.
    fn arrivals(&self, from: &str, to: &str) -> Result<Vec<Arrival<'r>>, String> {
        let source = self.workload(from)?;
        let in_mesh = source.tunnel_protocol == pb::TunnelProtocol::Hbone as i32;
        let source_identity = if in_mesh {
            Some(self.identity(source)?)
        } else {
            None
        };
        let source_ip = first_ip(source)?;
        let (target, port) = to.rsplit_once(':').ok_or(format!("{to}: no port"))?;
        let port: u16 = port.parse().map_err(|_| format!("{to}: bad port"))?;
        let Some(service_name) = target.strip_prefix("service/") else {
            let destination = self.workload(target)?;
            return Ok(vec![Arrival {
                source_identity,
                source_ip,
                destination,
                port,
            }]);
        };
        let (namespace, name) = service_name
            .split_once('/')
            .ok_or(format!("{to}: not ns/name"))?;
        let (key, service) = self
            .services
            .iter()
            .find(|(_, s)| s.namespace == namespace && s.name == name)
            .ok_or(format!("no service {service_name}"))?;
        let endpoints = self.endpoints(key, service, port);
        if endpoints.is_empty() {
            return Err(format!("{to}: no endpoint"));
        }
        // Non-mesh clients have no ztunnel to send them to the waypoint (policy.md §2.8).
        let via = match (&service.waypoint, in_mesh) {
            (Some(waypoint), true) => Some(self.waypoint_pods(waypoint)?),
            _ => None,
        };
        let mut arrivals = Vec::new();
        for (destination, target_port) in endpoints {
            match &via {
                None => arrivals.push(Arrival {
                    source_identity: source_identity.clone(),
                    source_ip,
                    destination,
                    port: target_port,
                }),
                // The waypoint opens a new connection with its own identity and address.
                Some(waypoints) => {
                    for waypoint in waypoints {
                        arrivals.push(Arrival {
                            source_identity: Some(self.identity(waypoint)?),
                            source_ip: first_ip(waypoint)?,
                            destination,
                            port: target_port,
                        });
                    }
                }
            }
        }
        Ok(arrivals)
    }

    fn waypoint_pods(
        &self,
        waypoint: &pb::GatewayAddress,
    ) -> Result<Vec<&'r pb::Workload>, String> {
        let Some(Destination::Hostname(host)) = &waypoint.destination else {
            return Err(format!("waypoint {waypoint:?} is not a hostname"));
        };
        let key = format!("{}/{}", host.namespace, host.hostname);
        let service = self
            .services
            .get(&key)
            .ok_or(format!("no waypoint service {key}"))?;
        let pods: Vec<_> = self
            .endpoints(&key, service, 15008)
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        if pods.is_empty() {
            return Err(format!("waypoint {key} has no pod"));
        }
        Ok(pods)
    }

    /// The destination ztunnel's decision; `None` when the destination is not captured.
    fn decide(&self, arrival: &Arrival<'_>) -> Result<Option<Decision>, String> {
        let destination = arrival.destination;
        if destination.tunnel_protocol != pb::TunnelProtocol::Hbone as i32 {
            return Ok(None);
        }
        let selected = applicable(
            &self.policies,
            &destination.namespace,
            &destination.authorization_policies,
        );
        if !selected.unknown.is_empty() {
            return Err(format!(
                "{} lists unsent policies {:?}",
                destination.uid, selected.unknown
            ));
        }
        let attrs = ConnectionAttrs {
            source_identity: arrival.source_identity.clone(),
            source_ip: arrival.source_ip,
            destination_ip: first_ip(destination)?,
            destination_port: arrival.port,
        };
        Ok(Some(evaluate(selected.policies.iter().copied(), &attrs)))
    }
}

fn word(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

/// Runs one request; `Ok((observed, observed dry-run))` when every arrival agrees.
fn run_request(mesh: &Mesh<'_>, request: &Request) -> Result<(String, String), String> {
    let mut outcomes = Vec::new();
    for arrival in mesh.arrivals(&request.from, &request.to)? {
        let outcome = match mesh.decide(&arrival)? {
            None => ("allow", "allow"),
            Some(decision) => {
                let enforced = decision.verdict.is_allow();
                let dry = decision
                    .dry_run
                    .as_ref()
                    .map_or(enforced, |r| r.verdict.is_allow());
                (word(enforced), word(dry))
            }
        };
        outcomes.push(outcome);
    }
    outcomes.dedup();
    match outcomes.as_slice() {
        [(enforced, dry)] => Ok(((*enforced).to_owned(), (*dry).to_owned())),
        _ => Err(format!("endpoints disagree: {outcomes:?}")),
    }
}

/// Runs every request of one case, printing a line each; returns (passed, failed).
fn run_case(case: &Case, world: &str, options: &Options) -> (usize, usize) {
    let mut cluster = Cluster::parse("world.yaml", world).unwrap();
    let config = Cluster::parse(&format!("{}: config", case.name), &case.config)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    cluster.overlay(config);
    let resources = translate(&cluster, options);
    let mesh = Mesh::new(&resources, options.trust_domain.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let (mut passed, mut failed) = (0, 0);
    for (index, request) in case.requests.iter().enumerate() {
        let expected_dry = request.dry_run.as_deref().unwrap_or(&request.expect);
        let line = format!(
            "{} #{index}: {} -> {}: expected {} (dry-run {expected_dry})",
            case.name, request.from, request.to, request.expect
        );
        match run_request(&mesh, request) {
            Ok((observed, dry)) => {
                let ok = observed == request.expect && dry == expected_dry;
                let verdict = if ok { "" } else { ": FAILED" };
                eprintln!("{line}, observed {observed} (dry-run {dry}){verdict}");
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(error) => {
                failed += 1;
                eprintln!("{line}: FAILED: {error}");
            }
        }
    }
    (passed, failed)
}

#[test]
fn ztunnel_conformance_cases() {
    let dir = shared_authz_dir();
    let cases_path = std::env::var_os("AUTHZ_CASES").map_or(dir.join("cases.yaml"), Into::into);
    let world = std::fs::read_to_string(dir.join("world.yaml")).unwrap();
    let cases: CaseFile =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&cases_path).unwrap()).unwrap();
    let options = Options::default();
    let (mut passed, mut failed, mut skipped, mut cases_run) = (0, 0, 0, 0);
    for case in &cases.cases {
        if case.point == "ztunnel" {
            cases_run += 1;
            let (p, f) = run_case(case, &world, &options);
            passed += p;
            failed += f;
        } else {
            for index in 0..case.requests.len() {
                eprintln!(
                    "{} #{index}: skipped: point {} is not run here",
                    case.name, case.point
                );
            }
            skipped += case.requests.len();
        }
    }
    eprintln!("{cases_run} ztunnel cases: {passed} passed, {failed} failed, {skipped} skipped");
    assert_eq!(failed, 0, "see the lines above");
    assert!(passed > 0, "no ztunnel case ran");
}
