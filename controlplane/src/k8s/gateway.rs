//! `gateway.networking.k8s.io` `Gateway`: read for waypoints only (xds.md §4.3), so only the
//! class, the listeners' protocol and namespace admission, and the status addresses are kept.

use std::net::IpAddr;

use super::core_v1::{one_of, read_ip};
use super::error::FieldError;
use super::meta::{Labels, ObjectMeta};
use super::yaml::{Cursor, Fields};

/// A Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Metadata; label `istio.io/waypoint-for` says which traffic a waypoint takes.
    pub meta: ObjectMeta,
    /// `spec.gatewayClassName`.
    pub class_name: String,
    /// `spec.listeners`.
    pub listeners: Vec<Listener>,
    /// `status.addresses`, written by the gateway controller when there is one.
    pub addresses: Vec<GatewayStatusAddress>,
}

/// One listener of a Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `name`.
    pub name: String,
    /// `port`.
    pub port: u16,
    /// `protocol`, e.g. `HBONE`.
    pub protocol: String,
    /// `allowedRoutes.namespaces`: which namespaces may attach (`Same` when absent).
    pub allowed_namespaces: AllowedNamespaces,
}

/// Namespaces a listener admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedNamespaces {
    /// Only the Gateway's own namespace (the default).
    Same,
    /// Every namespace.
    All,
    /// Namespaces whose labels match.
    Selector(Labels),
}

/// An address in `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayStatusAddress {
    /// `type: Hostname`.
    Hostname(String),
    /// `type: IPAddress` (the default type).
    Ip(IpAddr),
}

const FROM_VALUES: &[&str] = &["Same", "All", "Selector"];
const ADDRESS_TYPES: &[&str] = &["IPAddress", "Hostname"];

impl Gateway {
    pub(crate) fn read(meta: ObjectMeta, object: &Fields<'_>) -> Result<Self, FieldError> {
        let spec = object.require("spec", Cursor::mapping)?;
        let addresses = match object.with("status", Cursor::mapping)? {
            Some(status) => status.list("addresses", read_status_address)?,
            None => Vec::new(),
        };
        Ok(Self {
            meta,
            class_name: spec
                .require("gatewayClassName", |c| c.non_empty_str().map(str::to_owned))?,
            listeners: spec.list("listeners", read_listener)?,
            addresses,
        })
    }
}

fn read_listener(cursor: &Cursor<'_>) -> Result<Listener, FieldError> {
    let fields = cursor.mapping()?;
    let allowed = match fields.with("allowedRoutes", Cursor::mapping)? {
        Some(routes) => match routes.with("namespaces", Cursor::mapping)? {
            Some(namespaces) => read_allowed(&namespaces)?,
            None => AllowedNamespaces::Same,
        },
        None => AllowedNamespaces::Same,
    };
    Ok(Listener {
        name: fields.require("name", |c| c.non_empty_str().map(str::to_owned))?,
        port: fields.require("port", Cursor::port)?,
        protocol: fields.require("protocol", |c| c.non_empty_str().map(str::to_owned))?,
        allowed_namespaces: allowed,
    })
}

fn read_allowed(namespaces: &Fields<'_>) -> Result<AllowedNamespaces, FieldError> {
    let from = namespaces.with("from", |c| one_of(c, FROM_VALUES))?;
    Ok(match from {
        Some("All") => AllowedNamespaces::All,
        Some("Selector") => {
            let labels = match namespaces.with("selector", Cursor::mapping)? {
                Some(selector) => selector.string_map("matchLabels")?,
                None => Labels::new(),
            };
            AllowedNamespaces::Selector(labels)
        }
        _ => AllowedNamespaces::Same,
    })
}

fn read_status_address(cursor: &Cursor<'_>) -> Result<GatewayStatusAddress, FieldError> {
    let fields = cursor.mapping()?;
    let kind = fields.with("type", |c| one_of(c, ADDRESS_TYPES))?;
    if kind == Some("Hostname") {
        let value = fields.require("value", |c| c.non_empty_str().map(str::to_owned))?;
        Ok(GatewayStatusAddress::Hostname(value))
    } else {
        fields
            .require("value", read_ip)
            .map(GatewayStatusAddress::Ip)
    }
}
