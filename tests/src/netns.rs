//! Named network namespaces (`ip netns`), owned by the test that created them.
//!
//! Multi-host topologies need namespaces that other processes can join by name (`ip netns exec
//! <name> ztunnel ...`), which the thread-private `unshare` of [`crate::in_private_netns`]
//! cannot offer. A named namespace outlives its creator unless deleted, so [`Netns`] deletes it
//! on drop, and every name carries the creating process's pid so that namespaces left behind by
//! a killed run can be recognised and removed by the next one.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sched::{CloneFlags, setns};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Where `ip netns` bind-mounts named namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace, deleted when dropped.
///
/// Its name is `mt<pid>-<name>`: short, unique per test process, and recognisable as stale once
/// that pid is gone.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: AtomicBool,
}

impl Netns {
    /// Creates the namespace `mt<pid>-<name>` with `lo` up, after removing namespaces left by
    /// earlier test processes that are no longer alive. Panics if it already exists: names must
    /// be unique within a test process.
    pub fn create(name: &str) -> Self {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "netns name {name:?}: use ASCII letters, digits, '-' and '_' only"
        );
        remove_stale();
        let full = format!("{}{name}", own_prefix());
        crate::run("ip", &["netns", "add", &full]);
        // Owned from here on: a failure below still deletes it.
        let netns = Self {
            name: full,
            deleted: AtomicBool::new(false),
        };
        crate::run("ip", &["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    /// The full name, as `ip netns exec` takes it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that pins the namespace; `setns` and `nsenter --net=` take it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `program` inside the namespace to completion; panics with its output if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) {
        self.exec_output(program, args);
    }

    /// Runs `program` inside the namespace to completion and returns its stdout; panics with
    /// its output if it fails.
    pub fn exec_output(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e} (is iproute2 installed?)"));
        check(&self.name, program, args, &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `f` with the calling thread inside this namespace, then moves the thread back to
    /// the namespace it was in before (even if `f` panics).
    ///
    /// Sockets created by `f` belong to this namespace for their whole life, wherever they are
    /// used afterwards. Only the calling thread moves: call this from a current-thread runtime
    /// (as these tests do) or a plain thread, so that the thread which entered is the one that
    /// leaves and nothing else of the test runs in the namespace meanwhile. `f` must be
    /// synchronous and must not start threads (a runtime's worker or blocking-pool thread
    /// started here would stay in this namespace for good).
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        // Opened before moving: afterwards /proc/thread-self/ns/net would name the target.
        let original = File::open("/proc/thread-self/ns/net").unwrap();
        let target = File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        setns(&target, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
        let _back = Restore(original);
        f()
    }

    /// A listener on `addr` whose socket lives in this namespace. Needs a Tokio runtime.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        let listener = self
            .enter(|| std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.name));
        listener.set_nonblocking(true).unwrap();
        TcpListener::from_std(listener).unwrap()
    }

    /// Connects to `addr` from a socket that lives in this namespace; only the socket's creation
    /// happens inside, so the connect itself can be awaited normally.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self.enter(|| match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        })?;
        socket.connect(addr).await
    }

    /// Deletes the namespace now (idempotent; errors are ignored). Interfaces in it go with it;
    /// processes still running in it keep it alive, nameless, until they exit.
    pub fn delete(&self) {
        if !self.deleted.swap(true, Ordering::SeqCst) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Moves the thread back into its original namespace when `enter` ends, also on unwinding.
struct Restore(File);

impl Drop for Restore {
    fn drop(&mut self) {
        // A thread left in the wrong namespace would silently misdirect every later socket of
        // the test; failing loudly (an abort, if already unwinding) is the lesser evil.
        setns(&self.0, CloneFlags::CLONE_NEWNET).expect("setns back to the original netns");
    }
}

fn own_prefix() -> String {
    format!("mt{}-", std::process::id())
}

/// Best effort: deletes `mt<pid>-*` namespaces whose pid no longer runs (a test process that was
/// killed before its drops ran). Live pids are left alone: they may be a concurrent test run.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("mt")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != own
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

fn check(netns: &str, program: &str, args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "ip netns exec {netns} {program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
