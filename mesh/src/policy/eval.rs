//! Evaluating the policies that apply to one destination workload against one connection, the
//! way the destination ztunnel decides (policy.md §1.7, §2.4, §5).
//!
//! Pure: no logging, no metrics. The [`Decision`] carries everything the caller needs to log the
//! denial and the dry-run lines and to count them, so the data path decides first and reports
//! once, with its own connection context.

use std::fmt;
use std::net::IpAddr;

use crate::identity::SpiffeId;

use super::matching::{Facts, policy_matches};
use super::model::{Action, Authorization, PolicyKey};
use super::request::RequestAttrs;

/// The L4 attributes of one inbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionAttrs {
    /// The mTLS peer identity; `None` for plaintext.
    pub source_identity: Option<SpiffeId>,
    /// The TCP peer address (client pod, or the waypoint after a waypoint).
    pub source_ip: IpAddr,
    /// The destination pod IP.
    pub destination_ip: IpAddr,
    /// The workload (target) port.
    pub destination_port: u16,
}

/// The outcome of evaluating one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do with the connection: the decision over enforced policies only.
    pub verdict: Verdict,
    /// Present when at least one dry-run policy applied.
    pub dry_run: Option<DryRunReport>,
}

/// Allow or deny, with the reason for a deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the connection through.
    Allow,
    /// Close the connection.
    Deny(DenyReason),
}

impl Verdict {
    /// Whether the verdict lets the connection through.
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow)
    }

    /// `("allow" | "deny", policy)` as the dry-run verdict line gives them: the DENY policy
    /// that matched, else `none`.
    pub fn summary(&self) -> (&'static str, String) {
        match self {
            Self::Allow => ("allow", "none".to_owned()),
            Self::Deny(DenyReason::DeniedBy(policy)) => ("deny", policy.to_string()),
            Self::Deny(DenyReason::NoAllowMatched { .. }) => ("deny", "none".to_owned()),
        }
    }
}

/// Why a connection is denied. `Display` gives the text upstream ztunnel logs after
/// "connection closed due to policy rejection: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched; the first one in evaluation order.
    DeniedBy(PolicyKey),
    /// ALLOW policies applied but none matched.
    NoAllowMatched {
        /// The ALLOW policies that applied, in evaluation order: what the operator must read
        /// to see why the client was not let in.
        allow_policies: Vec<PolicyKey>,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeniedBy(policy) => write!(f, "explicitly denied by: {policy}"),
            // Upstream's words first (alerts grep for them), then which policies they were.
            Self::NoAllowMatched { allow_policies } => write!(
                f,
                "allow policies exist, but none allowed{}",
                Checked(allow_policies)
            ),
        }
    }
}

/// Policies named in one log line; a workload with dozens of ALLOW policies gets a bounded line.
const NAMED_POLICIES: usize = 5;

/// ` (checked ns/a, ns/b)`: which ALLOW policies a refused connection was held against; empty
/// when there were none.
pub struct Checked<'a>(pub &'a [PolicyKey]);

impl fmt::Display for Checked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str(" (checked ")?;
        for (i, policy) in self.0.iter().take(NAMED_POLICIES).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{policy}")?;
        }
        if self.0.len() > NAMED_POLICIES {
            write!(f, " and {} more", self.0.len() - NAMED_POLICIES)?;
        }
        f.write_str(")")
    }
}

/// What the dry-run policies would have done (policy.md §5.2, §5.4). Never enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunReport {
    /// Dry-run DENY policies that matched, in evaluation order: one "dry-run: deny policy
    /// match" line and one counter increment each.
    pub matched_denies: Vec<PolicyKey>,
    /// Dry-run ALLOW policies that matched, in evaluation order: one "dry-run: allow policy
    /// match" line each.
    pub matched_allows: Vec<PolicyKey>,
    /// The result of the dry-run ALLOW set, counted once per evaluation; `None` when no dry-run
    /// ALLOW policy applied.
    pub allow_set: Option<AllowSetOutcome>,
    /// Dry-run ALLOW policies applied, none matched, and no enforced ALLOW policy applied: the
    /// case upstream logs as "dry-run: no allow policies match".
    pub no_allow_matched: bool,
    /// The decision over enforced and dry-run policies together: what would happen if the
    /// dry-run annotation were removed.
    pub verdict: Verdict,
}

/// One increment of the dry-run counter (`istio_authz_dry_run_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunCount {
    /// `allow` or `deny`: which set.
    pub action: &'static str,
    /// `allowed` or `denied`.
    pub result: &'static str,
    /// The policy, or `none` when no dry-run ALLOW policy matched.
    pub policy: String,
}

impl DryRunReport {
    /// The increments this report makes (policy.md §5.4): one per matched dry-run DENY, and one
    /// for the dry-run ALLOW set when it applied. Both proxies count by this, so their
    /// counters agree.
    pub fn counts(&self) -> Vec<DryRunCount> {
        let mut counts: Vec<DryRunCount> = self
            .matched_denies
            .iter()
            .map(|policy| DryRunCount {
                action: "deny",
                result: "denied",
                policy: policy.to_string(),
            })
            .collect();
        match &self.allow_set {
            Some(AllowSetOutcome::Allowed(policy)) => counts.push(DryRunCount {
                action: "allow",
                result: "allowed",
                policy: policy.to_string(),
            }),
            Some(AllowSetOutcome::Denied) => counts.push(DryRunCount {
                action: "allow",
                result: "denied",
                policy: "none".to_owned(),
            }),
            None => {}
        }
        counts
    }
}

/// The counter outcome of the dry-run ALLOW set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowSetOutcome {
    /// The first matching dry-run ALLOW policy.
    Allowed(PolicyKey),
    /// No dry-run ALLOW policy matched.
    Denied,
}

/// Decides one connection against the policies that apply to its destination workload (see
/// [`applicable`](super::applicable)). Dry-run policies never change [`Decision::verdict`].
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    attrs: &ConnectionAttrs,
) -> Decision {
    decide_with(policies, &Facts::of(attrs))
}

/// [`evaluate`] for one HTTP request at a waypoint: the same order, with the L7 conditions
/// evaluated against `request`.
pub fn evaluate_request<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    attrs: &ConnectionAttrs,
    request: &RequestAttrs<'_>,
) -> Decision {
    decide_with(policies, &Facts::with_request(attrs, Some(request)))
}

fn decide_with<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    facts: &Facts<'_>,
) -> Decision {
    let outcomes: Vec<Outcome<'a>> = policies
        .into_iter()
        .map(|policy| Outcome {
            policy,
            matched: policy_matches(policy, facts),
        })
        .collect();

    let verdict = decide(outcomes.iter().filter(|o| !o.policy.dry_run));
    let dry_run = outcomes
        .iter()
        .any(|o| o.policy.dry_run)
        .then(|| dry_run_report(&outcomes));
    Decision { verdict, dry_run }
}

/// One policy and whether it matched the connection; each policy is matched once and the
/// result shared by the enforced and the dry-run decisions.
struct Outcome<'a> {
    policy: &'a Authorization,
    matched: bool,
}

/// Steps 2–5 of policy.md §1.7 (ztunnel has no CUSTOM).
fn decide<'o, 'a: 'o>(outcomes: impl Iterator<Item = &'o Outcome<'a>> + Clone) -> Verdict {
    if let Some(deny) = outcomes
        .clone()
        .find(|o| o.matched && o.policy.action == Action::Deny)
    {
        return Verdict::Deny(DenyReason::DeniedBy(deny.policy.key()));
    }
    let mut allow_policies = Vec::new();
    for outcome in outcomes.filter(|o| o.policy.action == Action::Allow) {
        if outcome.matched {
            return Verdict::Allow;
        }
        allow_policies.push(outcome.policy.key());
    }
    if allow_policies.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Deny(DenyReason::NoAllowMatched { allow_policies })
    }
}

fn dry_run_report(outcomes: &[Outcome<'_>]) -> DryRunReport {
    let dry = |action: Action| {
        outcomes
            .iter()
            .filter(move |o| o.policy.dry_run && o.policy.action == action)
    };
    let matched = |action: Action| -> Vec<PolicyKey> {
        dry(action)
            .filter(|o| o.matched)
            .map(|o| o.policy.key())
            .collect()
    };
    let matched_allows = matched(Action::Allow);
    let allow_set = dry(Action::Allow).next().map(|_| {
        matched_allows
            .first()
            .map_or(AllowSetOutcome::Denied, |first| {
                AllowSetOutcome::Allowed(first.clone())
            })
    });
    let enforced_allow = outcomes
        .iter()
        .any(|o| !o.policy.dry_run && o.policy.action == Action::Allow);
    DryRunReport {
        matched_denies: matched(Action::Deny),
        no_allow_matched: allow_set == Some(AllowSetOutcome::Denied) && !enforced_allow,
        matched_allows,
        allow_set,
        verdict: decide(outcomes.iter()),
    }
}

#[cfg(test)]
mod tests;
