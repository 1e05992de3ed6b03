//! The waypoint's settings: flags, each with the environment variable an Istio waypoint pod
//! sets (or the one upstream proxies read for the same thing).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use mesh::config::parse_duration;

/// The waypoint proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "waypoint", version, about)]
pub struct Config {
    /// Control plane for configuration (delta xDS), e.g. `https://istiod.istio-system.svc:15012`.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: String,

    /// Certificate authority; defaults to the xDS address.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,

    /// Roots that sign the control plane's serving certificate (a file or PEM text).
    #[arg(
        long,
        env = "CA_ROOT_CA",
        default_value = "./var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root_ca: String,

    /// Roots for the xDS server, when not those of the CA.
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_ca: Option<String>,

    /// Name the CA must prove, when not the address's host.
    #[arg(long, env = "ALT_CA_HOSTNAME")]
    pub alt_ca_hostname: Option<String>,

    /// Name the xDS server must prove, when not the address's host.
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub alt_xds_hostname: Option<String>,

    /// Bearer token for the CA and xDS: a file path or the token itself.
    #[arg(long, env = "AUTH_TOKEN")]
    pub auth_token: Option<String>,

    /// Cluster id sent to the control plane.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// Trust domain of the waypoint's identity.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// The waypoint pod's namespace (its Gateway's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: String,

    /// The waypoint pod's name.
    #[arg(long, env = "POD_NAME", default_value = "waypoint")]
    pub pod_name: String,

    /// The waypoint's service account: with the namespace, its SPIFFE identity.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: String,

    /// The Gateway this waypoint implements (policies bound to it apply to all its traffic).
    #[arg(long, env = "GATEWAY_NAME")]
    pub gateway_name: String,

    /// The pod's IP: how the waypoint finds its own workload.
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: IpAddr,

    /// The node the pod runs on.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,

    /// Network of the pod; empty is the default network.
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,

    /// Namespace whose policies bound to the waypoint GatewayClass apply to every waypoint.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,

    /// HBONE listener.
    #[arg(long, env = "WAYPOINT_LISTEN", default_value = "0.0.0.0:15008")]
    pub listen: SocketAddr,

    /// Prometheus metrics (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "STATS_ADDR", default_value = "0.0.0.0:15020")]
    pub stats_addr: SocketAddr,

    /// Readiness (`/healthz/ready`: 200 once configured and serving).
    #[arg(long, env = "READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// OTLP/gRPC collector for request spans, e.g. `http://otel-collector.istio-system:4317`;
    /// unset: no spans (a client's `traceparent` is still passed on).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Percentage of new traces sampled (a client's own decision is followed).
    #[arg(long, env = "TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,

    /// Lifetime asked for the waypoint's certificate.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub secret_ttl: Duration,

    /// On SIGTERM, how long requests in flight may take before connections are cut.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Longest a TCP connect to an endpoint's ztunnel may take.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Longest an HTTP/1.1 client may take to send a request's headers.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Largest request head accepted, in bytes (HTTP/1.1 head; HTTP/2 header list).
    #[arg(long, env = "MAX_REQUEST_HEADERS_BYTES", default_value_t = 60 * 1024)]
    pub max_request_headers_bytes: u32,

    /// Client connections (from client ztunnels) held at once; more are refused and counted.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Longest an endpoint may take to answer a request's headers; `0s`: no limit (streams and
    /// long polls run as long as they like). Past it: 504.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Concurrent HTTP/2 requests per client connection.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub max_concurrent_streams: u32,

    /// Log filter.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}
