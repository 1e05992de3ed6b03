//! The objects read from one or more sources, indexed by kind/namespace/name, and the reading
//! of one source's YAML documents into them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::authn::{PeerAuthentication, RequestAuthentication};
use super::authz::{AuthorizationPolicy, DRY_RUN_ANNOTATION};
use super::core_v1::{Namespace, Pod, Service, ServiceAccount};
use super::error::{FieldError, LoadError, LoadWarning, Location};
use super::gateway::Gateway;
use super::meta::{Kind, ObjectMeta, ObjectRef, parse_go_bool};
use super::yaml::{Cursor, FieldPath, Fields};

/// One object of a kind this control plane reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A Namespace.
    Namespace(Namespace),
    /// A ServiceAccount.
    ServiceAccount(ServiceAccount),
    /// A Pod.
    Pod(Pod),
    /// A Service.
    Service(Service),
    /// A Gateway.
    Gateway(Gateway),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// A RequestAuthentication.
    RequestAuthentication(RequestAuthentication),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Namespace(_) => Kind::Namespace,
            Self::ServiceAccount(_) => Kind::ServiceAccount,
            Self::Pod(_) => Kind::Pod,
            Self::Service(_) => Kind::Service,
            Self::Gateway(_) => Kind::Gateway,
            Self::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Self::PeerAuthentication(_) => Kind::PeerAuthentication,
            Self::RequestAuthentication(_) => Kind::RequestAuthentication,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Namespace(o) => &o.meta,
            Self::ServiceAccount(o) => &o.meta,
            Self::Pod(o) => &o.meta,
            Self::Service(o) => &o.meta,
            Self::Gateway(o) => &o.meta,
            Self::AuthorizationPolicy(o) => &o.meta,
            Self::PeerAuthentication(o) => &o.meta,
            Self::RequestAuthentication(o) => &o.meta,
        }
    }

    /// The object's kind/namespace/name.
    pub fn object_ref(&self) -> ObjectRef {
        self.meta().object_ref(self.kind())
    }
}

/// Every object read, by kind/namespace/name, with where each came from, and the warnings
/// collected while reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    objects: BTreeMap<ObjectRef, (Object, Location)>,
    warnings: Vec<LoadWarning>,
}

/// Generates a typed iterator over the objects of one kind.
macro_rules! objects_of_kind {
    ($(#[$doc:meta])* $method:ident, $variant:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $method(&self) -> impl Iterator<Item = &$ty> {
            self.objects.values().filter_map(|(object, _)| match object {
                Object::$variant(inner) => Some(inner),
                _ => None,
            })
        }
    };
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every YAML document of `text`; `file` names the source in errors. A duplicate
    /// kind/namespace/name within the text, or any invalid document, is an error.
    pub fn parse(file: &str, text: &str) -> Result<Self, LoadError> {
        let mut cluster = Self::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let location = Location {
                file: file.to_owned(),
                document: index + 1,
            };
            // Stop at the first syntax error: the parser cannot resynchronise after one.
            let value = Value::deserialize(document).map_err(|cause| LoadError::Syntax {
                location: location.clone(),
                cause,
            })?;
            if let Some(object) = read_document(&value, &location, &mut cluster.warnings)? {
                cluster.insert(object, location)?;
            }
        }
        Ok(cluster)
    }

    /// Adds `object`; an object with the same kind/namespace/name already present is an error.
    pub fn insert(&mut self, object: Object, location: Location) -> Result<(), LoadError> {
        let key = object.object_ref();
        if let Some((_, first)) = self.objects.get(&key) {
            return Err(LoadError::Duplicate {
                object: key,
                first: first.clone(),
                second: location,
            });
        }
        self.objects.insert(key, (object, location));
        Ok(())
    }

    /// Adds every object of `other`; a kind/namespace/name present in both is an error.
    pub fn merge(&mut self, other: Cluster) -> Result<(), LoadError> {
        for (object, location) in other.objects.into_values() {
            self.insert(object, location)?;
        }
        self.warnings.extend(other.warnings);
        Ok(())
    }

    /// Adds every object of `other`, replacing any object with the same kind/namespace/name
    /// (how a conformance case's config is laid over its world).
    pub fn overlay(&mut self, other: Cluster) {
        self.objects.extend(other.objects);
        self.warnings.extend(other.warnings);
    }

    /// The object with this kind/namespace/name.
    pub fn get(&self, key: &ObjectRef) -> Option<&Object> {
        self.objects.get(key).map(|(object, _)| object)
    }

    /// Where the object with this kind/namespace/name was read.
    pub fn location(&self, key: &ObjectRef) -> Option<&Location> {
        self.objects.get(key).map(|(_, location)| location)
    }

    /// Every object, sorted by kind, namespace, name.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values().map(|(object, _)| object)
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object was read.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// What was skipped or read with a caveat, in reading order.
    pub fn warnings(&self) -> &[LoadWarning] {
        &self.warnings
    }

    /// The namespace called `name`.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        let key = ObjectRef {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.to_owned(),
        };
        match self.get(&key) {
            Some(Object::Namespace(namespace)) => Some(namespace),
            _ => None,
        }
    }

    objects_of_kind!(
        /// Every Namespace, by name.
        namespaces, Namespace, Namespace
    );
    objects_of_kind!(
        /// Every ServiceAccount, by namespace and name.
        service_accounts, ServiceAccount, ServiceAccount
    );
    objects_of_kind!(
        /// Every Pod, by namespace and name.
        pods, Pod, Pod
    );
    objects_of_kind!(
        /// Every Service, by namespace and name.
        services, Service, Service
    );
    objects_of_kind!(
        /// Every Gateway, by namespace and name.
        gateways, Gateway, Gateway
    );
    objects_of_kind!(
        /// Every AuthorizationPolicy, by namespace and name.
        authorization_policies, AuthorizationPolicy, AuthorizationPolicy
    );
    objects_of_kind!(
        /// Every PeerAuthentication, by namespace and name.
        peer_authentications, PeerAuthentication, PeerAuthentication
    );
    objects_of_kind!(
        /// Every RequestAuthentication, by namespace and name.
        request_authentications, RequestAuthentication, RequestAuthentication
    );
}

/// Reads one document: `None` for an empty document or an unknown kind (with a warning).
fn read_document(
    value: &Value,
    location: &Location,
    warnings: &mut Vec<LoadWarning>,
) -> Result<Option<Object>, LoadError> {
    if value.is_null() {
        return Ok(None);
    }
    let invalid = |object: Option<ObjectRef>, error: FieldError| LoadError::Invalid {
        location: location.clone(),
        object,
        error: Box::new(error),
    };
    let root = Cursor::new(value, FieldPath::root());
    let fields = root.mapping().map_err(|e| invalid(None, e))?;
    let text = |key: &str| {
        fields
            .require(key, |c| c.non_empty_str().map(str::to_owned))
            .map_err(|e| invalid(None, e))
    };
    let (api_version, kind_text) = (text("apiVersion")?, text("kind")?);
    let Some(kind) = Kind::from_type(&api_version, &kind_text) else {
        let warning = LoadWarning::UnknownKind {
            location: location.clone(),
            api_version,
            kind: kind_text,
        };
        tracing::warn!(%warning, "skipped a document");
        warnings.push(warning);
        return Ok(None);
    };
    let meta = fields
        .require("metadata", Cursor::mapping)
        .and_then(|metadata| ObjectMeta::read(kind, &metadata))
        .map_err(|e| invalid(None, e))?;
    let key = meta.object_ref(kind);
    let object = read_object(kind, meta, &fields).map_err(|e| invalid(Some(key.clone()), e))?;
    if let Object::AuthorizationPolicy(policy) = &object
        && let Some(warning) = dry_run_warning(policy, location, key)
    {
        tracing::warn!(%warning, "policy enforced");
        warnings.push(warning);
    }
    Ok(Some(object))
}

/// Reads the kind-specific part of an object whose metadata is already read.
fn read_object(kind: Kind, meta: ObjectMeta, fields: &Fields<'_>) -> Result<Object, FieldError> {
    match kind {
        Kind::Namespace => Ok(Object::Namespace(Namespace { meta })),
        Kind::ServiceAccount => Ok(Object::ServiceAccount(ServiceAccount { meta })),
        Kind::Pod => Pod::read(meta, fields).map(Object::Pod),
        Kind::Service => Service::read(meta, fields).map(Object::Service),
        Kind::Gateway => Gateway::read(meta, fields).map(Object::Gateway),
        Kind::AuthorizationPolicy => {
            AuthorizationPolicy::read(meta, fields).map(Object::AuthorizationPolicy)
        }
        Kind::PeerAuthentication => {
            PeerAuthentication::read(meta, fields).map(Object::PeerAuthentication)
        }
        Kind::RequestAuthentication => {
            RequestAuthentication::read(meta, fields).map(Object::RequestAuthentication)
        }
    }
}

/// A warning for a dry-run annotation istiod cannot parse (it logs it and enforces the policy,
/// policy.md §5.1); an empty value is skipped silently, as istiod does.
fn dry_run_warning(
    policy: &AuthorizationPolicy,
    location: &Location,
    object: ObjectRef,
) -> Option<LoadWarning> {
    let value = policy.meta.annotations.get(DRY_RUN_ANNOTATION)?;
    (!value.is_empty() && parse_go_bool(value).is_none()).then(|| LoadWarning::UnparsableDryRun {
        location: location.clone(),
        object,
        value: value.clone(),
    })
}
