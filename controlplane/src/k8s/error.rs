//! Why a file, a document or a field was refused, and what was only worth a warning.
//!
//! Every refusal names the file, the document (1-based, in file order), the object when its
//! kind and name are known, and the field path, so one line of output is enough to find the
//! mistake: `policies.yaml: document 3 (AuthorizationPolicy payments/allow-web):
//! spec.rules[0].from[0].source.ipBlocks[1]: "10.0.0.0/33" is not a CIDR`.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::meta::ObjectRef;
use super::yaml::FieldPath;

/// Where a document came from: a file (or any named source) and its 1-based document index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file path, or the name the caller gave an in-memory source.
    pub file: String,
    /// 1-based index of the YAML document within the file.
    pub document: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)
    }
}

/// Why loading failed. Nothing is loaded when any document fails: a half-read configuration
/// could drop a DENY policy and widen what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory could not be listed.
    #[error("{}: cannot list the directory", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        #[source]
        cause: io::Error,
    },
    /// A file could not be read (or is not UTF-8).
    #[error("{file}: cannot read the file")]
    Read {
        /// The file.
        file: String,
        /// What the OS said.
        #[source]
        cause: io::Error,
    },
    /// A file is larger than [`MAX_FILE_BYTES`](super::MAX_FILE_BYTES).
    #[error("{file}: {len} bytes, more than the {} allowed", super::MAX_FILE_BYTES)]
    TooLarge {
        /// The file.
        file: String,
        /// Its size (at least).
        len: u64,
    },
    /// A document is not well-formed YAML (the cause gives line and column).
    #[error("{location}: not valid YAML")]
    Syntax {
        /// The document.
        location: Location,
        /// The parser's error.
        #[source]
        cause: serde_yaml_ng::Error,
    },
    /// A document is well-formed YAML but not a valid object.
    #[error("{location}{}: {error}", ObjectSuffix(object.as_ref()))]
    Invalid {
        /// The document.
        location: Location,
        /// The object, once its kind and name were read.
        object: Option<ObjectRef>,
        /// The field and what is wrong with it (boxed: errors travel by value).
        error: Box<FieldError>,
    },
    /// Two documents define the same kind/namespace/name.
    #[error("{second}: {object} is already defined in {first}")]
    Duplicate {
        /// The object defined twice.
        object: ObjectRef,
        /// Where it was first defined.
        first: Location,
        /// Where it was defined again.
        second: Location,
    },
}

/// Formats ` (Kind ns/name)` after a location, or nothing.
struct ObjectSuffix<'a>(Option<&'a ObjectRef>);

impl fmt::Display for ObjectSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(object) => write!(f, " ({object})"),
            None => Ok(()),
        }
    }
}

/// A bad field: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FieldError {
    /// The field, e.g. `spec.rules[0].to[0].operation.ports[1]`.
    pub path: FieldPath,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The value has the wrong YAML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the field takes.
        expected: &'static str,
        /// What the document has.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("required")]
    Missing,
    /// An empty string (or map key) where a value is needed.
    #[error("must not be empty")]
    Empty,
    /// A field this kind does not have (refused for the security kinds, where ignoring a
    /// misspelt field could widen a policy).
    #[error("unknown field")]
    UnknownField,
    /// Not an IP address.
    #[error("{0:?} is not an IP address")]
    NotIp(String),
    /// Not an IP address or CIDR.
    #[error("{0:?} is not a CIDR")]
    NotCidr(String),
    /// Not a port number.
    #[error("{0:?} is not a port number (0-65535)")]
    NotPort(String),
    /// A name that Kubernetes would refuse.
    #[error("{value:?} is not a valid name: {rule}")]
    BadName {
        /// The name.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A value outside the allowed set.
    #[error("{value:?} is not one of {}", allowed.join(", "))]
    NotOneOf {
        /// The value.
        value: String,
        /// The allowed values.
        allowed: &'static [&'static str],
    },
    /// Two fields that cannot be used together.
    #[error("{0} cannot be used together with {1}")]
    Exclusive(&'static str, &'static str),
    /// A list longer than the API allows.
    #[error("{found} entries, at most {max} allowed")]
    TooMany {
        /// The limit.
        max: usize,
        /// The length found.
        found: usize,
    },
    /// Not an RFC 3339 UTC timestamp.
    #[error("{0:?} is not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SS[.frac]Z)")]
    BadTimestamp(String),
    /// A DENY or CUSTOM policy without rules (Istio validation refuses it).
    #[error("a {0} policy needs at least one rule")]
    RulesRequired(&'static str),
    /// `provider` on an action other than CUSTOM.
    #[error("provider is only allowed with action CUSTOM")]
    ProviderWithoutCustom,
    /// A CUSTOM policy without `provider`.
    #[error("action CUSTOM needs a provider")]
    CustomWithoutProvider,
    /// An explicitly empty list where Istio requires entries (`from: []`).
    #[error("empty list (omit the field instead)")]
    EmptyList,
    /// An entry with no field set (`source: {}`), which Istio validation refuses.
    #[error("must set at least one field")]
    NoFields,
    /// A `when` condition without `values` and `notValues`.
    #[error("needs values or notValues")]
    ConditionWithoutValues,
    /// A condition key Istio does not know.
    #[error("{0:?} is not a supported condition key")]
    UnknownConditionKey(String),
    /// A condition key Istio removed and refuses.
    #[error("{0:?} is no longer supported")]
    RemovedConditionKey(String),
    /// A service account that is not `namespace/name` or `name`, or has a wildcard.
    #[error("{0:?} is not \"namespace/name\" or \"name\" (no wildcards)")]
    BadServiceAccount(String),
    /// `targetRef(s)[].namespace` set (Istio refuses cross-namespace references).
    #[error("must be empty (a policy can only target objects in its own namespace)")]
    TargetRefNamespace,
    /// A path template with an operator other than a whole-segment `{*}` or `{**}`, or an
    /// operator after `{**}`.
    #[error("{0:?} is not a valid path template")]
    BadPathTemplate(String),
    /// `portLevelMtls` on a PeerAuthentication without a non-empty selector.
    #[error("portLevelMtls needs a selector with matchLabels")]
    PortLevelWithoutSelector,
}

/// Something loaded with a caveat: logged when found and kept on the
/// [`Cluster`](super::Cluster) so callers and tests can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadWarning {
    /// A document of a kind this control plane does not model; it was skipped.
    UnknownKind {
        /// The document.
        location: Location,
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
    },
    /// An `istio.io/dry-run` annotation that is not a boolean; the policy is enforced, as
    /// istiod does (policy.md §5.1).
    UnparsableDryRun {
        /// The document.
        location: Location,
        /// The policy.
        object: ObjectRef,
        /// The annotation's value.
        value: String,
    },
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind {
                location,
                api_version,
                kind,
            } => write!(
                f,
                "{location}: skipped: kind {kind:?} of apiVersion {api_version:?} is not supported"
            ),
            Self::UnparsableDryRun {
                location,
                object,
                value,
            } => write!(
                f,
                "{location} ({object}): annotation istio.io/dry-run {value:?} is not a boolean; \
                 the policy is enforced"
            ),
        }
    }
}
