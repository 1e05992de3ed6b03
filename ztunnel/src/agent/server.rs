//! The node agent's ZDS server: every ztunnel that connects gets the full snapshot of enrolled
//! pods (an `add` with the namespace descriptor for each, `keep` for a pod whose namespace
//! cannot be opened now, then `snapshot_sent`), and from then on each change, one request at a
//! time, each waiting for its ack. Adds go to the newest connection only (during an upgrade the
//! new ztunnel takes new pods); deletes go to every connection, so no ztunnel keeps serving a
//! pod that left the mesh.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh::errors::chain;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::capture::netns::PodNetns;
use crate::capture::zds::transport::{Connection, Listener};
use crate::capture::zds::{PodInfo, ReadError, Request, decode_ack, decode_hello, encode_request};

/// How long ztunnel has to say hello, and to answer each request (upstream's values).
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not get a success ack.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No ztunnel is connected.
    #[error("no ztunnel connection")]
    NoConnection,
    /// The connection ended before the answer came.
    #[error("the ztunnel connection ended before it answered")]
    Gone,
    /// ztunnel answered with an error ack.
    #[error("ztunnel refused: {0}")]
    Refused(String),
}

/// A pod as published to ztunnels.
#[derive(Debug, Clone)]
struct Published {
    info: PodInfo,
    /// `None` while the namespace cannot be opened: such a pod is sent as `keep`.
    netns: Option<Arc<PodNetns>>,
}

enum Job {
    Add {
        uid: String,
        pod: Published,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Del {
        uid: String,
    },
}

struct Peer {
    id: u64,
    jobs: mpsc::UnboundedSender<Job>,
}

#[derive(Default)]
struct Hub {
    pods: BTreeMap<String, Published>,
    /// Oldest first; the last is the newest.
    peers: Vec<Peer>,
    next_id: u64,
}

/// The enrolled pods and the connected ztunnels. Cheap to clone.
#[derive(Clone, Default)]
pub struct ZdsServer {
    hub: Arc<Mutex<Hub>>,
}

fn lock(hub: &Mutex<Hub>) -> MutexGuard<'_, Hub> {
    // Single inserts and removals only: consistent after a panic elsewhere.
    hub.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ZdsServer {
    /// Publishes a pod and sends its `add` to the newest ztunnel; resolves with that ztunnel's
    /// answer. With no namespace (it cannot be opened now) the pod is only remembered, for the
    /// next snapshot's `keep`.
    pub async fn publish(
        &self,
        uid: &str,
        info: PodInfo,
        netns: Option<Arc<PodNetns>>,
    ) -> Result<(), SendError> {
        let pod = Published { info, netns };
        let (done, answer) = oneshot::channel();
        {
            let mut hub = lock(&self.hub);
            hub.pods.insert(uid.to_owned(), pod.clone());
            if pod.netns.is_none() {
                return Ok(());
            }
            let peer = hub.peers.last().ok_or(SendError::NoConnection)?;
            let job = Job::Add {
                uid: uid.to_owned(),
                pod,
                done,
            };
            peer.jobs.send(job).map_err(|_| SendError::Gone)?;
        }
        answer.await.unwrap_or(Err(SendError::Gone))
    }

    /// Forgets a pod and sends its `del` to every ztunnel.
    pub fn unpublish(&self, uid: &str) {
        let mut hub = lock(&self.hub);
        hub.pods.remove(uid);
        for peer in &hub.peers {
            let _ = peer.jobs.send(Job::Del {
                uid: uid.to_owned(),
            });
        }
    }

    /// Whether any ztunnel is connected.
    pub fn connected(&self) -> bool {
        !lock(&self.hub).peers.is_empty()
    }

    /// Accepts ztunnels on `listener` forever, each served on its own task.
    pub async fn serve(self, listener: Listener) {
        loop {
            match listener.accept().await {
                Ok(conn) => {
                    let server = self.clone();
                    tokio::spawn(async move { server.serve_peer(conn).await });
                }
                Err(err) => {
                    warn!(error = %err, "accepting a ztunnel connection failed");
                    // Out of descriptors and the like: the next accept may succeed.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn serve_peer(&self, conn: Connection) {
        let version = match tokio::time::timeout(PEER_TIMEOUT, conn.recv()).await {
            Ok(Ok(record)) => decode_hello(&record.bytes),
            Ok(Err(err)) => {
                warn!(error = %err, "ztunnel connection failed before its hello");
                return;
            }
            Err(_) => {
                warn!("ztunnel sent no hello within {PEER_TIMEOUT:?}; dropping it");
                return;
            }
        };
        let version = match version {
            Ok(version) => version,
            Err(err) => {
                warn!(error = %err, "unreadable hello from ztunnel; dropping it");
                return;
            }
        };
        // Registering and copying the snapshot under one lock: a pod published after this is
        // queued for this connection; none can fall between the two.
        let (jobs, mut queue) = mpsc::unbounded_channel();
        let (id, snapshot) = {
            let mut hub = lock(&self.hub);
            let id = hub.next_id;
            hub.next_id += 1;
            hub.peers.push(Peer { id, jobs });
            (id, hub.pods.clone())
        };
        info!(
            peer = id,
            version,
            pods = snapshot.len(),
            "ztunnel connected; sending snapshot"
        );
        let ended = self.converse(&conn, snapshot, &mut queue).await;
        lock(&self.hub).peers.retain(|p| p.id != id);
        // Answer whoever still waits on this connection.
        queue.close();
        while let Ok(job) = queue.try_recv() {
            if let Job::Add { done, .. } = job {
                let _ = done.send(Err(SendError::Gone));
            }
        }
        info!(peer = id, reason = %chain(&ended), "ztunnel connection closed");
    }

    async fn converse(
        &self,
        conn: &Connection,
        snapshot: BTreeMap<String, Published>,
        queue: &mut mpsc::UnboundedReceiver<Job>,
    ) -> PeerError {
        for (uid, pod) in snapshot {
            let request = match &pod.netns {
                Some(_) => Request::Add {
                    uid: uid.clone(),
                    info: Some(pod.info.clone()),
                },
                None => Request::Keep { uid: uid.clone() },
            };
            match exchange(conn, &request, pod.netns.as_deref()).await {
                Ok(None) => info!(%uid, pod = %format!("{}/{}", pod.info.namespace, pod.info.name),
                    via = "snapshot", "pod enrolled"),
                Ok(Some(refusal)) => {
                    warn!(%uid, error = %refusal, "ztunnel refused a pod of the snapshot")
                }
                Err(err) => return err,
            }
        }
        match exchange(conn, &Request::SnapshotSent, None).await {
            Ok(None) => info!("snapshot acknowledged"),
            Ok(Some(refusal)) => warn!(error = %refusal, "ztunnel refused the end of snapshot"),
            Err(err) => return err,
        }
        loop {
            let job = tokio::select! {
                job = queue.recv() => job,
                // ztunnel sends nothing unprompted: a record now is a violation, EOF a goodbye.
                record = conn.recv() => return match record {
                    Ok(record) if record.bytes.is_empty() => PeerError::Closed,
                    Ok(_) => PeerError::Unprompted,
                    Err(err) => PeerError::Io(err),
                },
            };
            let Some(job) = job else {
                return PeerError::Closed;
            };
            match job {
                Job::Add { uid, pod, done } => {
                    let request = Request::Add {
                        uid,
                        info: Some(pod.info),
                    };
                    match exchange(conn, &request, pod.netns.as_deref()).await {
                        Ok(None) => {
                            let _ = done.send(Ok(()));
                        }
                        Ok(Some(refusal)) => {
                            let _ = done.send(Err(SendError::Refused(refusal)));
                        }
                        Err(err) => {
                            let _ = done.send(Err(SendError::Gone));
                            return err;
                        }
                    }
                }
                Job::Del { uid } => match exchange(conn, &Request::Del { uid: uid.clone() }, None)
                    .await
                {
                    Ok(None) => info!(%uid, "ztunnel acknowledged the removal"),
                    Ok(Some(refusal)) => warn!(%uid, error = %refusal, "ztunnel refused a removal"),
                    Err(err) => return err,
                },
            }
        }
    }
}

/// Why a connection to a ztunnel ended.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("ztunnel closed the connection")]
    Closed,
    #[error("ztunnel sent a record nobody asked for")]
    Unprompted,
    #[error("no answer within {PEER_TIMEOUT:?}")]
    Timeout,
    #[error("unreadable answer")]
    Unreadable(#[source] ReadError),
    #[error("request cannot be encoded")]
    Encode(#[source] ReadError),
    #[error("socket error")]
    Io(#[source] std::io::Error),
}

/// Sends one request and waits for its answer: `Ok(None)` for success, `Ok(Some(text))` for an
/// error ack. A late answer would be taken for the next request's, so a timeout ends the
/// connection (ztunnel then reconnects and gets a fresh snapshot).
async fn exchange(
    conn: &Connection,
    request: &Request,
    netns: Option<&PodNetns>,
) -> Result<Option<String>, PeerError> {
    let bytes = encode_request(request).map_err(PeerError::Encode)?;
    let answer = async {
        conn.send(&bytes, netns.map(PodNetns::as_fd))
            .await
            .map_err(PeerError::Io)?;
        conn.recv().await.map_err(PeerError::Io)
    };
    let record = tokio::time::timeout(PEER_TIMEOUT, answer)
        .await
        .map_err(|_| PeerError::Timeout)??;
    match decode_ack(&record.bytes) {
        Ok(answer) => Ok(answer),
        Err(ReadError::Empty) => Err(PeerError::Closed),
        Err(err) => Err(PeerError::Unreadable(err)),
    }
}
