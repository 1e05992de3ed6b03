//! Several rounds of one path reduced to one figure per metric: the median, metric by metric.
//!
//! Rounds interleave the paths (direct, ours, upstream, direct, ...), so a slow spell of the
//! machine hits every column alike, and the median drops the round it spoiled. On a shared
//! 2-CPU machine single runs of loopback throughput were seen to swing by 2-3x.

use crate::load::Latency;
use crate::measure::{AgentUse, PathResult};

/// The median round of each metric, or `None` for no rounds.
pub(crate) fn median_of(rounds: &[PathResult]) -> Option<PathResult> {
    let first = rounds.first()?;
    let f = |read: fn(&PathResult) -> f64| median(rounds.iter().map(read));
    let agent = first.agent.is_some().then(|| {
        let a = |read: fn(&AgentUse) -> f64| {
            median(rounds.iter().filter_map(|r| r.agent.as_ref()).map(read))
        };
        AgentUse {
            rss_idle_mib: a(|u| u.rss_idle_mib),
            rss_peak_mib: a(|u| u.rss_peak_mib),
            cpu_s_per_gb: a(|u| u.cpu_s_per_gb),
            cpu_ms_per_connection: a(|u| u.cpu_ms_per_connection),
        }
    });
    Some(PathResult {
        throughput_gbit_s: f(|r| r.throughput_gbit_s),
        throughput_bytes: median(rounds.iter().map(|r| r.throughput_bytes)),
        latency: Latency {
            samples: median(rounds.iter().map(|r| r.latency.samples)),
            p50_us: f(|r| r.latency.p50_us),
            p90_us: f(|r| r.latency.p90_us),
            p99_us: f(|r| r.latency.p99_us),
        },
        connections_per_s: f(|r| r.connections_per_s),
        connections: median(rounds.iter().map(|r| r.connections)),
        agent,
    })
}

/// The middle value (the lower of the two middle ones for an even count); the default for none.
fn median<T: PartialOrd + Copy + Default>(values: impl Iterator<Item = T>) -> T {
    let mut all: Vec<T> = values.collect();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let middle = all.len().saturating_sub(1) / 2;
    all.get(middle).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_or_lower_middle() {
        for (values, want) in [
            (vec![3.0, 1.0, 2.0], 2.0),
            (vec![10.0, 1.0, 2.0, 9.0], 2.0),
            (vec![5.0], 5.0),
            (vec![], 0.0),
        ] {
            assert_eq!(median(values.iter().copied()), want, "{values:?}");
        }
    }
}
