//! `waypoint` binary: gets its certificate from the CA and its configuration over delta xDS
//! (workloads and services, the waypoint's L7 policies and JWT rules), then serves HBONE on
//! 15008 until SIGTERM, and drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ::http::StatusCode;
use anyhow::Context;
use clap::Parser;
use mesh::control;
use mesh::hbone::pool::{Pool, PoolSettings};
use mesh::identity::{
    CertStore, CertStoreCollector, IstioCaClient, IstioCaSettings, RefreshPolicy, SpiffeId,
    TrustDomain,
};
use mesh::state::Directory;
use mesh::state::xds_feed::{ADDRESS_TYPE, XdsFeed};
use mesh::telemetry::http;
use mesh::telemetry::logging::{self, LogFormat};
use mesh::xds::{AdsClient, Subscription};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;
use waypoint::authn::{Authenticator, AuthnSettings};
use waypoint::config::Config;
use waypoint::metrics::{Metrics, Reporter};
use waypoint::policies::{GatewayRef, PolicyStore};
use waypoint::proxy::{self, Inputs, Limits};
use waypoint::traces::Traces;
use waypoint::upstream::Forwarder;
use xds_proto::envoy::config::core::v3::Node;
use xds_proto::{JWT_AUTHENTICATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    logging::init(&config.log, LogFormat::from_env()).context("RUST_LOG/--log")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("waypoint")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let trust_domain = TrustDomain::parse(&config.trust_domain).context("TRUST_DOMAIN")?;
    let identity = SpiffeId::istio(
        &trust_domain,
        &config.pod_namespace,
        &config.service_account,
    )
    .context("POD_NAMESPACE/SERVICE_ACCOUNT")?;
    let handle = tokio::runtime::Handle::current();

    let ca_address = config.ca_address.as_deref().unwrap_or(&config.xds_address);
    let ca_roots = control::read_roots("CA_ROOT_CA", &config.ca_root_ca)?;
    let ca_channel = control::channel(
        "CA_ADDRESS",
        ca_address,
        &ca_roots,
        config.alt_ca_hostname.as_deref(),
        &handle,
    )?;
    let ca = IstioCaClient::new(
        ca_channel,
        IstioCaSettings {
            token: control::auth_token(config.auth_token.as_deref()),
            cluster_id: config.cluster_id.clone(),
            ttl: config.secret_ttl,
            // The waypoint asks for its own identity only.
            impersonate: false,
            headers: control::ca_headers_from_env(),
        },
    )
    .context("CA_HEADER_*")?;
    let certs = CertStore::new(Arc::new(ca), RefreshPolicy::default(), handle.clone());
    certs.prefetch(&identity);

    let directory = Arc::new(Directory::default());
    // One authenticator (one JWKS cache) for the policy store's prefetching and the requests.
    let authenticator = Authenticator::new(AuthnSettings::default());
    let policies = PolicyStore::new(
        GatewayRef {
            namespace: config.pod_namespace.clone(),
            name: config.gateway_name.clone(),
            root_namespace: config.root_namespace.clone(),
        },
        Some(authenticator.clone()),
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(mesh::shutdown::stop_on_signal(shutdown.clone()));

    let xds_roots_from = config.xds_root_ca.as_deref().unwrap_or(&config.ca_root_ca);
    let xds_roots = control::read_roots("XDS_ROOT_CA", xds_roots_from)?;
    let channel = control::channel(
        "XDS_ADDRESS",
        &config.xds_address,
        &xds_roots,
        config.alt_xds_hostname.as_deref(),
        &handle,
    )?;
    let connector = move || {
        let channel = channel.clone();
        async move { Ok::<_, std::convert::Infallible>(channel) }
    };
    let feed = XdsFeed::new(Arc::clone(&directory));
    let mut client = AdsClient::new(xds_node(&config), &config.xds_address, connector)?
        .with_metadata(control::xds_metadata(
            control::auth_token(config.auth_token.as_deref()),
            config.cluster_id.clone(),
        ));
    client.register(
        ADDRESS_TYPE,
        Subscription::Wildcard,
        feed.handler(ADDRESS_TYPE),
    )?;
    for type_url in [L7_AUTHORIZATION_TYPE_URL, JWT_AUTHENTICATION_TYPE_URL] {
        client.register(type_url, Subscription::Wildcard, policies.handler())?;
    }
    let mut ready = client.ready();
    tokio::spawn(client.run(shutdown.clone()));
    info!(control_plane = %config.xds_address, %identity, "waiting for configuration");
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        waited = ready.wait_for(|ready| *ready) => {
            waited.context("the xDS client stopped before the first configuration")?;
        }
    }

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    registry.register_collector(Box::new(CertStoreCollector::new(certs.clone())));
    let ready = Arc::new(AtomicBool::new(false));
    serve_operator_ports(&config, registry, Arc::clone(&ready), shutdown.clone()).await?;

    let traces = match config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let service = format!("{}.{}", config.gateway_name, config.pod_namespace);
            let traces = Traces::start(endpoint, config.trace_sampling, service)
                .context("OTEL_EXPORTER_OTLP_ENDPOINT")?;
            info!(
                collector = endpoint,
                sampling = config.trace_sampling,
                "request spans exported over OTLP"
            );
            Some(traces)
        }
        None => None,
    };

    let pool = Pool::new(PoolSettings::default(), certs.clone());
    pool.spawn_reaper(shutdown.clone());
    let limits = Limits {
        header_read_timeout: config.header_read_timeout,
        max_header_bytes: config.max_request_headers_bytes as usize,
        max_header_list_size: config.max_request_headers_bytes,
        max_concurrent_streams: config.max_concurrent_streams,
        max_connections: config.max_connections.max(1),
        ..Limits::default()
    };
    let inputs = Arc::new(Inputs::new(
        identity,
        config.instance_ip,
        config.network.clone(),
        directory,
        policies,
        certs,
        Forwarder::new(pool, config.connect_timeout, config.request_timeout),
        authenticator,
        limits,
        metrics,
        Reporter {
            namespace: config.pod_namespace.clone(),
            cluster: config.cluster_id.clone(),
        },
        traces,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the HBONE listener {}", config.listen))?;
    ready.store(true, Ordering::Release);
    info!(listen = %config.listen, "waypoint ready");
    let draining = shutdown.clone();
    let not_ready = Arc::clone(&ready);
    tokio::spawn(async move {
        draining.cancelled().await;
        // Probes see the drain at once, so no new client is sent here.
        not_ready.store(false, Ordering::Release);
    });
    proxy::serve(
        listener,
        Arc::clone(&inputs),
        shutdown,
        config.drain_timeout,
    )
    .await;
    if let Some(traces) = &inputs.traces {
        traces.shutdown().await;
    }
    info!("waypoint stopped");
    Ok(())
}

/// Metrics on `--stats-addr` and readiness on `--readiness-addr`, bound now so a taken port
/// fails start-up with its name.
async fn serve_operator_ports(
    config: &Config,
    registry: Registry,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stats = http::bind(config.stats_addr)
        .await
        .context("--stats-addr / STATS_ADDR")?;
    let readiness = http::bind(config.readiness_addr)
        .await
        .context("--readiness-addr / READINESS_ADDR")?;
    let registry = Arc::new(registry);
    tokio::spawn(http::serve(
        stats,
        move |parts| {
            let registry = Arc::clone(&registry);
            async move {
                match parts.uri.path() {
                    "/metrics" | "/stats/prometheus" => {
                        let accept = parts
                            .headers
                            .get(hyper::header::ACCEPT)
                            .and_then(|v| v.to_str().ok());
                        mesh::telemetry::metrics::scrape(&registry, accept)
                    }
                    _ => http::text(StatusCode::NOT_FOUND, "not found\n"),
                }
            }
        },
        shutdown.clone(),
    ));
    tokio::spawn(http::serve(
        readiness,
        move |parts| {
            let ready = ready.load(Ordering::Acquire);
            async move {
                match (parts.uri.path(), ready) {
                    ("/healthz/ready", true) => http::text(StatusCode::OK, "ready\n"),
                    ("/healthz/ready", false) => {
                        http::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                    _ => http::text(StatusCode::NOT_FOUND, "not found\n"),
                }
            }
        },
        shutdown,
    ));
    Ok(())
}

/// The xDS node as an Istio waypoint proxy describes itself (`router~<ip>~<pod>.<ns>~...`).
fn xds_node(config: &Config) -> Node {
    let ip = config.instance_ip.to_string();
    control::xds_node(
        "router",
        &ip,
        &config.pod_name,
        &config.pod_namespace,
        &[
            ("NAME", config.pod_name.as_str()),
            ("NAMESPACE", config.pod_namespace.as_str()),
            ("NODE_NAME", config.node_name.as_str()),
            ("INSTANCE_IPS", ip.as_str()),
            ("CLUSTER_ID", config.cluster_id.as_str()),
            ("GATEWAY_NAME", config.gateway_name.as_str()),
        ],
    )
}
