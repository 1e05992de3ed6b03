//! The xDS client's metric families, named as upstream ztunnel's (telemetry.md §a.2), so the
//! same alerts fire on a control-plane problem.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;
use xds_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;

/// Why a stream ended, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum TerminationReason {
    /// The control plane could not be reached (dial, TLS, opening the call).
    ConnectionError,
    /// The stream failed with a status or a local error.
    Error,
    /// The server went away (restart, GOAWAY): reconnected at once.
    Reconnect,
    /// The server ended the stream cleanly.
    Complete,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: TerminationReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UrlLabel {
    url: String,
}

/// Counters of one xDS client. Cheap to clone; every clone counts into the same series.
#[derive(Debug, Clone, Default)]
pub struct XdsMetrics {
    terminations: Family<ReasonLabel, Counter>,
    messages: Family<UrlLabel, Counter>,
    message_bytes: Family<UrlLabel, Counter>,
}

impl XdsMetrics {
    /// New families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "istio_xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            metrics.terminations.clone(),
        );
        registry.register(
            "istio_xds_message",
            "Total number of messages received (unstable)",
            metrics.messages.clone(),
        );
        registry.register(
            "istio_xds_message_bytes",
            "Total number of bytes received (unstable)",
            metrics.message_bytes.clone(),
        );
        metrics
    }

    /// Counts one ended stream.
    pub(super) fn terminated(&self, reason: TerminationReason) {
        self.terminations
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one response and the serialized size of its resources.
    pub(super) fn received(&self, response: &DeltaDiscoveryResponse) {
        let label = UrlLabel {
            url: response.type_url.clone(),
        };
        self.messages.get_or_create(&label).inc();
        let bytes: usize = response.resources.iter().map(Message::encoded_len).sum();
        self.message_bytes
            .get_or_create(&label)
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }
}
