//! Reading every ztunnel named on the command line, once or twice (`--over`), concurrently.

use std::time::Duration;

use mesh::telemetry::scrape::{Sample, ScrapeError, scrape};
use tokio::task::JoinSet;

use super::delta;

/// What the scrapes returned.
#[derive(Debug, Default)]
pub struct Scraped {
    /// Samples of every ztunnel that answered (each ztunnel's own delta with a window).
    pub samples: Vec<Sample>,
    /// How many ztunnels answered every scrape.
    pub read: usize,
    /// The ones that did not, each naming its target and what went wrong.
    pub unreachable: Vec<ScrapeError>,
}

/// Scrapes `targets`; with `over`, twice that far apart, and keeps each one's increase.
/// A ztunnel that fails either scrape is left out and reported, so the report says which part
/// of the mesh it does not cover instead of silently covering less.
pub async fn collect(targets: &[String], over: Option<Duration>, limit: Duration) -> Scraped {
    let first = scrape_all(targets, limit).await;
    let Some(window) = over else {
        return gather(first.into_iter().map(|r| r.map(|s| (Vec::new(), s))));
    };
    tokio::time::sleep(window).await;
    let second = scrape_all(targets, limit).await;
    gather(first.into_iter().zip(second).map(|(a, b)| Ok((a?, b?))))
}

fn gather(
    results: impl Iterator<Item = Result<(Vec<Sample>, Vec<Sample>), ScrapeError>>,
) -> Scraped {
    let mut scraped = Scraped::default();
    for result in results {
        match result {
            Ok((before, after)) => {
                scraped.read += 1;
                scraped.samples.extend(delta(&before, &after));
            }
            Err(error) => scraped.unreachable.push(error),
        }
    }
    scraped
}

/// One result per target, in the order given.
async fn scrape_all(targets: &[String], limit: Duration) -> Vec<Result<Vec<Sample>, ScrapeError>> {
    let mut tasks = JoinSet::new();
    for (index, target) in targets.iter().enumerate() {
        let target = target.clone();
        tasks.spawn(async move { (index, scrape(&target, limit).await) });
    }
    let mut results: Vec<Option<Result<Vec<Sample>, ScrapeError>>> =
        (0..targets.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        // A scrape task only panics if the runtime is going away; that target just goes missing.
        if let Ok((index, result)) = joined {
            results[index] = Some(result);
        }
    }
    results
        .into_iter()
        .zip(targets)
        .map(|(result, target)| {
            result.unwrap_or_else(|| {
                Err(ScrapeError::Transport {
                    target: target.clone(),
                    cause: "the scrape task stopped".to_owned(),
                })
            })
        })
        .collect()
}
