//! Reaching istiod (or our control plane) the way upstream node proxies do, from the same
//! settings: `CA_ROOT_CA`/`XDS_ROOT_CA` trust anchors given as a file or as PEM text, the
//! `AUTH_TOKEN` bearer token, the gRPC channel, and the metadata every xDS stream carries.
//! Shared by ztunnel and the waypoint so both authenticate and fail identically.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use tokio::runtime::Handle;
use tonic::transport::Channel;
use tracing::warn;

use crate::grpc::{self, GrpcError};
use crate::identity::{Token, certs_from_pem};
use crate::xds::MetadataSource;

/// Where upstream mounts the projected service-account token.
pub const DEFAULT_TOKEN_PATH: &str = "./var/run/secrets/tokens/istio-token";

/// Why a control-plane setting is unusable; names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The address, server name or TLS setup was refused.
    #[error("{setting}: {source}")]
    Grpc {
        /// The setting at fault, e.g. `XDS_ADDRESS`.
        setting: &'static str,
        /// Why.
        #[source]
        source: GrpcError,
    },
    /// A roots file could not be read.
    #[error("{setting}: reading {path} failed")]
    Read {
        /// The setting.
        setting: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The roots hold no usable certificate.
    #[error("{setting}: {value}: no usable PEM certificate")]
    NoCertificates {
        /// The setting.
        setting: &'static str,
        /// A file name, or `inline PEM`.
        value: String,
    },
}

/// Trust anchors from a PEM file, or from the PEM text itself (upstream accepts both).
pub fn read_roots(
    setting: &'static str,
    value: &str,
) -> Result<Vec<CertificateDer<'static>>, ControlError> {
    let (text, shown) = if value.contains("-----BEGIN") {
        (value.to_owned(), "inline PEM".to_owned())
    } else {
        let text = std::fs::read_to_string(value).map_err(|source| ControlError::Read {
            setting,
            path: value.to_owned(),
            source,
        })?;
        (text, value.to_owned())
    };
    certs_from_pem(&text).map_err(|_| ControlError::NoCertificates {
        setting,
        value: shown,
    })
}

/// `AUTH_TOKEN` as upstream reads it: a path to a token file, the token itself, or, unset, the
/// projected token at its default path when mounted.
pub fn auth_token(value: Option<&str>) -> Token {
    match value.filter(|v| !v.is_empty()) {
        Some(v) if Path::new(v).exists() => Token::File(v.into()),
        Some(v) => Token::Static(v.to_owned()),
        None if Path::new(DEFAULT_TOKEN_PATH).exists() => Token::File(DEFAULT_TOKEN_PATH.into()),
        None => Token::None,
    }
}

/// A lazily connecting TLS channel to `address`, proving `alt_hostname` (or the address's host)
/// against `roots`. Its background work runs on `control`.
pub fn channel(
    setting: &'static str,
    address: &str,
    roots: &[CertificateDer<'static>],
    alt_hostname: Option<&str>,
    control: &Handle,
) -> Result<Channel, ControlError> {
    let fail = |source| ControlError::Grpc { setting, source };
    let uri = grpc::parse_address(address).map_err(fail)?;
    let tls = grpc::client_config(roots).map_err(fail)?;
    let name = grpc::server_name(&uri, alt_hostname).map_err(fail)?;
    let _on_control = control.enter();
    Ok(grpc::channel(uri, tls, name))
}

/// The metadata of every xDS stream: the bearer token (re-read each time, so a rotated token
/// is used on the next reconnect) and the cluster id.
pub fn xds_metadata(token: Token, cluster_id: String) -> MetadataSource {
    Box::new(move || {
        let mut metadata = tonic::metadata::MetadataMap::new();
        match token.read() {
            Ok(Some(token)) => {
                if let Ok(value) = format!("Bearer {token}").parse() {
                    metadata.insert("authorization", value);
                }
            }
            Ok(None) => {}
            Err(err) => warn!(error = %err, "xDS token unavailable; connecting without it"),
        }
        if let Ok(value) = cluster_id.parse() {
            metadata.insert("clusterid", value);
        }
        metadata
    })
}

/// `CA_HEADER_<name>` environment variables: extra headers on every CA request.
pub fn ca_headers_from_env() -> std::collections::BTreeMap<String, String> {
    std::env::vars()
        .filter_map(|(k, v)| {
            k.strip_prefix("CA_HEADER_")
                .map(|name| (name.to_owned(), v))
        })
        .collect()
}

/// The xDS node as Istio's proxies describe themselves (xds.md §1.3): id
/// `<kind>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`, metadata `metadata` plus
/// every `ISTIO_META_<KEY>` environment variable as `<KEY>`.
pub fn xds_node(
    kind: &str,
    instance_ip: &str,
    pod: &str,
    namespace: &str,
    metadata: &[(&str, &str)],
) -> xds_proto::envoy::config::core::v3::Node {
    let id = format!("{kind}~{instance_ip}~{pod}.{namespace}~{namespace}.svc.cluster.local");
    let string = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
    };
    let mut fields = std::collections::BTreeMap::new();
    for (key, value) in metadata {
        fields.insert((*key).to_owned(), string(value));
    }
    for (key, value) in std::env::vars() {
        if let Some(key) = key.strip_prefix("ISTIO_META_") {
            fields.insert(key.to_owned(), string(&value));
        }
    }
    xds_proto::envoy::config::core::v3::Node {
        id,
        metadata: Some(prost_types::Struct { fields }),
        ..Default::default()
    }
}
