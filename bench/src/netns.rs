//! A private network namespace per measured path, made the way the end-to-end tests make theirs
//! (`e2e::in_private_netns`): a dedicated thread `unshare(CLONE_NEWNET)`s itself, so its
//! loopback, iptables rules, sockets and every thread and child process it starts live in a
//! namespace the kernel removes once they are gone. Nothing is left on the host, even on panic.

use std::any::Any;
use std::io;
use std::process::Command;

/// Why a namespace could not be set up, or its body could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetnsError {
    /// Needs root (CAP_SYS_ADMIN).
    #[error("unshare(CLONE_NEWNET) failed (meshbench must run as root)")]
    Unshare(#[source] nix::Error),
    /// `ip link set lo up` did not succeed.
    #[error("`ip link set lo up` failed: {0}")]
    Loopback(String),
    /// The namespace thread could not be started.
    #[error("cannot start the namespace thread")]
    Thread(#[source] io::Error),
    /// The body panicked (the e2e helpers it calls report failure by panicking).
    #[error("{name} panicked: {message}")]
    Panicked {
        /// The namespace's name.
        name: String,
        /// The panic message.
        message: String,
    },
}

/// Runs `body` on a new thread inside a fresh network namespace with loopback up, and returns
/// its result once the thread has ended (so the namespace is gone when this returns).
pub(crate) fn in_private_netns<T, E, F>(name: &str, body: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            enter_private_netns()?;
            body()
        })
        .map_err(NetnsError::Thread)?;
    thread.join().unwrap_or_else(|panic| {
        Err(NetnsError::Panicked {
            name: name.to_owned(),
            message: panic_message(panic.as_ref()),
        }
        .into())
    })
}

fn enter_private_netns() -> Result<(), NetnsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
    let output = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .map_err(|e| NetnsError::Loopback(format!("cannot run ip: {e}")))?;
    if !output.status.success() {
        return Err(NetnsError::Loopback(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}
