//! One ZDS connection as a state machine: which pods the initial snapshot named, and what each
//! request means for the pod proxies. Pure: it is told which proxies run (they outlive the
//! connection, so existing pods keep their connections across an agent or ztunnel reconnect)
//! and answers with the actions to take; the caller acts and acks.

use std::collections::BTreeSet;

use super::message::{PodInfo, Request};

/// A network namespace's identity: the device and inode of its nsfs file. Two descriptors name
/// the same namespace exactly when these match (a recreated pod sandbox gets a new inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// What to do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start serving a pod in `netns`.
    Start {
        /// Pod UID.
        uid: String,
        /// Who the pod is.
        info: PodInfo,
        /// Its namespace.
        netns: NetnsId,
    },
    /// The pod's sandbox was recreated: stop the old proxy at once, then start in `netns`.
    Replace {
        /// Pod UID.
        uid: String,
        /// Who the pod is.
        info: PodInfo,
        /// Its new namespace.
        netns: NetnsId,
    },
    /// Stop serving a pod now (deleted, or absent from a new snapshot).
    Stop {
        /// Pod UID.
        uid: String,
    },
}

/// A request that breaks the protocol's order or shape. Answered with an error ack; the
/// connection is then dropped and re-established.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `add` without `workload_info`.
    #[error("add for {0} has no workload_info")]
    AddWithoutInfo(String),
    /// `keep` after the snapshot ended.
    #[error("keep for {0} after the snapshot ended")]
    KeepAfterSnapshot(String),
    /// A second `snapshot_sent`.
    #[error("snapshot_sent received twice")]
    SecondSnapshot,
    /// An empty pod UID.
    #[error("request names an empty pod uid")]
    EmptyUid,
}

/// The state of one connection; a new connection starts a new session.
#[derive(Debug, Default)]
pub struct Session {
    snapshot_done: bool,
    /// Pods named by `add`/`keep` (minus `del`) before `snapshot_sent`.
    named: BTreeSet<String>,
}

impl Session {
    /// A fresh session, expecting a snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the initial snapshot has been received.
    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done
    }

    /// Decides what `request` means. `running(uid)` tells which namespace a running proxy uses;
    /// `running_uids` lists every running proxy (needed at the end of the snapshot). For `add`,
    /// `netns` is the identity of the descriptor that came with it.
    pub fn handle<'a>(
        &mut self,
        request: Request,
        netns: Option<NetnsId>,
        running: impl Fn(&str) -> Option<NetnsId>,
        running_uids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Action>, ProtocolError> {
        match request {
            Request::Add { uid, info } => {
                non_empty(&uid)?;
                let info = info.ok_or_else(|| ProtocolError::AddWithoutInfo(uid.clone()))?;
                if !self.snapshot_done {
                    self.named.insert(uid.clone());
                }
                // The message layer guarantees an add carries a descriptor.
                let Some(netns) = netns else {
                    return Ok(Vec::new());
                };
                Ok(match running(&uid) {
                    Some(current) if current == netns => Vec::new(),
                    Some(_) => vec![Action::Replace { uid, info, netns }],
                    None => vec![Action::Start { uid, info, netns }],
                })
            }
            Request::Keep { uid } => {
                non_empty(&uid)?;
                if self.snapshot_done {
                    return Err(ProtocolError::KeepAfterSnapshot(uid));
                }
                self.named.insert(uid);
                Ok(Vec::new())
            }
            Request::Del { uid } => {
                non_empty(&uid)?;
                if self.snapshot_done {
                    // Unknown uid: nothing to stop.
                    return Ok(match running(&uid) {
                        Some(_) => vec![Action::Stop { uid }],
                        None => Vec::new(),
                    });
                }
                // During the snapshot the proxy is left running; reconcile stops it.
                self.named.remove(&uid);
                Ok(Vec::new())
            }
            Request::SnapshotSent => {
                if self.snapshot_done {
                    return Err(ProtocolError::SecondSnapshot);
                }
                self.snapshot_done = true;
                let named = std::mem::take(&mut self.named);
                Ok(running_uids
                    .into_iter()
                    .filter(|uid| !named.contains(*uid))
                    .map(|uid| Action::Stop {
                        uid: uid.to_owned(),
                    })
                    .collect())
            }
        }
    }
}

fn non_empty(uid: &str) -> Result<(), ProtocolError> {
    if uid.is_empty() {
        return Err(ProtocolError::EmptyUid);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
