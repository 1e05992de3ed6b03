//! `ztunnel` binary: reads its configuration, starts two runtimes (a small one for control work
//! — certificates, config reloads, the node agent's socket — and the data-plane one for traffic,
//! so a slow CA or a big reload never stalls a connection), serves until SIGTERM, then drains.
//! `ztunnel node-agent` runs the standalone node agent instead.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use mesh::control;
use mesh::hbone::H2Settings;
use mesh::hbone::pool::Pool;
use mesh::identity::{
    CaLimits, CertStore, CertStoreCollector, CertificateProvider, IstioCaClient, IstioCaSettings,
    LocalCa, RefreshPolicy,
};
use mesh::telemetry::logging::{self, LogControl, LogFormat};
use mesh::xds::{AdsClient, Subscription};
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use xds_proto::envoy::config::core::v3::Node;
use ztunnel::admin::{self, AdminAddrs, AdminState, ConfigDump, Readiness};
use ztunnel::capture::netns::HostNetns;
use ztunnel::config::{Cli, Config, ProxyMode};
use ztunnel::inpod::pods::PodProxies;
use ztunnel::metrics::Metrics;
use ztunnel::proxy::{Inputs, Listeners, Proxy, Scope};
use ztunnel::state::xds_feed::{ADDRESS_TYPE, AUTHORIZATION_TYPE, XdsFeed};
use ztunnel::state::{Directory, watch_file};

/// Longest start-up waits for the first load of the local config.
const FIRST_CONFIG_TIMEOUT: Duration = Duration::from_secs(30);

/// Validity of a root generated at start-up (single-agent use only).
const GENERATED_ROOT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_filter = match &cli {
        Cli::NodeAgent(_) => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        Cli::Proxy(config) => config.log.clone(),
    };
    let logs = logging::init(&log_filter, LogFormat::from_env()).context("RUST_LOG/--log")?;
    match cli {
        Cli::NodeAgent(agent) => run_node_agent(agent),
        Cli::Proxy(config) => run_proxy(*config, logs),
    }
}

/// Raises the soft open-files limit to the hard one, as upstream does. Every proxied
/// connection holds at least two sockets, so the usual soft default (1024) would cap a node at
/// a few hundred connections while the kernel allows far more; failing to raise it is logged,
/// not fatal.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "open files limit raised"),
            Err(err) => warn!(soft, hard, error = %err, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(err) => warn!(error = %err, "cannot read the open files limit"),
    }
}

fn run_node_agent(config: ztunnel::agent::AgentConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("node-agent")
        .build()
        .context("starting the node agent runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(mesh::shutdown::stop_on_signal(shutdown.clone()));
        ztunnel::agent::run(config, shutdown)
            .await
            .context("node agent")
    })
}

fn run_proxy(config: Config, logs: LogControl) -> anyhow::Result<()> {
    raise_open_files_limit();
    // Opened on the main thread before any runtime exists, so it is this process's own
    // namespace: every thread that makes a pod's socket comes back to it.
    let host = match config.proxy_mode {
        ProxyMode::Shared => {
            let host = HostNetns::open().context("in-pod mode")?;
            host.check_can_switch()
                .context("in-pod mode needs CAP_SYS_ADMIN to enter pod network namespaces")?;
            Some(Arc::new(host))
        }
        ProxyMode::Dedicated => None,
    };
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ztunnel-control")
        .build()
        .context("starting the control runtime")?;
    let control_handle = control.handle().clone();
    let control_stop = CancellationToken::new();
    let control_thread = {
        let stop = control_stop.clone();
        std::thread::Builder::new()
            .name("ztunnel-control".into())
            .spawn(move || control.block_on(stop.cancelled()))
            .context("starting the control thread")?
    };

    let data = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .enable_all()
        .thread_name("ztunnel-data")
        .build()
        .context("starting the data-plane runtime")?;
    let result = data.block_on(run(config, host, control_handle, logs));

    control_stop.cancel();
    if control_thread.join().is_err() {
        warn!("control thread panicked during shutdown");
    }
    result
}

async fn run(
    config: Config,
    host: Option<Arc<HostNetns>>,
    control: Handle,
    logs: LogControl,
) -> anyhow::Result<()> {
    let provider = certificate_provider(&config, &control)?;
    let certs = CertStore::new(provider, RefreshPolicy::default(), control.clone());

    let directory = Arc::new(Directory::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(mesh::shutdown::stop_on_signal(shutdown.clone()));
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, Handle::current());
    registry.register_collector(Box::new(CertStoreCollector::new(certs.clone())));
    let readiness = Arc::new(Readiness::new());
    readiness.set_pending(admin::readiness::STATE_MANAGER, true);
    readiness.set_pending(
        match host {
            Some(_) => admin::readiness::WORKLOAD_PROXY_MANAGER,
            None => admin::readiness::PROXY,
        },
        true,
    );
    // Filled once in-pod mode has its pod manager, so /config_dump can list the pods.
    let pods = Arc::new(OnceLock::new());
    let admin_stop = CancellationToken::new();
    let _stop_admin = admin_stop.clone().drop_guard();
    let admin_state = AdminState {
        registry,
        readiness: Arc::clone(&readiness),
        logs: Some(logs),
        config_dump: config_dump(&config, &directory, &certs, &pods),
        shutdown: shutdown.clone(),
    };
    let addrs = AdminAddrs {
        admin: config.admin_addr,
        stats: config.stats_addr,
        readiness: config.readiness_addr,
    };
    control
        .spawn(admin::start(addrs, admin_state, admin_stop))
        .await
        .context("the control runtime stopped")?
        .context(
            "admin/metrics/readiness listener (--admin-addr, --stats-addr, --readiness-addr)",
        )?;

    start_config_source(&config, &directory, &control, &shutdown, &metrics).await?;
    readiness.set_pending(admin::readiness::STATE_MANAGER, false);

    // Certificates for this node's workloads are fetched before the first connection needs them.
    for workload in directory.load().local_workloads(&config.node_name) {
        certs.prefetch(&workload.identity());
    }

    let pool = Pool::new(config.pool(), certs.clone());
    pool.spawn_reaper(shutdown.clone());
    let inputs = Arc::new(
        Inputs::new(
            Arc::clone(&directory),
            certs,
            pool,
            config.network.clone(),
            config.node_name.clone(),
            config.cluster_id.clone(),
            metrics,
        )
        .with_inbound_h2(config.h2(H2Settings::server())),
    );
    match host {
        Some(host) => {
            serve_in_pod(&config, inputs, host, control, shutdown, &readiness, &pods).await
        }
        None => serve_dedicated(&config, inputs, shutdown, &readiness).await,
    }
}

/// The `/config_dump` document, built from the state at each request.
fn config_dump(
    config: &Config,
    directory: &Arc<Directory>,
    certs: &CertStore,
    pods: &Arc<OnceLock<Arc<PodProxies>>>,
) -> ConfigDump {
    let (directory, certs, pods) = (Arc::clone(directory), certs.clone(), Arc::clone(pods));
    let duration = |d| mesh::config::format_duration(d);
    let settings = serde_json::json!({
        "proxyMode": format!("{:?}", config.proxy_mode),
        "nodeName": config.node_name,
        "network": config.network,
        "clusterId": config.cluster_id,
        "xdsAddress": config.xds_address,
        "caAddress": config.ca_address,
        "secretTtl": duration(config.secret_ttl),
        "drainTimeout": duration(config.drain_timeout),
        "workerThreads": config.worker_threads,
        "http2StreamWindowSize": config.http2_stream_window_size,
        "http2ConnectionWindowSize": config.http2_connection_window_size,
        "http2FrameSize": config.http2_frame_size,
        "poolMaxStreamsPerConnection": config.pool_max_streams_per_connection,
        "poolUnusedReleaseTimeout": duration(config.pool_unused_release_timeout),
        "adminAddr": config.admin_addr.to_string(),
        "statsAddr": config.stats_addr.to_string(),
        "readinessAddr": config.readiness_addr.to_string(),
    });
    Box::new(move || {
        let pods = pods.get().map(|proxies| proxies.states());
        admin::config_dump::render(&admin::config_dump::Sources {
            snapshot: &directory.load(),
            certificates: &certs.states(),
            config: &settings,
            pods: pods.as_deref(),
        })
    })
}

/// Dedicated mode: one set of listeners in this namespace for every workload of the node.
async fn serve_dedicated(
    config: &Config,
    inputs: Arc<Inputs>,
    shutdown: CancellationToken,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        outbound: config.outbound_addr,
        inbound_plaintext: config.inbound_plaintext_addr,
        inbound: config.inbound_addr,
        reuse_port: false,
    };
    let workloads = inputs.directory.load().workload_count();
    let proxy = Proxy::bind(inputs, Scope::Node, listeners).await?;
    readiness.set_pending(admin::readiness::PROXY, false);
    info!(
        outbound = %listeners.outbound,
        inbound = %listeners.inbound,
        inbound_plaintext = %listeners.inbound_plaintext,
        node = %config.node_name,
        workloads,
        "ztunnel ready"
    );
    proxy
        .serve(shutdown, config.drain_timeout, CancellationToken::new())
        .await;
    Ok(())
}

/// In-pod mode: pods arrive over ZDS and each gets listeners inside its own namespace. The
/// ZDS conversation runs on the control runtime; the pod proxies on this (data) runtime.
async fn serve_in_pod(
    config: &Config,
    inputs: Arc<Inputs>,
    host: Arc<HostNetns>,
    control: Handle,
    shutdown: CancellationToken,
    readiness: &Arc<Readiness>,
    published: &OnceLock<Arc<PodProxies>>,
) -> anyhow::Result<()> {
    let listeners = Listeners::in_pod(config.ipv6_enabled, config.inpod_port_reuse);
    let proxies = Arc::new(PodProxies::new(
        inputs,
        host,
        listeners,
        config.drain_timeout,
        Handle::current(),
    ));
    // Set once per process: run() calls this at most once.
    let _ = published.set(Arc::clone(&proxies));
    let (ready, mut ready_changes) = watch::channel(false);
    // The node agent's snapshot gates readiness, and does again while ZDS is reconnecting.
    let following = Arc::clone(readiness);
    control.spawn(async move {
        loop {
            let ready = *ready_changes.borrow_and_update();
            following.set_pending(admin::readiness::WORKLOAD_PROXY_MANAGER, !ready);
            if ready_changes.changed().await.is_err() {
                return;
            }
        }
    });
    info!(socket = %config.inpod_uds.display(), node = %config.node_name,
        "ztunnel ready; waiting for the node agent to enroll pods");
    let zds = control.spawn(ztunnel::inpod::client::run(
        config.inpod_uds.clone(),
        Arc::clone(&proxies),
        ready,
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    // Stop reading ZDS first, so no pod starts while the others drain.
    let _ = zds.await;
    proxies.shutdown().await;
    info!("ztunnel stopped");
    Ok(())
}

/// Starts following the configuration (the control plane at `XDS_ADDRESS`, else the local
/// file) and waits for its first state. The file's first load goes through its watcher, so
/// start-up and reloads share one path; a control plane that is not there yet is waited for.
async fn start_config_source(
    config: &Config,
    directory: &Arc<Directory>,
    control: &Handle,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let mut updates = directory.subscribe();
    if let Some(address) = config.xds_address.as_deref().filter(|a| !a.is_empty()) {
        let client =
            xds_client(config, address, directory, control)?.with_metrics(metrics.xds.clone());
        control.spawn(client.run(shutdown.clone()));
        loop {
            match tokio::time::timeout(FIRST_CONFIG_TIMEOUT, updates.wait_for(|s| s.generation > 0))
                .await
            {
                Ok(waited) => {
                    waited.context("the xDS client stopped")?;
                    return Ok(());
                }
                Err(_) => warn!(control_plane = address, waited = ?FIRST_CONFIG_TIMEOUT,
                    "no configuration from the control plane yet; still waiting"),
            }
        }
    }
    let Some(path) = config.local_xds_path.clone() else {
        anyhow::bail!(
            "no configuration source: set XDS_ADDRESS (a control plane) or LOCAL_XDS_PATH (a file)"
        );
    };
    control.spawn(watch_file(
        path.clone(),
        Arc::clone(directory),
        config.config_poll_interval,
        shutdown.clone(),
    ));
    let first = tokio::time::timeout(
        FIRST_CONFIG_TIMEOUT,
        updates.wait_for(|s| s.generation > 0 || s.last_rejection.is_some()),
    )
    .await
    .context("the local config was not loaded in time")?
    .context("the config watcher stopped")?
    .clone();
    if first.generation == 0 {
        anyhow::bail!(
            "local config {} rejected: {}",
            path.display(),
            first.last_rejection.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(())
}

/// The delta xDS client for Address and Authorization, authenticating as the CA client does.
fn xds_client(
    config: &Config,
    address: &str,
    directory: &Arc<Directory>,
    control: &Handle,
) -> anyhow::Result<AdsClient<impl mesh::xds::Connector + use<>>> {
    let roots_from = config.xds_root_ca.as_deref().unwrap_or(&config.ca_root_ca);
    let roots = control::read_roots("XDS_ROOT_CA", roots_from)?;
    let channel = control::channel(
        "XDS_ADDRESS",
        address,
        &roots,
        config.alt_xds_hostname.as_deref(),
        control,
    )?;
    let connector = move || {
        let channel = channel.clone();
        async move { Ok::<_, std::convert::Infallible>(channel) }
    };
    let metadata = control::xds_metadata(
        control::auth_token(config.auth_token.as_deref()),
        config.cluster_id.clone(),
    );
    let feed = XdsFeed::new(Arc::clone(directory));
    let mut client = AdsClient::new(xds_node(config), address, connector)?.with_metadata(metadata);
    for type_url in [ADDRESS_TYPE, AUTHORIZATION_TYPE] {
        client.register(type_url, Subscription::Wildcard, feed.handler(type_url))?;
    }
    info!(
        control_plane = address,
        "configuration from the control plane"
    );
    Ok(client)
}

/// The xDS node as upstream ztunnel describes itself (xds.md §1.3).
fn xds_node(config: &Config) -> Node {
    control::xds_node(
        "ztunnel",
        &config.instance_ip,
        &config.pod_name,
        &config.pod_namespace,
        &[
            ("NAME", config.pod_name.as_str()),
            ("NAMESPACE", config.pod_namespace.as_str()),
            ("NODE_NAME", config.node_name.as_str()),
            ("INSTANCE_IPS", config.instance_ip.as_str()),
            ("CLUSTER_ID", config.cluster_id.as_str()),
        ],
    )
}

/// Where workload certificates come from: the CA at `CA_ADDRESS` (istiod's protocol), else the
/// local CA.
fn certificate_provider(
    config: &Config,
    control: &Handle,
) -> anyhow::Result<Arc<dyn CertificateProvider>> {
    let Some(address) = config.ca_address.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(Arc::new(local_ca(config)?));
    };
    let roots = control::read_roots("CA_ROOT_CA", &config.ca_root_ca)?;
    let channel = control::channel(
        "CA_ADDRESS",
        address,
        &roots,
        config.alt_ca_hostname.as_deref(),
        control,
    )?;
    let headers = control::ca_headers_from_env();
    let settings = IstioCaSettings {
        token: control::auth_token(config.auth_token.as_deref()),
        cluster_id: config.cluster_id.clone(),
        ttl: config.secret_ttl,
        // This ztunnel serves many workloads in either mode, so it always asks as a node proxy.
        impersonate: true,
        headers,
    };
    info!(ca = address, token = ?settings.token.kind(), ttl = ?settings.ttl, "certificates from the CA");
    Ok(Arc::new(
        IstioCaClient::new(channel, settings).context("CA_HEADER_*")?,
    ))
}

fn local_ca(config: &Config) -> anyhow::Result<LocalCa> {
    match (&config.ca_cert, &config.ca_key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = std::fs::read_to_string(cert_path)
                .with_context(|| format!("reading --ca-cert {}", cert_path.display()))?;
            let key = std::fs::read_to_string(key_path)
                .with_context(|| format!("reading --ca-key {}", key_path.display()))?;
            LocalCa::from_pem(&cert, &key, "", &cert, CaLimits::default())
                .with_context(|| format!("loading the CA from {}", cert_path.display()))
        }
        _ => {
            warn!("no --ca-cert/--ca-key: generating a root; only this agent will trust it");
            LocalCa::generate_root(
                "cluster.local",
                GENERATED_ROOT_VALIDITY,
                CaLimits::default(),
            )
            .context("generating a root CA")
        }
    }
}
