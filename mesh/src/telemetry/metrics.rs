//! Prometheus exposition shared by both proxies: the encoder (OpenMetrics text, as upstream's),
//! the `/metrics` answer with its content negotiation, the build gauge and the process
//! collector (open and maximum file descriptors, read at scrape time).

use std::fmt;

use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::http::{Reply, text, with_type};

/// Labels of `istio_authz_dry_run_total` (policy.md §5.4; label names follow Envoy's dry-run
/// stats), the same for ztunnel and the waypoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct DryRunLabels {
    /// `destination` (ztunnel) or `waypoint`.
    pub reporter: &'static str,
    /// `allow` or `deny`.
    pub authz_dry_run_action: &'static str,
    /// `allowed` or `denied`.
    pub authz_dry_run_result: &'static str,
    /// `<namespace>/<name>`, or `none`.
    pub policy: String,
}

impl DryRunLabels {
    /// The labels of one increment, as `reporter` reports it.
    pub fn of(reporter: &'static str, count: crate::policy::DryRunCount) -> Self {
        Self {
            reporter,
            authz_dry_run_action: count.action,
            authz_dry_run_result: count.result,
            policy: count.policy,
        }
    }
}

/// The OpenMetrics content type, for scrapers that ask for it.
const OPENMETRICS: &str = "application/openmetrics-text;charset=utf-8;version=1.0.0";
/// The classic text content type (same body).
const PLAIN: &str = "text/plain; charset=utf-8";

/// The registry encoded as OpenMetrics text (families without samples are left out).
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// The answer to a scrape: the same body either way, labelled OpenMetrics when `accept` asks
/// for it.
pub fn scrape(registry: &Registry, accept: Option<&str>) -> Reply {
    match encode(registry) {
        Ok(body) => {
            let content_type = if accept.is_some_and(|a| a.contains("application/openmetrics-text"))
            {
                OPENMETRICS
            } else {
                PLAIN
            };
            with_type(StatusCode::OK, content_type, body.into_bytes())
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        ),
    }
}

/// Registers `istio_build{component, tag} 1`; `tag` is the Istio version this build stands in
/// for (`ISTIO_META_ISTIO_VERSION`, else `unknown`).
pub fn register_build(registry: &mut Registry, component: &str) {
    let tag = std::env::var("ISTIO_META_ISTIO_VERSION").unwrap_or_else(|_| "unknown".into());
    let build = Family::<Vec<(String, String)>, Gauge>::default();
    build
        .get_or_create(&vec![
            ("component".to_owned(), component.to_owned()),
            ("tag".to_owned(), tag),
        ])
        .set(1);
    registry.register("istio_build", "Istio component build info", build);
}

/// `process_open_fds` and `process_max_fds`, read from `/proc/self` at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let open = ConstGauge::new(i64::try_from(entries.count()).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                open.metric_type(),
            )?;
            open.encode(metric)?;
        }
        if let Some(max) = max_open_files() {
            let max = ConstGauge::new(max);
            let metric = encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                max.metric_type(),
            )?;
            max.encode(metric)?;
        }
        Ok(())
    }
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits`.
fn max_open_files() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_process_families_are_exposed() {
        let mut registry = Registry::default();
        register_build(&mut registry, "ztunnel");
        registry.register_collector(Box::new(ProcessCollector));
        let text = encode(&registry).unwrap();
        assert!(
            text.contains("istio_build{component=\"ztunnel\",tag="),
            "{text}"
        );
        let open_line = text
            .lines()
            .find(|l| l.starts_with("process_open_fds "))
            .unwrap_or_else(|| panic!("no process_open_fds in {text}"));
        let open: i64 = open_line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(open >= 3, "stdin, stdout, stderr at least: {open}");
        assert!(text.contains("process_max_fds "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn openmetrics_is_announced_only_when_asked_for() {
        let registry = Registry::default();
        let header = |reply: &Reply| reply.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(
            header(&scrape(
                &registry,
                Some("application/openmetrics-text; version=1.0.0")
            )),
            OPENMETRICS
        );
        assert_eq!(header(&scrape(&registry, None)), PLAIN);
    }
}
