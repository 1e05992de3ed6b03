//! Reads Kubernetes and Istio YAML (the objects a cluster would hold) into typed, validated
//! objects, collected in one [`Cluster`].
//!
//! Kinds read: `Namespace`, `ServiceAccount`, `Pod`, `Service` (`v1`), `Gateway`
//! (`gateway.networking.k8s.io`, for waypoints), and `AuthorizationPolicy`, `PeerAuthentication`,
//! `RequestAuthentication` (`security.istio.io/v1` and `v1beta1`). Documents of other kinds are
//! skipped with a [`LoadWarning`] naming file and document.
//!
//! Validation follows what the API server and istiod's webhook refuse, so a file that upstream
//! would reject is rejected here rather than half-applied; the security kinds also refuse
//! unknown fields, since a misspelt field silently ignored could widen a policy. Every error
//! names file, document, object and field path (see [`LoadError`]). Reading never panics on
//! input: every value is checked before use, and files are capped at [`MAX_FILE_BYTES`].

mod attachment;
mod authn;
mod authz;
mod cluster;
mod core_v1;
mod error;
mod gateway;
mod meta;
mod yaml;

#[cfg(test)]
mod tests;

use std::fs;
use std::io::Read;
use std::path::Path;

pub use attachment::{MAX_TARGET_REFS, TargetRef};
pub use authn::{
    ClaimToHeader, JwtHeader, JwtRule, MAX_JWT_RULES, MtlsMode, PeerAuthentication,
    RequestAuthentication,
};
pub use authz::{
    AuthorizationAction, AuthorizationPolicy, Condition, DRY_RUN_ANNOTATION, MAX_RULES,
    MAX_SERVICE_ACCOUNTS, Operation, Rule, Source, Values,
};
pub use cluster::{Cluster, Object};
pub use core_v1::{
    Container, ContainerPort, DATAPLANE_MODE_LABEL, DEFAULT_SERVICE_ACCOUNT, IpFamily, Namespace,
    Pod, PodPhase, Protocol, Service, ServiceAccount, ServicePort, ServiceType, TargetPort,
};
pub use error::{FieldError, LoadError, LoadWarning, Location, Problem};
pub use gateway::{AllowedNamespaces, Gateway, GatewayStatusAddress, Listener};
pub use meta::{
    DEFAULT_NAMESPACE, Kind, Labels, ObjectMeta, ObjectRef, OwnerReference, Timestamp,
    parse_go_bool, selects,
};
pub use yaml::FieldPath;

/// Largest file read, in bytes. A bigger file fails with [`LoadError::TooLarge`] instead of
/// being read into memory; 16 MiB holds tens of thousands of objects.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads one file of YAML documents.
pub fn load_file(path: &Path) -> Result<Cluster, LoadError> {
    let file = path.display().to_string();
    let read_error = |cause| LoadError::Read {
        file: file.clone(),
        cause,
    };
    let handle = fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte over the cap is enough to tell "too large" without reading the rest.
    let read = handle
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let len = u64::try_from(read).unwrap_or(u64::MAX);
    if len > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge { file, len });
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Cluster::parse(&file, &text)
}

/// Reads every `*.yaml` and `*.yml` file directly in `dir` (not in subdirectories), in file
/// name order, into one [`Cluster`]. The same kind/namespace/name in two files is an error, as
/// is any invalid document: nothing is returned unless everything was read.
pub fn load_dir(dir: &Path) -> Result<Cluster, LoadError> {
    let list_error = |cause| LoadError::ReadDir {
        dir: dir.to_owned(),
        cause,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut cluster = Cluster::new();
    for path in files {
        cluster.merge(load_file(&path)?)?;
    }
    Ok(cluster)
}
