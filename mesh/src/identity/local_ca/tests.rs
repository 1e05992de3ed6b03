use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::identity::parse_leaf;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn root() -> LocalCa {
    LocalCa::generate_root(
        "cluster.local",
        Duration::from_secs(365 * 86400),
        CaLimits::default(),
    )
    .unwrap()
}

/// A CSR that asks for an identity of its own choosing.
fn csr_asking_for(uri: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn issued_leaf_has_istio_shape_and_ignores_the_csr_san() {
    let ca = root();
    let web = id("spiffe://cluster.local/ns/storefront/sa/web");
    let csr = csr_asking_for("spiffe://cluster.local/ns/istio-system/sa/istiod");
    let before = SystemTime::now();
    let issued = ca.sign_csr(&csr, &web, None).unwrap();
    assert_eq!(
        issued.chain.len(),
        1,
        "a root-signed leaf has no intermediates"
    );
    assert_eq!(issued.roots, ca.roots());

    let info = parse_leaf(&issued.chain[0]).unwrap();
    assert_eq!(info.identity, web, "the CSR's SAN must be ignored");
    let ttl = info.not_after.duration_since(info.not_before).unwrap();
    assert_eq!(ttl, DEFAULT_WORKLOAD_TTL + CLOCK_SKEW_ALLOWANCE);
    assert!(info.not_before <= before - CLOCK_SKEW_ALLOWANCE + Duration::from_secs(1));

    let (_, cert) = X509Certificate::from_der(&issued.chain[0]).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "empty subject");
    let mut saw = (false, false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(ext.critical, "SAN is critical");
                assert_eq!(san.general_names, vec![GeneralName::URI(&web.to_string())]);
                saw.0 = true;
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(!bc.ca);
                saw.1 = true;
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ku.digital_signature() && ku.key_encipherment());
                assert!(!ku.key_cert_sign());
                saw.2 = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
                saw.3 = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        saw,
        (true, true, true, true),
        "SAN, basicConstraints, KU, EKU present"
    );
}

#[test]
fn ttl_default_explicit_and_too_long() {
    let ca = root();
    let web = id("spiffe://cluster.local/ns/storefront/sa/web");
    let csr = csr_asking_for(&web.to_string());
    let hour = Duration::from_secs(3600);
    for (requested, want) in [
        (Some(Duration::ZERO), DEFAULT_WORKLOAD_TTL),
        (Some(hour), hour),
    ] {
        let leaf = parse_leaf(&ca.sign_csr(&csr, &web, requested).unwrap().chain[0]).unwrap();
        let ttl = leaf.not_after.duration_since(leaf.not_before).unwrap();
        assert_eq!(ttl, want + CLOCK_SKEW_ALLOWANCE, "requested {requested:?}");
    }
    let too_long = DEFAULT_MAX_WORKLOAD_TTL + Duration::from_secs(1);
    assert!(matches!(
        ca.sign_csr(&csr, &web, Some(too_long)),
        Err(CaError::TtlTooLong { requested, max }) if requested == too_long && max == DEFAULT_MAX_WORKLOAD_TTL
    ));
}

#[test]
fn bad_csrs_are_rejected() {
    let ca = root();
    let web = id("spiffe://cluster.local/ns/storefront/sa/web");
    let good = csr_asking_for(&web.to_string());
    // Flip one byte inside the base64 body: the signature no longer verifies (or it no longer
    // parses); either way it must not be signed.
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let body = &mut lines[2];
    let flipped = if body.starts_with('A') { "B" } else { "A" };
    body.replace_range(0..1, flipped);
    let tampered = lines.join("\n");
    for csr in ["", "not pem", tampered.as_str()] {
        assert!(
            matches!(ca.sign_csr(csr, &web, None), Err(CaError::BadCsr(_))),
            "csr {csr:?} must be rejected"
        );
    }
}

#[test]
fn intermediate_chain_is_leaf_first_and_clamped_to_the_signer() {
    let root = root();
    let short = Duration::from_secs(3600);
    let intermediate = root.issue_intermediate("cluster.local", short).unwrap();
    let web = id("spiffe://cluster.local/ns/storefront/sa/web");
    let issued = intermediate
        .sign_csr(&csr_asking_for(&web.to_string()), &web, None)
        .unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf then intermediate");
    assert_eq!(issued.roots, root.roots());
    let leaf = parse_leaf(&issued.chain[0]).unwrap();
    let (_, inter) = X509Certificate::from_der(&issued.chain[1]).unwrap();
    assert!(inter.is_ca());
    let inter_not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(inter.validity().not_after.timestamp()).unwrap());
    assert_eq!(
        leaf.not_after, inter_not_after,
        "24 h leaf clamped to the 1 h intermediate"
    );
}

#[test]
fn loads_pem_material_and_refuses_a_non_ca_signer() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root_cert = params.self_signed(&key).unwrap();
    let ca = LocalCa::from_pem(
        &root_cert.pem(),
        &key.serialize_pem(),
        "",
        &root_cert.pem(),
        CaLimits::default(),
    )
    .unwrap();
    let web = id("spiffe://cluster.local/ns/storefront/sa/web");
    let issued = ca
        .sign_csr(&csr_asking_for(&web.to_string()), &web, None)
        .unwrap();
    assert_eq!(
        issued.chain.len(),
        1,
        "signer is the root, so not repeated in the chain"
    );

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf_cert = CertificateParams::default().self_signed(&leaf_key).unwrap();
    let refused = LocalCa::from_pem(
        &leaf_cert.pem(),
        &leaf_key.serialize_pem(),
        "",
        &leaf_cert.pem(),
        CaLimits::default(),
    );
    assert!(matches!(refused, Err(CaError::Material(m)) if m.contains("not a CA")));
    assert!(matches!(
        LocalCa::from_pem(
            "junk",
            &key.serialize_pem(),
            "",
            &root_cert.pem(),
            CaLimits::default()
        ),
        Err(CaError::Pem(_))
    ));
}
