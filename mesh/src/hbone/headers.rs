//! What travels in a CONNECT request besides the target: the `:authority` forms, and the
//! `baggage`, `forwarded` and `traceparent` headers in exactly the formats upstream ztunnel
//! sends and reads, so peers of either implementation understand each other.

use std::fmt;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue};

/// `baggage` header name.
pub const BAGGAGE: &str = "baggage";
/// `forwarded` header name.
pub const FORWARDED: &str = "forwarded";
/// `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

/// Longest authority accepted (a DNS name of 253 bytes, a colon and a port).
pub const MAX_AUTHORITY_LEN: usize = 260;

/// The target of a CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// `ip:port` (IPv6 in brackets): a pod address.
    Addr(SocketAddr),
    /// `hostname:port`: a service by name (double HBONE through a gateway).
    Host {
        /// The hostname.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Why an authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No `:authority` at all.
    #[error("CONNECT request has no authority")]
    Missing,
    /// Longer than [`MAX_AUTHORITY_LEN`].
    #[error("authority is {0} bytes, more than {MAX_AUTHORITY_LEN}")]
    TooLong(usize),
    /// Neither `ip:port` nor `host:port`.
    #[error("authority {0:?} is not ip:port or host:port")]
    Malformed(String),
}

impl Authority {
    /// Parses an authority: the whole string as a socket address first, else `host:port`.
    pub fn parse(input: &str) -> Result<Self, AuthorityError> {
        if input.is_empty() {
            return Err(AuthorityError::Missing);
        }
        if input.len() > MAX_AUTHORITY_LEN {
            return Err(AuthorityError::TooLong(input.len()));
        }
        if let Ok(addr) = input.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let malformed = || AuthorityError::Malformed(input.to_owned());
        let (host, port) = input.rsplit_once(':').ok_or_else(malformed)?;
        let port: u16 = port.parse().map_err(|_| malformed())?;
        let valid_host = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid_host {
            return Err(malformed());
        }
        Ok(Self::Host {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The source (or destination) workload as `baggage` describes it. Empty fields are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.cluster.name`
    pub cluster: String,
    /// `k8s.namespace.name`
    pub namespace: String,
    /// Lower-case workload kind for `k8s.<kind>.name` (`deployment` when empty).
    pub workload_type: String,
    /// The value of `k8s.<kind>.name`.
    pub workload_name: String,
    /// `service.name` (canonical name)
    pub service_name: String,
    /// `service.version` (canonical revision)
    pub service_version: String,
    /// `cloud.region`
    pub region: String,
    /// `cloud.availability_zone`
    pub zone: String,
}

impl fmt::Display for Baggage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.workload_type.is_empty() {
            "deployment"
        } else {
            self.workload_type.as_str()
        };
        let workload_key = format!("k8s.{kind}.name");
        let pairs = [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            (workload_key.as_str(), &self.workload_name),
            ("service.name", &self.service_name),
            ("service.version", &self.service_version),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ];
        let mut first = true;
        for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// `for="<client ip:port>"`, plus `;host=<service>` when the intended service is known.
pub fn forwarded(client: SocketAddr, service_host: Option<&str>) -> String {
    match service_host {
        Some(host) => format!("for=\"{client}\";host={host}"),
        None => format!("for=\"{client}\""),
    }
}

/// A W3C `traceparent` with random trace and parent ids, not sampled.
pub fn traceparent() -> String {
    format!(
        "00-{:016x}{:016x}-{:016x}-00",
        fastrand::u64(1..),
        fastrand::u64(..),
        fastrand::u64(1..)
    )
}

/// The request headers upstream sends, in its order: `baggage`, `forwarded`, `traceparent`.
/// A value that cannot be a header (a control character smuggled in through xDS) is dropped
/// rather than failing the connection.
pub fn connect_headers(
    baggage: &Baggage,
    client: SocketAddr,
    service_host: Option<&str>,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    for (name, value) in [
        (BAGGAGE, baggage.to_string()),
        (FORWARDED, forwarded(client, service_host)),
        (TRACEPARENT, traceparent()),
    ] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    headers
}

/// The client address from a `forwarded` header's `for=` parameter, if it is one.
pub fn forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let value = headers.get(FORWARDED)?.to_str().ok()?;
    value.split(';').find_map(|param| {
        let (key, val) = param.trim().split_once('=')?;
        if !key.eq_ignore_ascii_case("for") {
            return None;
        }
        val.trim_matches('"').parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        let cases: Vec<(&str, Result<Authority, AuthorityError>)> = vec![
            (
                "10.244.1.7:8080",
                Ok(Authority::Addr("10.244.1.7:8080".parse().unwrap())),
            ),
            (
                "[fd00::7]:8080",
                Ok(Authority::Addr("[fd00::7]:8080".parse().unwrap())),
            ),
            (
                "reviews.bookinfo.svc.cluster.local:9080",
                Ok(Authority::Host {
                    host: "reviews.bookinfo.svc.cluster.local".into(),
                    port: 9080,
                }),
            ),
            ("", Err(AuthorityError::Missing)),
            (
                "10.0.0.1",
                Err(AuthorityError::Malformed("10.0.0.1".into())),
            ),
            (
                "host:99999",
                Err(AuthorityError::Malformed("host:99999".into())),
            ),
            (":80", Err(AuthorityError::Malformed(":80".into()))),
            ("a b:80", Err(AuthorityError::Malformed("a b:80".into()))),
            (
                "fd00::7:8080",
                Err(AuthorityError::Malformed("fd00::7:8080".into())),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Authority::parse(input), want, "input {input:?}");
        }
        let long = format!("{}:80", "a".repeat(300));
        assert_eq!(Authority::parse(&long), Err(AuthorityError::TooLong(303)));
    }

    #[test]
    fn baggage_order_and_omission() {
        let full = Baggage {
            cluster: "Kubernetes".into(),
            namespace: "default".into(),
            workload_type: String::new(),
            workload_name: "sleep".into(),
            service_name: "sleep".into(),
            service_version: "v1".into(),
            region: String::new(),
            zone: String::new(),
        };
        assert_eq!(
            full.to_string(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1"
        );
        assert_eq!(Baggage::default().to_string(), "");
        let job = Baggage {
            workload_type: "job".into(),
            workload_name: "j".into(),
            ..Default::default()
        };
        assert_eq!(job.to_string(), "k8s.job.name=j");
    }

    #[test]
    fn forwarded_and_traceparent_formats() {
        let client: SocketAddr = "10.244.2.5:46312".parse().unwrap();
        assert_eq!(
            forwarded(client, Some("httpbin.default.svc.cluster.local")),
            "for=\"10.244.2.5:46312\";host=httpbin.default.svc.cluster.local"
        );
        let v6: SocketAddr = "[fd00::5]:1".parse().unwrap();
        assert_eq!(forwarded(v6, None), "for=\"[fd00::5]:1\"");

        let tp = traceparent();
        assert_eq!(tp.len(), 55);
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[3]), ("00", "00"));
        assert!(parts[1].len() == 32 && parts[2].len() == 16);
        assert!(
            parts[1..3]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        );

        let headers = connect_headers(&Baggage::default(), client, None);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, [BAGGAGE, FORWARDED, TRACEPARENT]);
        assert_eq!(forwarded_for(&headers), Some(client));
    }
}
