//! `controlplane serve`: the configuration directory translated and served over delta ADS, and
//! the workload CA, on one TLS port (istiod's 15012), until SIGTERM.
//!
//! `controlplane report plaintext|dry-run <ztunnel>...`: the rollout reports, from what the
//! ztunnels counted.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use controlplane::ca::{CaService, Tokens, load_or_create};
use controlplane::serve::{Router, tls_incoming};
use controlplane::translate::Options;
use controlplane::xds::DeltaAdsServer;
use controlplane::{report, source};
use mesh::config::parse_duration;
use mesh::identity::{CaLimits, TrustDomain};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use xds_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;

/// A small control plane: Istio-format YAML -> delta xDS, and the workload CA.
#[derive(Debug, Parser)]
#[command(name = "controlplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve xDS and the CA.
    Serve(Box<ServeArgs>),
    /// Read the ztunnels' metrics and report what a rollout step would change.
    #[command(subcommand)]
    Report(Report),
}

#[derive(Debug, Subcommand)]
enum Report {
    /// Who still receives plaintext, from where, and whether STRICT would refuse it now.
    Plaintext(ReportArgs),
    /// What the dry-run authorization policies would have denied.
    DryRun(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Count only what happens over this long (two scrapes this far apart), e.g. `10m`;
    /// without it, everything since each ztunnel started.
    #[arg(long, value_parser = parse_duration)]
    over: Option<Duration>,

    /// How long one scrape may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,

    /// Every ztunnel's metrics address (`host:15020` or an `http://` URL): the report covers
    /// the ones named, so name them all.
    #[arg(required = true, value_name = "ZTUNNEL")]
    ztunnels: Vec<String>,
}

/// Exit status of a report that could not read every ztunnel named.
const EXIT_INCOMPLETE: u8 = 2;

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Directory of Kubernetes/Istio YAML (Namespaces, ServiceAccounts, Pods, Services,
    /// AuthorizationPolicy, PeerAuthentication, RequestAuthentication), re-read when it changes.
    #[arg(long, env = "CONFIG_DIR")]
    config_dir: PathBuf,

    /// Where xDS and the CA listen (TLS).
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,

    /// The CA's key material (istiod's cacerts layout); a root is generated there if empty.
    #[arg(long, env = "ROOT_CA_DIR", default_value = "./etc/cacerts")]
    ca_dir: PathBuf,

    /// Who may call (bearer tokens mapped to caller identities and nodes; see docs).
    #[arg(long)]
    tokens: PathBuf,

    /// `namespace/serviceaccount` callers that may ask for their node's workloads' certificates.
    #[arg(
        long,
        env = "CA_TRUSTED_NODE_ACCOUNTS",
        default_value = "istio-system/ztunnel",
        value_delimiter = ','
    )]
    trusted_node_accounts: Vec<String>,

    /// Mesh trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,

    /// Cluster id (workload uids, `Workload.cluster_id`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    /// DNS names in the serving certificate (what clients dial).
    #[arg(long = "serving-name", default_values_t = ["istiod.istio-system.svc".to_owned(), "istiod".to_owned(), "localhost".to_owned()])]
    serving_names: Vec<String>,

    /// Addresses in the serving certificate.
    #[arg(long = "serving-ip", default_values_t = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)])]
    serving_ips: Vec<IpAddr>,

    /// Certificate lifetime when a request names none.
    #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    default_ttl: Duration,

    /// Longest certificate lifetime a request may ask for.
    #[arg(long, env = "MAX_WORKLOAD_CERT_TTL", default_value = "90d", value_parser = parse_duration)]
    max_ttl: Duration,

    /// How often the configuration directory is checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
}

/// Streams one client connection may hold (a ztunnel needs one xDS stream and a few CA calls).
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Lifetime of the serving certificate (within the signer's own).
const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

fn main() -> anyhow::Result<ExitCode> {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Report(kind) => return report(kind),
    };
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("controlplane")
        .build()
        .context("starting the runtime")?
        .block_on(serve(*args))?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)] // the report is what this command is for
fn report(kind: Report) -> anyhow::Result<ExitCode> {
    let args = match &kind {
        Report::Plaintext(args) | Report::DryRun(args) => args,
    };
    let scraped = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(report::collect(&args.ztunnels, args.over, args.timeout));
    if scraped.read == 0 {
        let reasons: Vec<String> = scraped
            .unreachable
            .iter()
            .map(ToString::to_string)
            .collect();
        anyhow::bail!("no ztunnel could be read: {}", reasons.join("; "));
    }
    let window = args.over.map(mesh::config::format_duration);
    match kind {
        Report::Plaintext(_) => print!(
            "{}",
            report::plaintext(&scraped.samples, scraped.read, window)
        ),
        Report::DryRun(_) => print!(
            "{}",
            report::dry_run(&scraped.samples, scraped.read, window)
        ),
    }
    if scraped.unreachable.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // The counts above leave these nodes out: say so where the report is read, and in the
    // exit status for scripts.
    println!(
        "\nINCOMPLETE: {} of {} ztunnel(s) could not be read; their traffic is not counted above:",
        scraped.unreachable.len(),
        args.ztunnels.len()
    );
    for error in &scraped.unreachable {
        println!("  {error}");
    }
    Ok(ExitCode::from(EXIT_INCOMPLETE))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let trust_domain = TrustDomain::parse(&args.trust_domain).context("--trust-domain")?;
    let limits = CaLimits {
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
    };
    let material = load_or_create(&args.ca_dir, &trust_domain, limits).context("CA material")?;
    info!(roots = %material.roots_path.display(), "clients verify this control plane with these roots (CA_ROOT_CA)");
    let ca = Arc::new(material.ca);
    let tokens = Tokens::load(&args.tokens).context("--tokens")?;
    if tokens.is_empty() {
        warn!("no callers in --tokens: every CA and xDS request will be refused");
    }
    let trusted: BTreeSet<(String, String)> = args
        .trusted_node_accounts
        .iter()
        .filter_map(|account| {
            let (ns, sa) = account.split_once('/')?;
            Some((ns.to_owned(), sa.to_owned()))
        })
        .collect();

    let options = Options {
        cluster_id: args.cluster_id.clone(),
        trust_domain: trust_domain.clone(),
        ..Options::default()
    };
    // No good configuration yet means nothing to serve: refuse to start rather than serve empty.
    let first = source::load(&args.config_dir, &options)
        .with_context(|| format!("loading {}", args.config_dir.display()))?;
    info!(dir = %args.config_dir.display(), addresses = first.addresses,
        authorizations = first.authorizations, "configuration applied");
    let service = Arc::new(CaService::new(
        Arc::clone(&ca),
        trust_domain,
        tokens.clone(),
        trusted.clone(),
    ));
    service.set_workloads(first.workloads);
    let (snapshots, watcher) = watch::channel(first.snapshot);

    let shutdown = CancellationToken::new();
    tokio::spawn(mesh::shutdown::stop_on_signal(shutdown.clone()));
    tokio::spawn(source::follow(
        args.config_dir.clone(),
        options,
        args.poll_interval,
        snapshots,
        Arc::clone(&service),
        shutdown.clone(),
    ));

    let (chain, key) = ca
        .issue_serving(&args.serving_names, &args.serving_ips, SERVING_CERT_TTL)
        .context("issuing the serving certificate")?;
    let tls = mesh::grpc::server_config(chain, key).context("serving TLS")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let ads = DeltaAdsServer::new(watcher, shutdown.clone()).into_service();
    let xds_tokens = tokens;
    let ca_facts = Arc::clone(&service);
    let ads = tonic::service::interceptor::InterceptedService::new(
        ads,
        move |request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
            let token = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // The whole mesh's addresses and policies go to node proxies and waypoints only,
            // not to any workload that holds a CA token.
            match token {
                Some(t) if xds_tokens.is_one_of(t, &trusted) => Ok(request),
                Some(t)
                    if xds_tokens
                        .caller(t)
                        .is_some_and(|c| ca_facts.is_waypoint(&c)) =>
                {
                    Ok(request)
                }
                Some(t) if xds_tokens.caller(t).is_some() => {
                    warn!(
                        "xDS stream from a caller that is neither a node account nor a waypoint refused"
                    );
                    Err(tonic::Status::permission_denied(
                        "xDS is for node proxies and waypoints",
                    ))
                }
                _ => {
                    warn!("xDS stream from an unknown caller refused");
                    Err(tonic::Status::unauthenticated(
                        "request authenticate failure",
                    ))
                }
            }
        },
    );
    let router = Router::new()
        .with(IstioCertificateServiceServer::from_arc(service))
        .with(ads);
    info!(listen = %args.listen, "control plane ready");
    tonic::transport::Server::builder()
        // A node that vanished without closing is noticed, and one connection cannot open
        // streams without bound.
        .http2_keepalive_interval(Some(controlplane::xds::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(controlplane::xds::KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(std::time::Duration::from_secs(300)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .serve_with_incoming_shutdown(
            router,
            tls_incoming(listener, tls),
            shutdown.cancelled_owned(),
        )
        .await
        .context("serving")?;
    info!("control plane stopped");
    Ok(())
}
