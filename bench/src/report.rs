//! A run's results: the table printed for people and the JSON written for tools, both from the
//! same metric list. Ratios compare columns of the same run (mesh/direct, upstream/direct,
//! ours/upstream), which is what stays meaningful from one machine to another.

use std::fmt::Write as _;

use crate::measure::{Path, PathResult, Settings};
use crate::provenance::Machine;
use crate::summary::median_of;

/// One column of the table: a path and what became of it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Column {
    /// `direct`, `ours` or `upstream`.
    pub(crate) name: &'static str,
    /// The path measured.
    #[serde(skip)]
    pub(crate) path: Path,
    /// The agent binary, for mesh paths.
    pub(crate) binary: Option<String>,
    /// Each metric's median round, when the path was measured.
    pub(crate) result: Option<PathResult>,
    /// Every round, in order.
    pub(crate) rounds: Vec<PathResult>,
    /// Why it was not measured (a round failed, or it was skipped).
    pub(crate) not_measured: Option<String>,
}

impl Column {
    /// A column for `path`, not measured yet.
    pub(crate) fn new(path: Path) -> Self {
        let binary = match &path {
            Path::Direct => None,
            Path::Mesh { binary, .. } => Some(shown(binary)),
        };
        Self {
            name: path.name(),
            path,
            binary,
            result: None,
            rounds: Vec::new(),
            not_measured: None,
        }
    }

    /// Sets the result from the rounds, if every round succeeded.
    pub(crate) fn summarise(&mut self) {
        if self.not_measured.is_none() {
            self.result = median_of(&self.rounds);
        }
    }
}

/// A binary's path as recorded: absolute and without `..` when it exists.
fn shown(binary: &std::path::Path) -> String {
    std::fs::canonicalize(binary)
        .unwrap_or_else(|_| binary.to_owned())
        .display()
        .to_string()
}

/// Everything a run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Run {
    /// Start of the run, UTC, ISO 8601.
    pub(crate) timestamp: String,
    /// Source commit (short), when known.
    pub(crate) commit: Option<String>,
    /// The machine.
    pub(crate) machine: Machine,
    /// Windows and concurrency.
    pub(crate) settings: Settings,
    /// The paths, in table order.
    pub(crate) columns: Vec<Column>,
}

/// One row: how to read a metric from a path's result.
struct Metric {
    label: &'static str,
    unit: &'static str,
    key: &'static str,
    read: fn(&PathResult) -> Option<f64>,
}

const METRICS: [Metric; 9] = [
    Metric {
        label: "single-stream throughput",
        unit: "Gbit/s",
        key: "throughput_gbit_s",
        read: |r| Some(r.throughput_gbit_s),
    },
    Metric {
        label: "request/response p50",
        unit: "us",
        key: "latency_p50_us",
        read: |r| Some(r.latency.p50_us),
    },
    Metric {
        label: "request/response p90",
        unit: "us",
        key: "latency_p90_us",
        read: |r| Some(r.latency.p90_us),
    },
    Metric {
        label: "request/response p99",
        unit: "us",
        key: "latency_p99_us",
        read: |r| Some(r.latency.p99_us),
    },
    Metric {
        label: "new connections",
        unit: "conn/s",
        key: "connections_per_s",
        read: |r| Some(r.connections_per_s),
    },
    Metric {
        label: "ztunnel RSS idle",
        unit: "MiB",
        key: "rss_idle_mib",
        read: |r| r.agent.map(|a| a.rss_idle_mib),
    },
    Metric {
        label: "ztunnel RSS peak, load",
        unit: "MiB",
        key: "rss_peak_mib",
        read: |r| r.agent.map(|a| a.rss_peak_mib),
    },
    Metric {
        label: "ztunnel CPU per GB",
        unit: "s/GB",
        key: "cpu_s_per_gb",
        read: |r| r.agent.map(|a| a.cpu_s_per_gb),
    },
    Metric {
        label: "ztunnel CPU per conn",
        unit: "ms",
        key: "cpu_ms_per_connection",
        read: |r| r.agent.map(|a| a.cpu_ms_per_connection),
    },
];

/// The ratio columns: numerator and denominator column names.
const RATIOS: [(&str, &str); 3] = [
    ("ours", "direct"),
    ("upstream", "direct"),
    ("ours", "upstream"),
];

impl Run {
    fn value(&self, column: &str, metric: &Metric) -> Option<f64> {
        self.columns
            .iter()
            .find(|c| c.name == column)
            .and_then(|c| c.result.as_ref())
            .and_then(metric.read)
    }

    fn ratio(&self, (num, den): (&str, &str), metric: &Metric) -> Option<f64> {
        let (n, d) = (self.value(num, metric)?, self.value(den, metric)?);
        (d > 0.0).then(|| n / d)
    }

    /// The human-readable table, with a line per column that was not measured.
    pub(crate) fn table(&self) -> String {
        let mut header = format!("{:<26} {:<7}", "metric", "unit");
        for c in &self.columns {
            let _ = write!(header, " {:>10}", c.name);
        }
        for (n, d) in RATIOS {
            let _ = write!(header, " {:>15}", format!("{n}/{d}"));
        }
        let mut out = format!(
            "meshbench {} (commit {}) on {} CPUs ({}), kernel {}\n\
             median of {} rounds; each phase: {} s measured after {} s warm-up\n\n",
            self.timestamp,
            self.commit.as_deref().unwrap_or("unknown"),
            self.machine.nproc,
            self.machine.cpu.as_deref().unwrap_or("unknown CPU"),
            self.machine.kernel.as_deref().unwrap_or("unknown"),
            self.settings.rounds,
            self.settings.window_s,
            self.settings.warmup_s,
        );
        let _ = write!(out, "{header}\n{}\n", "-".repeat(header.len()));
        for metric in &METRICS {
            let _ = write!(out, "{:<26} {:<7}", metric.label, metric.unit);
            for c in &self.columns {
                let _ = write!(out, " {:>10}", figure(self.value(c.name, metric)));
            }
            for pair in RATIOS {
                let _ = write!(out, " {:>15}", ratio(self.ratio(pair, metric)));
            }
            out.push('\n');
        }
        for c in &self.columns {
            if let Some(reason) = &c.not_measured {
                let first = reason.lines().next().unwrap_or_default();
                let _ = writeln!(out, "{}: not measured ({first})", c.name);
            }
        }
        out
    }

    /// The JSON document: raw figures per column, and every ratio by metric key.
    pub(crate) fn json(&self) -> serde_json::Value {
        let mut ratios = serde_json::Map::new();
        for pair @ (n, d) in RATIOS {
            let by_metric: serde_json::Map<String, serde_json::Value> = METRICS
                .iter()
                .map(|m| (m.key.to_owned(), self.ratio(pair, m).into()))
                .collect();
            ratios.insert(format!("{n}/{d}"), by_metric.into());
        }
        let mut doc = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = doc.as_object_mut() {
            map.insert("ratios".to_owned(), ratios.into());
        }
        doc
    }
}

/// Three significant-ish digits: enough to compare, few enough to read.
fn figure(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 0.1 => format!("{v:.2}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_keep_three_digits_and_dash_for_missing() {
        for (value, want) in [
            (None, "-"),
            (Some(1234.5), "1234"),
            (Some(42.26), "42.3"),
            (Some(4.567), "4.57"),
            (Some(0.01234), "0.0123"),
        ] {
            assert_eq!(figure(value), want, "{value:?}");
        }
        assert_eq!(ratio(Some(0.5)), "0.50x");
        assert_eq!(ratio(None), "-");
    }
}
