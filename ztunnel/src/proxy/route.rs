//! Deciding where an outbound connection goes, without touching a socket: a [`Resolution`] from
//! the state becomes a [`Plan`] (HBONE to a next hop, plain TCP, or refusal), which the outbound
//! path then carries out. Kept pure so every case is a table row in the tests.

use std::net::{IpAddr, SocketAddr};

use mesh::hbone::{Authority, HBONE_PORT};
use mesh::identity::SpiffeId;

use super::error::ConnectionError;
use crate::state::{Resolution, TunnelProtocol, Workload};

/// What to do with one outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Tunnel over HBONE.
    Hbone {
        /// TCP destination of the tunnel (`pod IP:15008`).
        next_hop: SocketAddr,
        /// The CONNECT target (`pod IP:target port`).
        authority: Authority,
        /// Identities the next hop may prove.
        expected: Vec<SpiffeId>,
        /// The service the client meant, for the `forwarded` header.
        service_host: Option<String>,
    },
    /// Plain TCP to this address (destination outside the mesh, or not HBONE-capable).
    Tcp(SocketAddr),
}

/// Turns a resolution of `original` into a plan.
pub(crate) fn plan(resolution: &Resolution, original: SocketAddr) -> Result<Plan, ConnectionError> {
    match resolution {
        Resolution::Workload { workload, port } => Ok(to_workload(
            workload,
            original.ip(),
            *port,
            resolution.expected_identities(),
            None,
        )),
        Resolution::Service {
            service,
            endpoint,
            target_port,
        } => {
            let ip = address_like(endpoint, original.ip()).ok_or_else(|| {
                ConnectionError::NoHealthyEndpoint {
                    service: service.key().to_string(),
                }
            })?;
            Ok(to_workload(
                endpoint,
                ip,
                *target_port,
                resolution.expected_identities(),
                Some(service.hostname.clone()),
            ))
        }
        Resolution::NoHealthyEndpoint { service } => Err(ConnectionError::NoHealthyEndpoint {
            service: service.key().to_string(),
        }),
        Resolution::NoPort { service, port } => Err(ConnectionError::NoServicePort {
            service: service.key().to_string(),
            port: *port,
        }),
        Resolution::Passthrough { .. } => Ok(Plan::Tcp(original)),
        // The original destination is the CONNECT target, untranslated: the waypoint routes by
        // it (hbone.md §8). Waypoints always take HBONE, whatever their workload's protocol.
        Resolution::Waypoint {
            waypoint,
            hbone_port,
            service,
            ..
        } => {
            let ip = address_like(waypoint, original.ip()).ok_or_else(|| {
                ConnectionError::WaypointUnavailable {
                    waypoint: waypoint.uid.clone(),
                    destination: original.to_string(),
                }
            })?;
            Ok(Plan::Hbone {
                next_hop: SocketAddr::new(ip, *hbone_port),
                authority: Authority::Addr(original),
                expected: resolution.expected_identities(),
                service_host: service.as_ref().map(|s| s.hostname.clone()),
            })
        }
        Resolution::WaypointUnavailable {
            waypoint,
            destination,
        } => Err(ConnectionError::WaypointUnavailable {
            waypoint: waypoint.clone(),
            destination: destination.clone(),
        }),
    }
}

fn to_workload(
    workload: &Workload,
    ip: IpAddr,
    port: u16,
    expected: Vec<SpiffeId>,
    service_host: Option<String>,
) -> Plan {
    let target = SocketAddr::new(ip, port);
    match workload.protocol {
        TunnelProtocol::Hbone => Plan::Hbone {
            next_hop: SocketAddr::new(ip, HBONE_PORT),
            authority: Authority::Addr(target),
            expected,
            service_host,
        },
        TunnelProtocol::Tcp => Plan::Tcp(target),
    }
}

/// The endpoint's address in the same family as the one the client dialed (a v4 client of a
/// dual-stack service reaches a v4 endpoint address).
fn address_like(endpoint: &Workload, dialed: IpAddr) -> Option<IpAddr> {
    endpoint
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dialed.is_ipv4())
        .or_else(|| endpoint.ips.first())
        .copied()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod waypoint_tests;
