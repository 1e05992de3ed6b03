//! Network namespaces of enrolled pods, and making sockets inside them.
//!
//! A socket belongs to the namespace its creating thread was in when `socket()` ran, for its
//! whole life. So every socket for a pod (its listeners, its outbound connections) is made by
//! switching the calling thread into the pod's namespace, creating (and binding) the socket,
//! and switching back, all synchronously: no `.await` runs in between, so no other task ever
//! runs on a thread that is inside a pod's namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use super::zds::NetnsId;

/// Why a namespace could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Our own namespace could not be opened (needed to come back from a pod's).
    #[error("opening this process's network namespace {path} failed")]
    OpenOwn {
        /// The path tried.
        path: &'static str,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// The descriptor could not be inspected.
    #[error("fstat on the netns descriptor failed")]
    Stat(#[source] nix::Error),
    /// Entering a namespace failed (needs CAP_SYS_ADMIN; or the fd is not a netns).
    #[error("setns into the pod's network namespace failed")]
    Enter(#[source] nix::Error),
}

/// This process's own network namespace, opened once at start-up so threads can return to it.
#[derive(Debug)]
pub struct HostNetns {
    file: File,
}

impl HostNetns {
    /// Opens the namespace of the calling thread; call it from the main thread before any
    /// switching happens.
    pub fn open() -> Result<Self, NetnsError> {
        const PATH: &str = "/proc/thread-self/ns/net";
        let file = File::open(PATH).map_err(|cause| NetnsError::OpenOwn { path: PATH, cause })?;
        Ok(Self { file })
    }

    /// Proves this process may switch namespaces (a no-op switch into its own), so in-pod mode
    /// fails at start-up rather than at the first pod.
    pub fn check_can_switch(&self) -> Result<(), NetnsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A pod's network namespace: the descriptor the node agent handed over, kept open for as long
/// as the pod is served (an open descriptor keeps the namespace alive).
#[derive(Debug)]
pub struct PodNetns {
    fd: OwnedFd,
    id: NetnsId,
}

impl PodNetns {
    /// Takes ownership of a namespace descriptor.
    pub fn new(fd: OwnedFd) -> Result<Self, NetnsError> {
        let id = netns_id(fd.as_fd())?;
        Ok(Self { fd, id })
    }

    /// Opens a namespace by path (e.g. `/var/run/netns/web-1`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = OwnedFd::from(File::open(path)?);
        Self::new(fd).map_err(io::Error::other)
    }

    /// Which namespace this is: equal ids mean the same namespace.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// The descriptor, e.g. to pass it on over ZDS.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `make` with the calling thread inside this namespace, then returns the thread to
    /// `host`. `make` must be quick and synchronous (socket creation, bind).
    pub fn run<T>(&self, host: &HostNetns, make: impl FnOnce() -> T) -> Result<T, NetnsError> {
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
        let made = make();
        if let Err(err) = setns(host.fd(), CloneFlags::CLONE_NEWNET) {
            // A runtime worker left in a pod's namespace would open every later socket there:
            // serving on would misroute other pods' traffic, so stop here.
            tracing::error!(error = %err, "cannot return to the host network namespace; aborting");
            std::process::abort();
        }
        Ok(made)
    }
}

/// The `(st_dev, st_ino)` of a namespace descriptor.
pub fn netns_id(fd: BorrowedFd<'_>) -> Result<NetnsId, NetnsError> {
    let stat = nix::sys::stat::fstat(fd).map_err(NetnsError::Stat)?;
    Ok(NetnsId {
        dev: stat.st_dev,
        ino: stat.st_ino,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_same_namespace_opened_twice_has_one_id() {
        let a = PodNetns::open(Path::new("/proc/self/ns/net")).unwrap();
        let b = PodNetns::open(Path::new("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn a_regular_file_is_not_a_namespace_to_enter() {
        let host = HostNetns::open().unwrap();
        let not_netns = PodNetns::open(Path::new("/proc/self/cmdline")).unwrap();
        assert!(matches!(
            not_netns.run(&host, || ()),
            Err(NetnsError::Enter(_))
        ));
    }
}
