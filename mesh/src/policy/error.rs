//! Why a policy was refused, shared by the xDS and the local-file conversions.
//!
//! A refused policy is reported whole (the xDS caller NACKs with this text), never half-applied:
//! dropping a bad entry would silently change what the policy allows. The error names the
//! policy, the exact place in it and the problem, so the operator can find the entry.

use std::fmt;

use super::model::{Clause, Match, PolicyKey, Rule};

/// A policy that cannot be turned into the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{policy}: {field}: {problem}")]
pub struct InvalidPolicy {
    /// The refused policy.
    pub policy: PolicyKey,
    /// Where in the policy the problem is.
    pub field: FieldPath,
    /// What is wrong there.
    pub problem: Problem,
}

/// A place in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    /// The policy name.
    Name,
    /// The policy namespace.
    Namespace,
    /// The scope.
    Scope,
    /// The action.
    Action,
    /// One entry of one list of one match, e.g. `rules[0].clauses[1].matches[0].source_ips[2]`.
    Entry {
        /// Index of the rule.
        rule: usize,
        /// Index of the clause in the rule.
        clause: usize,
        /// Index of the match in the clause.
        matched: usize,
        /// Name of the list, as the input spells it.
        list: &'static str,
        /// Index of the entry in the list.
        index: usize,
    },
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name => f.write_str("name"),
            Self::Namespace => f.write_str("namespace"),
            Self::Scope => f.write_str("scope"),
            Self::Action => f.write_str("action"),
            Self::Entry {
                rule,
                clause,
                matched,
                list,
                index,
            } => write!(
                f,
                "rules[{rule}].clauses[{clause}].matches[{matched}].{list}[{index}]"
            ),
        }
    }
}

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A scope number the wire format does not define.
    #[error("unknown scope {0}")]
    UnknownScope(i32),
    /// An action number the wire format does not define.
    #[error("unknown action {0}")]
    UnknownAction(i32),
    /// A string match with no kind set (upstream ztunnel drops it, which widens the match).
    #[error("string match has no kind set")]
    NoMatchKind,
    /// An address that is neither 4 nor 16 bytes long.
    #[error("address is {0} bytes, not 4 or 16")]
    AddressLength(usize),
    /// A prefix length longer than the address.
    #[error("invalid CIDR length {length} (at most {max})")]
    PrefixLength {
        /// The length given.
        length: u32,
        /// The longest valid length for the address family.
        max: u8,
    },
    /// A port number above 65535 (upstream ztunnel truncates it to 16 bits).
    #[error("port {0} is above 65535")]
    PortOutOfRange(u32),
    /// An empty string where a value is needed (Istio validation refuses empty strings).
    #[error("empty value")]
    Empty,
    /// A path template with an operator that is not a whole segment, or after `{**}`.
    #[error("{0:?} is not a valid path template")]
    BadTemplate(String),
    /// A `/` in a name or namespace, which would make `<namespace>/<name>` ambiguous.
    #[error("{0:?} contains '/'")]
    Slash(String),
}

/// A bad entry inside one match: the list's name as the input spells it, the entry's index and
/// the problem. [`convert_rule`] adds the rule, clause and match indices.
pub(super) type EntryError = (&'static str, usize, Problem);

/// Converts one rule, given as the match lists of its clauses, with `convert` for each match.
/// Shared by the xDS and the local conversions so both locate a bad entry the same way.
pub(super) fn convert_rule<'w, W: 'w>(
    rule: usize,
    clauses: impl Iterator<Item = &'w [W]>,
    convert: impl Fn(&W) -> Result<Match, EntryError>,
) -> Result<Rule, (FieldPath, Problem)> {
    let mut converted = Vec::new();
    for (clause, matches) in clauses.enumerate() {
        let matches = matches
            .iter()
            .enumerate()
            .map(|(matched, m)| {
                convert(m).map_err(|(list, index, problem)| {
                    let field = FieldPath::Entry {
                        rule,
                        clause,
                        matched,
                        list,
                        index,
                    };
                    (field, problem)
                })
            })
            .collect::<Result<_, _>>()?;
        converted.push(Clause { matches });
    }
    Ok(Rule { clauses: converted })
}
