//! ztunnel's configuration: command-line flags, each also readable from the environment
//! variable upstream ztunnel uses for the same meaning, so a DaemonSet's env keeps working.
//! Parsed once at start-up and validated; a bad value stops start-up naming the knob.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mesh::hbone::pool::PoolSettings;
use mesh::hbone::{
    DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_FRAME_SIZE, DEFAULT_STREAM_WINDOW, H2Settings,
};

use crate::agent::AgentConfig;

/// Default outbound capture port.
pub const DEFAULT_OUTBOUND: &str = "0.0.0.0:15001";
/// Default inbound plaintext port.
pub const DEFAULT_INBOUND_PLAINTEXT: &str = "0.0.0.0:15006";
/// Default HBONE port.
pub const DEFAULT_INBOUND: &str = "0.0.0.0:15008";

/// The command line: the proxy (no subcommand, as upstream's image runs it), or
/// `ztunnel node-agent ...`, the standalone node agent.
#[derive(Debug, Clone)]
pub enum Cli {
    /// The proxy (boxed: it dwarfs the agent's configuration).
    Proxy(Box<Config>),
    /// The node agent.
    NodeAgent(AgentConfig),
}

/// `ztunnel node-agent`'s command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ztunnel node-agent",
    version,
    about = "Standalone node agent (for machines without istio-cni): installs the in-pod capture \
             rules in each listed pod's network namespace and enrolls the pods with ztunnel over ZDS."
)]
struct NodeAgentCli {
    #[command(flatten)]
    agent: AgentConfig,
}

impl Cli {
    /// Parses the process's arguments, exiting with clap's message on error.
    pub fn parse() -> Self {
        match Self::try_parse_from(std::env::args_os()) {
            Ok(cli) => cli,
            Err(err) => err.exit(),
        }
    }

    /// Parses `args` (the first is the program name). The proxy's flags are all top-level, as
    /// upstream's, so the node agent is recognised by its first word alone.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        // Upstream's DaemonSet runs `ztunnel proxy ztunnel`: accepted, so only the image changes.
        if args.get(1).is_some_and(|first| first == "proxy") {
            let skip = if args.get(2).is_some_and(|a| a == "ztunnel") {
                2
            } else {
                1
            };
            args.drain(1..=skip);
        }
        if args.get(1).is_some_and(|first| first == "node-agent") {
            let rest = std::iter::once(std::ffi::OsString::from("ztunnel node-agent"))
                .chain(args.into_iter().skip(2));
            return NodeAgentCli::try_parse_from(rest).map(|cli| Self::NodeAgent(cli.agent));
        }
        Config::try_parse_from(args).map(|config| Self::Proxy(Box::new(config)))
    }
}

/// How ztunnel finds the workloads it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// In-pod mode (upstream's default): the node agent enrolls pods over ZDS and ztunnel
    /// listens inside each pod's network namespace.
    Shared,
    /// One set of listeners in ztunnel's own namespace serves every workload of this node, told
    /// apart by address (capture rules are installed by someone else in that namespace).
    Dedicated,
}

/// The node agent of the mesh: carries captured pod traffic over HBONE.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ztunnel",
    version,
    about,
    after_help = "Standalone node agent (instead of istio-cni): ztunnel node-agent --help"
)]
pub struct Config {
    /// `shared` (in-pod, pods enrolled over ZDS) or `dedicated` (listeners in this namespace).
    #[arg(long, env = "PROXY_MODE", value_enum, default_value = "shared")]
    pub proxy_mode: ProxyMode,

    /// The node agent's ZDS socket (in-pod mode).
    #[arg(
        long,
        env = "INPOD_UDS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub inpod_uds: PathBuf,

    /// `SO_REUSEPORT` on in-pod listeners, so an upgraded ztunnel binds beside a draining one.
    #[arg(long, env = "INPOD_PORT_REUSE", default_value_t = true, action = clap::ArgAction::Set)]
    pub inpod_port_reuse: bool,

    /// In-pod listeners on `[::]` (dual-stack) rather than `0.0.0.0`.
    #[arg(long, env = "IPV6_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipv6_enabled: bool,

    /// Set by upstream's chart, read by no ztunnel: accepted and ignored.
    #[arg(long, env = "INPOD_ENABLED", hide = true)]
    pub inpod_enabled: Option<String>,

    /// Workloads, services and policies from a local YAML file (upstream's local config format),
    /// re-read when it changes. Used when no `XDS_ADDRESS` is given.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,

    /// The control plane (istiod or ours), e.g. `istiod.istio-system.svc:15012`; `https://` is
    /// assumed. Empty or unset: the local file instead.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,

    /// Roots the control plane's serving certificate must chain to (file or PEM text); default:
    /// the CA's (`CA_ROOT_CA`).
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_ca: Option<String>,

    /// A name the control plane may prove instead of the host of `XDS_ADDRESS`.
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub alt_xds_hostname: Option<String>,

    /// This ztunnel's pod name (xDS node id and metadata).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,

    /// This ztunnel's namespace (xDS node id and metadata).
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pub pod_namespace: String,

    /// This ztunnel's address (xDS node id and metadata).
    #[arg(long, env = "INSTANCE_IP", default_value = "1.1.1.1")]
    pub instance_ip: String,

    /// This node's name: workloads whose `node` matches are the ones this agent serves.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// The network this node is on (lookup keys are `network/ip`).
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,

    /// Cluster id reported in baggage and used as the workload default.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// Listener for captured outbound connections (dedicated mode).
    #[arg(long, default_value = DEFAULT_OUTBOUND)]
    pub outbound_addr: SocketAddr,

    /// Listener for captured inbound plaintext connections (dedicated mode).
    #[arg(long, default_value = DEFAULT_INBOUND_PLAINTEXT)]
    pub inbound_plaintext_addr: SocketAddr,

    /// Listener for HBONE (dedicated mode).
    #[arg(long, default_value = DEFAULT_INBOUND)]
    pub inbound_addr: SocketAddr,

    /// PEM root certificate of the local CA (with --ca-key). Agents that must trust each other
    /// share one; without it a root is generated, good for a single agent only.
    #[arg(long, env = "LOCAL_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// PEM PKCS#8 key of the local CA root.
    #[arg(long, env = "LOCAL_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// The CA (istiod or our control plane), e.g. `istiod.istio-system.svc:15012`; `https://`
    /// is assumed. Unset: certificates come from the local CA (`--ca-cert`) instead.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,

    /// Roots that the CA's serving certificate must chain to: a PEM file, or PEM text.
    #[arg(
        long,
        env = "CA_ROOT_CA",
        default_value = "./var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root_ca: String,

    /// A name the CA may prove instead of the host of `CA_ADDRESS`.
    #[arg(long, env = "ALT_CA_HOSTNAME")]
    pub alt_ca_hostname: Option<String>,

    /// Bearer token for the CA: a file (re-read on every request) or the token itself. Unset:
    /// `./var/run/secrets/tokens/istio-token` if present, else no token.
    #[arg(long, env = "AUTH_TOKEN")]
    pub auth_token: Option<String>,

    /// Lifetime asked for workload certificates.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub secret_ttl: Duration,

    /// How often the local config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub config_poll_interval: Duration,

    /// On SIGTERM, how long open connections may take to finish before they are cut.
    #[arg(long, env = "CONNECTION_TERMINATION_DEADLINE", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Admin API (`/config_dump`, `/logging`, `/quitquitquit`); keep it on loopback: it can
    /// stop the proxy. The IPv6 loopback is bound too when this is `127.0.0.1`.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics (`/metrics`, `/stats/prometheus`).
    #[arg(long, default_value = "[::]:15020")]
    pub stats_addr: SocketAddr,

    /// Readiness (`/healthz/ready`), what the DaemonSet's probe asks.
    #[arg(long, default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,

    /// HTTP/2 receive window per HBONE stream, in bytes (both directions of every tunnel).
    #[arg(long, env = "HTTP2_STREAM_WINDOW_SIZE", default_value_t = DEFAULT_STREAM_WINDOW,
        value_parser = clap::value_parser!(u32).range(65_535..=MAX_WINDOW))]
    pub http2_stream_window_size: u32,

    /// HTTP/2 receive window per HBONE connection, in bytes (shared by its streams).
    #[arg(long, env = "HTTP2_CONNECTION_WINDOW_SIZE", default_value_t = DEFAULT_CONNECTION_WINDOW,
        value_parser = clap::value_parser!(u32).range(65_535..=MAX_WINDOW))]
    pub http2_connection_window_size: u32,

    /// Largest HTTP/2 DATA frame accepted, in bytes (HTTP/2 allows 16 KiB to 16 MiB - 1).
    #[arg(long, env = "HTTP2_FRAME_SIZE", default_value_t = DEFAULT_MAX_FRAME_SIZE,
        value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    pub http2_frame_size: u32,

    /// Tunnels one pooled HBONE connection carries at once before another one is opened.
    #[arg(long, env = "POOL_MAX_STREAMS_PER_CONNECTION", default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub pool_max_streams_per_connection: u32,

    /// A pooled HBONE connection unused for this long is closed.
    #[arg(long, env = "POOL_UNUSED_RELEASE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub pool_unused_release_timeout: Duration,

    /// Worker threads of the data-plane runtime.
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,

    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,ztunnel::proxy=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

pub use mesh::config::parse_duration;

/// HTTP/2's largest flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: i64 = 2_147_483_647;

impl Config {
    /// `base` with this configuration's windows and frame size.
    pub fn h2(&self, base: H2Settings) -> H2Settings {
        H2Settings {
            stream_window: self.http2_stream_window_size,
            connection_window: self.http2_connection_window_size,
            max_frame_size: self.http2_frame_size,
            ..base
        }
    }

    /// The outbound connection pool's settings.
    pub fn pool(&self) -> PoolSettings {
        let client = H2Settings::client();
        PoolSettings {
            max_streams_per_connection: self.pool_max_streams_per_connection as usize,
            idle_timeout: self.pool_unused_release_timeout,
            // The send buffer follows the stream window, as in the defaults.
            h2: H2Settings {
                max_send_buffer: self.http2_stream_window_size as usize,
                ..self.h2(client)
            },
            ..PoolSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_names_parse() {
        let config = Config::try_parse_from([
            "ztunnel",
            "--local-xds-path",
            "/tmp/x.yaml",
            "--node-name",
            "node-a",
            "--drain-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(config.node_name, "node-a");
        assert_eq!(config.local_xds_path, Some(PathBuf::from("/tmp/x.yaml")));
        assert_eq!(config.drain_timeout, Duration::from_secs(2));
        assert_eq!(config.inbound_addr.port(), 15008);
        assert_eq!(
            config.proxy_mode,
            ProxyMode::Shared,
            "upstream's default mode"
        );
        let missing_key = Config::try_parse_from([
            "ztunnel",
            "--local-xds-path",
            "x",
            "--node-name",
            "n",
            "--ca-cert",
            "c.pem",
        ]);
        assert!(
            missing_key.is_err(),
            "--ca-cert without --ca-key must be refused"
        );
    }

    #[test]
    fn pool_and_window_knobs_default_to_upstream_and_are_bounded() {
        let base = ["ztunnel", "--local-xds-path", "x", "--node-name", "n"];
        let config = Config::try_parse_from(base).unwrap();
        let pool = config.pool();
        assert_eq!(pool.max_streams_per_connection, 100);
        assert_eq!(pool.idle_timeout, Duration::from_secs(300));
        assert_eq!(pool.h2, H2Settings::client());
        assert_eq!(config.h2(H2Settings::server()), H2Settings::server());

        let tuned = Config::try_parse_from(base.into_iter().chain([
            "--http2-stream-window-size",
            "1048576",
            "--pool-max-streams-per-connection",
            "10",
            "--pool-unused-release-timeout",
            "30s",
        ]))
        .unwrap();
        let pool = tuned.pool();
        assert_eq!(
            (pool.h2.stream_window, pool.h2.max_send_buffer),
            (1 << 20, 1 << 20)
        );
        assert_eq!(pool.max_streams_per_connection, 10);
        assert_eq!(pool.idle_timeout, Duration::from_secs(30));
        assert_eq!(tuned.h2(H2Settings::server()).stream_window, 1 << 20);

        for (flag, value) in [
            ("--http2-frame-size", "1000"),
            ("--http2-stream-window-size", "3000000000"),
            ("--pool-max-streams-per-connection", "0"),
        ] {
            let refused = Config::try_parse_from(base.into_iter().chain([flag, value]));
            let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains(value),
                "{flag} {value} must be refused, naming it: {err:?}"
            );
        }
    }

    #[test]
    fn the_node_agent_needs_no_proxy_flags() {
        let cli =
            Cli::try_parse_from(["ztunnel", "node-agent", "--pods", "/etc/pods.yaml"]).unwrap();
        let Cli::NodeAgent(agent) = cli else {
            panic!("node-agent subcommand not recognised");
        };
        assert_eq!(agent.pods, PathBuf::from("/etc/pods.yaml"));
        assert!(!agent.dns_capture, "DNS capture is off without a DNS proxy");
        let proxy = Cli::try_parse_from(["ztunnel", "--local-xds-path", "x", "--node-name", "n"]);
        assert!(matches!(proxy.unwrap(), Cli::Proxy(_)));
        let upstream_args = Cli::try_parse_from([
            "ztunnel",
            "proxy",
            "ztunnel",
            "--local-xds-path",
            "x",
            "--node-name",
            "n",
        ]);
        assert!(
            matches!(upstream_args.unwrap(), Cli::Proxy(_)),
            "upstream's `proxy ztunnel` arguments are accepted"
        );
        assert!(
            Cli::try_parse_from(["ztunnel"]).is_err(),
            "the proxy still needs its flags"
        );
    }
}
