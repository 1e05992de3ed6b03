//! What the certificate store holds, as gauges read at scrape time.
//!
//! Upstream ztunnel exports no certificate gauge; an expiry alert there means parsing
//! `/config_dump`. These two families are this project's addition (docs/observability.md), so
//! "a certificate will expire within 2 h" and "an identity has no certificate" are one PromQL
//! expression each. Reading the store at scrape time keeps them exact without the store knowing
//! about metrics.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{CertState, CertStore};

/// Family: Unix time at which the leaf served for `identity` stops being valid.
const EXPIRATION_FAMILY: &str = "ztunnel_certificate_expiration_timestamp_seconds";
/// Family: how many identities are in each `state`.
const STATE_FAMILY: &str = "ztunnel_certificates";

/// The store's gauges; register with `Registry::register_collector`.
pub struct CertStoreCollector(CertStore);

impl CertStoreCollector {
    /// Reads `store` at each scrape.
    pub fn new(store: CertStore) -> Self {
        Self(store)
    }
}

impl fmt::Debug for CertStoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStoreCollector")
    }
}

fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        // A notAfter before 1970 is already expired; 0 says so to any alert.
        Err(_) => 0,
    }
}

impl Collector for CertStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let states = self.0.states();
        let mut counts = [
            ("available", 0_i64),
            ("initializing", 0),
            ("unavailable", 0),
        ];
        let mut expiring = Vec::new();
        for (identity, state) in &states {
            let slot = match state {
                CertState::Available { cert, expires_at } => {
                    expiring.push((identity.to_string(), unix_seconds(cert.leaf().not_after)));
                    // Held past its end, the store refuses to serve it: not available.
                    if *expires_at <= tokio::time::Instant::now() {
                        2
                    } else {
                        0
                    }
                }
                CertState::Initializing => 1,
                CertState::Unavailable(_) => 2,
            };
            counts[slot].1 += 1;
        }
        let mut family = encoder.encode_descriptor(
            EXPIRATION_FAMILY,
            "Unix time at which the certificate held for an identity expires",
            None,
            MetricType::Gauge,
        )?;
        for (identity, seconds) in expiring {
            let labels = [("identity", identity)];
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            STATE_FAMILY,
            "Identities whose certificate is available, being fetched, or unavailable",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in counts {
            let labels = [("state", state)];
            ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    use tokio::runtime::Handle;

    use super::*;
    use crate::identity::{
        CaLimits, CertificateProvider, FetchError, LocalCa, ProviderFuture, RefreshPolicy,
        SpiffeId, TrustDomain,
    };

    /// Issues for every identity except `sa/broken`, which its CA refuses.
    struct Ca(LocalCa);

    impl CertificateProvider for Ca {
        fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> ProviderFuture<'a> {
            Box::pin(async move {
                if identity.to_string().ends_with("/sa/broken") {
                    return Err(FetchError::Refused("not allowed".into()));
                }
                self.0
                    .issue_workload(identity, None, &crate::tls::crypto_provider())
                    .map_err(|e| FetchError::Refused(e.to_string()))
            })
        }
    }

    fn scrape(store: &CertStore) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CertStoreCollector::new(store.clone())));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding to a String cannot fail");
        text
    }

    #[tokio::test]
    async fn expiry_and_states_follow_the_store() {
        let ca = LocalCa::generate_root(
            "cluster.local",
            Duration::from_secs(48 * 3600),
            CaLimits::default(),
        )
        .expect("root");
        let store = CertStore::new(
            Arc::new(Ca(ca)),
            RefreshPolicy::default(),
            Handle::current(),
        );
        let td = TrustDomain::parse("cluster.local").expect("trust domain");
        let web = SpiffeId::istio(&td, "storefront", "web").expect("id");
        let broken = SpiffeId::istio(&td, "storefront", "broken").expect("id");
        assert!(scrape(&store).contains("ztunnel_certificates{state=\"available\"} 0"));

        let cert = store.get(&web).await.expect("issued");
        assert!(store.get(&broken).await.is_err());
        let text = scrape(&store);
        let expected = format!(
            "ztunnel_certificate_expiration_timestamp_seconds{{identity=\"{web}\"}} {}",
            unix_seconds(cert.leaf().not_after)
        );
        assert!(text.contains(&expected), "{text}");
        assert!(
            !text.contains("sa/broken\""),
            "no expiry for a missing cert: {text}"
        );
        for line in [
            "ztunnel_certificates{state=\"available\"} 1",
            "ztunnel_certificates{state=\"initializing\"} 0",
            "ztunnel_certificates{state=\"unavailable\"} 1",
            "# TYPE ztunnel_certificate_expiration_timestamp_seconds gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }
}
