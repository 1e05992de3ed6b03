//! `ztunnel` binary: reads its configuration, starts two runtimes (a small one for control work
//! — certificates, config reloads — and the data-plane one for traffic, so a slow CA or a big
//! reload never stalls a connection), serves until SIGTERM, then drains.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh::hbone::pool::{Pool, PoolSettings};
use mesh::identity::{CaLimits, CertStore, LocalCa, RefreshPolicy};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use ztunnel::config::Config;
use ztunnel::proxy::socket::WorkloadDialer;
use ztunnel::proxy::{Inputs, Listeners, Proxy};
use ztunnel::state::{Directory, watch_file};

/// Longest start-up waits for the first load of the local config.
const FIRST_CONFIG_TIMEOUT: Duration = Duration::from_secs(30);

/// Validity of a root generated at start-up (single-agent use only).
const GENERATED_ROOT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        // Colour codes only for a person at a terminal; log collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_new(&config.log).with_context(|| {
                format!("RUST_LOG/--log {:?} is not a valid filter", config.log)
            })?,
        )
        .init();

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
    let result = data.block_on(run(config, control_handle));

    control_stop.cancel();
    if control_thread.join().is_err() {
        warn!("control thread panicked during shutdown");
    }
    result
}

async fn run(config: Config, control: Handle) -> anyhow::Result<()> {
    let ca = local_ca(&config)?;
    let certs = CertStore::new(Arc::new(ca), RefreshPolicy::default(), control.clone());

    // The watcher makes the first load too, so start-up and reloads share one path.
    let directory = Arc::new(Directory::default());
    let mut updates = directory.subscribe();
    let shutdown = CancellationToken::new();
    control.spawn(watch_file(
        config.local_xds_path.clone(),
        Arc::clone(&directory),
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
            config.local_xds_path.display(),
            first.last_rejection.as_deref().unwrap_or("unknown error")
        );
    }

    // Certificates for this node's workloads are fetched before the first connection needs them.
    for workload in directory.load().local_workloads(&config.node_name) {
        certs.prefetch(&workload.identity());
    }

    let pool = Pool::new(
        PoolSettings::default(),
        certs.clone(),
        Arc::new(WorkloadDialer),
    );
    pool.spawn_reaper(shutdown.clone());
    let inputs = Arc::new(Inputs::new(
        Arc::clone(&directory),
        certs,
        pool,
        config.network.clone(),
        config.node_name.clone(),
        config.cluster_id.clone(),
    ));
    let listeners = Listeners {
        outbound: config.outbound_addr,
        inbound_plaintext: config.inbound_plaintext_addr,
        inbound: config.inbound_addr,
    };
    let proxy = Proxy::bind(inputs, listeners).await?;
    tokio::spawn(stop_on_signal(shutdown.clone()));
    info!(
        outbound = %listeners.outbound,
        inbound = %listeners.inbound,
        inbound_plaintext = %listeners.inbound_plaintext,
        node = %config.node_name,
        workloads = directory.load().workload_count(),
        "ztunnel ready"
    );
    proxy.serve(shutdown, config.drain_timeout).await;
    Ok(())
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

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot listen for SIGTERM/SIGINT; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received; shutting down"),
        _ = int.recv() => info!("SIGINT received; shutting down"),
    }
    shutdown.cancel();
}
