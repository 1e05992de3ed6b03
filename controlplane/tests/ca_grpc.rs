//! The CA over the real wire: tonic over our TLS on loopback, our Istio CA client on the other
//! end (what ztunnel runs), the server's certificate verified against the CA's root by address.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use controlplane::ca::{CaService, Caller, NodeWorkloads, Tokens};
use controlplane::serve::{Router, tls_incoming};
use mesh::identity::{
    CaLimits, CertificateProvider, FetchError, IstioCaClient, IstioCaSettings, LocalCa, SpiffeId,
    Token, TrustDomain,
};
use xds_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;

const TOKEN: &str = "node1-ztunnel-token-0123456789";

fn client(
    port: u16,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    token: &str,
) -> IstioCaClient {
    let uri = mesh::grpc::parse_address(&format!("127.0.0.1:{port}")).unwrap();
    let name = mesh::grpc::server_name(&uri, None).unwrap();
    let channel = mesh::grpc::channel(uri, mesh::grpc::client_config(roots).unwrap(), name);
    IstioCaClient::new(
        channel,
        IstioCaSettings {
            token: Token::Static(token.into()),
            cluster_id: "Kubernetes".into(),
            ttl: Duration::from_secs(3600),
            impersonate: true,
            headers: BTreeMap::new(),
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_proxy_gets_certificates_for_its_pods_over_tls() {
    let td = TrustDomain::parse("cluster.local").unwrap();
    let ca = Arc::new(
        LocalCa::generate_root(
            "cluster.local",
            Duration::from_secs(48 * 3600),
            CaLimits::default(),
        )
        .unwrap(),
    );
    let roots = ca.roots().to_vec();
    let (chain, key) = ca
        .issue_serving(
            &["istiod.istio-system.svc".into()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::from_secs(3600),
        )
        .unwrap();
    let tokens = Tokens::from_callers([(
        TOKEN.to_owned(),
        Caller {
            name: "ztunnel-node1".into(),
            node: "node1".into(),
            namespace: "istio-system".into(),
            service_account: "ztunnel".into(),
        },
    )]);
    let trusted = BTreeSet::from([("istio-system".to_owned(), "ztunnel".to_owned())]);
    let service = CaService::new(Arc::clone(&ca), td.clone(), tokens, trusted);
    service.set_workloads(NodeWorkloads::from_pods([("node1", "storefront", "web")]));
    let router = Router::new().with(IstioCertificateServiceServer::new(service));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = tls_incoming(listener, mesh::grpc::server_config(chain, key).unwrap());
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(router, incoming));

    let web = SpiffeId::istio(&td, "storefront", "web").unwrap();
    let issued = tokio::time::timeout(
        Duration::from_secs(20),
        client(port, &roots, TOKEN).fetch(&web),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(issued.identity(), &web);
    assert_eq!(
        issued.roots(),
        roots.as_slice(),
        "the root bundle is the last element"
    );

    let elsewhere = SpiffeId::istio(&td, "payments", "api").unwrap();
    match client(port, &roots, TOKEN).fetch(&elsewhere).await {
        Err(FetchError::Refused(text)) => assert!(text.contains("Unauthenticated"), "{text}"),
        other => panic!(
            "impersonating a pod of another node: {:?}",
            other.map(|c| c.identity().clone())
        ),
    }
    match client(port, &roots, "some-other-token-0123456789")
        .fetch(&web)
        .await
    {
        Err(FetchError::Refused(text)) => {
            assert!(text.contains("request authenticate failure"), "{text}")
        }
        other => panic!("unknown token: {:?}", other.map(|c| c.identity().clone())),
    }
    // A client that trusts another root refuses the server before sending anything.
    let stranger = LocalCa::generate_root(
        "cluster.local",
        Duration::from_secs(3600),
        CaLimits::default(),
    )
    .unwrap();
    match client(port, stranger.roots(), TOKEN).fetch(&web).await {
        Err(FetchError::Unreachable(text)) => assert!(!text.is_empty()),
        other => panic!(
            "untrusted server: {:?}",
            other.map(|c| c.identity().clone())
        ),
    }
}
