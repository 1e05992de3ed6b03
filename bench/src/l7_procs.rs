//! The processes of the waypoint path besides ztunnel: our control plane (the CA both the
//! waypoint and ztunnel chain to, and the waypoint's xDS) and the waypoint itself, children of
//! the namespace thread with their logs in files. Killed when dropped.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::topology::{
    HTTP_PORT, HTTP_VIP, MESH_CLIENT, NAMESPACE, SERVER, SERVICE_ACCOUNT, WAYPOINT, WAYPOINT_PORT,
};

/// How long a process may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Pause between two looks at its log.
const READY_POLL: Duration = Duration::from_millis(20);
/// The control plane's gRPC port (CA and xDS), on loopback.
const CONTROL_PLANE: &str = "127.0.0.1:15012";
/// The waypoint's metrics and readiness ports (15020/15021 are ztunnel's in this namespace).
const WAYPOINT_STATS: u16 = 15120;
const WAYPOINT_READINESS: u16 = 15121;
/// The CA token of the waypoint's service account.
const WAYPOINT_TOKEN: &str = "bench-waypoint-token-0123456789abcdef";

/// Why a process could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcsError {
    /// A file could not be written or a process not started.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// It exited, or did not get ready in time.
    #[error("{name} did not get ready within {READY_WITHIN:?}\nits log ends:\n{tail}")]
    NotReady {
        /// Which process.
        name: &'static str,
        /// The end of its log.
        tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProcsError {
    let what = what.into();
    move |source| ProcsError::Io { what, source }
}

/// A child with its log file.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut command: Command, dir: &Path) -> Result<Self, ProcsError> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io_err("log file"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err(format!("starting {name}")))?;
        Ok(Self { name, child, log })
    }

    fn wait_for(&mut self, line: &str) -> Result<(), ProcsError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(line) {
                return Ok(());
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                return Err(ProcsError::NotReady {
                    name: self.name,
                    tail: self.log_tail(),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// Its process id, for `/proc` figures.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster the control plane reads: the two bench workloads, the waypoint pod and its
/// Gateway, and the HTTP service that uses it.
fn cluster_yaml() -> String {
    let pod = |name: &str, sa: &str, ip: Ipv4Addr, labels: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{{labels}}}}}\n\
             spec:\n  serviceAccountName: {sa}\n  nodeName: {node}\n  containers: [{{name: app, ports: [{{name: http, containerPort: {port}}}]}}]\n\
             status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n",
            node = e2e::world::NODE
        )
    };
    let mut text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n"
    );
    text += &pod("client", SERVICE_ACCOUNT, MESH_CLIENT, "app: client", 1);
    text += &pod("server", SERVICE_ACCOUNT, SERVER, "app: http", HTTP_PORT);
    text += &pod(
        "waypoint-0",
        "waypoint",
        WAYPOINT,
        "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none",
        WAYPOINT_PORT,
    );
    text += &format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: http, namespace: {NAMESPACE}, labels: {{istio.io/use-waypoint: waypoint}}}}\n\
         spec:\n  clusterIP: {HTTP_VIP}\n  selector: {{app: http}}\n  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: waypoint, namespace: {NAMESPACE}, labels: {{gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint}}}}\n\
         spec:\n  clusterIP: 127.0.0.51\n  selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}\n  ports: [{{name: mesh, port: {WAYPOINT_PORT}}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: {NAMESPACE}, labels: {{istio.io/waypoint-for: service}}}}\n\
         spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{{name: mesh, port: {WAYPOINT_PORT}, protocol: HBONE}}]\n"
    );
    text
}

/// The control plane serving the bench cluster; its CA directory holds the root ztunnel signs
/// with too, so the two trust each other.
pub(crate) struct ControlPlane {
    proc: Proc,
    /// Its CA directory (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`).
    pub(crate) ca_dir: PathBuf,
}

impl ControlPlane {
    /// Writes the cluster and tokens under `dir` and starts `binary`.
    pub(crate) fn start(binary: &Path, dir: &Path) -> Result<Self, ProcsError> {
        let config = dir.join("cluster");
        let ca_dir = dir.join("ca");
        for d in [&config, &ca_dir] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        std::fs::write(config.join("cluster.yaml"), cluster_yaml())
            .map_err(io_err("writing the cluster"))?;
        let tokens = dir.join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "callers:\n- {{name: waypoint, token: {WAYPOINT_TOKEN}, node: {node}, namespace: {NAMESPACE}, serviceAccount: waypoint}}\n",
                node = e2e::world::NODE
            ),
        )
        .map_err(io_err("writing the tokens"))?;
        let mut command = Command::new(binary);
        command
            .env("RUST_LOG", "info")
            .arg("serve")
            .arg("--config-dir")
            .arg(&config)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .arg("--tokens")
            .arg(&tokens)
            .args(["--listen", CONTROL_PLANE, "--serving-ip", "127.0.0.1"]);
        let mut proc = Proc::spawn("controlplane", command, dir)?;
        proc.wait_for("control plane ready")?;
        Ok(Self { proc, ca_dir })
    }

    /// The signing certificate and key, for ztunnel's `--ca-cert` / `--ca-key`.
    pub(crate) fn signer(&self) -> (PathBuf, PathBuf) {
        (
            self.ca_dir.join("ca-cert.pem"),
            self.ca_dir.join("ca-key.pem"),
        )
    }

    /// Whether it is still running (for error reports).
    pub(crate) fn log_tail(&self) -> String {
        self.proc.log_tail()
    }
}

/// Starts the waypoint `binary` as pod `waypoint-0` against `control_plane`, at its default log
/// level (info: one access line per request), and waits until it serves.
pub(crate) fn start_waypoint(
    binary: &Path,
    control_plane: &ControlPlane,
    dir: &Path,
) -> Result<Proc, ProcsError> {
    let mut command = Command::new(binary);
    command
        .env("RUST_LOG", "info")
        .env("XDS_ADDRESS", format!("https://{CONTROL_PLANE}"))
        .env("CA_ROOT_CA", control_plane.ca_dir.join("root-cert.pem"))
        .env("AUTH_TOKEN", WAYPOINT_TOKEN)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", "waypoint-0")
        .env("SERVICE_ACCOUNT", "waypoint")
        .env("GATEWAY_NAME", "waypoint")
        .env("INSTANCE_IP", WAYPOINT.to_string())
        .env("WAYPOINT_LISTEN", format!("{WAYPOINT}:{WAYPOINT_PORT}"))
        .env("STATS_ADDR", format!("{WAYPOINT}:{WAYPOINT_STATS}"))
        .env("READINESS_ADDR", format!("{WAYPOINT}:{WAYPOINT_READINESS}"));
    let mut proc = Proc::spawn("waypoint", command, dir)?;
    proc.wait_for("waypoint ready")?;
    Ok(proc)
}
