//! The rollout reports, read from what the ztunnels counted (their `/metrics`), not from
//! configuration: what the mesh did is what decides whether a change is safe.
//!
//! - [`plaintext`]: per destination namespace and workload, plaintext connections accepted
//!   under PERMISSIVE (`connection_security_policy="none"`, counted by the destination's
//!   ztunnel), from which sources, and whether STRICT would refuse anything now.
//! - [`dry_run`]: per dry-run policy, how many connections it would have denied.
//!
//! Both take the samples of every ztunnel scraped; with two scrapes some time apart
//! ([`delta`]), they describe that window instead of each ztunnel's lifetime.

mod collect;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mesh::telemetry::scrape::Sample;

use table::Table;

pub use collect::{Scraped, collect};

const OPENED: &str = "istio_tcp_connections_opened_total";
const FAILED: &str = "istio_tcp_connections_failed_total";
const DRY_RUN: &str = "istio_authz_dry_run_total";

/// `namespace/workload` as the metrics name it; `unknown` parts stay visible as such.
type WorkloadKey = (String, String);

/// What one destination workload received.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Received {
    /// Connections opened over mTLS.
    pub mtls: u64,
    /// Plaintext connections accepted (opened and not refused), by source.
    pub plaintext_from: BTreeMap<String, u64>,
    /// Plaintext connections refused (STRICT, or a policy).
    pub refused: u64,
}

impl Received {
    /// Plaintext connections accepted, from every source.
    pub fn plaintext(&self) -> u64 {
        self.plaintext_from.values().sum()
    }
}

/// The plaintext report: every destination workload some ztunnel counted traffic for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PlaintextReport {
    /// By (namespace, workload).
    pub workloads: BTreeMap<WorkloadKey, Received>,
    /// The window the counts cover, for the heading (`None`: since each ztunnel started).
    pub window: Option<String>,
    /// How many ztunnels were read.
    pub ztunnels: usize,
}

impl PlaintextReport {
    /// Namespaces that receive plaintext now, with the callers STRICT would refuse.
    pub fn would_break(&self) -> BTreeMap<&str, Vec<(String, &str, u64)>> {
        let mut breaks: BTreeMap<&str, Vec<(String, &str, u64)>> = BTreeMap::new();
        for ((namespace, workload), received) in &self.workloads {
            for (source, count) in &received.plaintext_from {
                breaks.entry(namespace.as_str()).or_default().push((
                    source.clone(),
                    workload.as_str(),
                    *count,
                ));
            }
        }
        breaks
    }
}

/// Builds the plaintext report from the samples of `ztunnels` scrapes.
pub fn plaintext(samples: &[Sample], ztunnels: usize, window: Option<String>) -> PlaintextReport {
    let mut report = PlaintextReport {
        window,
        ztunnels,
        ..PlaintextReport::default()
    };
    let mut refused_from: BTreeMap<(WorkloadKey, String), u64> = BTreeMap::new();
    for sample in samples {
        if sample.label("reporter") != "destination" || sample.value <= 0.0 {
            continue;
        }
        let destination = (
            sample.label("destination_workload_namespace").to_owned(),
            sample.label("destination_workload").to_owned(),
        );
        // Only a proven mTLS hop is mTLS: upstream ztunnel labels accepted plaintext `unknown`
        // (ours `none`), and a report reading either must not call plaintext ready for STRICT.
        let plaintext = sample.label("connection_security_policy") != "mutual_tls";
        let count = count(sample.value);
        match sample.name.as_str() {
            OPENED => {
                let received = report.workloads.entry(destination).or_default();
                if plaintext {
                    *received.plaintext_from.entry(source(sample)).or_default() += count;
                } else {
                    received.mtls += count;
                }
            }
            FAILED if plaintext && sample.label("response_flags") == "DENY" => {
                *refused_from
                    .entry((destination, source(sample)))
                    .or_default() += count;
            }
            _ => {}
        }
    }
    // Refused connections were opened too; what remains was accepted.
    for ((destination, source), refused) in refused_from {
        let received = report.workloads.entry(destination).or_default();
        received.refused += refused;
        if let Some(opened) = received.plaintext_from.get_mut(&source) {
            *opened = opened.saturating_sub(refused);
            if *opened == 0 {
                received.plaintext_from.remove(&source);
            }
        }
    }
    report
}

fn source(sample: &Sample) -> String {
    match (
        sample.label("source_workload_namespace"),
        sample.label("source_workload"),
    ) {
        ("" | "unknown", "" | "unknown") => "unknown (not a known workload)".to_owned(),
        (namespace, workload) => format!("{namespace}/{workload}"),
    }
}

/// Counters are whole numbers; a float from the exposition text is rounded back.
fn count(value: f64) -> u64 {
    // Saturating float-to-int conversion: a negative or NaN value (never exported) reads as 0.
    value.round() as u64
}

/// What the counts cover: `since each started`, or `over 10m` for a two-scrape window.
fn window_phrase(window: Option<&str>) -> String {
    window.map_or_else(|| "since each started".to_owned(), |w| format!("over {w}"))
}

impl fmt::Display for PlaintextReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = window_phrase(self.window.as_deref());
        writeln!(
            f,
            "Connections received, as counted by {} ztunnel(s) {window} (reporter=destination):",
            self.ztunnels
        )?;
        if self.workloads.is_empty() {
            return writeln!(f, "\nNo connection has been received yet.");
        }
        let mut table = Table::new([
            "NAMESPACE",
            "WORKLOAD",
            "MTLS",
            "PLAINTEXT",
            "REFUSED",
            "PLAINTEXT FROM",
        ]);
        for ((namespace, workload), received) in &self.workloads {
            let from: Vec<String> = received
                .plaintext_from
                .iter()
                .map(|(source, n)| format!("{source} ({n})"))
                .collect();
            table.row([
                namespace.clone(),
                workload.clone(),
                received.mtls.to_string(),
                received.plaintext().to_string(),
                received.refused.to_string(),
                if from.is_empty() {
                    "-".to_owned()
                } else {
                    from.join(", ")
                },
            ]);
        }
        write!(f, "\n{table}\n")?;
        let breaks = self.would_break();
        let namespaces: BTreeSet<&str> = self.workloads.keys().map(|(ns, _)| ns.as_str()).collect();
        for namespace in namespaces {
            match breaks.get(namespace) {
                Some(callers) => {
                    let total: u64 = callers.iter().map(|(_, _, n)| n).sum();
                    writeln!(
                        f,
                        "{namespace}: STRICT now would refuse {total} plaintext connection(s) that are accepted today:"
                    )?;
                    for (source, workload, n) in callers {
                        writeln!(f, "  {source} -> {namespace}/{workload} ({n})")?;
                    }
                }
                None => writeln!(
                    f,
                    "{namespace}: ready for STRICT: no plaintext connection accepted {window}."
                )?,
            }
        }
        Ok(())
    }
}

/// What one dry-run policy would have done.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DryRunOutcome {
    /// `deny` or `allow` (the policy's action).
    pub action: String,
    /// Connections it would have denied.
    pub would_deny: u64,
    /// Connections it would have allowed.
    pub would_allow: u64,
}

/// The dry-run report, by policy (`namespace/name`, or `none` for "no dry-run ALLOW matched").
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DryRunReport {
    /// By (policy, action).
    pub policies: BTreeMap<(String, String), DryRunOutcome>,
    /// The window the counts cover (`None`: since each ztunnel started).
    pub window: Option<String>,
    /// How many ztunnels were read.
    pub ztunnels: usize,
}

/// Builds the dry-run report from `istio_authz_dry_run_total`.
pub fn dry_run(samples: &[Sample], ztunnels: usize, window: Option<String>) -> DryRunReport {
    let mut report = DryRunReport {
        window,
        ztunnels,
        ..DryRunReport::default()
    };
    for sample in samples
        .iter()
        .filter(|s| s.name == DRY_RUN && s.value > 0.0)
    {
        let action = sample.label("authz_dry_run_action").to_owned();
        let outcome = report
            .policies
            .entry((sample.label("policy").to_owned(), action.clone()))
            .or_insert_with(|| DryRunOutcome {
                action,
                ..DryRunOutcome::default()
            });
        match sample.label("authz_dry_run_result") {
            "denied" => outcome.would_deny += count(sample.value),
            _ => outcome.would_allow += count(sample.value),
        }
    }
    report
}

impl fmt::Display for DryRunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = window_phrase(self.window.as_deref());
        writeln!(
            f,
            "Dry-run authorization, as counted by {} ztunnel(s) {window} (istio_authz_dry_run_total):",
            self.ztunnels
        )?;
        if self.policies.is_empty() {
            return writeln!(f, "\nNo dry-run policy has been evaluated.");
        }
        let mut table = Table::new(["POLICY", "ACTION", "WOULD DENY", "WOULD ALLOW"]);
        for ((policy, _), outcome) in &self.policies {
            let policy = if policy == "none" {
                "(no dry-run ALLOW policy matched)".to_owned()
            } else {
                policy.clone()
            };
            table.row([
                policy,
                outcome.action.to_uppercase(),
                outcome.would_deny.to_string(),
                outcome.would_allow.to_string(),
            ]);
        }
        write!(f, "\n{table}\n")?;
        let denying: Vec<&str> = self
            .policies
            .iter()
            .filter(|(_, o)| o.would_deny > 0)
            .map(|((p, _), _)| match p.as_str() {
                "none" => "the dry-run ALLOW policies (none matched)",
                policy => policy,
            })
            .collect();
        if denying.is_empty() {
            writeln!(
                f,
                "Enforcing these policies now would deny nothing that was seen {window}."
            )
        } else {
            writeln!(
                f,
                "Enforcing would deny connections: {}. Who: the ztunnel log lines \"dry-run verdict\" (verdict=\"deny\").",
                denying.join(", ")
            )
        }
    }
}

/// Per series of one ztunnel, `after - before` (a counter that went down restarted: its new
/// value is the increase). Call it per ztunnel: two ztunnels export the same series names.
pub fn delta(before: &[Sample], after: &[Sample]) -> Vec<Sample> {
    let earlier: BTreeMap<(&str, &BTreeMap<String, String>), f64> = before
        .iter()
        .map(|s| ((s.name.as_str(), &s.labels), s.value))
        .collect();
    after
        .iter()
        .map(|s| {
            let base = earlier
                .get(&(s.name.as_str(), &s.labels))
                .copied()
                .unwrap_or(0.0);
            let value = if s.value >= base {
                s.value - base
            } else {
                s.value
            };
            Sample { value, ..s.clone() }
        })
        .collect()
}

#[cfg(test)]
mod tests;
