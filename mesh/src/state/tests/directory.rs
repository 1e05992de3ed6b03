//! The swap point and the file watcher.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::super::directory::{Directory, UpdateStatus, watch_file};
use super::super::snapshot::Snapshot;
use super::{UPSTREAM_EXAMPLE, snapshot};

/// Upper bound for any wait on the watcher; reached only when the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

async fn wait_for(
    rx: &mut watch::Receiver<UpdateStatus>,
    what: &str,
    condition: impl FnMut(&UpdateStatus) -> bool,
) -> UpdateStatus {
    let waited = tokio::time::timeout(DEADLINE, rx.wait_for(condition))
        .await
        .map(|result| result.map(|status| status.clone()));
    match waited {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => panic!("directory dropped while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last status {:?}",
            *rx.borrow()
        ),
    }
}

#[test]
fn replace_swaps_and_counts_generations() {
    let directory = Directory::new(snapshot(UPSTREAM_EXAMPLE));
    let held = directory.load();
    assert_eq!((held.generation(), directory.generation()), (0, 0));
    let mut rx = directory.subscribe();

    assert_eq!(directory.replace(Snapshot::empty()), 1);
    assert!(rx.has_changed().unwrap());
    let now = directory.load();
    assert_eq!((now.generation(), now.workload_count()), (1, 0));
    assert_eq!(
        held.workload_count(),
        1,
        "a held snapshot never changes under a reader"
    );

    rx.mark_unchanged();
    directory.record_rejection(&"bad input");
    assert!(rx.has_changed().unwrap(), "rejections wake subscribers too");
    let status = directory.status();
    assert_eq!((status.generation, status.rejected), (1, 1));
    assert_eq!(status.last_rejection.as_deref(), Some("bad input"));
    assert_eq!(
        directory.load().generation(),
        1,
        "a rejection keeps the snapshot"
    );
}

/// A temp file removed on drop, named after the test and the process.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("ztunnel-state-{name}-{}.yaml", std::process::id()));
        Self(path)
    }

    /// Replaces the content atomically (write aside, rename), as operators should.
    fn write(&self, text: &str) {
        let aside = self.0.with_extension("tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &self.0).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn watcher_applies_changes_and_keeps_the_last_good_snapshot() {
    let file = TempFile::new("watch");
    file.write(UPSTREAM_EXAMPLE);
    let directory = Arc::new(Directory::default());
    let mut rx = directory.subscribe();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(watch_file(
        file.path().to_owned(),
        Arc::clone(&directory),
        Duration::from_millis(10),
        cancel.clone(),
    ));

    wait_for(&mut rx, "the first load", |s| s.generation >= 1).await;
    assert_eq!(directory.load().workload_count(), 1);

    // Each version differs in length too, so even a coarse mtime clock sees the change.
    file.write("workloads: [{uid: a, namespace: ns}, {uid: b, namespace: ns}]\n");
    wait_for(&mut rx, "the second version", |s| s.generation >= 2).await;
    let good = directory.load();
    assert_eq!((good.generation(), good.workload_count()), (2, 2));

    file.write("workloads: [{uid: a, namespace: ns, workloadIps: [not-an-ip]}]\n");
    let status = wait_for(&mut rx, "the rejection", |s| s.rejected >= 1).await;
    let reason = status.last_rejection.unwrap_or_default();
    assert!(
        reason.contains("\"not-an-ip\" is not an IP address"),
        "{reason}"
    );
    assert!(
        reason.contains(&file.path().display().to_string()),
        "{reason}"
    );
    let kept = directory.load();
    assert_eq!((kept.generation(), kept.workload_count()), (2, 2));

    // Back to a good file: applied again.
    file.write(UPSTREAM_EXAMPLE);
    wait_for(&mut rx, "the recovery", |s| s.generation >= 3).await;
    assert_eq!(directory.load().workload_count(), 1);

    cancel.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("watcher stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn watcher_reports_a_missing_file_once_and_loads_it_when_it_appears() {
    let file = TempFile::new("missing");
    let directory = Arc::new(Directory::default());
    let mut rx = directory.subscribe();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(watch_file(
        file.path().to_owned(),
        Arc::clone(&directory),
        Duration::from_millis(10),
        cancel.clone(),
    ));

    let status = wait_for(&mut rx, "the missing-file rejection", |s| s.rejected >= 1).await;
    assert!(
        status
            .last_rejection
            .unwrap_or_default()
            .contains("cannot read"),
        "the reason names the failure"
    );
    file.write(UPSTREAM_EXAMPLE);
    let status = wait_for(&mut rx, "the load", |s| s.generation >= 1).await;
    assert_eq!(
        status.rejected, 1,
        "an unchanged missing file is reported once"
    );

    cancel.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("watcher stops when cancelled")
        .unwrap();
}
