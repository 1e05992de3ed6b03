//! The node agent's input: which pods on this node the mesh captures, and where each pod's
//! network namespace is. On a Kubernetes node istio-cni learns this from the API server and the
//! container runtime; standalone, an operator (or a test, or `make demo`) writes this file:
//!
//! ```yaml
//! pods:
//! - uid: 7c1e5c02-0d2b-4a51-9a4e-1f0c3b1f2a10   # the ZDS key; unique
//!   name: web-1
//!   namespace: storefront
//!   serviceAccount: web
//!   netns: web-1          # a name under /var/run/netns, or an absolute path
//! ```
//!
//! A pod listed is enrolled; a pod removed from the file is un-enrolled. A file that does not
//! parse or validate is refused as a whole, naming the entry and field, and the last good one
//! stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capture::zds::{PodInfo, Request, encode_request};

/// Where `ip netns add` puts named namespaces.
pub const NAMED_NETNS_DIR: &str = "/var/run/netns";

/// One pod to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Kubernetes pod UID.
    pub uid: String,
    /// Name, namespace, service account.
    pub info: PodInfo,
    /// Its network namespace file.
    pub netns: PathBuf,
}

/// Why the pods file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PodsFileError {
    /// It could not be read.
    #[error("reading {path} failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// It is not YAML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An entry is invalid.
    #[error("{path}: pods[{index}].{field}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which entry.
        index: usize,
        /// Which field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pods: Vec<RawPod>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    netns: String,
}

/// Reads and validates the pods file; pods come back keyed by UID.
pub fn load(path: &Path) -> Result<BTreeMap<String, PodSpec>, PodsFileError> {
    let text = std::fs::read_to_string(path).map_err(|cause| PodsFileError::Read {
        path: path.to_owned(),
        cause,
    })?;
    parse(&text, path)
}

/// Validates the text of a pods file (`path` only names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<BTreeMap<String, PodSpec>, PodsFileError> {
    // An empty file is an empty list: "capture nothing" must be easy to say.
    let raw: RawFile = if text.trim().is_empty() {
        RawFile { pods: Vec::new() }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| PodsFileError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?
    };
    let mut pods = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    for (index, pod) in raw.pods.into_iter().enumerate() {
        let invalid = |field: &'static str, problem: String| PodsFileError::Invalid {
            path: path.to_owned(),
            index,
            field,
            problem,
        };
        for (field, value) in [
            ("uid", &pod.uid),
            ("name", &pod.name),
            ("namespace", &pod.namespace),
            ("serviceAccount", &pod.service_account),
            ("netns", &pod.netns),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(field, "required".into()));
            }
        }
        let netns = netns_path(&pod.netns).map_err(|problem| invalid("netns", problem))?;
        if !namespaces.insert(netns.clone()) {
            return Err(invalid(
                "netns",
                format!("{} is already another pod's", netns.display()),
            ));
        }
        let spec = PodSpec {
            uid: pod.uid.clone(),
            info: PodInfo {
                name: pod.name,
                namespace: pod.namespace,
                service_account: pod.service_account,
            },
            netns,
        };
        // The add must fit one ZDS record, or ztunnel would refuse it.
        encode_request(&Request::Add {
            uid: spec.uid.clone(),
            info: Some(spec.info.clone()),
        })
        .map_err(|_| {
            invalid(
                "uid",
                "uid, name, namespace and serviceAccount are too long for one ZDS record".into(),
            )
        })?;
        if pods.insert(pod.uid.clone(), spec).is_some() {
            return Err(invalid("uid", format!("{} is listed twice", pod.uid)));
        }
    }
    Ok(pods)
}

fn netns_path(value: &str) -> Result<PathBuf, String> {
    let path = Path::new(value);
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    if value.contains('/') || value == "." || value == ".." {
        return Err(format!(
            "{value:?}: give a namespace name (as `ip netns add` takes) or an absolute path"
        ));
    }
    Ok(Path::new(NAMED_NETNS_DIR).join(value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const FILE: &str = "pods.yaml";

    fn refusal(text: &str) -> String {
        parse(text, Path::new(FILE)).unwrap_err().to_string()
    }

    #[test]
    fn reads_pods_by_uid_with_named_and_absolute_namespaces() {
        let pods = parse(
            "pods:
- uid: u1
  name: web-1
  namespace: shop
  serviceAccount: web
  netns: web-1
- uid: u2
  name: api-1
  namespace: shop
  serviceAccount: api
  netns: /proc/42/ns/net
",
            Path::new(FILE),
        )
        .unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods["u1"].netns, Path::new("/var/run/netns/web-1"));
        assert_eq!(pods["u1"].info.service_account, "web");
        assert_eq!(pods["u2"].netns, Path::new("/proc/42/ns/net"));
    }

    #[test]
    fn an_empty_file_captures_nothing() {
        assert!(parse("", Path::new(FILE)).unwrap().is_empty());
        assert!(parse("pods: []\n", Path::new(FILE)).unwrap().is_empty());
    }

    #[test]
    fn refusals_name_the_entry_and_field() {
        let base = "pods:\n- uid: u1\n  name: a\n  namespace: n\n  serviceAccount: s\n  netns: a\n";
        assert_eq!(
            refusal(&base.replace("  serviceAccount: s\n", "")),
            "pods.yaml: pods[0].serviceAccount: required"
        );
        assert!(refusal(&format!("{base}{}", &base[6..])).contains("pods[1].netns"));
        let twice = format!("{base}{}", base[6..].replace("netns: a", "netns: b"));
        assert_eq!(
            refusal(&twice),
            "pods.yaml: pods[1].uid: u1 is listed twice"
        );
        assert!(refusal(&base.replace("netns: a", "netns: ../a")).contains("pods[0].netns"));
        assert!(
            refusal(&base.replace("uid: u1", &format!("uid: {}", "x".repeat(2000))))
                .contains("too long")
        );
        assert!(refusal("pods:\n- uid: u1\n  colour: red\n").contains("unknown field"));
    }
}
