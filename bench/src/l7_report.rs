//! The HTTP table: requests per second, round-trip percentiles and the proxies' cost for
//! `direct`, `ztunnel` and `waypoint`, with the ratios that stay meaningful across machines
//! (waypoint against direct and against ztunnel only).

use std::fmt::Write as _;

use crate::l7::{L7Path, L7Result, ProcessUse};
use crate::load::Latency;

/// One HTTP column.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct L7Column {
    /// `direct`, `ztunnel` or `waypoint`.
    pub(crate) name: &'static str,
    /// The path.
    #[serde(skip)]
    pub(crate) path: L7Path,
    /// Each metric's median round.
    pub(crate) result: Option<L7Result>,
    /// Every round.
    pub(crate) rounds: Vec<L7Result>,
    /// Why it was not measured.
    pub(crate) not_measured: Option<String>,
}

impl L7Column {
    /// A column for `path`.
    pub(crate) fn new(path: L7Path) -> Self {
        Self {
            name: path.name(),
            path,
            result: None,
            rounds: Vec::new(),
            not_measured: None,
        }
    }

    /// The median round of every metric, when every round succeeded.
    pub(crate) fn summarise(&mut self) {
        if self.not_measured.is_some() || self.rounds.is_empty() {
            return;
        }
        let f = |read: fn(&L7Result) -> f64| median(self.rounds.iter().map(read).collect());
        let usage = |pick: fn(&L7Result) -> Option<ProcessUse>| {
            let all: Vec<ProcessUse> = self.rounds.iter().filter_map(pick).collect();
            (!all.is_empty()).then(|| ProcessUse {
                cpu_s_per_1000_requests: median(
                    all.iter().map(|u| u.cpu_s_per_1000_requests).collect(),
                ),
                cores: median(all.iter().map(|u| u.cores).collect()),
                rss_peak_mib: median(all.iter().map(|u| u.rss_peak_mib).collect()),
            })
        };
        self.result = Some(L7Result {
            requests_per_s: f(|r| r.requests_per_s),
            requests: f(|r| r.requests as f64) as u64,
            latency: Latency {
                samples: f(|r| r.latency.samples as f64) as usize,
                p50_us: f(|r| r.latency.p50_us),
                p90_us: f(|r| r.latency.p90_us),
                p99_us: f(|r| r.latency.p99_us),
            },
            ztunnel: usage(|r| r.ztunnel),
            waypoint: usage(|r| r.waypoint),
        });
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

struct Row {
    label: &'static str,
    unit: &'static str,
    read: fn(&L7Result) -> Option<f64>,
}

const ROWS: [Row; 10] = [
    Row {
        label: "HTTP requests/s",
        unit: "req/s",
        read: |r| Some(r.requests_per_s),
    },
    Row {
        label: "HTTP latency p50",
        unit: "us",
        read: |r| Some(r.latency.p50_us),
    },
    Row {
        label: "HTTP latency p90",
        unit: "us",
        read: |r| Some(r.latency.p90_us),
    },
    Row {
        label: "HTTP latency p99",
        unit: "us",
        read: |r| Some(r.latency.p99_us),
    },
    Row {
        label: "ztunnel CPU per 1k req",
        unit: "s",
        read: |r| r.ztunnel.map(|u| u.cpu_s_per_1000_requests),
    },
    Row {
        label: "ztunnel RSS peak",
        unit: "MiB",
        read: |r| r.ztunnel.map(|u| u.rss_peak_mib),
    },
    Row {
        label: "waypoint CPU per 1k req",
        unit: "s",
        read: |r| r.waypoint.map(|u| u.cpu_s_per_1000_requests),
    },
    Row {
        label: "waypoint CPU",
        unit: "cores",
        read: |r| r.waypoint.map(|u| u.cores),
    },
    Row {
        label: "waypoint RSS peak",
        unit: "MiB",
        read: |r| r.waypoint.map(|u| u.rss_peak_mib),
    },
    Row {
        label: "waypoint RSS per 1k req/s",
        unit: "MiB",
        read: |r| {
            r.waypoint
                .map(|u| u.rss_peak_mib / (r.requests_per_s / 1000.0))
        },
    },
];

const RATIOS: [(&str, &str); 3] = [
    ("waypoint", "direct"),
    ("waypoint", "ztunnel"),
    ("ztunnel", "direct"),
];

fn value(columns: &[L7Column], name: &str, row: &Row) -> Option<f64> {
    columns
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.result.as_ref())
        .and_then(row.read)
}

fn ratio(columns: &[L7Column], (n, d): (&str, &str), row: &Row) -> Option<f64> {
    let (n, d) = (value(columns, n, row)?, value(columns, d, row)?);
    (d > 0.0).then(|| n / d)
}

/// The table for people.
pub(crate) fn table(columns: &[L7Column], concurrency: usize) -> String {
    let mut out = format!(
        "HTTP/1.1 GET, {concurrency} kept-alive connections\n{:<26} {:<6}",
        "metric", "unit"
    );
    for c in columns {
        let _ = write!(out, " {:>10}", c.name);
    }
    for (n, d) in RATIOS {
        let _ = write!(out, " {:>17}", format!("{n}/{d}"));
    }
    out.push('\n');
    for row in &ROWS {
        let _ = write!(out, "{:<26} {:<6}", row.label, row.unit);
        for c in columns {
            let shown = value(columns, c.name, row).map_or("-".to_owned(), |v| format!("{v:.3}"));
            let _ = write!(out, " {shown:>10}");
        }
        for pair in RATIOS {
            let shown = ratio(columns, pair, row).map_or("-".to_owned(), |v| format!("{v:.2}x"));
            let _ = write!(out, " {shown:>17}");
        }
        out.push('\n');
    }
    for c in columns {
        if let Some(why) = &c.not_measured {
            let first = why.lines().next().unwrap_or_default();
            let _ = writeln!(out, "{}: not measured: {first}", c.name);
        }
    }
    out
}

/// The figures for tools: every column and every ratio by row label.
pub(crate) fn json(columns: &[L7Column]) -> serde_json::Value {
    let mut ratios = serde_json::Map::new();
    for pair @ (n, d) in RATIOS {
        let by_row: serde_json::Map<String, serde_json::Value> = ROWS
            .iter()
            .filter_map(|row| Some((row.label.to_owned(), ratio(columns, pair, row)?.into())))
            .collect();
        ratios.insert(format!("{n}/{d}"), by_row.into());
    }
    serde_json::json!({ "columns": columns, "ratios": ratios })
}
