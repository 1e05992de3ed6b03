//! The mesh on a [`Cluster`], as a DaemonSet would run it: on every node a node agent
//! (`ztunnel node-agent`) and a ztunnel in in-pod mode, both processes in the node's namespace,
//! talking over the node's ZDS socket; one CA root shared by all ztunnels so they trust each
//! other; pods enrolled and un-enrolled by rewriting the node's pods file, as an operator would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::topology::{Cluster, NodeId, Pod};
use crate::world::{Workload, World};
use crate::{Process, binary, run};

/// The workloads' config, the cluster, and the processes of each node.
pub struct Mesh {
    /// Namespaces and links.
    pub cluster: Cluster,
    /// Workloads, services and policies (the local config every ztunnel reads).
    pub world: World,
    agents: BTreeMap<NodeId, Process>,
    ztunnels: BTreeMap<NodeId, Process>,
    enrolled: BTreeMap<NodeId, BTreeSet<String>>,
    ca: (PathBuf, PathBuf),
    /// ztunnel's `--drain-timeout` for ztunnels started from now on.
    pub drain_timeout: &'static str,
    /// The agents' `--unenroll-drain` (at least `drain_timeout`) for agents started from now on.
    pub unenroll_drain: &'static str,
    /// The agents' `--rules` engine (`iptables` or `nftables`).
    pub rules: &'static str,
    /// ztunnels' `--secret-ttl` (certificate lifetime asked of the CA), when not the default.
    pub secret_ttl: Option<&'static str>,
    control_plane: Option<ControlPlane>,
    /// Waypoint processes, by pod name.
    waypoints: BTreeMap<String, Process>,
    /// CA callers besides the ztunnels: `(name, node, namespace, service account)`.
    callers: Vec<(String, String, String, String)>,
}

/// A running `controlplane serve` and how ztunnels reach it.
struct ControlPlane {
    process: Process,
    /// `https://<ip>:15012`.
    address: String,
    /// The CA's root bundle (what ztunnels get as `CA_ROOT_CA`).
    root: PathBuf,
    /// The directory of YAML it serves.
    config_dir: PathBuf,
}

/// The ZDS uid the agent gives a pod.
pub fn uid(pod: &Pod) -> String {
    format!("uid-{}", pod.name())
}

impl Mesh {
    /// An empty mesh; `test` names its namespaces and files (short: namespace names carry it).
    pub fn new(test: &str) -> Self {
        let world = World::new(test);
        let (cert, key) = (world.dir().join("ca.pem"), world.dir().join("ca-key.pem"));
        // A throwaway root for this test: ECDSA P-256, CA:true, signing certificates only.
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/O=cluster.local",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &key.display().to_string(),
                "-out",
                &cert.display().to_string(),
            ],
        );
        Self {
            cluster: Cluster::new(test),
            world,
            agents: BTreeMap::new(),
            ztunnels: BTreeMap::new(),
            enrolled: BTreeMap::new(),
            ca: (cert, key),
            drain_timeout: "2s",
            unenroll_drain: "3s",
            rules: "iptables",
            secret_ttl: None,
            control_plane: None,
            waypoints: BTreeMap::new(),
            callers: Vec::new(),
        }
    }

    /// Adds a node.
    pub fn add_node(&mut self, name: &str) -> NodeId {
        self.cluster.add_node(name)
    }

    /// Adds a pod on `node` and its workload (HBONE, service account = name) to the config.
    /// Not enrolled yet.
    pub fn add_pod(&mut self, node: NodeId, name: &str, namespace: &str) -> Pod {
        let pod = self.cluster.add_pod(node, name);
        let mut workload = Workload::new(name, namespace, pod.ip());
        workload.node = self.cluster.node(node).name().to_owned();
        self.world.workloads.push(workload);
        pod
    }

    /// Adds a pod at a fixed address (see [`Cluster::add_pod_at`]) with its workload. Add every
    /// node first: routes to the pod are made on the nodes that exist.
    pub fn add_pod_at(
        &mut self,
        node: NodeId,
        name: &str,
        namespace: &str,
        service_account: &str,
        ip: std::net::Ipv4Addr,
    ) -> Pod {
        let pod = self.cluster.add_pod_at(node, name, ip);
        let mut workload = Workload::new(name, namespace, ip);
        workload.service_account = service_account.to_owned();
        workload.node = self.cluster.node(node).name().to_owned();
        self.world.workloads.push(workload);
        pod
    }

    /// The workload of pod `name`, to edit before [`Mesh::write_config`].
    pub fn workload_mut(&mut self, name: &str) -> &mut Workload {
        self.world
            .workloads
            .iter_mut()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no workload {name:?}"))
    }

    /// Writes the local config every ztunnel reads (they pick up changes on their own).
    pub fn write_config(&self) {
        self.world.write();
    }

    fn node_name(&self, node: NodeId) -> String {
        self.cluster.node(node).name().to_owned()
    }

    fn pods_file(&self, node: NodeId) -> PathBuf {
        self.world
            .dir()
            .join(format!("pods-{}.yaml", self.node_name(node)))
    }

    /// The node's ZDS socket.
    pub fn socket(&self, node: NodeId) -> PathBuf {
        self.world
            .dir()
            .join(format!("zds-{}.sock", self.node_name(node)))
    }

    /// Adds `pod` to its node's pods file: the agent installs its rules and hands it over.
    pub fn enroll(&mut self, pod: &Pod) {
        self.enrolled
            .entry(pod.node())
            .or_default()
            .insert(pod.name().to_owned());
        self.write_pods(pod.node());
    }

    /// Removes `pod` from its node's pods file.
    pub fn unenroll(&mut self, pod: &Pod) {
        if let Some(names) = self.enrolled.get_mut(&pod.node()) {
            names.remove(pod.name());
        }
        self.write_pods(pod.node());
    }

    fn write_pods(&self, node: NodeId) {
        let mut text = String::from("pods:\n");
        for name in self.enrolled.get(&node).into_iter().flatten() {
            let pod = self.cluster.pod(name);
            let workload = self
                .world
                .workloads
                .iter()
                .find(|w| &w.name == name)
                .unwrap_or_else(|| panic!("no workload {name:?}"));
            text.push_str(&format!(
                "- uid: {uid}\n  name: {name}\n  namespace: {ns}\n  serviceAccount: {sa}\n  netns: {netns}\n",
                uid = uid(pod),
                ns = workload.namespace,
                sa = workload.service_account,
                netns = pod.netns().path().display(),
            ));
        }
        // Write then rename, so the agent never reads half a file.
        let path = self.pods_file(node);
        let staging = path.with_extension("yaml.new");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, &path).unwrap();
    }

    /// Starts the node agent of `node` and waits until it serves its socket.
    pub async fn start_agent(&mut self, node: NodeId) {
        self.write_pods(node);
        let args = vec![
            "node-agent".to_owned(),
            "--pods".to_owned(),
            self.pods_file(node).display().to_string(),
            "--ztunnel-uds-address".to_owned(),
            self.socket(node).display().to_string(),
            "--poll-interval".to_owned(),
            "100ms".to_owned(),
            "--unenroll-drain".to_owned(),
            self.unenroll_drain.to_owned(),
            "--rules".to_owned(),
            self.rules.to_owned(),
        ];
        let name = format!("agent-{}", self.node_name(node));
        let mut agent = self.spawn_in(node, &name, args);
        agent.wait_for_line("node agent ready").await;
        self.agents.insert(node, agent);
    }

    /// Starts the ztunnel of `node` and waits until it has applied the agent's snapshot.
    pub async fn start_ztunnel(&mut self, node: NodeId) {
        let mut args = vec![
            "--node-name".to_owned(),
            self.node_name(node),
            "--inpod-uds".to_owned(),
            self.socket(node).display().to_string(),
            "--config-poll-interval".to_owned(),
            "200ms".to_owned(),
            "--drain-timeout".to_owned(),
            self.drain_timeout.to_owned(),
        ];
        if let Some(ttl) = self.secret_ttl {
            args.extend(["--secret-ttl".to_owned(), ttl.to_owned()]);
        }
        match &self.control_plane {
            // Everything from the control plane: configuration over xDS, certificates from its CA.
            Some(cp) => args.extend([
                "--xds-address".to_owned(),
                cp.address.clone(),
                "--ca-address".to_owned(),
                cp.address.clone(),
                "--ca-root-ca".to_owned(),
                cp.root.display().to_string(),
                "--auth-token".to_owned(),
                self.token_file(node).display().to_string(),
            ]),
            None => {
                self.write_config();
                args.extend([
                    "--local-xds-path".to_owned(),
                    self.world.config_path().display().to_string(),
                    "--ca-cert".to_owned(),
                    self.ca.0.display().to_string(),
                    "--ca-key".to_owned(),
                    self.ca.1.display().to_string(),
                ]);
            }
        }
        let name = format!("ztunnel-{}", self.node_name(node));
        let mut ztunnel = self.spawn_in(node, &name, args);
        ztunnel
            .wait_for_line("in-pod snapshot applied; ready")
            .await;
        self.ztunnels.insert(node, ztunnel);
    }

    /// Starts upstream's ztunnel (`binary`) on `node` in its in-pod mode and waits until it has
    /// taken the agent's snapshot: against our control plane when one runs (so it and our
    /// ztunnels share one CA), else with its built-in test CA and the local config file.
    pub async fn start_upstream_ztunnel(&mut self, node: NodeId, binary: &std::path::Path) {
        let full = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.cluster.node(node).netns().name().to_owned(),
            binary.display().to_string(),
        ];
        let mut env = vec![
            ("PROXY_MODE", "shared".to_owned()),
            ("INPOD_UDS", self.socket(node).display().to_string()),
            ("NODE_NAME", self.node_name(node)),
            ("RUST_LOG", "info".to_owned()),
        ];
        match &self.control_plane {
            // Our control plane for configuration and certificates, exactly as istiod would be.
            Some(cp) => env.extend([
                ("XDS_ADDRESS", cp.address.clone()),
                ("CA_ADDRESS", cp.address.clone()),
                ("XDS_ROOT_CA", cp.root.display().to_string()),
                ("CA_ROOT_CA", cp.root.display().to_string()),
                ("AUTH_TOKEN", self.token_file(node).display().to_string()),
                ("POD_NAMESPACE", "istio-system".to_owned()),
                ("POD_NAME", format!("ztunnel-{}", self.node_name(node))),
            ]),
            None => {
                self.write_config();
                env.extend([
                    ("FAKE_CA", "true".to_owned()),
                    ("XDS_ADDRESS", String::new()),
                    (
                        "LOCAL_XDS_PATH",
                        self.world.config_path().display().to_string(),
                    ),
                ]);
            }
        }
        let name = format!("upstream-{}", self.node_name(node));
        let mut ztunnel = Process::spawn(&name, PathBuf::from("ip"), &full, &env);
        // Its own snapshot handling, not its readiness line: that one can precede the snapshot.
        ztunnel.wait_for_line("received snapshot sent").await;
        self.ztunnels.insert(node, ztunnel);
    }

    fn token_file(&self, node: NodeId) -> PathBuf {
        self.world
            .dir()
            .join(format!("token-{}", self.node_name(node)))
    }

    /// The cluster as Kubernetes objects: a Namespace per workload namespace (enrolled in
    /// ambient), a ServiceAccount and a running Pod per workload, a Service per service; then
    /// `extra` (policies and such, YAML documents).
    pub fn cluster_yaml(&self, extra: &str) -> String {
        let mut out = String::new();
        let namespaces: BTreeSet<&str> = self
            .world
            .workloads
            .iter()
            .map(|w| w.namespace.as_str())
            .collect();
        for ns in namespaces {
            out.push_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n"
            ));
        }
        let accounts: BTreeSet<(&str, &str)> = self
            .world
            .workloads
            .iter()
            .map(|w| (w.namespace.as_str(), w.service_account.as_str()))
            .collect();
        for (ns, sa) in accounts {
            out.push_str(&format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\n"
            ));
        }
        for w in &self.world.workloads {
            let opt_out = if w.protocol == "TCP" {
                ", istio.io/dataplane-mode: none"
            } else {
                ""
            };
            out.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, labels: {{app: {name}{opt_out}}}}}\n\
                 spec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: app, image: app}}]}}\n\
                 status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n",
                sa = w.service_account,
                ns = w.namespace,
                name = w.name,
                node = w.node,
                ip = w.ip,
            ));
        }
        for svc in &self.world.services {
            let ports: Vec<String> = svc
                .ports
                .iter()
                .map(|(port, target)| {
                    format!("{{name: p{port}, port: {port}, targetPort: {target}}}")
                })
                .collect();
            out.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec: {{clusterIP: {vip}, selector: {{app: {selector}}}, ports: [{ports}]}}\n---\n",
                name = svc.name,
                ns = svc.namespace,
                vip = svc.vip,
                selector = svc.name,
                ports = ports.join(", "),
            ));
        }
        out.push_str(extra);
        out
    }

    /// Writes the control plane's configuration (atomically, as a ConfigMap update would).
    pub fn write_cluster_yaml(&self, extra: &str) {
        self.write_cluster_text(&self.cluster_yaml(extra));
    }

    /// The directory the control plane watches: every `*.yaml` in it is configuration.
    pub fn config_dir(&self) -> PathBuf {
        self.world.dir().join("cluster")
    }

    /// Writes `text` as the control plane's whole configuration.
    pub fn write_cluster_text(&self, text: &str) {
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let staging = self.world.dir().join("cluster.yaml.new");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, dir.join("cluster.yaml")).unwrap();
    }

    /// Starts `controlplane serve` in `node`'s namespace, serving the cluster YAML (with
    /// `extra` documents) to every node's ztunnel: from then on ztunnels started get their
    /// configuration over xDS and their certificates from its CA. One token per node.
    pub async fn start_control_plane(&mut self, node: NodeId, extra: &str) {
        let text = self.cluster_yaml(extra);
        self.start_control_plane_with(node, &text).await;
    }

    /// [`Mesh::start_control_plane`] serving exactly `text`.
    pub async fn start_control_plane_with(&mut self, node: NodeId, text: &str) {
        self.write_cluster_text(text);
        let mut callers = String::from("callers:\n");
        let nodes: Vec<NodeId> = self.cluster.nodes().iter().map(|n| n.id()).collect();
        for n in nodes {
            let token = format!("token-of-{}-0123456789abcdef", self.node_name(n));
            std::fs::write(self.token_file(n), &token).unwrap();
            callers.push_str(&format!(
                "- {{name: ztunnel-{node}, token: {token}, node: {node}, namespace: istio-system, serviceAccount: ztunnel}}\n",
                node = self.node_name(n)
            ));
        }
        for (name, node, namespace, service_account) in &self.callers {
            let token = format!("token-of-{name}-0123456789abcdef");
            std::fs::write(self.world.dir().join(format!("token-{name}")), &token).unwrap();
            callers.push_str(&format!(
                "- {{name: {name}, token: {token}, node: {node}, namespace: {namespace}, serviceAccount: {service_account}}}\n"
            ));
        }
        let tokens = self.world.dir().join("tokens.yaml");
        std::fs::write(&tokens, callers).unwrap();
        let ip = self.cluster.node(node).gateway();
        let ca_dir = self.world.dir().join("cacerts");
        let config_dir = self.config_dir();
        let args = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.cluster.node(node).netns().name().to_owned(),
            binary("controlplane").display().to_string(),
            "serve".to_owned(),
            "--config-dir".to_owned(),
            config_dir.display().to_string(),
            "--ca-dir".to_owned(),
            ca_dir.display().to_string(),
            "--tokens".to_owned(),
            tokens.display().to_string(),
            "--listen".to_owned(),
            format!("{ip}:15012"),
            "--serving-ip".to_owned(),
            ip.to_string(),
            "--poll-interval".to_owned(),
            "200ms".to_owned(),
        ];
        let mut process = Process::spawn(
            "controlplane",
            PathBuf::from("ip"),
            &args,
            &[("RUST_LOG", "info".to_owned())],
        );
        process.wait_for_line("control plane ready").await;
        self.control_plane = Some(ControlPlane {
            process,
            address: format!("https://{ip}:15012"),
            root: ca_dir.join("root-cert.pem"),
            config_dir,
        });
    }

    /// The control plane's process.
    pub fn control_plane(&mut self) -> &mut Process {
        &mut self
            .control_plane
            .as_mut()
            .expect("no control plane started")
            .process
    }

    /// Stops the control plane with SIGKILL (a crash, not a shutdown).
    pub async fn kill_control_plane(&mut self) {
        let cp = self
            .control_plane
            .as_mut()
            .expect("no control plane started");
        cp.process.kill().await;
    }

    /// Starts the control plane again on the same directories (same root, same tokens).
    pub async fn restart_control_plane(&mut self, node: NodeId) {
        let cp = self.control_plane.take().expect("no control plane started");
        let extra = std::fs::read_to_string(cp.config_dir.join("cluster.yaml")).unwrap();
        drop(cp);
        // The generated part is rewritten identically; keep only what the test added.
        let generated = self.cluster_yaml("");
        let extra = extra
            .strip_prefix(generated.as_str())
            .unwrap_or("")
            .to_owned();
        self.start_control_plane(node, &extra).await;
    }

    /// Starts the agent, then ztunnel, of every node.
    pub async fn start(&mut self) {
        let nodes: Vec<NodeId> = self.cluster.nodes().iter().map(|n| n.id()).collect();
        for node in nodes {
            self.start_agent(node).await;
            self.start_ztunnel(node).await;
        }
    }

    fn spawn_in(&self, node: NodeId, name: &str, args: Vec<String>) -> Process {
        let mut full = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.cluster.node(node).netns().name().to_owned(),
            binary("ztunnel").display().to_string(),
        ];
        full.extend(args);
        Process::spawn(
            name,
            PathBuf::from("ip"),
            &full,
            &[(
                "RUST_LOG",
                "info,ztunnel=debug,mesh::state=debug".to_owned(),
            )],
        )
    }

    /// Lets the pod `pod` (`namespace`/`service_account`) ask the CA for its own certificate
    /// with a token of its own, as a waypoint does. Call before starting the control plane.
    pub fn add_ca_caller(&mut self, pod: &Pod, namespace: &str, service_account: &str) {
        let node = self.node_name(pod.node());
        self.callers.push((
            pod.name().to_owned(),
            node,
            namespace.to_owned(),
            service_account.to_owned(),
        ));
    }

    /// Starts the `waypoint` binary inside `pod`'s network namespace for Gateway `gateway`
    /// (in `namespace`, identity `service_account`), against the running control plane, and
    /// waits until it serves. The pod must have been given a CA token with
    /// [`Mesh::add_ca_caller`].
    pub async fn start_waypoint(
        &mut self,
        pod: &Pod,
        namespace: &str,
        service_account: &str,
        gateway: &str,
    ) {
        self.start_waypoint_with(pod, namespace, service_account, gateway, &[])
            .await;
    }

    /// [`Mesh::start_waypoint`] with more environment variables for the waypoint.
    pub async fn start_waypoint_with(
        &mut self,
        pod: &Pod,
        namespace: &str,
        service_account: &str,
        gateway: &str,
        extra_env: &[(&str, String)],
    ) {
        let cp = self
            .control_plane
            .as_ref()
            .expect("no control plane started");
        let token = self.world.dir().join(format!("token-{}", pod.name()));
        let args = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            pod.netns().name().to_owned(),
            binary("waypoint").display().to_string(),
            "--drain-timeout".to_owned(),
            self.drain_timeout.to_owned(),
        ];
        let mut env = vec![
            ("RUST_LOG", "info,waypoint=debug".to_owned()),
            ("XDS_ADDRESS", cp.address.clone()),
            ("CA_ROOT_CA", cp.root.display().to_string()),
            ("AUTH_TOKEN", token.display().to_string()),
            ("POD_NAMESPACE", namespace.to_owned()),
            ("POD_NAME", pod.name().to_owned()),
            ("SERVICE_ACCOUNT", service_account.to_owned()),
            ("GATEWAY_NAME", gateway.to_owned()),
            ("INSTANCE_IP", pod.ip().to_string()),
            ("NODE_NAME", self.node_name(pod.node())),
        ];
        env.extend(extra_env.iter().cloned());
        let name = format!("waypoint-{}", pod.name());
        let mut process = Process::spawn(&name, PathBuf::from("ip"), &args, &env);
        process.wait_for_line("waypoint ready").await;
        self.waypoints.insert(pod.name().to_owned(), process);
    }

    /// The waypoint running in pod `name`.
    pub fn waypoint(&mut self, name: &str) -> &mut Process {
        self.waypoints
            .get_mut(name)
            .unwrap_or_else(|| panic!("no waypoint in pod {name}"))
    }

    /// Stops the waypoint in pod `name` and returns its process (to read its log).
    pub fn take_waypoint(&mut self, name: &str) -> Process {
        self.waypoints
            .remove(name)
            .unwrap_or_else(|| panic!("no waypoint in pod {name}"))
    }

    /// The ztunnel of `node`.
    pub fn ztunnel(&mut self, node: NodeId) -> &mut Process {
        self.ztunnels
            .get_mut(&node)
            .unwrap_or_else(|| panic!("no ztunnel on node {}", node.number()))
    }

    /// The node agent of `node`.
    pub fn agent(&mut self, node: NodeId) -> &mut Process {
        self.agents
            .get_mut(&node)
            .unwrap_or_else(|| panic!("no agent on node {}", node.number()))
    }

    /// Stops the ztunnel of `node` with SIGTERM and returns it (exited).
    pub async fn stop_ztunnel(&mut self, node: NodeId) -> Process {
        let mut ztunnel = self.ztunnels.remove(&node).unwrap();
        let status = ztunnel.terminate().await;
        assert!(status.success(), "ztunnel exited with {status}");
        ztunnel
    }

    /// Stops the agent of `node` with SIGTERM and returns it (exited).
    pub async fn stop_agent(&mut self, node: NodeId) -> Process {
        let mut agent = self.agents.remove(&node).unwrap();
        let status = agent.terminate().await;
        assert!(status.success(), "node agent exited with {status}");
        agent
    }

    /// Waits until `pod`'s ztunnel has started its proxy, after an [`Mesh::enroll`].
    pub async fn wait_enrolled(&mut self, pod: &Pod) {
        let needle = format!("pod proxy started uid={}", uid(pod));
        self.ztunnel(pod.node()).wait_for_line(&needle).await;
    }

    /// Waits until the agent has taken `pod` out of the mesh, after an [`Mesh::unenroll`].
    pub async fn wait_unenrolled(&mut self, pod: &Pod) {
        let needle = format!("pod un-enrolled uid={}", uid(pod));
        self.agent(pod.node()).wait_for_line(&needle).await;
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Processes first (killed on drop), then the namespaces they ran in.
        self.waypoints.clear();
        self.ztunnels.clear();
        self.agents.clear();
        self.control_plane = None;
    }
}
