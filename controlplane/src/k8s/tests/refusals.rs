//! Every refusal names file, document, object and field, and says what is wrong.

use super::refusal;

/// An AuthorizationPolicy `payments/p` with `spec` (YAML, indented by the caller).
fn policy(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p, namespace: payments}}\nspec:\n{spec}"
    )
}

const POLICY: &str = "t.yaml: document 1 (AuthorizationPolicy payments/p): ";

#[test]
fn authorization_policy_refusals_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "  rules:\n  - from:\n    - source: {ipBlocks: [\"10.0.0.1\", \"10.0.0.0/33\"]}\n",
            r#"spec.rules[0].from[0].source.ipBlocks[1]: "10.0.0.0/33" is not a CIDR"#,
        ),
        (
            "  rules:\n  - from:\n    - source: {notIpBlocks: [\"10.0.0.300\"]}\n",
            r#"spec.rules[0].from[0].source.notIpBlocks[0]: "10.0.0.300" is not an IP address"#,
        ),
        (
            "  rules:\n  - to:\n    - operation: {ports: [\"http\"]}\n",
            r#"spec.rules[0].to[0].operation.ports[0]: "http" is not a port number (0-65535)"#,
        ),
        (
            "  rules:\n  - to:\n    - operation: {notPorts: [\"65536\"]}\n",
            r#"spec.rules[0].to[0].operation.notPorts[0]: "65536" is not a port number (0-65535)"#,
        ),
        (
            "  rules:\n  - to:\n    - operation: {ports: [8080]}\n",
            "spec.rules[0].to[0].operation.ports[0]: expected a string, found a number",
        ),
        (
            "  rules:\n  - from: []\n",
            "spec.rules[0].from: empty list (omit the field instead)",
        ),
        (
            "  rules:\n  - from:\n    - source: {}\n",
            "spec.rules[0].from[0].source: must set at least one field",
        ),
        (
            "  rules:\n  - from:\n    - source: {principals: []}\n",
            "spec.rules[0].from[0].source: must set at least one field",
        ),
        (
            "  rules:\n  - from:\n    - {}\n",
            "spec.rules[0].from[0].source: required",
        ),
        (
            "  rules:\n  - to:\n    - operation: null\n",
            "spec.rules[0].to[0].operation: required",
        ),
        (
            "  rules:\n  - from:\n    - source: {principal: [a]}\n",
            "spec.rules[0].from[0].source.principal: unknown field",
        ),
        (
            "  rules:\n  - from:\n    - source: {principals: [\"\"]}\n",
            "spec.rules[0].from[0].source.principals[0]: must not be empty",
        ),
        (
            "  rules:\n  - from:\n    - source: {namespaces: [a], serviceAccounts: [b]}\n",
            "spec.rules[0].from[0].source.serviceAccounts: serviceAccounts cannot be used together \
             with namespaces",
        ),
        (
            "  rules:\n  - from:\n    - source: {serviceAccounts: [\"ns/*\"]}\n",
            r#"spec.rules[0].from[0].source.serviceAccounts[0]: "ns/*" is not "namespace/name" or "name" (no wildcards)"#,
        ),
        (
            "  rules:\n  - from:\n    - source: {notServiceAccounts: [\"a/b/c\"]}\n",
            r#"spec.rules[0].from[0].source.notServiceAccounts[0]: "a/b/c" is not "namespace/name" or "name" (no wildcards)"#,
        ),
        (
            "  rules:\n  - when:\n    - {key: source.ip}\n",
            "spec.rules[0].when[0]: needs values or notValues",
        ),
        (
            "  rules:\n  - when:\n    - {key: request.foo, values: [a]}\n",
            r#"spec.rules[0].when[0].key: "request.foo" is not a supported condition key"#,
        ),
        (
            "  rules:\n  - when:\n    - {key: \"request.headers[]\", values: [a]}\n",
            r#"spec.rules[0].when[0].key: "request.headers[]" is not a supported condition key"#,
        ),
        (
            "  rules:\n  - when:\n    - {key: \"destination.labels[app]\", values: [a]}\n",
            r#"spec.rules[0].when[0].key: "destination.labels[app]" is no longer supported"#,
        ),
        (
            "  rules:\n  - when:\n    - {key: destination.port, values: [\"x\"]}\n",
            r#"spec.rules[0].when[0].values[0]: "x" is not a port number (0-65535)"#,
        ),
        (
            "  rules:\n  - when:\n    - {key: remote.ip, notValues: [\"1.2.3\"]}\n",
            r#"spec.rules[0].when[0].notValues[0]: "1.2.3" is not an IP address"#,
        ),
        (
            "  rules:\n  - to:\n    - operation: {paths: [\"/a/x{*}\"]}\n",
            r#"spec.rules[0].to[0].operation.paths[0]: "/a/x{*}" is not a valid path template"#,
        ),
        (
            "  rules:\n  - to:\n    - operation: {notPaths: [\"/{**}/{*}\"]}\n",
            r#"spec.rules[0].to[0].operation.notPaths[0]: "/{**}/{*}" is not a valid path template"#,
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: a}]\n",
            "spec.targetRefs: targetRefs cannot be used together with selector",
        ),
        ("  selector: {app: a}\n", "spec.selector.app: unknown field"),
        (
            "  targetRefs: [{kind: Service, name: a, namespace: other}]\n",
            "spec.targetRefs[0].namespace: must be empty (a policy can only target objects in its \
             own namespace)",
        ),
        (
            "  targetRefs: [{kind: Service}]\n",
            "spec.targetRefs[0].name: required",
        ),
        (
            "  action: DENY\n",
            "spec.rules: a DENY policy needs at least one rule",
        ),
        (
            "  action: DENY\n  rules: []\n",
            "spec.rules: a DENY policy needs at least one rule",
        ),
        (
            "  action: REJECT\n",
            r#"spec.action: "REJECT" is not one of ALLOW, DENY, AUDIT, CUSTOM"#,
        ),
        (
            "  action: CUSTOM\n  rules: [{}]\n",
            "spec.provider: action CUSTOM needs a provider",
        ),
        (
            "  provider: {name: x}\n  rules: [{}]\n",
            "spec.provider: provider is only allowed with action CUSTOM",
        ),
        ("  rule: []\n", "spec.rule: unknown field"),
        (
            "  rules: {}\n",
            "spec.rules: expected a list, found a mapping",
        ),
        (
            "  rules:\n  - from:\n    - source: {principals: a}\n",
            "spec.rules[0].from[0].source.principals: expected a list, found a string",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            refusal(&policy(spec)),
            format!("{POLICY}{want}"),
            "spec:\n{spec}"
        );
    }
}

#[test]
fn too_many_target_refs() {
    let refs: Vec<String> = (0..17)
        .map(|i| format!("{{kind: Service, name: s{i}}}"))
        .collect();
    let spec = format!("  targetRefs: [{}]\n", refs.join(", "));
    assert_eq!(
        refusal(&policy(&spec)),
        format!("{POLICY}spec.targetRefs: 17 entries, at most 16 allowed")
    );
}

#[test]
fn other_kinds_refusals_name_the_field() {
    let peer = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                metadata: {name: p, namespace: n}\nspec:\n";
    let request = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
                   metadata: {name: r, namespace: n}\nspec:\n";
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n}\n";
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{peer}  portLevelMtls: {{8080: {{mode: STRICT}}}}\n"),
            " (PeerAuthentication n/p): spec.portLevelMtls: portLevelMtls needs a selector with matchLabels",
        ),
        (
            format!("{peer}  mtls: {{mode: strict}}\n"),
            r#" (PeerAuthentication n/p): spec.mtls.mode: "strict" is not one of UNSET, DISABLE, PERMISSIVE, STRICT"#,
        ),
        (
            format!("{peer}  selector: {{matchLabels: {{a: b}}}}\n  portLevelMtls: {{http: {{mode: STRICT}}}}\n"),
            r#" (PeerAuthentication n/p): spec.portLevelMtls.http: "http" is not a port number (0-65535)"#,
        ),
        (
            format!("{peer}  selector: {{matchLabels: {{a: b}}}}\n  portLevelMtls: {{0: {{mode: STRICT}}}}\n"),
            r#" (PeerAuthentication n/p): spec.portLevelMtls.0: "0" is not a port number (0-65535)"#,
        ),
        (
            format!("{request}  jwtRules: [{{audiences: [a]}}]\n"),
            " (RequestAuthentication n/r): spec.jwtRules[0].issuer: required",
        ),
        (
            format!("{request}  jwtRules: [{{issuer: i, jwks: x, jwksUri: y}}]\n"),
            " (RequestAuthentication n/r): spec.jwtRules[0].jwks: jwks cannot be used together with jwksUri",
        ),
        (
            format!("{pod}status: {{podIP: 10.0.0.1.1}}\n"),
            r#" (Pod n/p): status.podIP: "10.0.0.1.1" is not an IP address"#,
        ),
        (
            format!("{pod}status: {{phase: Bogus}}\n"),
            r#" (Pod n/p): status.phase: "Bogus" is not one of Pending, Running, Succeeded, Failed, Unknown"#,
        ),
        (
            format!("{pod}spec: {{containers: [{{name: c, ports: [{{containerPort: 0}}]}}]}}\n"),
            r#" (Pod n/p): spec.containers[0].ports[0].containerPort: "0" is not a port number (0-65535)"#,
        ),
        (
            format!("{pod}spec: {{serviceAccountName: A_B}}\n"),
            r#" (Pod n/p): spec.serviceAccountName: "A_B" is not a valid name: dot-separated lower-case labels, at most 253"#,
        ),
        (
            format!("{service}spec: {{ports: [{{name: http}}]}}\n"),
            " (Service n/s): spec.ports[0].port: required",
        ),
        (
            format!("{service}spec: {{clusterIP: 10.96.0.300}}\n"),
            r#" (Service n/s): spec.clusterIP: "10.96.0.300" is not an IP address"#,
        ),
        (
            format!("{service}spec: {{type: Internal}}\n"),
            r#" (Service n/s): spec.type: "Internal" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"#,
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {version: 1}}\n".to_owned(),
            ": metadata.labels.version: expected a string, found a number",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {\"istio.io/x\": [a]}}\n".to_owned(),
            r#": metadata.annotations["istio.io/x"]: expected a string, found a list"#,
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a/b}\n".to_owned(),
            r#": metadata.name: "a/b" is not a valid name: lower-case letters, digits and '-', at most 63, starting and ending alphanumeric"#,
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\n".to_owned(),
            r#": metadata.name: "1web" is not a valid name: lower-case letters, digits and '-', at most 63, starting with a letter"#,
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, creationTimestamp: yesterday}\n".to_owned(),
            r#": metadata.creationTimestamp: "yesterday" is not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SS[.frac]Z)"#,
        ),
        ("apiVersion: v1\nkind: Pod\n".to_owned(), ": metadata: required"),
        ("apiVersion: v1\nmetadata: {name: p}\n".to_owned(), ": kind: required"),
        ("- a\n- b\n".to_owned(), ": (document): expected a mapping, found a list"),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n"
                .to_owned(),
            " (Gateway default/g): spec.gatewayClassName: required",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            refusal(&text),
            format!("t.yaml: document 1{want}"),
            "input:\n{text}"
        );
    }
}

#[test]
fn a_duplicate_in_one_file_names_both_documents() {
    let doc = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: n}\n";
    assert_eq!(
        refusal(&format!("{doc}---\n{doc}")),
        "t.yaml: document 2: ServiceAccount n/a is already defined in t.yaml: document 1"
    );
}
