//! Real mutual-TLS handshakes over loopback TCP between `mesh::tls` configs, and against peers
//! that break one rule each. Every refusal names the rule it expects.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh::identity::{CaLimits, LocalCa, SpiffeId, TrustDomain, WorkloadCertificate};
use mesh::tls::{self, TlsError, TrustBundles, VerifyError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Bound on each test handshake pair; a hang is a failure, not a wait.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(86400);

/// A root CA whose key the test holds, so it can sign both good and deliberately bad leaves.
struct TestCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    local: LocalCa,
}

impl TestCa {
    fn new(trust_domain: &str) -> Self {
        Self::with_org(trust_domain, trust_domain)
    }

    fn with_org(trust_domain: &str, organization: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, organization);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let local =
            LocalCa::from_pem(&cert.pem(), &key_pem, "", &cert.pem(), CaLimits::default()).unwrap();
        Self {
            trust_domain: TrustDomain::parse(trust_domain).unwrap(),
            issuer: Issuer::new(params, key),
            root: cert.der().clone(),
            local,
        }
    }

    fn bundles(&self) -> Arc<TrustBundles> {
        Arc::new(
            TrustBundles::single(self.trust_domain.clone(), std::slice::from_ref(&self.root))
                .unwrap(),
        )
    }

    fn workload(&self, ns: &str, sa: &str) -> WorkloadCertificate {
        let id = SpiffeId::istio(&self.trust_domain, ns, sa).unwrap();
        self.local
            .issue_workload(&id, None, &tls::crypto_provider())
            .unwrap()
    }

    /// A leaf shaped by `shape`, signed by this root: the raw chain and key a misbehaving peer
    /// would present.
    fn crafted(&self, shape: impl FnOnce(&mut CertificateParams)) -> RawCert {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (SystemTime::now() - Duration::from_secs(60)).into();
        params.not_after = (SystemTime::now() + DAY).into();
        shape(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        RawCert {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

struct RawCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

const WEB: &str = "spiffe://cluster.local/ns/storefront/sa/web";

/// A case name, how to spoil the leaf, and the refusal it must earn.
type BadLeaf = (
    &'static str,
    Box<dyn FnOnce(&mut CertificateParams)>,
    VerifyError,
);

/// The bad-leaf table: each shape and the refusal it must earn, on either end.
fn bad_leaves() -> Vec<BadLeaf> {
    use mesh::identity::CertificateError as C;
    vec![
        (
            "expired",
            Box::new(|p: &mut CertificateParams| {
                p.subject_alt_names = vec![uri(WEB)];
                p.not_before = (SystemTime::now() - 2 * DAY).into();
                p.not_after = (SystemTime::now() - DAY).into();
            }),
            VerifyError::Expired,
        ),
        (
            "not yet valid",
            Box::new(|p: &mut CertificateParams| {
                p.subject_alt_names = vec![uri(WEB)];
                p.not_before = (SystemTime::now() + DAY).into();
                p.not_after = (SystemTime::now() + 2 * DAY).into();
            }),
            VerifyError::NotYetValid,
        ),
        (
            "no SAN at all",
            Box::new(|p: &mut CertificateParams| {
                p.distinguished_name.push(DnType::CommonName, "web");
            }),
            VerifyError::Leaf(C::NoUriSan),
        ),
        (
            "DNS SAN only",
            Box::new(|p: &mut CertificateParams| {
                p.subject_alt_names =
                    vec![SanType::DnsName("web.storefront.svc".try_into().unwrap())];
            }),
            VerifyError::Leaf(C::NoUriSan),
        ),
        (
            "two URI SANs",
            Box::new(|p: &mut CertificateParams| {
                p.subject_alt_names =
                    vec![uri(WEB), uri("spiffe://cluster.local/ns/storefront/sa/api")];
            }),
            VerifyError::Leaf(C::MultipleUriSans { count: 2 }),
        ),
        (
            "non-SPIFFE URI",
            Box::new(|p: &mut CertificateParams| {
                p.subject_alt_names = vec![uri("https://cluster.local/ns/storefront/sa/web")];
            }),
            VerifyError::Leaf(C::NotSpiffe {
                uri: "https://cluster.local/ns/storefront/sa/web".into(),
                cause: mesh::identity::SpiffeIdError::WrongScheme,
            }),
        ),
        (
            "leaf with CA:true",
            Box::new(|p: &mut CertificateParams| {
                p.subject_alt_names = vec![uri(WEB)];
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }),
            VerifyError::Leaf(C::LeafIsCa),
        ),
    ]
}

/// Accepts any server certificate: the part of a careless peer, so that only our side judges.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A raw client: any TLS versions, any ALPN list, an optional certificate.
fn raw_client(
    cert: Option<RawCert>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnything));
    let mut config = match cert {
        Some(c) => builder.with_client_auth_cert(c.chain, c.key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A raw server that asks for no client certificate.
fn raw_server(
    cert: RawCert,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(cert.chain, cert.key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// Our server against a raw client: the server's verdict.
async fn our_server_vs_raw_client(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<SpiffeId, TlsError> {
    let (c, s) = tcp_pair().await;
    let client_side = async move {
        let name = ServerName::IpAddress(LOCALHOST.into());
        // The raw client's outcome is not under test; drive it so the server can finish.
        if let Ok(mut stream) = tokio_rustls::TlsConnector::from(client)
            .connect(name, c)
            .await
        {
            let _ = stream.read(&mut [0u8; 1]).await;
        }
    };
    let server_side = async move { tls::accept(server, s).await.map(|(_, id)| id) };
    let (verdict, ()) = timeout(TEST_TIMEOUT, async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("handshake pair finished in time");
    verdict
}

/// Our client against a raw server: the client's verdict.
async fn our_client_vs_raw_server(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<SpiffeId, TlsError> {
    let (c, s) = tcp_pair().await;
    let server_side = async move {
        if let Ok(mut stream) = tokio_rustls::TlsAcceptor::from(server).accept(s).await {
            let _ = stream.read(&mut [0u8; 1]).await;
        }
    };
    let client_side = async move { tls::connect(client, LOCALHOST, c).await.map(|(_, id)| id) };
    let (verdict, ()) = timeout(TEST_TIMEOUT, async {
        tokio::join!(client_side, server_side)
    })
    .await
    .expect("handshake pair finished in time");
    verdict
}

#[tokio::test]
async fn mutual_handshake_each_side_sees_the_others_identity_and_data_flows() {
    let ca = TestCa::new("cluster.local");
    let web = ca.workload("storefront", "web");
    let api = ca.workload("storefront", "api");
    let server = tls::server_config(&api, ca.bundles()).unwrap();
    let client = tls::client_config(&web, ca.bundles(), vec![api.identity().clone()]).unwrap();

    let (c, s) = tcp_pair().await;
    let server_side = async move {
        let (mut stream, peer) = tls::accept(server, s).await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
        stream.flush().await.unwrap();
        peer
    };
    let client_side = async move {
        let (mut stream, peer) = tls::connect(client, LOCALHOST, c).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(tls::ALPN_H2));
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        stream.write_all(b"hbone").await.unwrap();
        let mut echo = [0u8; 5];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hbone");
        peer
    };
    let (server_saw, client_saw) = timeout(TEST_TIMEOUT, async {
        tokio::join!(server_side, client_side)
    })
    .await
    .unwrap();
    assert_eq!(
        server_saw.to_string(),
        "spiffe://cluster.local/ns/storefront/sa/web"
    );
    assert_eq!(
        client_saw.to_string(),
        "spiffe://cluster.local/ns/storefront/sa/api"
    );
}

#[tokio::test]
async fn chain_through_an_intermediate_verifies() {
    let ca = TestCa::new("cluster.local");
    let intermediate = ca.local.issue_intermediate("cluster.local", DAY).unwrap();
    let provider = tls::crypto_provider();
    let id = |sa| SpiffeId::istio(&ca.trust_domain, "storefront", sa).unwrap();
    let web = intermediate
        .issue_workload(&id("web"), None, &provider)
        .unwrap();
    let api = intermediate
        .issue_workload(&id("api"), None, &provider)
        .unwrap();
    assert_eq!(web.chain().len(), 2);
    let server = tls::server_config(&api, ca.bundles()).unwrap();
    let client = tls::client_config(&web, ca.bundles(), vec![id("api")]).unwrap();
    let (c, s) = tcp_pair().await;
    let (server_saw, client_saw) = timeout(TEST_TIMEOUT, async {
        tokio::join!(tls::accept(server, s), tls::connect(client, LOCALHOST, c))
    })
    .await
    .unwrap();
    assert_eq!(server_saw.unwrap().1, id("web"));
    assert_eq!(client_saw.unwrap().1, id("api"));
}

#[tokio::test]
async fn server_refuses_each_bad_client_leaf_by_name() {
    let ca = TestCa::new("cluster.local");
    let api = ca.workload("storefront", "api");
    let server = tls::server_config(&api, ca.bundles()).unwrap();
    for (case, shape, want) in bad_leaves() {
        let bad = ca.crafted(shape);
        let client = raw_client(Some(bad), &[&rustls::version::TLS13], &[tls::ALPN_H2]);
        match our_server_vs_raw_client(server.clone(), client).await {
            Err(TlsError::PeerRejected(got)) => assert_eq!(got, want, "case {case}"),
            other => panic!("case {case}: expected PeerRejected({want:?}), got {other:?}"),
        }
    }
}

#[tokio::test]
async fn client_refuses_each_bad_server_leaf_by_name() {
    let ca = TestCa::new("cluster.local");
    let web = ca.workload("storefront", "web");
    let expected = SpiffeId::parse(WEB).unwrap();
    let client = tls::client_config(&web, ca.bundles(), vec![expected]).unwrap();
    for (case, shape, want) in bad_leaves() {
        let server = raw_server(
            ca.crafted(shape),
            &[&rustls::version::TLS13],
            &[tls::ALPN_H2],
        );
        match our_client_vs_raw_server(client.clone(), server).await {
            Err(TlsError::PeerRejected(got)) => assert_eq!(got, want, "case {case}"),
            other => panic!("case {case}: expected PeerRejected({want:?}), got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unknown_root_is_refused() {
    let ours = TestCa::new("cluster.local");
    let server = tls::server_config(&ours.workload("storefront", "api"), ours.bundles()).unwrap();
    // A stranger CA, and an impostor that copies our root's name but not its key.
    for (case, rogue) in [
        (
            "stranger",
            TestCa::with_org("cluster.local", "someone else"),
        ),
        ("impostor", TestCa::new("cluster.local")),
    ] {
        let forged = rogue.crafted(|p| p.subject_alt_names = vec![uri(WEB)]);
        let client = raw_client(Some(forged), &[&rustls::version::TLS13], &[tls::ALPN_H2]);
        let verdict = our_server_vs_raw_client(server.clone(), client).await;
        assert!(
            matches!(&verdict, Err(TlsError::PeerRejected(VerifyError::UnknownRoot(td))) if td.as_str() == "cluster.local"),
            "{case}: got {verdict:?}"
        );
    }
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused_even_with_its_bundle_trusted() {
    let ours = TestCa::new("cluster.local");
    let theirs = TestCa::new("partner.example");
    let mut bundles =
        TrustBundles::single(ours.trust_domain.clone(), std::slice::from_ref(&ours.root)).unwrap();
    bundles
        .add(
            theirs.trust_domain.clone(),
            std::slice::from_ref(&theirs.root),
        )
        .unwrap();
    let both = Arc::new(bundles);
    let server = tls::server_config(&ours.workload("storefront", "api"), both.clone()).unwrap();
    let client = tls::client_config(
        &theirs.workload("storefront", "web"),
        both,
        vec![SpiffeId::parse("spiffe://cluster.local/ns/storefront/sa/api").unwrap()],
    )
    .unwrap();
    let (c, s) = tcp_pair().await;
    let (verdict, _) = timeout(TEST_TIMEOUT, async {
        tokio::join!(tls::accept(server, s), tls::connect(client, LOCALHOST, c))
    })
    .await
    .unwrap();
    match verdict {
        Err(TlsError::PeerRejected(VerifyError::WrongTrustDomain { got, want })) => {
            assert_eq!(got.as_str(), "partner.example");
            assert_eq!(want.as_str(), "cluster.local");
        }
        other => panic!("expected WrongTrustDomain, got {other:?}"),
    }
}

#[tokio::test]
async fn client_refuses_a_valid_server_of_the_wrong_identity_or_trust_domain() {
    let ca = TestCa::new("cluster.local");
    let web = ca.workload("storefront", "web");
    let want_api = SpiffeId::parse("spiffe://cluster.local/ns/storefront/sa/api").unwrap();
    let client = tls::client_config(&web, ca.bundles(), vec![want_api.clone()]).unwrap();

    let impersonator = ca.crafted(|p| {
        p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/storefront/sa/db")];
    });
    let server = raw_server(impersonator, &[&rustls::version::TLS13], &[tls::ALPN_H2]);
    match our_client_vs_raw_server(client.clone(), server).await {
        Err(TlsError::PeerRejected(VerifyError::UnexpectedIdentity { got, expected })) => {
            assert_eq!(
                got.to_string(),
                "spiffe://cluster.local/ns/storefront/sa/db"
            );
            assert_eq!(expected, vec![want_api]);
        }
        other => panic!("expected UnexpectedIdentity, got {other:?}"),
    }

    // A leaf naming a foreign trust domain, signed by our own root: no bundle vouches for it.
    let foreign = ca.crafted(|p| {
        p.subject_alt_names = vec![uri("spiffe://evil.example/ns/storefront/sa/api")];
    });
    let server = raw_server(foreign, &[&rustls::version::TLS13], &[tls::ALPN_H2]);
    let verdict = our_client_vs_raw_server(client, server).await;
    assert!(
        matches!(&verdict, Err(TlsError::PeerRejected(VerifyError::UntrustedTrustDomain(td))) if td.as_str() == "evil.example"),
        "got {verdict:?}"
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = TestCa::new("cluster.local");
    let server = tls::server_config(&ca.workload("storefront", "api"), ca.bundles()).unwrap();
    let client = raw_client(None, &[&rustls::version::TLS13], &[tls::ALPN_H2]);
    let verdict = our_server_vs_raw_client(server, client).await;
    assert!(
        matches!(verdict, Err(TlsError::NoPeerCertificate)),
        "got {verdict:?}"
    );
}

#[tokio::test]
async fn tls12_only_peers_are_refused_on_both_ends() {
    let ca = TestCa::new("cluster.local");
    let web = ca.workload("storefront", "web");
    let api = ca.workload("storefront", "api");

    let server = tls::server_config(&api, ca.bundles()).unwrap();
    let web_raw = ca.crafted(|p| p.subject_alt_names = vec![uri(&web.identity().to_string())]);
    let legacy_client = raw_client(Some(web_raw), &[&rustls::version::TLS12], &[tls::ALPN_H2]);
    let verdict = our_server_vs_raw_client(server, legacy_client).await;
    assert!(
        matches!(verdict, Err(TlsError::Incompatible(_))),
        "server got {verdict:?}"
    );

    let client = tls::client_config(&web, ca.bundles(), vec![api.identity().clone()]).unwrap();
    let api_raw = ca.crafted(|p| p.subject_alt_names = vec![uri(&api.identity().to_string())]);
    let legacy_server = raw_server(api_raw, &[&rustls::version::TLS12], &[tls::ALPN_H2]);
    let verdict = our_client_vs_raw_server(client, legacy_server).await;
    assert!(
        matches!(
            verdict,
            Err(TlsError::Incompatible(_) | TlsError::PeerAlert(_))
        ),
        "client got {verdict:?}"
    );
}

#[tokio::test]
async fn wrong_or_missing_alpn_is_refused() {
    let ca = TestCa::new("cluster.local");
    let web = ca.workload("storefront", "web");
    let api = ca.workload("storefront", "api");
    let server = tls::server_config(&api, ca.bundles()).unwrap();
    let web_raw = || ca.crafted(|p| p.subject_alt_names = vec![uri(&web.identity().to_string())]);

    for (case, alpn) in [
        ("http/1.1 only", vec![&b"http/1.1"[..]]),
        ("no ALPN", vec![]),
    ] {
        let client = raw_client(Some(web_raw()), &[&rustls::version::TLS13], &alpn);
        let verdict = our_server_vs_raw_client(server.clone(), client).await;
        assert!(
            matches!(verdict, Err(TlsError::Alpn(None))),
            "{case}: got {verdict:?}"
        );
    }

    let client = tls::client_config(&web, ca.bundles(), vec![api.identity().clone()]).unwrap();
    let api_raw = ca.crafted(|p| p.subject_alt_names = vec![uri(&api.identity().to_string())]);
    let no_alpn_server = raw_server(api_raw, &[&rustls::version::TLS13], &[]);
    let verdict = our_client_vs_raw_server(client, no_alpn_server).await;
    assert!(
        matches!(verdict, Err(TlsError::Alpn(None))),
        "client got {verdict:?}"
    );
}
