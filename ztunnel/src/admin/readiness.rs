//! Readiness as upstream reports it on `:15021/healthz/ready`: a set of named start-up tasks;
//! ready once none is pending. A task can become pending again (the in-pod manager does, while
//! its connection to the node agent is down).

use std::collections::BTreeSet;
use std::sync::Mutex;

use http::{Method, StatusCode};
use mesh::telemetry::http::{Reply, text};

/// The first configuration (xDS or the local file) has been applied.
pub const STATE_MANAGER: &str = "state manager";
/// Dedicated mode: the listeners are bound.
pub const PROXY: &str = "proxy";
/// In-pod mode: the node agent's snapshot is processed and every pod proxy has started.
pub const WORKLOAD_PROXY_MANAGER: &str = "workload proxy manager";

/// Pending start-up tasks.
#[derive(Debug, Default)]
pub struct Readiness {
    pending: Mutex<BTreeSet<&'static str>>,
}

impl Readiness {
    /// Nothing pending yet: register tasks before serving the endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `task` pending (`true`) or done (`false`).
    pub fn set_pending(&self, task: &'static str, pending: bool) {
        let mut tasks = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending {
            tasks.insert(task);
        } else {
            tasks.remove(task);
        }
    }

    /// The pending tasks, sorted.
    pub fn pending(&self) -> Vec<&'static str> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// The answer to a request on the readiness port.
    pub fn respond(&self, method: &Method, path: &str) -> Reply {
        if path != "/healthz/ready" {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let pending = self.pending();
        if pending.is_empty() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("not ready, pending: {}\n", pending.join(", ")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_nothing_is_pending() {
        let readiness = Readiness::new();
        readiness.set_pending(STATE_MANAGER, true);
        readiness.set_pending(PROXY, true);
        let reply = readiness.respond(&Method::GET, "/healthz/ready");
        assert_eq!(reply.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(readiness.pending(), ["proxy", "state manager"]);
        readiness.set_pending(STATE_MANAGER, false);
        readiness.set_pending(PROXY, false);
        assert_eq!(
            readiness.respond(&Method::GET, "/healthz/ready").status(),
            StatusCode::OK
        );
        assert_eq!(
            readiness.respond(&Method::POST, "/healthz/ready").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            readiness.respond(&Method::GET, "/other").status(),
            StatusCode::NOT_FOUND
        );
    }
}
