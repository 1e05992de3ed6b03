//! ztunnel's metric families, with upstream's names, labels and label values
//! (telemetry.md §a.2, §a.3), so existing dashboards and alerts read this proxy unchanged. The
//! families are created once, registered in the process registry and shared by every
//! connection; a series is looked up once per connection, never per byte.

use std::fmt;
use std::sync::Arc;

use mesh::telemetry::metrics::DryRunLabels;
use mesh::xds::XdsMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;

/// Which side reports a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// Outbound (15001): the client's ztunnel.
    Source,
    /// Inbound (15008, 15006): the server's ztunnel.
    Destination,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The `connection_security_policy` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// Carried over HBONE (mTLS).
    MutualTls,
    /// Accepted in plaintext by the destination (PERMISSIVE). Upstream ztunnel reports
    /// `unknown` here; this project reports `none`, as Istio's sidecars do, so "who still sends
    /// plaintext" is one query (docs/observability.md).
    None,
    /// Plain TCP leaving the source: the far side decides.
    Unknown,
}

impl SecurityPolicy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
            Self::Unknown => "unknown",
        }
    }
}

/// The `response_flags` label: why a connection failed, `-` when it did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// No failure.
    None,
    /// Authorization refused it.
    Deny,
    /// Connecting onwards failed (and every failure without a more precise flag).
    Connect,
    /// The mTLS handshake failed.
    TlsFailure,
    /// Dialing the peer's HBONE port timed out.
    NetworkPolicy,
    /// No certificate for the identity to present.
    IdentityError,
}

impl ResponseFlag {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::Connect => "CONNECT",
            Self::TlsFailure => "TLS_FAILURE",
            Self::NetworkPolicy => "NETWORK_POLICY",
            Self::IdentityError => "IDENTITY_ERROR",
        }
    }
}

/// The labels of the `istio_tcp_*` families, in upstream's order. Empty means `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
    pub source_region: String,
    pub source_zone: String,
    pub destination_region: String,
    pub destination_zone: String,
}

impl TrafficLabels {
    /// Replaces every empty value with `unknown`, as upstream does.
    pub fn fill_unknown(mut self) -> Self {
        for value in [
            &mut self.source_workload,
            &mut self.source_canonical_service,
            &mut self.source_canonical_revision,
            &mut self.source_workload_namespace,
            &mut self.source_principal,
            &mut self.source_app,
            &mut self.source_version,
            &mut self.source_cluster,
            &mut self.destination_service,
            &mut self.destination_service_namespace,
            &mut self.destination_service_name,
            &mut self.destination_workload,
            &mut self.destination_canonical_service,
            &mut self.destination_canonical_revision,
            &mut self.destination_workload_namespace,
            &mut self.destination_principal,
            &mut self.destination_app,
            &mut self.destination_version,
            &mut self.destination_cluster,
            &mut self.source_region,
            &mut self.source_zone,
            &mut self.destination_region,
            &mut self.destination_zone,
        ] {
            if value.is_empty() {
                "unknown".clone_into(value);
            }
        }
        self
    }
}

/// Labels of `istio_tcp_sockets_open`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReporterLabel {
    pub reporter: &'static str,
}

/// The in-pod proxy manager's families.
#[derive(Debug, Clone, Default)]
pub struct ProxyManagerMetrics {
    /// Pod proxies serving.
    pub active: Gauge,
    /// Pods announced but whose proxy has not started.
    pub pending: Gauge,
    /// Pod proxies started since boot.
    pub started: Counter,
    /// Pod proxies stopped since boot.
    pub stopped: Counter,
}

/// Every family ztunnel exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_opened: Family<TrafficLabels, Counter>,
    pub connections_closed: Family<TrafficLabels, Counter>,
    pub connections_failed: Family<TrafficLabels, Counter>,
    /// Client → server bytes.
    pub received_bytes: Family<TrafficLabels, Counter>,
    /// Server → client bytes.
    pub sent_bytes: Family<TrafficLabels, Counter>,
    pub sockets_open: Family<ReporterLabel, Gauge>,
    pub dry_run: Family<DryRunLabels, Counter>,
    pub proxies: ProxyManagerMetrics,
    pub xds: XdsMetrics,
}

impl Metrics {
    /// New families, registered in `registry` (with the build, process and data-plane runtime
    /// families).
    pub fn register(registry: &mut Registry, data_plane: Handle) -> Arc<Self> {
        let metrics = Self {
            xds: XdsMetrics::register(registry),
            ..Self::default()
        };
        for (name, help, family) in [
            (
                "istio_tcp_connections_opened",
                "The total number of TCP connections opened",
                &metrics.connections_opened,
            ),
            (
                "istio_tcp_connections_closed",
                "The total number of TCP connections closed",
                &metrics.connections_closed,
            ),
            (
                "istio_tcp_connections_failed",
                "The total number of TCP connections that failed to establish (unstable)",
                &metrics.connections_failed,
            ),
            (
                "istio_tcp_received_bytes",
                "The size of total bytes received during request in case of a TCP connection",
                &metrics.received_bytes,
            ),
            (
                "istio_tcp_sent_bytes",
                "The size of total bytes sent during response in case of a TCP connection",
                &metrics.sent_bytes,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "istio_tcp_sockets_open",
            "The current number of open sockets (unstable)",
            metrics.sockets_open.clone(),
        );
        registry.register(
            "istio_authz_dry_run",
            "Dry-run authorization verdicts: what dry-run policies would have done",
            metrics.dry_run.clone(),
        );
        let proxies = &metrics.proxies;
        registry.register(
            "workload_manager_active_proxy_count",
            "The total number current workloads with active proxies (unstable)",
            proxies.active.clone(),
        );
        registry.register(
            "workload_manager_pending_proxy_count",
            "The total number current workloads with pending proxies (unstable)",
            proxies.pending.clone(),
        );
        registry.register(
            "workload_manager_proxies_started",
            "The total number of proxies that were started (unstable)",
            proxies.started.clone(),
        );
        registry.register(
            "workload_manager_proxies_stopped",
            "The total number of proxies that were stopped (unstable)",
            proxies.stopped.clone(),
        );
        mesh::telemetry::metrics::register_build(registry, "ztunnel");
        registry.register_collector(Box::new(mesh::telemetry::metrics::ProcessCollector));
        registry.register_collector(Box::new(RuntimeCollector(data_plane)));
        Arc::new(metrics)
    }
}

/// The data-plane runtime's `tokio_*` families, read at scrape time.
struct RuntimeCollector(Handle);

impl fmt::Debug for RuntimeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeCollector")
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> fmt::Result {
    let value = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let runtime = self.0.metrics();
        let workers = runtime.num_workers();
        gauge(
            &mut encoder,
            "tokio_num_workers",
            "The number of worker threads used by the runtime",
            workers,
        )?;
        gauge(
            &mut encoder,
            "tokio_global_queue_depth",
            "The number of tasks currently scheduled in the runtime's global queue",
            runtime.global_queue_depth(),
        )?;
        gauge(
            &mut encoder,
            "tokio_num_alive_tasks",
            "The current number of alive tasks in the runtime",
            runtime.num_alive_tasks(),
        )?;
        type PerWorker = (
            &'static str,
            &'static str,
            fn(&tokio::runtime::RuntimeMetrics, usize) -> f64,
        );
        let per_worker: [PerWorker; 3] = [
            (
                "tokio_worker_total_busy_duration_seconds",
                "The amount of time worker threads were busy",
                |m, w| m.worker_total_busy_duration(w).as_secs_f64(),
            ),
            (
                "tokio_worker_park_count",
                "The total number of times worker threads have parked",
                |m, w| m.worker_park_count(w) as f64,
            ),
            (
                "tokio_worker_park_unpark_count",
                "The total number of times worker threads have parked and unparked",
                |m, w| m.worker_park_unpark_count(w) as f64,
            ),
        ];
        for (name, help, read) in per_worker {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for worker in 0..workers {
                let label = [("worker", worker.to_string())];
                let counter = ConstCounter::new(read(&runtime, worker));
                counter.encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}
