//! ztunnel's side of ZDS: connect to the node agent, say hello, then answer each request with
//! exactly one ack, starting and stopping pod proxies as the [`Session`] decides. Reconnects
//! forever with capped backoff; pod proxies are kept across reconnects.
//!
//! Bad input costs only the connection: an unreadable record or a protocol violation is
//! answered with an error ack and a log line naming it, then the connection is dropped and
//! re-established (upstream exits the process on a violation; here every other pod keeps being
//! served). A pod whose proxy cannot start is nacked and retried every 5 s.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh::backoff::{Backoff, BackoffPolicy};
use mesh::errors::chain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pods::{PodProxies, StopMode};
use crate::capture::netns::netns_id;
use crate::capture::zds::transport::Connection;
use crate::capture::zds::{
    Action, ReadError, Request, Session, decode_request, encode_ack, encode_hello,
};

/// How often pods whose proxy failed to start are retried (upstream's interval).
const PENDING_RETRY: Duration = Duration::from_secs(5);

/// Reconnect delays: 20 ms doubling to 15 s, as upstream retries the node agent.
const RECONNECT: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_millis(20),
    max: Duration::from_secs(15),
    jitter: 0.2,
};

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("node agent closed the connection")]
    Eof,
    #[error("ZDS socket error")]
    Io(#[from] std::io::Error),
    #[error("unreadable record: {0}")]
    Read(ReadError),
    #[error("protocol violation: {0}")]
    Protocol(crate::capture::zds::ProtocolError),
}

/// Serves ZDS at `path` until `shutdown`. `ready` is true while the current connection's
/// snapshot has been applied and no pod is pending.
pub async fn run(
    path: PathBuf,
    proxies: Arc<PodProxies>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(RECONNECT);
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            attempt = connect(&path) => attempt,
        };
        match attempt {
            Ok(conn) => {
                info!(socket = %path.display(), "connected to the node agent");
                let ended = tokio::select! {
                    () = shutdown.cancelled() => return,
                    ended = serve(&conn, &proxies, &ready, &mut backoff) => ended,
                };
                ready.send_replace(false);
                warn!(error = %chain(&ended), "ZDS connection ended; reconnecting");
            }
            Err(err) => {
                warn!(socket = %path.display(), error = %err,
                    "cannot reach the node agent; is it healthy?");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn connect(path: &Path) -> std::io::Result<Connection> {
    let conn = Connection::connect(path)?;
    conn.send(&encode_hello(), None).await?;
    Ok(conn)
}

/// One connection, from the hello to its end.
async fn serve(
    conn: &Connection,
    proxies: &PodProxies,
    ready: &watch::Sender<bool>,
    backoff: &mut Backoff,
) -> SessionEnd {
    let mut session = Session::new();
    proxies.clear_pending();
    let mut retry = tokio::time::interval(PENDING_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let record = tokio::select! {
            record = conn.recv() => record,
            _ = retry.tick() => {
                if proxies.pending_count() > 0 {
                    let left = proxies.retry_pending().await;
                    update_ready(ready, &session, left);
                }
                continue;
            }
        };
        let record = match record {
            Ok(record) => record,
            Err(err) => return SessionEnd::Io(err),
        };
        let mut fds = record.fds;
        let request = match decode_request(&record.bytes, record.truncated, fds.len()) {
            Ok(request) => request,
            Err(ReadError::Empty) => return SessionEnd::Eof,
            Err(err) => {
                let _ = ack(conn, Some(&format!("failure to read message : {err}"))).await;
                return SessionEnd::Read(err);
            }
        };
        debug!(?request, "ZDS request");
        let netns = fds.pop();
        match handle(&mut session, proxies, request, netns).await {
            Ok(outcome) => {
                if let Err(err) = ack(conn, outcome.as_deref()).await {
                    return SessionEnd::Io(err);
                }
            }
            Err(violation) => {
                let text = format!("failure to process message : {violation}");
                let _ = ack(conn, Some(&text)).await;
                return SessionEnd::Protocol(violation);
            }
        }
        if update_ready(ready, &session, proxies.pending_count()) {
            backoff.reset();
        }
    }
}

/// Applies one request. `Ok(Some(text))` is a nack that keeps the connection (a proxy that
/// could not start); `Err` is a protocol violation that ends it.
async fn handle(
    session: &mut Session,
    proxies: &PodProxies,
    request: Request,
    netns: Option<OwnedFd>,
) -> Result<Option<String>, crate::capture::zds::ProtocolError> {
    let netns_identity = match netns
        .as_ref()
        .map(|fd| netns_id(std::os::fd::AsFd::as_fd(fd)))
    {
        Some(Ok(id)) => Some(id),
        Some(Err(err)) => return Ok(Some(format!("failure to start proxy : {err}"))),
        None => None,
    };
    // A pod that never started (pending, retried every 5 s on the descriptor kept) is forgotten
    // by its del in either phase; otherwise a retry could start listeners for a deleted pod.
    if let Request::Del { uid } = &request {
        proxies.forget_pending(uid);
    }
    let running = proxies.running_uids();
    let actions = session.handle(
        request,
        netns_identity,
        |uid| proxies.running_netns(uid),
        running.iter().map(String::as_str),
    )?;
    let mut netns = netns;
    let mut nack = None;
    for action in actions {
        let (uid, info) = match action {
            Action::Stop { uid } => {
                proxies.stop(&uid, StopMode::Drain);
                continue;
            }
            Action::Replace { uid, info, .. } => {
                // The old namespace is gone with the old sandbox: nothing left to drain.
                proxies.stop(&uid, StopMode::Immediate);
                (uid, info)
            }
            Action::Start { uid, info, .. } => (uid, info),
        };
        let Some(fd) = netns.take() else { continue };
        if let Err(err) = proxies.start(&uid, &info, fd).await {
            let text = format!("failure to start proxy : {}", chain(&err));
            warn!(%uid, pod = %format!("{}/{}", info.namespace, info.name),
                error = %text, "pod proxy did not start; will retry");
            nack = Some(text);
        }
    }
    Ok(nack)
}

/// Publishes readiness; returns whether it is ready.
fn update_ready(ready: &watch::Sender<bool>, session: &Session, pending: usize) -> bool {
    let now = session.snapshot_done() && pending == 0;
    let was = ready.send_replace(now);
    if now && !was {
        info!("in-pod snapshot applied; ready");
    }
    now
}

async fn ack(conn: &Connection, error: Option<&str>) -> std::io::Result<()> {
    conn.send(&encode_ack(error), None).await
}

#[cfg(test)]
mod tests;
