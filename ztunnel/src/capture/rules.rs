//! In-pod capture rules: what a standalone node agent installs inside a pod's network namespace
//! so that the pod's traffic reaches this proxy, and how it takes them out again.
//!
//! The rules and the policy route are istio-cni's (spec `redirection.md` §3, §3.2, §4, §7; the
//! iptables text byte for byte). A pod enrolled by upstream istio-cni and a pod enrolled by us
//! then look the same to the proxy, and either agent can take over a node without re-plumbing.
//!
//! Every command runs as `nsenter --net=<netns> <program> ...`. The namespace is named by a file
//! (a bind mount under `/var/run/netns` or `/proc/<pid>/ns/net`), and entering it in a child
//! process keeps the threads of this process, which share one async runtime, out of foreign
//! namespaces, with no `setns` (and no unsafe code) here. The functions block until the commands
//! finish (tens of milliseconds); call them from a blocking thread, not a runtime worker.
//!
//! [`install`] is called again for every pod each time the agent restarts, and removing then
//! reapplying would open a window in which new connections escape capture, that is, bypass mTLS
//! and policy. So with iptables it reads `iptables-save` first and writes nothing when our rules
//! are already exactly there; when they differ (partial, stale, other options) the old rules are
//! deleted and the new ones added in the same `iptables-restore` transaction per table. With
//! nftables the tables are always rewritten, but in one `nft -f` batch, which the kernel applies
//! atomically (see `nftables.rs` for why). Either way no packet ever sees the pod uncaptured.
//!
//! IPv6: with [`RuleOptions::ipv6`] the ip6tables rules are installed as well. If ip6tables
//! cannot be used in the namespace at all (no `ip6tables-save` binary, or it fails, as it does
//! when the kernel lacks IPv6 netfilter), the IPv6 part is skipped with a warning and IPv4
//! capture is still installed: such a pod has no IPv6 traffic that could escape. Once ip6tables
//! can be read, any failure to apply is a hard error. The IPv6 policy route is skipped when
//! `lo` has IPv6 disabled in the namespace, as istio-cni does.

mod iptables;
mod nftables;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use tracing::{debug, info};

/// Enough for any number of duplicates an older, non-checking installer could have left.
const MAX_RULE_DELETES: usize = 64;

/// Which firewall tool writes the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore` / `ip6tables-restore` (either iptables flavour); what istio-cni uses by
    /// default.
    #[default]
    Iptables,
    /// Native nftables: three `inet` tables, both address families in one batch.
    Nftables,
}

/// An address family, for the per-family iptables rule text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `iptables`, `ip -4`.
    V4,
    /// IPv6: `ip6tables`, `ip -6`.
    V6,
}

impl Family {
    fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    fn any_address(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOptions {
    /// Redirect the pod's DNS (UDP and TCP port 53) to the proxy's DNS port 15053 and put the
    /// proxy's own DNS flows in conntrack zone 1. Off by default: this agent has no DNS proxy yet,
    /// and redirecting to a port nobody listens on would break the pod's name resolution.
    pub dns_capture: bool,
    /// Capture IPv6 as well (ip6tables rules, `ip6` nft lines, the `-6` policy route).
    pub ipv6: bool,
}

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            dns_capture: false,
            ipv6: true,
        }
    }
}

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rules or routes were added or replaced.
    Applied,
    /// Everything was already exactly in place: nothing was written (iptables) or the atomic
    /// rewrite changed nothing (nftables), and no route or rule was added.
    AlreadyInPlace,
}

/// Why installing, removing or inspecting the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A program this module runs is not installed (or not in `PATH`).
    #[error("`{command}` in netns {netns}: program `{program}` is not installed (not in PATH)")]
    MissingProgram {
        /// The program that is missing.
        program: String,
        /// The full command line.
        command: String,
        /// The network namespace it was meant to run in.
        netns: PathBuf,
    },
    /// The command could not be started or talked to.
    #[error("`{command}` in netns {netns} could not be run")]
    Spawn {
        /// The full command line.
        command: String,
        /// The network namespace it was meant to run in.
        netns: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` in netns {netns} failed ({status}): {stderr}")]
    Failed {
        /// The full command line.
        command: String,
        /// The network namespace it ran in.
        netns: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr, trimmed (`(no stderr)` if nothing).
        stderr: String,
    },
}

/// The rule text fed to the backend's loader: for [`Backend::Iptables`] the IPv4
/// `iptables-restore` input (see [`iptables_ruleset`] for IPv6), for [`Backend::Nftables`] the
/// whole `nft -f` batch, both families included.
pub fn ruleset(backend: Backend, options: &RuleOptions) -> String {
    match backend {
        Backend::Iptables => iptables_ruleset(Family::V4, options),
        Backend::Nftables => nftables::ruleset(options),
    }
}

/// The `iptables-restore` (V4) or `ip6tables-restore` (V6) input for a namespace without our
/// chains. Jumps are appended, after whatever else the pod's built-in chains hold.
pub fn iptables_ruleset(family: Family, options: &RuleOptions) -> String {
    iptables::render(&iptables::sections(family, options))
}

/// Installs the capture rules and the policy route in `netns`, idempotently and without a
/// capture gap (see the module docs). Not safe to run concurrently for the same namespace.
pub fn install(
    netns: &Path,
    backend: Backend,
    options: &RuleOptions,
) -> Result<Outcome, RulesError> {
    let rules_changed = match backend {
        Backend::Iptables => iptables::install(netns, options)?,
        Backend::Nftables => nftables::install(netns, options)?,
    };
    let routes_changed = ensure_routing(netns, options)?;
    let outcome = if rules_changed || routes_changed {
        Outcome::Applied
    } else {
        Outcome::AlreadyInPlace
    };
    info!(netns = %netns.display(), ?backend, ?outcome, "capture rules installed");
    Ok(outcome)
}

/// Removes our chains (both families) or tables, the policy rule and the table-100 route from
/// `netns`. What is already absent is skipped; any other failure is an error.
pub fn remove(netns: &Path, backend: Backend) -> Result<(), RulesError> {
    match backend {
        Backend::Iptables => iptables::remove(netns)?,
        Backend::Nftables => nftables::remove(netns)?,
    }
    remove_routing(netns)?;
    info!(netns = %netns.display(), ?backend, "capture rules removed");
    Ok(())
}

/// Stops capturing new connections in `netns` while leaving what connections already captured
/// need to finish: the connmark rules (which also keep the kernel tracking connections there;
/// with no rule using conntrack left, an already redirected connection loses its translation and
/// is reset) and the policy route that brings replies back to the proxy. Follow with
/// [`remove`] once those connections have drained.
pub fn stop_capture(netns: &Path, backend: Backend) -> Result<(), RulesError> {
    match backend {
        Backend::Iptables => iptables::stop_capture(netns)?,
        Backend::Nftables => nftables::stop_capture(netns)?,
    }
    info!(netns = %netns.display(), ?backend, "capture stopped; connections may drain");
    Ok(())
}

/// Whether any of our chains (either family) or tables exist in `netns`.
pub fn installed(netns: &Path, backend: Backend) -> Result<bool, RulesError> {
    match backend {
        Backend::Iptables => iptables::installed(netns),
        Backend::Nftables => nftables::installed(netns),
    }
}

/// One finished command.
struct Ran {
    command: String,
    netns: PathBuf,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Stdout if the command succeeded, else the failure as an error.
    fn ok(self) -> Result<String, RulesError> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(self.into_error())
        }
    }

    fn into_error(self) -> RulesError {
        let stderr = match self.stderr.trim() {
            "" => "(no stderr)".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        let (command, netns, status) = (self.command, self.netns, self.status);
        RulesError::Failed {
            command,
            netns,
            status,
            stderr,
        }
    }

    /// Whether a failed `ip ... del` failed only because there was nothing to delete.
    fn already_absent(&self) -> bool {
        [
            "No such file or directory",
            "table does not exist",
            "No such process",
            "Address family not supported",
        ]
        .iter()
        .any(|msg| self.stderr.contains(msg))
    }
}

/// Runs `line` (program and arguments, split at whitespace) inside `netns`, feeding `stdin` if
/// given. A non-zero exit is not an error here (callers decide which failures mean "already
/// absent"); a missing program is.
fn run(netns: &Path, line: &str, stdin: Option<&str>) -> Result<Ran, RulesError> {
    let command = format!("nsenter --net={} {line}", netns.display());
    let spawn = |source| RulesError::Spawn {
        command: command.clone(),
        netns: netns.into(),
        source,
    };
    let missing = |program: &str| RulesError::MissingProgram {
        program: program.to_owned(),
        command: command.clone(),
        netns: netns.into(),
    };
    debug!(%command, "running");
    let mut net = OsString::from("--net=");
    net.push(netns);
    let piped = |on| if on { Stdio::piped() } else { Stdio::null() };
    let child = Command::new("nsenter")
        .arg(net)
        .args(line.split_whitespace())
        .stdin(piped(stdin.is_some()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing("nsenter")),
        Err(e) => return Err(spawn(e)),
    };
    // The inputs are a few KiB and fit the pipe buffer, so writing before reading cannot
    // deadlock. A child that exits early (bad netns, missing program) breaks the pipe; its own
    // exit status and stderr then say more than the write error would.
    let mut write_error = None;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take())
        && let Err(e) = pipe.write_all(input.as_bytes())
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        write_error = Some(e);
    }
    let output = child.wait_with_output().map_err(spawn)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // util-linux nsenter exits 127 with "failed to execute <program>" when exec finds nothing.
    if output.status.code() == Some(127) && stderr.contains("failed to execute") {
        return Err(missing(line.split_whitespace().next().unwrap_or_default()));
    }
    if let Some(e) = write_error {
        return Err(spawn(e));
    }
    Ok(Ran {
        command,
        netns: netns.into(),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
    })
}

/// Whether IPv6 is usable on `lo` in the namespace. `/proc/sys/net` shows the reader's netns,
/// hence the read through nsenter; no such file means a kernel without IPv6.
fn ipv6_enabled(netns: &Path) -> Result<bool, RulesError> {
    let ran = run(netns, "cat /proc/sys/net/ipv6/conf/lo/disable_ipv6", None)?;
    Ok(ran.status.success() && ran.stdout.trim() != "1")
}

/// The policy rule: replies carrying the return mark (restored from conntrack in mangle OUTPUT)
/// are looked up in table 100, whose only route is `local default dev lo`, so they reach the
/// proxy's transparent socket instead of leaving for the spoofed client address.
const RULE: &str = "fwmark 0x111/0xfff pref 32764 lookup 100";

/// `ip route` spec of the table-100 route.
fn route(family: Family) -> String {
    format!("local {} dev lo table 100", family.any_address())
}

fn is_our_route(line: &str) -> bool {
    line.split_whitespace()
        .take(4)
        .eq(["local", "default", "dev", "lo"])
}

/// `ip rule show` prints the rule as `32764:\tfrom all fwmark 0x111/0xfff lookup 100`.
fn is_our_rule(line: &str) -> bool {
    line.split_once(':').is_some_and(|(pref, rest)| {
        pref.trim() == "32764"
            && rest
                .split_whitespace()
                .eq("from all fwmark 0x111/0xfff lookup 100".split(' '))
    })
}

/// Adds the table-100 route and the fwmark rule where missing; true if anything was added.
/// Checked first rather than blindly re-added, so a reinstall changes nothing and can report
/// [`Outcome::AlreadyInPlace`].
fn ensure_routing(netns: &Path, options: &RuleOptions) -> Result<bool, RulesError> {
    let mut families = vec![Family::V4];
    if options.ipv6 {
        if ipv6_enabled(netns)? {
            families.push(Family::V6);
        } else {
            info!(netns = %netns.display(), "IPv6 disabled on lo; IPv6 policy route skipped");
        }
    }
    let mut changed = false;
    for family in families {
        let f = family.ip_flag();
        let routes = run(netns, &format!("ip {f} route show table 100"), None)?;
        // A table that was never used does not exist yet, which just means "no route".
        let have_route = if routes.status.success() {
            routes.stdout.lines().any(is_our_route)
        } else if routes.stderr.contains("table does not exist") {
            false
        } else {
            return Err(routes.into_error());
        };
        if !have_route {
            run(
                netns,
                &format!("ip {f} route replace {}", route(family)),
                None,
            )?
            .ok()?;
            changed = true;
        }
        let rules = run(netns, &format!("ip {f} rule show"), None)?.ok()?;
        if !rules.lines().any(is_our_rule) {
            let ran = run(netns, &format!("ip {f} rule add {RULE}"), None)?;
            // "File exists": someone added it since we looked, which is all we want.
            if !ran.status.success() && !ran.stderr.contains("File exists") {
                return Err(ran.into_error());
            }
            changed = true;
        }
    }
    Ok(changed)
}

/// Deletes the fwmark rule (every copy) and the table-100 route, both families.
fn remove_routing(netns: &Path) -> Result<(), RulesError> {
    for family in [Family::V4, Family::V6] {
        let f = family.ip_flag();
        for _ in 0..MAX_RULE_DELETES {
            let ran = run(netns, &format!("ip {f} rule del {RULE}"), None)?;
            if ran.status.success() {
                continue;
            }
            if ran.already_absent() {
                break;
            }
            return Err(ran.into_error());
        }
        let ran = run(netns, &format!("ip {f} route del {}", route(family)), None)?;
        if !ran.status.success() && !ran.already_absent() {
            return Err(ran.into_error());
        }
    }
    Ok(())
}
