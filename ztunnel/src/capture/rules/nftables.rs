//! The native nftables backend: the three `inet` tables of spec §7, written in one `nft -f`
//! batch.
//!
//! Unlike the iptables backend this one does not compare before writing: `nft list` prints rules
//! normalised in ways that vary by nft version (priorities become names, masks are widened to 32
//! bits, some expressions are simplified), so predicting the listing would be brittle. It does
//! not need to: the batch (`add table` + `flush table`, then the bodies) is one kernel
//! transaction, so packets see either the old rules or the new ones and reapplying opens no
//! capture gap. The listing is compared before and after only to report the outcome.

use std::path::Path;

use super::{RuleOptions, RulesError, run};

const TABLES: [&str; 3] = [
    "istio-ambient-nat",
    "istio-ambient-mangle",
    "istio-ambient-raw",
];

// Spec §7, one rule per line (nft 1.0 rejects the spec's `{ ...; }` one-liners without a `;`
// before `}`). `@v6` marks a line kept only with IPv6, `@dns` one kept only with DNS capture.
// The mangle output chain is `type route` so that the restored mark makes the kernel route the
// reply again (§11).
const NAT_AND_MANGLE: &str = "\
table inet istio-ambient-nat {
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump istio-prerouting
  }
  chain output {
    type nat hook output priority -100; policy accept;
    jump istio-output
  }
  chain istio-prerouting {
    meta l4proto tcp ip saddr 169.254.7.127 counter accept
    @v6 meta l4proto tcp ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept
    ip daddr != 127.0.0.1/32 tcp dport != 15008 meta mark & 0xfff != 0x539 counter redirect to :15006
    @v6 ip6 daddr != ::1/128 tcp dport != 15008 meta mark & 0xfff != 0x539 counter redirect to :15006
  }
  chain istio-output {
    meta l4proto tcp ip daddr 169.254.7.127 counter accept
    @v6 meta l4proto tcp ip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept
    @dns oifname != \"lo\" meta mark & 0xfff != 0x539 udp dport 53 counter redirect to :15053
    @dns ip daddr != 127.0.0.1/32 tcp dport 53 meta mark & 0xfff != 0x539 counter redirect to :15053
    @dns @v6 ip6 daddr != ::1/128 tcp dport 53 meta mark & 0xfff != 0x539 counter redirect to :15053
    meta l4proto tcp meta mark & 0xfff == 0x111 counter accept
    oifname \"lo\" ip daddr != 127.0.0.1/32 counter accept
    @v6 oifname \"lo\" ip6 daddr != ::1/128 counter accept
    meta l4proto tcp ip daddr != 127.0.0.1/32 meta mark & 0xfff != 0x539 counter redirect to :15001
    @v6 meta l4proto tcp ip6 daddr != ::1/128 meta mark & 0xfff != 0x539 counter redirect to :15001
  }
}
table inet istio-ambient-mangle {
  chain prerouting {
    type filter hook prerouting priority -150; policy accept;
    jump istio-prerouting
  }
  chain output {
    type route hook output priority -150; policy accept;
    jump istio-output
  }
  chain istio-prerouting {
    meta mark & 0xfff == 0x539 counter ct mark set ct mark & 0xfffff000 | 0x111
  }
  chain istio-output {
    ct mark & 0xfff == 0x111 counter meta mark set ct mark
  }
}
";

/// Only with DNS capture: the proxy's DNS flows in conntrack zone 1.
const RAW: &str = "\
table inet istio-ambient-raw {
  chain prerouting {
    type filter hook prerouting priority -300; policy accept;
    jump istio-prerouting
  }
  chain output {
    type filter hook output priority -300; policy accept;
    jump istio-output
  }
  chain istio-prerouting {
    udp sport 53 meta mark & 0xfff != 0x539 counter ct zone set 1
  }
  chain istio-output {
    udp dport 53 meta mark & 0xfff == 0x539 counter ct zone set 1
  }
}
";

/// The whole `nft -f` batch: first `add` + `flush` of each table (`delete` for the raw table
/// without DNS capture, so switching it off takes effect), then the bodies.
pub(super) fn ruleset(options: &RuleOptions) -> String {
    let mut out = String::new();
    for table in TABLES {
        let unwanted = table == "istio-ambient-raw" && !options.dns_capture;
        let verb = if unwanted { "delete" } else { "flush" };
        out.push_str(&format!(
            "add table inet {table}\n{verb} table inet {table}\n"
        ));
    }
    let bodies = if options.dns_capture {
        [NAT_AND_MANGLE, RAW]
    } else {
        [NAT_AND_MANGLE, ""]
    };
    for line in bodies.iter().flat_map(|b| b.lines()) {
        let indent = &line[..line.len() - line.trim_start().len()];
        let mut rule = line.trim_start();
        let mut keep = true;
        loop {
            if let Some(rest) = rule.strip_prefix("@v6 ") {
                keep &= options.ipv6;
                rule = rest;
            } else if let Some(rest) = rule.strip_prefix("@dns ") {
                keep &= options.dns_capture;
                rule = rest;
            } else {
                break;
            }
        }
        if keep {
            out.push_str(&format!("{indent}{rule}\n"));
        }
    }
    out
}

/// The listings of our tables, in `nft -s list ruleset` form (counters left out, so traffic
/// does not make two listings differ).
fn our_tables(netns: &Path) -> Result<Vec<String>, RulesError> {
    let listing = run(netns, "nft -s list ruleset", None)?.ok()?;
    let mut tables = Vec::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        if let Some(body) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
            if line == "}" {
                tables.extend(current.take());
            }
        } else if TABLES.iter().any(|t| line == format!("table inet {t} {{")) {
            current = Some(format!("{line}\n"));
        }
    }
    Ok(tables)
}

/// Applies the batch; true if our tables now list differently than before.
pub(super) fn install(netns: &Path, options: &RuleOptions) -> Result<bool, RulesError> {
    let before = our_tables(netns)?;
    run(netns, "nft -f -", Some(&ruleset(options)))?.ok()?;
    Ok(our_tables(netns)? != before)
}

/// Deletes the three tables; `add` first makes deleting an absent table a no-op, in the same
/// atomic batch.
pub(super) fn remove(netns: &Path) -> Result<(), RulesError> {
    let batch: String = TABLES
        .iter()
        .map(|t| format!("add table inet {t}\ndelete table inet {t}\n"))
        .collect();
    run(netns, "nft -f -", Some(&batch))?.ok().map(drop)
}

/// Empties the nat table's redirect chains but keeps the table and its base chains: the nat
/// hooks stay registered and the mangle table keeps conntrack in use, so connections already
/// redirected keep their translation and can drain.
pub(super) fn stop_capture(netns: &Path) -> Result<(), RulesError> {
    let tables = run(netns, "nft list tables", None)?.ok()?;
    if !tables
        .lines()
        .any(|l| l.trim() == "table inet istio-ambient-nat")
    {
        return Ok(());
    }
    let batch = "flush chain inet istio-ambient-nat istio-prerouting\n\
                 flush chain inet istio-ambient-nat istio-output\n";
    run(netns, "nft -f -", Some(batch))?.ok().map(drop)
}

/// Whether any of the three tables exists.
pub(super) fn installed(netns: &Path) -> Result<bool, RulesError> {
    let tables = run(netns, "nft list tables", None)?.ok()?;
    Ok(tables.lines().any(|line| {
        TABLES
            .iter()
            .any(|t| line.trim() == format!("table inet {t}"))
    }))
}

#[cfg(test)]
mod tests {
    use super::{TABLES, ruleset};
    use crate::capture::rules::RuleOptions;

    /// Spec §7: the rules of the regular chains (the IPv6 ones are the lines with `ip6`).
    const SPEC_NFT_RULES: &[&str] = &[
        "meta l4proto tcp ip saddr 169.254.7.127 counter accept",
        "meta l4proto tcp ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept",
        "ip daddr != 127.0.0.1/32 tcp dport != 15008 meta mark & 0xfff != 0x539 counter redirect to :15006",
        "ip6 daddr != ::1/128 tcp dport != 15008 meta mark & 0xfff != 0x539 counter redirect to :15006",
        "meta l4proto tcp ip daddr 169.254.7.127 counter accept",
        "meta l4proto tcp ip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept",
        "oifname != \"lo\" meta mark & 0xfff != 0x539 udp dport 53 counter redirect to :15053",
        "ip daddr != 127.0.0.1/32 tcp dport 53 meta mark & 0xfff != 0x539 counter redirect to :15053",
        "ip6 daddr != ::1/128 tcp dport 53 meta mark & 0xfff != 0x539 counter redirect to :15053",
        "meta l4proto tcp meta mark & 0xfff == 0x111 counter accept",
        "oifname \"lo\" ip daddr != 127.0.0.1/32 counter accept",
        "oifname \"lo\" ip6 daddr != ::1/128 counter accept",
        "meta l4proto tcp ip daddr != 127.0.0.1/32 meta mark & 0xfff != 0x539 counter redirect to :15001",
        "meta l4proto tcp ip6 daddr != ::1/128 meta mark & 0xfff != 0x539 counter redirect to :15001",
        "meta mark & 0xfff == 0x539 counter ct mark set ct mark & 0xfffff000 | 0x111",
        "ct mark & 0xfff == 0x111 counter meta mark set ct mark",
        "udp sport 53 meta mark & 0xfff != 0x539 counter ct zone set 1",
        "udp dport 53 meta mark & 0xfff == 0x539 counter ct zone set 1",
    ];

    fn is_dns(line: &str) -> bool {
        line.contains("15053") || line.contains(" 53 ")
    }

    fn opts(dns_capture: bool, ipv6: bool) -> RuleOptions {
        RuleOptions { dns_capture, ipv6 }
    }

    #[test]
    fn nft_text_has_the_spec_rules() {
        let text = ruleset(&opts(true, true));
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for rule in SPEC_NFT_RULES {
            assert_eq!(lines.iter().filter(|l| *l == rule).count(), 1, "{rule}");
        }
        for hook in [
            "type nat hook prerouting priority -100; policy accept;",
            "type nat hook output priority -100; policy accept;",
            "type filter hook prerouting priority -150; policy accept;",
            "type route hook output priority -150; policy accept;",
            "type filter hook prerouting priority -300; policy accept;",
            "type filter hook output priority -300; policy accept;",
        ] {
            assert!(lines.contains(&hook), "{hook}");
        }
        for table in TABLES {
            assert!(lines.contains(&format!("add table inet {table}").as_str()));
            assert!(lines.contains(&format!("flush table inet {table}").as_str()));
            assert!(lines.contains(&format!("table inet {table} {{").as_str()));
        }
        let rules = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with("    ") && !l.contains("type "))
                .count()
        };
        assert_eq!(
            rules(&text),
            SPEC_NFT_RULES.len() + 6,
            "18 rules plus one jump per base chain"
        );
    }

    #[test]
    fn nft_text_without_dns_or_ipv6() {
        let text = ruleset(&opts(false, false));
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let kept = SPEC_NFT_RULES
            .iter()
            .filter(|r| !r.contains("ip6 ") && !is_dns(r));
        for rule in kept.clone() {
            assert!(lines.contains(rule), "{rule}");
        }
        assert!(!text.contains("ip6 ") && !text.contains("15053") && !text.contains("ct zone"));
        assert!(!text.contains("table inet istio-ambient-raw {"));
        assert!(lines.contains(&"delete table inet istio-ambient-raw"));
        let rules = text
            .lines()
            .filter(|l| l.starts_with("    ") && !l.contains("type ") && !l.contains("jump"))
            .count();
        assert_eq!(rules, kept.count());
    }
}
