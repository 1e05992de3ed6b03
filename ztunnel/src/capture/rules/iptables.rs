//! The iptables backend: the rule text of spec §3/§3.2, and reconciliation against what
//! `iptables-save` shows, so that a reinstall is a no-op and a repair is one transaction.
//!
//! Removal also goes through `iptables-restore`, deleting exactly what `iptables-save` shows is
//! ours, rather than running the separate `iptables -D/-F/-X` commands of §8 and ignoring their
//! "does not exist" errors: it is atomic per table, and every error it reports is a real one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tracing::{info, warn};

use super::{Family, RuleOptions, RulesError, run};

/// Our chains, in every table we use.
const CHAINS: [&str; 2] = ["ISTIO_PRERT", "ISTIO_OUTPUT"];

/// One table's part of an `iptables-restore` input (the lines between `*table` and `COMMIT`).
pub(super) struct Section {
    table: &'static str,
    lines: Vec<String>,
}

// Spec §3 in istio-cni's order, `{lo}` and `{probe}` standing for the family's loopback and
// probe-SNAT addresses (§3.2).
const MANGLE: &str = "\
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff";
const NAT_HEAD: &str = "\
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s {probe} -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d {lo} -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d {probe} -p tcp -m tcp -j ACCEPT";
const NAT_DNS: &str = "\
-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT ! -d {lo} -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053";
const NAT_TAIL: &str = "\
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d {lo} -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d {lo} -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001";
const RAW: &str = "\
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1";

/// Rule text per table for `family`. Without DNS capture the port-53 redirects and the whole
/// raw table are left out (§3.1).
pub(super) fn sections(family: Family, options: &RuleOptions) -> Vec<Section> {
    let (lo, probe) = match family {
        Family::V4 => ("127.0.0.1/32", "169.254.7.127/32"),
        Family::V6 => ("::1/128", "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128"),
    };
    let section = |table, templates: &[&str]| Section {
        table,
        lines: templates
            .iter()
            .flat_map(|t| t.lines())
            .map(|l| l.replace("{lo}", lo).replace("{probe}", probe))
            .collect(),
    };
    let dns = options.dns_capture;
    let mut out = vec![section("mangle", &[MANGLE])];
    out.push(section(
        "nat",
        if dns {
            &[NAT_HEAD, NAT_DNS, NAT_TAIL]
        } else {
            &[NAT_HEAD, NAT_TAIL]
        },
    ));
    if dns {
        out.push(section("raw", &[RAW]));
    }
    out
}

/// The `iptables-restore` input for `sections`.
pub(super) fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    for section in sections {
        push_table(&mut out, section.table, &section.lines);
    }
    out
}

fn push_table(out: &mut String, table: &str, lines: &[String]) {
    out.push('*');
    out.push_str(table);
    out.push('\n');
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
}

fn is_ours(chain: &str) -> bool {
    CHAINS.contains(&chain)
}

/// A (table, chain) pair.
type Key = (String, String);

/// Our part of one family's iptables state: which of our chains exist, and per chain the rules
/// that are ours, in order (all rules of our chains, and the jumps to them from other chains).
/// Other components' rules are ignored, so their presence never forces a reinstall.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Footprint {
    chains: BTreeSet<Key>,
    rules: BTreeMap<Key, Vec<String>>,
}

impl Footprint {
    /// Reads `iptables-save` output, or our own `iptables-restore` input (same syntax, and
    /// iptables-save prints our rules back exactly as we write them).
    pub(super) fn parse(text: &str) -> Footprint {
        let mut footprint = Footprint::default();
        let mut table = String::new();
        for line in text.lines().map(str::trim_end) {
            if let Some(name) = line.strip_prefix('*') {
                table = name.to_owned();
            } else if let Some(declaration) = line.strip_prefix(':') {
                if let Some(chain) = declaration.split_whitespace().next().filter(|c| is_ours(c)) {
                    footprint.chains.insert((table.clone(), chain.to_owned()));
                }
            } else if line.starts_with("-A ") {
                let tokens: Vec<&str> = line.split_whitespace().collect();
                let Some(chain) = tokens.get(1) else { continue };
                let jumps_to_ours = tokens
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && is_ours(w[1]));
                if is_ours(chain) || jumps_to_ours {
                    footprint
                        .rules
                        .entry((table.clone(), (*chain).to_owned()))
                        .or_default()
                        .push(line.to_owned());
                }
            }
        }
        footprint
    }

    /// No chain of ours and nothing jumping to one.
    pub(super) fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.rules.is_empty()
    }

    /// The part of the footprint in `table`.
    fn in_table(&self, table: &str) -> Footprint {
        Footprint {
            chains: self
                .chains
                .iter()
                .filter(|(t, _)| t == table)
                .cloned()
                .collect(),
            rules: self
                .rules
                .iter()
                .filter(|((t, _), _)| t == table)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The `iptables-restore --noflush` input that turns `have` into `want`: per table, first delete
/// the jumps to our chains (a referenced chain cannot be deleted), then flush and delete our
/// chains, then add the wanted rules. Each table is one transaction, so packets see either the
/// old rules or the new ones, never neither.
pub(super) fn transition(have: &Footprint, want: &[Section]) -> String {
    let mut tables: Vec<&str> = want.iter().map(|s| s.table).collect();
    for (table, _) in have.chains.iter().chain(have.rules.keys()) {
        if !tables.contains(&table.as_str()) {
            tables.push(table);
        }
    }
    let mut out = String::new();
    for table in tables {
        let mut lines = Vec::new();
        for ((t, chain), rules) in &have.rules {
            if t == table && !is_ours(chain) {
                lines.extend(
                    rules
                        .iter()
                        .filter_map(|r| r.strip_prefix("-A"))
                        .map(|spec| format!("-D{spec}")),
                );
            }
        }
        let ours = have.chains.iter().filter(|(t, _)| t == table);
        lines.extend(ours.clone().map(|(_, chain)| format!("-F {chain}")));
        lines.extend(ours.map(|(_, chain)| format!("-X {chain}")));
        if let Some(section) = want.iter().find(|s| s.table == table) {
            lines.extend(section.lines.iter().cloned());
        }
        if !lines.is_empty() {
            push_table(&mut out, table, &lines);
        }
    }
    out
}

fn tools(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("iptables-save", "iptables-restore"),
        Family::V6 => ("ip6tables-save", "ip6tables-restore"),
    }
}

/// Our footprint for `family`; `None` if IPv6 iptables cannot be used in the namespace at all
/// (logged as a warning when IPv6 rules were `wanted`). IPv4 is required.
fn read(netns: &Path, family: Family, wanted: bool) -> Result<Option<Footprint>, RulesError> {
    match run(netns, tools(family).0, None).and_then(|ran| ran.ok()) {
        Ok(text) => Ok(Some(Footprint::parse(&text))),
        Err(error) if family == Family::V6 => {
            if wanted {
                warn!(netns = %netns.display(), %error, "ip6tables unusable in this netns; IPv6 capture rules skipped");
            }
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

fn restore(netns: &Path, family: Family, script: &str) -> Result<(), RulesError> {
    run(
        netns,
        // -w: wait for the xtables lock (kube-proxy, Docker and firewalld take it too) rather
        // than fail.
        &format!("{} -w --noflush", tools(family).1),
        Some(script),
    )?
    .ok()
    .map(drop)
}

/// Makes both families match `options` (IPv6 wants nothing when it is off); true if anything
/// was changed.
pub(super) fn install(netns: &Path, options: &RuleOptions) -> Result<bool, RulesError> {
    let mut changed = false;
    for family in [Family::V4, Family::V6] {
        let want = if family == Family::V4 || options.ipv6 {
            sections(family, options)
        } else {
            Vec::new()
        };
        let Some(have) = read(netns, family, !want.is_empty())? else {
            continue;
        };
        let want_footprint = Footprint::parse(&render(&want));
        if have == want_footprint {
            continue;
        }
        if !have.is_empty() {
            info!(netns = %netns.display(), ?family, "capture rules differ from the expected ones; replacing them");
        }
        restore(netns, family, &transition(&have, &want))?;
        changed = true;
        // An iptables that prints rules back differently would make every later install
        // "differ" and reapply: harmless (the replacement is atomic) but worth knowing.
        if read(netns, family, true)?.is_some_and(|now| now != want_footprint) {
            warn!(netns = %netns.display(), ?family, "capture rules read back differ from the rules written");
        }
    }
    Ok(changed)
}

/// Deletes our jumps and chains in every table, both families.
pub(super) fn remove(netns: &Path) -> Result<(), RulesError> {
    for family in [Family::V4, Family::V6] {
        if let Some(have) = read(netns, family, false)?
            && !have.is_empty()
        {
            restore(netns, family, &transition(&have, &[]))?;
        }
    }
    Ok(())
}

/// Removes only the nat table's part (the redirects), both families: new connections stop
/// being captured, while the mangle rules keep conntrack alive in the namespace, so connections
/// already redirected keep their translation and can drain.
pub(super) fn stop_capture(netns: &Path) -> Result<(), RulesError> {
    for family in [Family::V4, Family::V6] {
        if let Some(have) = read(netns, family, false)? {
            let nat = have.in_table("nat");
            if !nat.is_empty() {
                restore(netns, family, &transition(&nat, &[]))?;
            }
        }
    }
    Ok(())
}

/// Whether any chain or jump of ours exists, either family.
pub(super) fn installed(netns: &Path) -> Result<bool, RulesError> {
    for family in [Family::V4, Family::V6] {
        if read(netns, family, false)?.is_some_and(|have| !have.is_empty()) {
            return Ok(true);
        }
    }
    Ok(false)
}
