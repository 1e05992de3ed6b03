//! The inbound connections open now, each with what it was authorized on, so that a change of
//! configuration can close the ones it no longer allows.
//!
//! A connection registers once it is authorized and connected ([`Tracked::register`]: one lock,
//! one insert) and holds a [`Registration`] that removes it again when dropped, whatever path
//! the connection ends by. Its relay races the registration's cancellation
//! ([`Registration::relay`]). One task per process ([`Tracked::follow`]) waits for new
//! directory generations and re-evaluates every registered connection against the new snapshot
//! with the same rules as the first decision: the destination workload is looked up again by
//! uid (gone from the config closes its connections too), only enforced policies count (a
//! dry-run policy never closes anything). A connection now denied is cancelled and logged once.
//!
//! A connection authorized on one generation that registers after the follower finished its
//! pass over the next one would be missed; [`Tracked::register`] therefore re-checks itself
//! when the directory moved since its authorization. Either the follower's copy of the set
//! includes the connection, or the connection sees the newer generation: both take the
//! registry's lock, so one of the two orders holds.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use mesh::policy::{Checked, ConnectionAttrs, DenyReason, Verdict};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::ConnectionError;
use super::relay::{Transferred, relay};
use super::{enforced_verdict, lock};
use crate::state::{Directory, Snapshot, UpdateStatus, Workload};

/// Connections re-checked between two yields of the follower, so a node with many open
/// connections does not hold a data-plane worker for the whole pass.
const RECHECK_BATCH: usize = 256;

/// How an inbound connection arrived, for the log line that closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// An HBONE tunnel (15008).
    Hbone,
    /// A plaintext connection (15006).
    Plaintext,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hbone => "HBONE",
            Self::Plaintext => "plaintext",
        }
    }
}

/// Why a tracked connection is no longer allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// The enforced policies of the destination now deny it.
    Denied(DenyReason),
    /// The destination workload (this uid) is no longer in the configuration.
    WorkloadGone(String),
}

impl CloseReason {
    /// The error a connection that had not started relaying yet is refused with.
    pub(super) fn into_error(self, destination: SocketAddr) -> ConnectionError {
        match self {
            Self::Denied(reason) => ConnectionError::Denied(reason),
            Self::WorkloadGone(_) => ConnectionError::UnknownDestination(destination),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(DenyReason::DeniedBy(policy)) => {
                write!(f, "policy {policy} no longer allows it")
            }
            Self::Denied(DenyReason::NoAllowMatched { allow_policies }) => write!(
                f,
                "allow policies exist, but none allows it any more{}",
                Checked(allow_policies)
            ),
            Self::WorkloadGone(uid) => {
                write!(f, "destination workload {uid} is no longer in the config")
            }
        }
    }
}

/// The registry of open inbound connections. One per process (it lives in `Inputs`).
#[derive(Debug, Default)]
pub(super) struct Tracked {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    /// The destination workload as authorized; only its uid is used to look it up again.
    workload: Arc<Workload>,
    attrs: ConnectionAttrs,
    protocol: Protocol,
    cancel: CancellationToken,
    /// Set once by whoever ends the entry first (a close, or the connection's own end), so a
    /// connection is closed and logged at most once.
    done: AtomicBool,
}

impl Entry {
    /// What the snapshot says about this connection now: `None` while it is still allowed.
    fn recheck(&self, snapshot: &Snapshot) -> Option<CloseReason> {
        let Some(workload) = snapshot.workload(&self.workload.uid) else {
            return Some(CloseReason::WorkloadGone(self.workload.uid.clone()));
        };
        match enforced_verdict(snapshot, &workload, &self.attrs) {
            Verdict::Allow => None,
            Verdict::Deny(reason) => Some(CloseReason::Denied(reason)),
        }
    }

    /// Claims the entry's end; true for the first caller only.
    fn finish(&self) -> bool {
        !self.done.swap(true, Ordering::AcqRel)
    }

    /// Cancels the connection and logs why, unless it already ended.
    fn close(&self, reason: &CloseReason) -> bool {
        if !self.finish() {
            return false;
        }
        self.cancel.cancel();
        let identity = self
            .attrs
            .source_identity
            .as_ref()
            .map_or_else(|| "none".to_owned(), ToString::to_string);
        let dst = SocketAddr::new(self.attrs.destination_ip, self.attrs.destination_port);
        warn!(
            src = %self.attrs.source_ip,
            src_identity = %identity,
            dst = %dst,
            workload = %self.workload.uid,
            protocol = %self.protocol.as_str(),
            "connection closed: {reason}"
        );
        true
    }
}

impl Tracked {
    /// An empty registry.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// How many connections are registered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.inner.open).len()
    }

    /// Tracks a connection to `workload` with `attrs`, authorized on the snapshot of generation
    /// `authorized`. If `directory` has moved on since, the connection is checked against the
    /// current snapshot at once and refused (`Err`, not tracked) when no longer allowed.
    pub(super) fn register(
        &self,
        directory: &Directory,
        authorized: u64,
        workload: Arc<Workload>,
        attrs: ConnectionAttrs,
        protocol: Protocol,
    ) -> Result<Registration, CloseReason> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            workload,
            attrs,
            protocol,
            cancel: CancellationToken::new(),
            done: AtomicBool::new(false),
        });
        lock(&self.inner.open).insert(id, Arc::clone(&entry));
        let registration = Registration {
            inner: Arc::clone(&self.inner),
            id,
            entry,
        };
        let current = directory.load();
        if current.generation() != authorized
            && let Some(reason) = registration.entry.recheck(&current)
        {
            // Refused, not closed: the caller logs the refusal (and the follower, should it
            // have seen the entry, finds it ended).
            if registration.entry.finish() {
                registration.entry.cancel.cancel();
            }
            return Err(reason);
        }
        Ok(registration)
    }

    /// Re-checks every registered connection against `snapshot` and closes the ones it no
    /// longer allows; returns how many were closed.
    #[cfg(test)]
    pub(super) async fn recheck(&self, snapshot: &Snapshot) -> usize {
        recheck(&self.inner, snapshot).await
    }

    /// The follower: re-checks on every new generation of `directory` until the directory or
    /// this registry is gone. Holds neither alive. Spawn it once per process.
    pub(super) fn follow(
        &self,
        directory: &Arc<Directory>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut updates = directory.subscribe();
        // Seen now, not when the task first runs: a change in between must not be missed.
        let seen = updates.borrow_and_update().generation;
        let directory = Arc::downgrade(directory);
        let open = Arc::downgrade(&self.inner);
        follow(open, directory, updates, seen)
    }
}

async fn follow(
    open: Weak<Inner>,
    directory: Weak<Directory>,
    mut updates: watch::Receiver<UpdateStatus>,
    mut seen: u64,
) {
    while updates.changed().await.is_ok() {
        let generation = updates.borrow_and_update().generation;
        if generation == seen {
            // A refused update: the snapshot did not change.
            continue;
        }
        seen = generation;
        let Some(snapshot) = directory.upgrade().map(|d| d.load()) else {
            break;
        };
        let Some(open) = open.upgrade() else {
            break;
        };
        let closed = recheck(&open, &snapshot).await;
        debug!(
            generation = snapshot.generation(),
            closed, "open inbound connections re-checked"
        );
    }
    debug!("connection re-check stopped");
}

async fn recheck(inner: &Inner, snapshot: &Snapshot) -> usize {
    // Copied out so the data path's registrations never wait for the evaluation.
    let entries: Vec<Arc<Entry>> = lock(&inner.open).values().cloned().collect();
    let mut closed = 0;
    for batch in entries.chunks(RECHECK_BATCH) {
        for entry in batch {
            if entry.done.load(Ordering::Acquire) {
                continue;
            }
            if let Some(reason) = entry.recheck(snapshot)
                && entry.close(&reason)
            {
                closed += 1;
            }
        }
        if entries.len() > RECHECK_BATCH {
            tokio::task::yield_now().await;
        }
    }
    closed
}

/// A tracked connection; dropping it stops the tracking.
#[derive(Debug)]
pub(super) struct Registration {
    inner: Arc<Inner>,
    id: u64,
    entry: Arc<Entry>,
}

impl Registration {
    /// Whether a policy change closed the connection.
    #[cfg(test)]
    pub(super) fn is_closed(&self) -> bool {
        self.entry.cancel.is_cancelled()
    }

    /// Completes when a policy change closes the connection.
    pub(super) async fn closed(&self) {
        self.entry.cancel.cancelled().await;
    }

    /// Copies both ways like [`relay`] until both directions finish (`Some`), or until a
    /// policy change closes the connection (`None`): the copy stops at once, and dropping the
    /// two legs then closes them.
    pub(super) async fn relay<D, U>(
        &self,
        downstream: &mut D,
        upstream: &mut U,
    ) -> Option<io::Result<Transferred>>
    where
        D: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        tokio::select! {
            biased;
            () = self.closed() => None,
            moved = relay(downstream, upstream) => Some(moved),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Ended: a follower pass that copied the entry before this removal skips it.
        self.entry.done.store(true, Ordering::Release);
        lock(&self.inner.open).remove(&self.id);
    }
}

#[cfg(test)]
mod tests;
