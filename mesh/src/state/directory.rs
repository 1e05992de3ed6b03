//! The current snapshot, swapped whole by one writer and read without locks by the data path,
//! plus the task that keeps it in step with the local config file.
//!
//! Readers call [`Directory::load`] (an atomic pointer load, no lock, no await) once per
//! connection and keep the `Arc`. Tasks that must react to a change (re-checking policy on
//! open connections) wait on [`Directory::subscribe`]. A rejected update never replaces the
//! snapshot: the last good one keeps serving, as xds.md §2 requires of a NACK.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::local::{FileText, LocalConfig, LocalConfigError, read_capped};
use super::snapshot::Snapshot;

/// Updates seen by a [`Directory`]: swaps and rejections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateStatus {
    /// Number of snapshots swapped in; equals the current snapshot's `generation()`.
    pub generation: u64,
    /// Number of updates refused (the snapshot was kept).
    pub rejected: u64,
    /// Why the latest refusal happened.
    pub last_rejection: Option<Arc<str>>,
}

/// Holds the current [`Snapshot`].
#[derive(Debug)]
pub struct Directory {
    current: ArcSwap<Snapshot>,
    status: watch::Sender<UpdateStatus>,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new(Snapshot::empty())
    }
}

impl Directory {
    /// A directory serving `initial` (kept at generation 0).
    pub fn new(mut initial: Snapshot) -> Self {
        initial.set_generation(0);
        Self {
            current: ArcSwap::from_pointee(initial),
            status: watch::Sender::new(UpdateStatus::default()),
        }
    }

    /// The current snapshot, for the data path: no lock, no await.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Installs `next` with the next generation number and wakes subscribers; returns that
    /// generation. Meant for one writer task at a time (the xDS client or the file watcher).
    pub fn replace(&self, mut next: Snapshot) -> u64 {
        let mut generation = 0;
        // The swap happens inside the watch's update so the generation a subscriber sees and
        // the snapshot `load` returns move together, even with concurrent writers.
        self.status.send_modify(|status| {
            status.generation += 1;
            generation = status.generation;
            next.set_generation(generation);
            self.current.store(Arc::new(next));
        });
        generation
    }

    /// Records that an update was refused (the snapshot stays) and wakes subscribers.
    pub fn record_rejection(&self, reason: &dyn fmt::Display) {
        let reason: Arc<str> = Arc::from(reason.to_string());
        self.status.send_modify(|status| {
            status.rejected += 1;
            status.last_rejection = Some(reason);
        });
    }

    /// Generation of the current snapshot.
    pub fn generation(&self) -> u64 {
        self.status.borrow().generation
    }

    /// The update status now.
    pub fn status(&self) -> UpdateStatus {
        self.status.borrow().clone()
    }

    /// A receiver woken on every swap and every rejection; compare `generation` to tell them
    /// apart.
    pub fn subscribe(&self) -> watch::Receiver<UpdateStatus> {
        self.status.subscribe()
    }
}

/// What identifies one version of the file cheaply, without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Present {
        modified: Option<SystemTime>,
        len: u64,
    },
    Missing(io::ErrorKind),
}

async fn fingerprint(path: &Path) -> Fingerprint {
    match tokio::fs::metadata(path).await {
        Ok(meta) => Fingerprint::Present {
            modified: meta.modified().ok(),
            len: meta.len(),
        },
        Err(e) => Fingerprint::Missing(e.kind()),
    }
}

/// Keeps `directory` in step with the local config file at `path` until `cancel` fires.
///
/// The file is polled: every `interval` its modification time and length are compared with
/// the last seen, and only a change triggers a read. Polling costs one `stat` per interval and
/// needs no inotify dependency; it also follows ConfigMap-style symlink swaps for free. The
/// first poll happens at once and loads the file.
///
/// A changed file is read, validated and, if its text differs from the one last applied,
/// swapped in (logged at info with counts). A file that cannot be read or is invalid is logged
/// at warn with the path and the error, recorded with [`Directory::record_rejection`], and the
/// last good snapshot keeps serving. Writers should replace the file atomically (write then
/// rename); a half-written file is rejected and re-read once it changes again.
pub async fn watch_file(
    path: PathBuf,
    directory: Arc<Directory>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watcher = FileWatcher {
        path,
        seen: None,
        applied: None,
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => watcher.poll(&directory).await,
        }
    }
    debug!(path = %watcher.path.display(), "local config watcher stopped");
}

struct FileWatcher {
    path: PathBuf,
    /// Fingerprint at the last poll that acted.
    seen: Option<Fingerprint>,
    /// Text of the last applied file, to skip swaps when only the timestamp moved.
    applied: Option<String>,
}

impl FileWatcher {
    async fn poll(&mut self, directory: &Directory) {
        let now = fingerprint(&self.path).await;
        if self.seen.as_ref() == Some(&now) {
            return;
        }
        self.seen = Some(now);
        match self.read().await {
            Ok(text) if self.applied.as_deref() == Some(text.as_str()) => {
                debug!(path = %self.path.display(), "local config touched, content unchanged");
            }
            Ok(text) => self.apply(directory, text),
            Err(error) => self.reject(directory, &error),
        }
    }

    async fn read(&self) -> Result<String, LocalConfigError> {
        let origin = self.path.display().to_string();
        let path = self.path.clone();
        // The capped read is blocking file I/O; run it where blocking is allowed.
        let read = tokio::task::spawn_blocking(move || read_capped(&path)).await;
        match read {
            Ok(Ok(FileText::Text(text))) => Ok(text),
            Ok(Ok(FileText::TooLarge(len))) => Err(LocalConfigError::TooLarge { origin, len }),
            Ok(Err(cause)) => Err(LocalConfigError::Read { origin, cause }),
            Err(join) => Err(LocalConfigError::Read {
                origin,
                cause: io::Error::other(join.to_string()),
            }),
        }
    }

    fn apply(&mut self, directory: &Directory, text: String) {
        let origin = self.path.display().to_string();
        match LocalConfig::parse(&text, &origin) {
            Ok(config) => {
                let policies = config.policies.len();
                let snapshot = config.into_snapshot();
                let (workloads, services) = (snapshot.workload_count(), snapshot.service_count());
                let generation = directory.replace(snapshot);
                self.applied = Some(text);
                info!(
                    path = %self.path.display(),
                    generation,
                    workloads,
                    services,
                    policies,
                    "local config applied"
                );
            }
            Err(error) => self.reject(directory, &error),
        }
    }

    fn reject(&self, directory: &Directory, error: &LocalConfigError) {
        warn!(
            path = %self.path.display(),
            error = %ErrorChain(error),
            "local config rejected; keeping the last good snapshot"
        );
        directory.record_rejection(&ErrorChain(error));
    }
}

/// Displays an error followed by its causes, for the one place it is logged.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(inner) = cause {
            write!(f, ": {inner}")?;
            cause = inner.source();
        }
        Ok(())
    }
}
