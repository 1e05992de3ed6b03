//! What every object has: kind, name, namespace and `metadata`, validated as the API server
//! would, since names end up in resource keys (`ns/name`) and SPIFFE IDs where a stray `/` would
//! forge another shape.

use std::collections::BTreeMap;
use std::fmt;

use super::error::{FieldError, Problem};
use super::yaml::{Cursor, Fields};

/// Labels, annotations or a label selector: key → value, sorted.
pub type Labels = BTreeMap<String, String>;

/// Namespace used for a namespaced object that names none, as `kubectl apply` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds this control plane reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1 Namespace` (cluster-scoped).
    Namespace,
    /// `v1 ServiceAccount`.
    ServiceAccount,
    /// `v1 Pod`.
    Pod,
    /// `v1 Service`.
    Service,
    /// `gateway.networking.k8s.io Gateway` (waypoints).
    Gateway,
    /// `security.istio.io AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `security.istio.io PeerAuthentication`.
    PeerAuthentication,
    /// `security.istio.io RequestAuthentication`.
    RequestAuthentication,
}

impl Kind {
    /// The kind for an `apiVersion` and `kind` pair, if it is one this control plane reads.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        let security = matches!(
            api_version,
            "security.istio.io/v1" | "security.istio.io/v1beta1"
        );
        let gateway = matches!(
            api_version,
            "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1"
        );
        match (kind, api_version) {
            ("Namespace", "v1") => Some(Self::Namespace),
            ("ServiceAccount", "v1") => Some(Self::ServiceAccount),
            ("Pod", "v1") => Some(Self::Pod),
            ("Service", "v1") => Some(Self::Service),
            ("Gateway", _) if gateway => Some(Self::Gateway),
            ("AuthorizationPolicy", _) if security => Some(Self::AuthorizationPolicy),
            ("PeerAuthentication", _) if security => Some(Self::PeerAuthentication),
            ("RequestAuthentication", _) if security => Some(Self::RequestAuthentication),
            _ => None,
        }
    }

    /// The `kind` as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::ServiceAccount => "ServiceAccount",
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::Gateway => "Gateway",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::RequestAuthentication => "RequestAuthentication",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        self != Self::Namespace
    }

    /// The rule `metadata.name` must follow for this kind.
    fn name_rule(self) -> NameRule {
        match self {
            Self::Namespace => NameRule::Label,
            Self::Service => NameRule::Dns1035Label,
            _ => NameRule::Subdomain,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// The namespace; empty for a Namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// An RFC 3339 UTC instant, ordered chronologically (for "the oldest policy wins").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn`: fixed width, so text order is time order.
    sortable: String,
}

impl Timestamp {
    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form the API server writes. Offsets other
    /// than `Z` are refused rather than converted.
    pub fn parse(text: &str) -> Option<Self> {
        let body = text.strip_suffix('Z')?;
        let (seconds, fraction) = body.split_once('.').unwrap_or((body, ""));
        let bytes = seconds.as_bytes();
        let shape_ok = bytes.len() == 19
            && bytes.iter().enumerate().all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                10 => *b == b'T',
                13 | 16 => *b == b':',
                _ => b.is_ascii_digit(),
            });
        let fraction_ok = fraction.len() <= 9 && fraction.bytes().all(|b| b.is_ascii_digit());
        if !shape_ok || !fraction_ok || (body.contains('.') && fraction.is_empty()) {
            return None;
        }
        let field =
            |range: std::ops::Range<usize>| -> Option<u32> { seconds.get(range)?.parse().ok() };
        let (month, day) = (field(5..7)?, field(8..10)?);
        let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
        let in_range = (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour < 24
            && minute < 60
            && second <= 60;
        in_range.then(|| Self {
            sortable: format!("{seconds}.{fraction:0<9}"),
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Z", self.sortable)
    }
}

/// A controller or owner of an object (`metadata.ownerReferences[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerReference {
    /// The owner's kind, e.g. `ReplicaSet`.
    pub kind: String,
    /// The owner's name.
    pub name: String,
    /// Whether the owner is the managing controller.
    pub controller: bool,
}

/// The `metadata` fields this control plane uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, [`DEFAULT_NAMESPACE`] when absent; empty for cluster-scoped kinds.
    pub namespace: String,
    /// `metadata.uid`, if given.
    pub uid: Option<String>,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `metadata.annotations`.
    pub annotations: Labels,
    /// `metadata.generateName`, if given.
    pub generate_name: Option<String>,
    /// `metadata.creationTimestamp`, if given (files usually have none).
    pub creation_timestamp: Option<Timestamp>,
    /// Whether `metadata.deletionTimestamp` is set (the object is being deleted).
    pub deleting: bool,
    /// `metadata.ownerReferences`.
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    /// Reads `metadata` for an object of `kind`.
    pub(crate) fn read(kind: Kind, metadata: &Fields<'_>) -> Result<Self, FieldError> {
        let name = metadata.require("name", |c| validate_name(c, kind.name_rule()))?;
        let namespace = if kind.is_namespaced() {
            metadata
                .with("namespace", |c| validate_name(c, NameRule::Label))?
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
        } else {
            String::new()
        };
        Ok(Self {
            name,
            namespace,
            uid: metadata.opt_name("uid")?,
            labels: metadata.string_map("labels")?,
            annotations: metadata.string_map("annotations")?,
            generate_name: metadata.opt_name("generateName")?,
            creation_timestamp: metadata.with("creationTimestamp", read_timestamp)?,
            deleting: metadata
                .with("deletionTimestamp", read_timestamp)?
                .is_some(),
            owner_references: metadata.list("ownerReferences", read_owner)?,
        })
    }

    /// The object's reference for errors and indexes.
    pub fn object_ref(&self, kind: Kind) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

fn read_timestamp(cursor: &Cursor<'_>) -> Result<Timestamp, FieldError> {
    let text = cursor.str()?;
    Timestamp::parse(text)
        .ok_or_else(|| cursor.path().error(Problem::BadTimestamp(text.to_owned())))
}

fn read_owner(cursor: &Cursor<'_>) -> Result<OwnerReference, FieldError> {
    let fields = cursor.mapping()?;
    Ok(OwnerReference {
        kind: fields.require("kind", |c| c.non_empty_str().map(str::to_owned))?,
        name: fields.require("name", |c| c.non_empty_str().map(str::to_owned))?,
        controller: fields.flag("controller")?,
    })
}

/// The Kubernetes name rules used here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NameRule {
    /// RFC 1123 label: namespaces.
    Label,
    /// RFC 1035 label (starts with a letter): services.
    Dns1035Label,
    /// RFC 1123 subdomain: most other objects.
    Subdomain,
}

fn is_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (1..=63).contains(&bytes.len()) && inner_ok && ends_ok(bytes.first()) && ends_ok(bytes.last())
}

/// Reads a string and checks it against `rule`.
pub(crate) fn validate_name(cursor: &Cursor<'_>, rule: NameRule) -> Result<String, FieldError> {
    let text = cursor.non_empty_str()?;
    let (ok, explanation) = match rule {
        NameRule::Label => (
            is_label(text),
            "lower-case letters, digits and '-', at most 63, starting and ending alphanumeric",
        ),
        NameRule::Dns1035Label => (
            is_label(text) && text.starts_with(|c: char| c.is_ascii_lowercase()),
            "lower-case letters, digits and '-', at most 63, starting with a letter",
        ),
        NameRule::Subdomain => (
            text.len() <= 253 && text.split('.').all(is_label),
            "dot-separated lower-case labels, at most 253",
        ),
    };
    if ok {
        Ok(text.to_owned())
    } else {
        Err(cursor.path().error(Problem::BadName {
            value: text.to_owned(),
            rule: explanation,
        }))
    }
}

/// Parses a boolean the way Go's `strconv.ParseBool` does, which is how istiod reads boolean
/// annotations and labels.
pub fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether every `selector` entry is among `labels` (an empty selector selects everything).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}
