//! Support for the end-to-end tests: a private network namespace per test, the real binaries as
//! child processes, real iptables capture rules, and small applications (echo servers, clients)
//! whose every byte is checked.
//!
//! Each test runs on its own thread that has `unshare(CLONE_NEWNET)`-ed itself: the namespace,
//! its loopback, its iptables rules and every socket in it disappear when the thread and the
//! child processes it started are gone, so a failing test leaves nothing behind on the host.
//! Children are killed on drop.

#![allow(clippy::unwrap_used)] // test support: a panic is the failure report
#![allow(clippy::print_stdout)] // test support: child logs are forwarded for failure diagnosis

pub mod apps;
pub mod authz_world;
pub mod http;
pub mod mesh;
pub mod netns;
pub mod pcap;
pub mod storefront;
pub mod topology;
pub mod world;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Upper bound for any single wait in a test (readiness, a transfer, a verdict).
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs `body` inside a fresh private network namespace with loopback up, on a current-thread
/// runtime of a dedicated thread. Panics in `body` fail the calling test.
pub fn in_private_netns<F, Fut>(name: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            assert!(
                nix::unistd::geteuid().is_root(),
                "end-to-end tests create network namespaces and iptables rules: run them as root"
            );
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) failed");
            run("ip", &["link", "set", "lo", "up"]);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(body());
        })
        .unwrap();
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `body` on a current-thread runtime of the calling thread: what tests that switch this
/// thread into pod namespaces to make sockets (`netns::Netns::enter`) need.
pub fn on_current_thread<F: Future<Output = ()>>(body: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body);
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed?)"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The single-namespace capture used by dedicated mode on one host: connections *from* an
/// enrolled workload's address go to the outbound listener; connections *to* an enrolled
/// workload, other than HBONE, go to the inbound plaintext listener. ztunnel's own sockets carry
/// mark 0x539 and pass untouched.
pub fn install_capture(sources: &[Ipv4Addr], destinations: &[Ipv4Addr]) {
    let nat = |args: &[&str]| {
        let mut all = vec!["-w", "-t", "nat"];
        all.extend_from_slice(args);
        run("iptables", &all);
    };
    nat(&["-N", "ZT_CAPTURE"]);
    nat(&["-A", "OUTPUT", "-p", "tcp", "-j", "ZT_CAPTURE"]);
    nat(&[
        "-A",
        "ZT_CAPTURE",
        "-m",
        "mark",
        "--mark",
        "0x539/0xfff",
        "-j",
        "RETURN",
    ]);
    for source in sources {
        let source = source.to_string();
        nat(&[
            "-A",
            "ZT_CAPTURE",
            "-s",
            &source,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ]);
    }
    for destination in destinations {
        let destination = destination.to_string();
        nat(&[
            "-A",
            "ZT_CAPTURE",
            "-d",
            &destination,
            "-p",
            "tcp",
            "!",
            "--dport",
            "15008",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15006",
        ]);
    }
}

/// Path of a workspace binary, built beside this test executable (`make test` builds them).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().unwrap();
    // A test runs from target/<profile>/deps/, a binary of this crate (the demo) from
    // target/<profile>/: the workspace binaries sit in target/<profile>/.
    let dir = exe.parent().unwrap();
    let path = if dir.ends_with("deps") {
        dir.parent().unwrap().join(name)
    } else {
        dir.join(name)
    };
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

static ECHO_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether child processes' log lines are echoed to stdout (on by default: the test harness
/// shows them for a failed test). The demo turns it off to tell its own story.
pub fn echo_child_logs(on: bool) {
    ECHO_LOGS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A running binary: its log lines are kept (and echoed for failure diagnosis), and it is
/// killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    seen: watch::Receiver<usize>,
}

impl Process {
    /// Starts `program` with `args` and `env`, capturing stdout and stderr.
    pub fn spawn(name: &str, program: PathBuf, args: &[String], env: &[(&str, String)]) -> Self {
        let mut child = Command::new(&program)
            .args(args)
            // The test's own RUST_LOG never leaks into a child; the caller's choice does.
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0);
        let tx = Arc::new(tx);
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (lines, tx, tag) = (lines.clone(), tx.clone(), name.to_owned());
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if ECHO_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                        println!("[{tag}] {line}");
                    }
                    let count = {
                        let mut all = lines.lock().unwrap();
                        // Kept with the tabs of the plain log format as spaces, so a needle
                        // reads as the line does in a terminal ("message key=value").
                        all.push(line.replace('\t', " "));
                        all.len()
                    };
                    tx.send_replace(count);
                }
            });
        }
        Self {
            name: name.to_owned(),
            child,
            lines,
            seen,
        }
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        self.wait_for_lines(&[needle], 1).await.remove(0)
    }

    /// Waits until `count` log lines each contain every one of `needles` (lines are written as
    /// things finish, a moment after a client sees them finish); returns those lines. More
    /// than `count` is not an error here: callers that need an exact number check
    /// [`Process::count`] afterwards.
    pub async fn wait_for_lines(&mut self, needles: &[&str], count: usize) -> Vec<String> {
        let matching = |lines: &Arc<Mutex<Vec<String>>>| -> Vec<String> {
            lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .cloned()
                .collect()
        };
        let lines = self.lines.clone();
        let name = self.name.clone();
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let found = matching(&lines);
                if found.len() >= count {
                    return found;
                }
                if self.seen.changed().await.is_err() {
                    panic!("{name} exited before logging {count} line(s) with {needles:?}");
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "{} did not log {count} line(s) with {needles:?} within {WAIT:?}",
                self.name
            )
        })
    }

    /// How many log lines so far contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Kills the process (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {WAIT:?}", self.name))
            .unwrap()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit().await
    }
}

/// TCP connections in this namespace whose local port is `port` and that are established,
/// read from the kernel's own table for this thread's namespace (`/proc/thread-self/net/tcp`;
/// `/proc/net` would show the main thread's namespace instead).
pub fn established_on_local_port(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 01 is ESTABLISHED.
            local_port == Some(port) && cols.get(3) == Some(&"01")
        })
        .count()
}
