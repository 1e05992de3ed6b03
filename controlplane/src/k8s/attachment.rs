//! How the `security.istio.io` kinds say what they apply to: a workload `selector`, or
//! `targetRef`/`targetRefs` naming a Gateway, GatewayClass, Service or ServiceEntry (policy.md
//! §1.1, §1.8). The two are mutually exclusive.

use super::error::{FieldError, Problem};
use super::meta::Labels;
use super::yaml::{Cursor, Fields};

/// Most `targetRefs` entries Istio accepts.
pub const MAX_TARGET_REFS: usize = 16;

/// A reference to the object a policy attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    /// API group; empty (or `core`) for a Service.
    pub group: String,
    /// Kind, e.g. `Gateway`, `Service`.
    pub kind: String,
    /// Name, in the policy's namespace.
    pub name: String,
}

/// What a policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub(crate) selector: Option<Labels>,
    pub(crate) target_refs: Vec<TargetRef>,
}

/// Reads `selector`, `targetRef` and `targetRefs` of a policy `spec`. The legacy single
/// `targetRef` is read as a one-element `targetRefs`.
pub(crate) fn read_attachment(spec: &Fields<'_>) -> Result<Attachment, FieldError> {
    let present: Vec<&'static str> = ["selector", "targetRef", "targetRefs"]
        .into_iter()
        .filter(|key| spec.has(key))
        .collect();
    if let [first, second, ..] = present.as_slice() {
        return Err(spec
            .path()
            .field(second)
            .error(Problem::Exclusive(second, first)));
    }
    let selector = spec.with("selector", read_selector)?;
    let mut target_refs = spec.list("targetRefs", read_target_ref)?;
    if target_refs.len() > MAX_TARGET_REFS {
        return Err(spec.path().field("targetRefs").error(Problem::TooMany {
            max: MAX_TARGET_REFS,
            found: target_refs.len(),
        }));
    }
    if let Some(single) = spec.with("targetRef", read_target_ref)? {
        target_refs.push(single);
    }
    Ok(Attachment {
        selector,
        target_refs,
    })
}

/// Reads a workload selector (`{matchLabels: {...}}`, nothing else).
pub(crate) fn read_selector(cursor: &Cursor<'_>) -> Result<Labels, FieldError> {
    let fields = cursor.mapping()?;
    fields.deny_unknown(&["matchLabels"])?;
    fields.string_map("matchLabels")
}

fn read_target_ref(cursor: &Cursor<'_>) -> Result<TargetRef, FieldError> {
    let fields = cursor.mapping()?;
    fields.deny_unknown(&["group", "kind", "name", "namespace"])?;
    if let Some(namespace) = fields.get("namespace")
        && !namespace.str()?.is_empty()
    {
        return Err(namespace.path().error(Problem::TargetRefNamespace));
    }
    Ok(TargetRef {
        group: fields.opt_str("group")?.unwrap_or_default(),
        kind: fields.require("kind", |c| c.non_empty_str().map(str::to_owned))?,
        name: fields.require("name", |c| c.non_empty_str().map(str::to_owned))?,
    })
}
