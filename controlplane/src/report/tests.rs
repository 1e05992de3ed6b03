#![allow(clippy::unwrap_used)]

use mesh::telemetry::scrape::parse;

use super::*;

/// What node2's ztunnel exports after the demo's story: web -> api over mTLS, outsider -> api
/// refused by policy, legacy -> api refused (STRICT), legacy -> catalog accepted in plaintext,
/// outsider -> catalog over mTLS.
const NODE2: &str = r#"# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="destination",source_workload="web",source_workload_namespace="storefront",destination_workload="api",destination_workload_namespace="storefront",connection_security_policy="mutual_tls",response_flags="-"} 1
istio_tcp_connections_opened_total{reporter="destination",source_workload="outsider",source_workload_namespace="partner",destination_workload="api",destination_workload_namespace="storefront",connection_security_policy="mutual_tls",response_flags="DENY"} 1
istio_tcp_connections_opened_total{reporter="destination",source_workload="legacy",source_workload_namespace="legacy",destination_workload="api",destination_workload_namespace="storefront",connection_security_policy="none",response_flags="DENY"} 1
istio_tcp_connections_opened_total{reporter="destination",source_workload="legacy",source_workload_namespace="legacy",destination_workload="catalog",destination_workload_namespace="storefront",connection_security_policy="none",response_flags="-"} 1
istio_tcp_connections_opened_total{reporter="destination",source_workload="unknown",source_workload_namespace="unknown",destination_workload="catalog",destination_workload_namespace="storefront",connection_security_policy="none",response_flags="-"} 2
istio_tcp_connections_opened_total{reporter="destination",source_workload="web",source_workload_namespace="storefront",destination_workload="db",destination_workload_namespace="data",connection_security_policy="mutual_tls",response_flags="-"} 3
istio_tcp_connections_opened_total{reporter="source",source_workload="outsider",source_workload_namespace="partner",destination_workload="catalog",destination_workload_namespace="storefront",connection_security_policy="unknown",response_flags="-"} 5
istio_tcp_connections_failed_total{reporter="destination",source_workload="legacy",source_workload_namespace="legacy",destination_workload="api",destination_workload_namespace="storefront",connection_security_policy="none",response_flags="DENY"} 1
istio_tcp_connections_failed_total{reporter="destination",source_workload="outsider",source_workload_namespace="partner",destination_workload="api",destination_workload_namespace="storefront",connection_security_policy="mutual_tls",response_flags="DENY"} 1
istio_authz_dry_run_total{reporter="destination",authz_dry_run_action="deny",authz_dry_run_result="denied",policy="storefront/no-legacy"} 2
istio_authz_dry_run_total{reporter="destination",authz_dry_run_action="allow",authz_dry_run_result="allowed",policy="storefront/only-web"} 1
istio_authz_dry_run_total{reporter="destination",authz_dry_run_action="allow",authz_dry_run_result="denied",policy="none"} 3
# EOF
"#;

#[test]
fn plaintext_is_counted_per_destination_and_source_and_refusals_are_not_accepted() {
    let report = plaintext(&parse(NODE2).unwrap(), 1, None);
    let api = &report.workloads[&("storefront".to_owned(), "api".to_owned())];
    assert_eq!(api.mtls, 2);
    assert_eq!(api.refused, 1);
    assert!(api.plaintext_from.is_empty(), "{api:?}");
    let catalog = &report.workloads[&("storefront".to_owned(), "catalog".to_owned())];
    assert_eq!(catalog.plaintext(), 3);
    assert_eq!(catalog.plaintext_from["legacy/legacy"], 1);
    assert_eq!(catalog.plaintext_from["unknown (not a known workload)"], 2);
    // The source side's view (reporter="source") is not what the destination accepted.
    assert_eq!(catalog.mtls, 0);
    let breaks = report.would_break();
    assert_eq!(breaks.len(), 1);
    assert_eq!(breaks["storefront"].len(), 2);
    assert!(!breaks.contains_key("data"));
}

#[test]
fn the_printed_report_gives_a_verdict_per_namespace() {
    let text = plaintext(&parse(NODE2).unwrap(), 2, None).to_string();
    assert!(
        text.contains("by 2 ztunnel(s) since each started"),
        "{text}"
    );
    assert!(
        text.contains("storefront: STRICT now would refuse 3 plaintext connection(s)"),
        "{text}"
    );
    assert!(
        text.contains("  legacy/legacy -> storefront/catalog (1)"),
        "{text}"
    );
    assert!(text.contains("data: ready for STRICT"), "{text}");
    let header = text.lines().find(|l| l.starts_with("NAMESPACE")).unwrap();
    let catalog = text.lines().find(|l| l.contains(" catalog ")).unwrap();
    // Columns line up under their headings.
    assert_eq!(header.find("PLAINTEXT FROM"), catalog.find("legacy/legacy"));
}

#[test]
fn dry_run_policies_report_what_they_would_have_denied() {
    let report = dry_run(&parse(NODE2).unwrap(), 1, Some("30s".to_owned()));
    let deny = &report.policies[&("storefront/no-legacy".to_owned(), "deny".to_owned())];
    assert_eq!((deny.would_deny, deny.would_allow), (2, 0));
    let none = &report.policies[&("none".to_owned(), "allow".to_owned())];
    assert_eq!(none.would_deny, 3);
    let text = report.to_string();
    assert!(text.contains("over 30s"), "{text}");
    assert!(text.contains("(no dry-run ALLOW policy matched)"), "{text}");
    assert!(
        text.contains(
            "Enforcing would deny connections: the dry-run ALLOW policies (none matched), storefront/no-legacy"
        ),
        "{text}"
    );
}

#[test]
fn plaintext_labelled_unknown_by_upstream_ztunnel_is_still_plaintext() {
    let upstream = parse(
        "istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"legacy\",source_workload_namespace=\"legacy\",destination_workload=\"catalog\",destination_workload_namespace=\"storefront\",connection_security_policy=\"unknown\",response_flags=\"-\"} 4\n",
    )
    .unwrap();
    let report = plaintext(&upstream, 1, None);
    let catalog = &report.workloads[&("storefront".to_owned(), "catalog".to_owned())];
    assert_eq!((catalog.mtls, catalog.plaintext()), (0, 4));
    assert!(report.would_break().contains_key("storefront"));
}

#[test]
fn nothing_seen_says_so() {
    let empty = parse("# EOF\n").unwrap();
    assert!(
        plaintext(&empty, 1, None)
            .to_string()
            .contains("No connection has been received yet.")
    );
    assert!(
        dry_run(&empty, 1, None)
            .to_string()
            .contains("No dry-run policy has been evaluated.")
    );
}

#[test]
fn a_window_is_the_difference_of_two_scrapes_and_survives_a_restart() {
    let before = parse("a_total{x=\"1\"} 5\nb_total 7\n").unwrap();
    let after = parse("a_total{x=\"1\"} 8\nb_total 2\nc_total 4\n").unwrap();
    let values: Vec<f64> = delta(&before, &after).iter().map(|s| s.value).collect();
    assert_eq!(values, [3.0, 2.0, 4.0]);
}
