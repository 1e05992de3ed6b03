//! Validated scalars of the local config file.
//!
//! Each is checked while serde_yaml_ng decodes it, so a bad value fails with the decoder's
//! field path and line/column attached (`workloads[2].workloadIps[0]: "10.0.0.x" is not an IP
//! address at line 9 column 7`), which a check after decoding could not give.

use std::fmt;
use std::net::IpAddr;

use crate::identity::{SpiffeId, TrustDomain};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::model::{GatewayDestination, NamespacedHostname, NetworkAddress};

/// Decodes a string scalar and converts it. The conversion runs inside the decoder's visit of
/// the scalar, so its error carries that scalar's own path and line/column.
fn parse_string<'de, D, T, E>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    deserializer.deserialize_str(StringVisitor(parse))
}

struct StringVisitor<F>(F);

impl<T, E, F> Visitor<'_> for StringVisitor<F>
where
    F: FnOnce(&str) -> Result<T, E>,
    E: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<Er: de::Error>(self, text: &str) -> Result<T, Er> {
        (self.0)(text).map_err(Er::custom)
    }
}

/// An IP address (`workloadIps[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct IpScalar(pub(super) IpAddr);

impl<'de> Deserialize<'de> for IpScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_string(deserializer, |text| {
            text.parse()
                .map(Self)
                .map_err(|_| format!("{text:?} is not an IP address"))
        })
    }
}

/// A `network/ip` VIP (`vips[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VipScalar(pub(super) NetworkAddress);

impl<'de> Deserialize<'de> for VipScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_string(deserializer, |text| NetworkAddress::parse(text).map(Self))
    }
}

/// A waypoint's `destination`, as `/config_dump` writes it: `network/ip` (a pod or a VIP) or
/// `namespace/hostname` (a service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GatewayDestinationScalar(pub(super) GatewayDestination);

impl<'de> Deserialize<'de> for GatewayDestinationScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_string(deserializer, |text| {
            let after_slash = text.split_once('/').map_or("", |(_, rest)| rest);
            if after_slash.parse::<IpAddr>().is_ok() {
                NetworkAddress::parse(text)
                    .map(|a| Self(GatewayDestination::Address(a)))
                    .map_err(|e| e.to_string())
            } else {
                NamespacedHostname::parse(text)
                    .map(|n| Self(GatewayDestination::Hostname(n)))
                    .map_err(|_| {
                        format!("{text:?} is neither \"network/ip\" nor \"namespace/hostname\"")
                    })
            }
        })
    }
}

/// A `namespace/hostname` key (`services:` of a workload).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ServiceKey(pub(super) NamespacedHostname);

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_string(deserializer, |text| {
            NamespacedHostname::parse(text).map(Self)
        })
    }
}

/// A SPIFFE ID (`subjectAltNames[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SanScalar(pub(super) SpiffeId);

impl<'de> Deserialize<'de> for SanScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_string(deserializer, |text| {
            SpiffeId::parse(text)
                .map(Self)
                .map_err(|e| format!("{text:?} is not a SPIFFE ID: {e}"))
        })
    }
}

/// A trust domain (`trustDomain`); empty means "the default", per xds.md §3.2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct TrustDomainScalar(pub(super) Option<TrustDomain>);

impl<'de> Deserialize<'de> for TrustDomainScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_string(deserializer, |text| {
            if text.is_empty() {
                return Ok(Self(None));
            }
            TrustDomain::parse(text)
                .map(|td| Self(Some(td)))
                .map_err(|e| format!("{text:?} is not a trust domain: {e}"))
        })
    }
}

/// A port number 1–65535: a service port, or an endpoint's target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PortScalar(pub(super) u16);

/// A service's target port 0–65535, where 0 defers to each endpoint's mapping (xds.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TargetPortScalar(pub(super) u16);

impl<'de> Deserialize<'de> for PortScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let port = deserializer.deserialize_any(PortVisitor { allow_zero: false })?;
        Ok(Self(port))
    }
}

impl<'de> Deserialize<'de> for TargetPortScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let port = deserializer.deserialize_any(PortVisitor { allow_zero: true })?;
        Ok(Self(port))
    }
}

/// Accepts an integer, or a string of digits (YAML map keys are often quoted), in range.
struct PortVisitor {
    allow_zero: bool,
}

impl PortVisitor {
    fn range(&self) -> &'static str {
        if self.allow_zero {
            "0-65535, 0 = per endpoint"
        } else {
            "1-65535"
        }
    }

    fn check<E: de::Error>(&self, value: u64, shown: &dyn fmt::Display) -> Result<u16, E> {
        match u16::try_from(value) {
            Ok(0) if !self.allow_zero => Err(self.reject(shown)),
            Ok(port) => Ok(port),
            Err(_) => Err(self.reject(shown)),
        }
    }

    fn reject<E: de::Error>(&self, shown: &dyn fmt::Display) -> E {
        E::custom(format_args!("{shown} is not a port ({})", self.range()))
    }
}

impl Visitor<'_> for PortVisitor {
    type Value = u16;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a port number ({})", self.range())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u16, E> {
        self.check(value, &value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u16, E> {
        match u64::try_from(value) {
            Ok(value) => self.check(value, &value),
            Err(_) => Err(self.reject(&value)),
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<u16, E> {
        let shown = format!("{value:?}");
        match value.parse::<u64>() {
            Ok(number) if value.bytes().all(|b| b.is_ascii_digit()) => self.check(number, &shown),
            _ => Err(self.reject(&shown)),
        }
    }
}
