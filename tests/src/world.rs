//! A test world: workloads, services and policies written as the local config file ztunnel
//! reads (upstream's `LOCAL_XDS_PATH` format), and the ztunnel that serves them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::{Process, binary};

/// The node every workload of a single-node world lives on.
pub const NODE: &str = "node-a";

/// One workload (pod).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Pod IP (a loopback address in single-namespace worlds).
    pub ip: Ipv4Addr,
    /// `HBONE` or `TCP`.
    pub protocol: &'static str,
    /// Trust domain, when not the default.
    pub trust_domain: Option<String>,
    /// `(service key "ns/hostname", service port, target port)`.
    pub services: Vec<(String, u16, u16)>,
    /// The node it runs on.
    pub node: String,
    /// Names of policies attached by selector (`ns/name`).
    pub policies: Vec<String>,
}

impl Workload {
    /// An HBONE workload in namespace `ns` with service account = name.
    pub fn new(name: &str, ns: &str, ip: Ipv4Addr) -> Self {
        Self {
            name: name.to_owned(),
            namespace: ns.to_owned(),
            service_account: name.to_owned(),
            ip,
            protocol: "HBONE",
            trust_domain: None,
            services: Vec::new(),
            node: NODE.to_owned(),
            policies: Vec::new(),
        }
    }
}

/// One service with a VIP.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// VIP.
    pub vip: Ipv4Addr,
    /// `(service port, target port)`.
    pub ports: Vec<(u16, u16)>,
    /// The waypoint its traffic goes through: `(address, HBONE port)`.
    pub waypoint: Option<(Ipv4Addr, u16)>,
}

impl Service {
    /// `namespace/hostname`, the key workloads list it by.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname())
    }

    /// The service's FQDN.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// The DENY policy istiod sends for STRICT mTLS: refuse connections without a peer identity.
pub const STRICT_POLICY_NAME: &str = "istio-system/istio_converted_static_strict";
const STRICT_POLICY: &str = "- name: istio_converted_static_strict
  namespace: istio-system
  scope: WorkloadSelector
  action: Deny
  rules:
  - - - notPrincipals: [\"*\"]
";

/// Workloads, services and policies, and where their config file lives.
pub struct World {
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<Service>,
    /// Extra policies, each a YAML list item.
    pub policies: Vec<String>,
    dir: PathBuf,
}

impl World {
    /// An empty world whose files live in a directory named after the test.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("e2e-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            workloads: Vec::new(),
            services: Vec::new(),
            policies: vec![STRICT_POLICY.to_owned()],
            dir,
        }
    }

    /// Where this world's files (config, sockets, logs) live.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The local config file's text.
    pub fn yaml(&self) -> String {
        let mut out = String::from("workloads:\n");
        for w in &self.workloads {
            let _ = write!(
                out,
                "- uid: Kubernetes//Pod/{ns}/{name}\n  name: {name}\n  namespace: {ns}\n  serviceAccount: {sa}\n  workloadIps: [\"{ip}\"]\n  protocol: {proto}\n  node: {node}\n",
                ns = w.namespace,
                name = w.name,
                sa = w.service_account,
                ip = w.ip,
                proto = w.protocol,
                node = w.node,
            );
            if let Some(td) = &w.trust_domain {
                let _ = writeln!(out, "  trustDomain: {td}");
            }
            if !w.policies.is_empty() {
                let names: Vec<String> = w.policies.iter().map(|p| format!("\"{p}\"")).collect();
                let _ = writeln!(out, "  authorizationPolicies: [{}]", names.join(", "));
            }
            if w.services.is_empty() {
                out.push_str("  services: {}\n");
            } else {
                out.push_str("  services:\n");
                for (key, port, target) in &w.services {
                    let _ = write!(out, "    \"{key}\":\n      {port}: {target}\n");
                }
            }
        }
        out.push_str("services:\n");
        for s in &self.services {
            let _ = write!(
                out,
                "- name: {}\n  namespace: {}\n  hostname: {}\n  vips: [\"/{}\"]\n  ports:\n",
                s.name,
                s.namespace,
                s.hostname(),
                s.vip
            );
            for (port, target) in &s.ports {
                let _ = writeln!(out, "    {port}: {target}");
            }
            if let Some((ip, port)) = s.waypoint {
                let _ = writeln!(
                    out,
                    "  waypoint: {{destination: \"/{ip}\", hboneMtlsPort: {port}}}"
                );
            }
        }
        if self.services.is_empty() {
            out = out.replace("services:\n", "services: []\n");
        }
        out.push_str("policies:\n");
        for p in &self.policies {
            out.push_str(p);
        }
        out
    }

    /// Where the config file is written.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("local.yaml")
    }

    /// Writes the config and returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.config_path();
        // Write then rename, as a ConfigMap update does, so ztunnel never reads half a file.
        let staging = self.dir.join("local.yaml.new");
        std::fs::write(&staging, self.yaml()).unwrap();
        std::fs::rename(&staging, &path).unwrap();
        path
    }

    /// Starts ztunnel on this world and waits until it reports ready.
    pub async fn start_ztunnel(&self) -> Process {
        let config = self.write();
        let args = vec![
            "--proxy-mode".to_owned(),
            "dedicated".to_owned(),
            "--local-xds-path".to_owned(),
            config.display().to_string(),
            "--node-name".to_owned(),
            NODE.to_owned(),
            "--config-poll-interval".to_owned(),
            "200ms".to_owned(),
            "--drain-timeout".to_owned(),
            "2s".to_owned(),
        ];
        let mut ztunnel = Process::spawn(
            "ztunnel",
            binary("ztunnel"),
            &args,
            &[(
                "RUST_LOG",
                "info,ztunnel=debug,mesh::state=debug".to_owned(),
            )],
        );
        ztunnel.wait_for_line("ztunnel ready").await;
        ztunnel
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
