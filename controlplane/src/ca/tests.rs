//! The CA's decisions, called as tonic would call it: who is known, whose certificate a caller
//! may have, and what a refusal says.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mesh::identity::{
    CaLimits, LocalCa, SpiffeId, TrustDomain, certs_from_pem, create_csr, parse_leaf,
};
use prost_types::{Struct, Value, value};
use tonic::{Code, Request};
use xds_proto::istio::v1::auth::IstioCertificateRequest;
use xds_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;

use super::*;

const NODE_TOKEN: &str = "node1-ztunnel-token-0123456789";
const APP_TOKEN: &str = "web-app-token-0123456789abcdef";

fn td() -> TrustDomain {
    TrustDomain::parse("cluster.local").unwrap()
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::istio(&td(), ns, sa).unwrap()
}

fn service() -> CaService {
    let ca = LocalCa::generate_root(
        "cluster.local",
        Duration::from_secs(48 * 3600),
        CaLimits::default(),
    )
    .unwrap();
    let caller = |name: &str, ns: &str, sa: &str| Caller {
        name: name.into(),
        node: "node1".into(),
        namespace: ns.into(),
        service_account: sa.into(),
    };
    let tokens = Tokens::from_callers([
        (
            NODE_TOKEN.to_owned(),
            caller("ztunnel-node1", "istio-system", "ztunnel"),
        ),
        (APP_TOKEN.to_owned(), caller("web", "storefront", "web")),
    ]);
    let trusted = BTreeSet::from([("istio-system".to_owned(), "ztunnel".to_owned())]);
    let service = CaService::new(Arc::new(ca), td(), tokens, trusted);
    service.set_workloads(NodeWorkloads::from_pods([
        ("node1", "storefront", "web"),
        ("node2", "payments", "api"),
    ]));
    service
}

fn request(
    token: Option<&str>,
    impersonate: Option<&SpiffeId>,
    ttl: i64,
) -> Request<IstioCertificateRequest> {
    let csr = create_csr(&id("whatever", "the-csr-says")).unwrap();
    let metadata = impersonate.map(|who| Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            Value {
                kind: Some(value::Kind::StringValue(who.to_string())),
            },
        )]
        .into(),
    });
    let mut request = Request::new(IstioCertificateRequest {
        csr: csr.csr_pem,
        validity_duration: ttl,
        metadata,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn issued_for(
    service: &CaService,
    request: Request<IstioCertificateRequest>,
) -> (SpiffeId, usize, Duration) {
    let chain = service
        .create_certificate(request)
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    let leaf = parse_leaf(&certs_from_pem(&chain[0]).unwrap()[0]).unwrap();
    let life = leaf.not_after.duration_since(leaf.not_before).unwrap();
    (leaf.identity, chain.len(), life)
}

#[tokio::test]
async fn a_caller_gets_its_own_identity_whatever_the_csr_asks() {
    let service = service();
    let (identity, elements, life) = issued_for(&service, request(Some(APP_TOKEN), None, 0)).await;
    assert_eq!(identity, id("storefront", "web"));
    assert_eq!(elements, 2, "[leaf, root bundle] from a self-signed CA");
    // 24 h default plus the 2-minute backdating.
    assert_eq!(life, Duration::from_secs(24 * 3600 + 120));
}

#[tokio::test]
async fn a_node_account_may_impersonate_only_what_runs_on_its_node() {
    let service = service();
    let web = id("storefront", "web");
    let (identity, _, _) = issued_for(&service, request(Some(NODE_TOKEN), Some(&web), 3600)).await;
    assert_eq!(identity, web);

    let elsewhere = id("payments", "api");
    let refused = service
        .create_certificate(request(Some(NODE_TOKEN), Some(&elsewhere), 3600))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "request impersonation authentication failure"
    );

    let not_a_node = service
        .create_certificate(request(Some(APP_TOKEN), Some(&web), 3600))
        .await
        .unwrap_err();
    assert_eq!(
        not_a_node.code(),
        Code::Unauthenticated,
        "only trusted node accounts impersonate"
    );
}

#[tokio::test]
async fn unknown_callers_bad_csrs_and_long_ttls_are_refused_with_istiods_codes() {
    let service = service();
    for token in [None, Some("not-a-known-token-at-all")] {
        let refused = service
            .create_certificate(request(token, None, 0))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert_eq!(refused.message(), "request authenticate failure");
    }
    let mut garbage = request(Some(APP_TOKEN), None, 0);
    garbage.get_mut().csr =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    let refused = service.create_certificate(garbage).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("CSR signing error"),
        "{}",
        refused.message()
    );

    let too_long = service
        .create_certificate(request(Some(APP_TOKEN), None, 365 * 24 * 3600))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert!(
        too_long.message().contains("max allowed TTL"),
        "{}",
        too_long.message()
    );
}

#[tokio::test]
async fn workloads_leaving_a_node_end_its_impersonation_rights() {
    let service = service();
    let web = id("storefront", "web");
    service.set_workloads(NodeWorkloads::from_pods([("node2", "storefront", "web")]));
    let refused = service
        .create_certificate(request(Some(NODE_TOKEN), Some(&web), 0))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[test]
fn material_is_created_once_then_reloaded_and_proven() {
    let dir = std::env::temp_dir().join(format!("ca-material-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = load_or_create(&dir, &td(), CaLimits::default()).unwrap();
    assert_eq!(first.mode, "self-signed");
    let second = load_or_create(&dir, &td(), CaLimits::default()).unwrap();
    assert_eq!(
        first.roots_pem, second.roots_pem,
        "a restart keeps the root"
    );
    // A key that does not belong to the certificate is caught at load.
    let other = tempdir_with_other_key(&dir);
    let err = load_or_create(&other, &td(), CaLimits::default())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("does ca-key.pem belong to ca-cert.pem"),
        "{err}"
    );
    // Half a set is refused, naming what is missing.
    std::fs::remove_file(other.join("root-cert.pem")).unwrap();
    let err = load_or_create(&other, &td(), CaLimits::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("root-cert.pem is missing"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

/// A copy of `dir` whose key is another CA's.
fn tempdir_with_other_key(dir: &std::path::Path) -> std::path::PathBuf {
    let other = dir.with_extension("mismatched");
    let _ = std::fs::remove_dir_all(&other);
    std::fs::create_dir_all(&other).unwrap();
    for file in ["ca-cert.pem", "root-cert.pem"] {
        std::fs::copy(dir.join(file), other.join(file)).unwrap();
    }
    let (_, _, stranger_key) = LocalCa::generate_root_with_pem(
        "cluster.local",
        Duration::from_secs(3600),
        CaLimits::default(),
    )
    .unwrap();
    std::fs::write(other.join("ca-key.pem"), stranger_key).unwrap();
    other
}

/// Runs openssl (a real external CA's tooling) in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for the intermediate-CA test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_intermediate_under_an_external_root_signs_and_the_chain_says_so() {
    let dir = std::env::temp_dir().join(format!("ca-intermediate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
    std::fs::write(dir.join("ca.ext"), ca_ext).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3",
            "-subj",
            "/O=Example Corp/CN=external root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            "root-key.pem",
            "-out",
            "root-cert.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/O=cluster.local/CN=mesh intermediate",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.csr",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ca.ext",
            "-out",
            "ca-cert.pem",
        ],
    );
    let chain = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
    std::fs::remove_file(dir.join("root-key.pem")).unwrap();

    let material = load_or_create(&dir, &td(), CaLimits::default()).unwrap();
    assert_eq!(material.mode, "plugged-in");
    let service = CaService::new(
        Arc::new(material.ca),
        td(),
        Tokens::from_callers([(
            APP_TOKEN.to_owned(),
            Caller {
                name: "web".into(),
                node: "node1".into(),
                namespace: "storefront".into(),
                service_account: "web".into(),
            },
        )]),
        BTreeSet::new(),
    );
    let elements = service
        .create_certificate(request(Some(APP_TOKEN), None, 0))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(elements.len(), 3, "[leaf, intermediate, root bundle]");
    let intermediate =
        certs_from_pem(&std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()).unwrap();
    assert_eq!(
        certs_from_pem(&elements[1]).unwrap(),
        intermediate,
        "the intermediate, once"
    );
    let roots = certs_from_pem(&elements[2]).unwrap();
    let leaf_and_intermediate = vec![
        certs_from_pem(&elements[0]).unwrap().remove(0),
        intermediate[0].clone(),
    ];
    let proven = mesh::tls::verify_workload_chain(&leaf_and_intermediate, &roots).unwrap();
    assert_eq!(
        proven,
        id("storefront", "web"),
        "the chain verifies to the external root"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
