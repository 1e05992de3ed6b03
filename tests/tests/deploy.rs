//! Drift test: the Kubernetes manifests under `deploy/` against the binaries they run.
//!
//! Every YAML document under `deploy/` is read; the containers whose image is `ztunnel` or
//! `controlplane` (by the image's last path segment, so a registry and tag change nothing) are
//! ours. For each, from the binary itself:
//!
//! - every `args` word is a subcommand the binary has (its `--help` exits 0) or a flag its
//!   `--help` lists, with a value exactly when the flag takes one;
//! - every env var is one `--help` lists (`[env: NAME=]`), or one of [`ACCEPTED_ELSEWHERE`],
//!   each with its reason (and no longer listed there once `--help` shows it);
//! - every path the container uses (flag and env values, and the defaults of the paths the
//!   binary opens) is absolute and lies on a volume of the right kind: the ZDS socket on the
//!   host directory `/var/run/ztunnel` (shared with istio-cni or our node agent), the root
//!   certificate on the `istio-ca-root-cert` ConfigMap, the token on a token volume, the
//!   control plane's directories on their ConfigMap and Secrets;
//! - ports and probes: ztunnel may only declare what upstream serves (15020 metrics, 15021
//!   readiness), never the loopback-only admin port 15000; the control plane exactly its
//!   `--listen` port, which the Service and ztunnel's `XDS_ADDRESS`/`CA_ADDRESS` reach and its
//!   serving certificate names;
//! - termination grace periods cover the drain deadlines.
//!
//! Then, as root in a private network namespace, the installs run as manifested: paths are
//! remapped into a scratch directory (one per volume source, so two containers sharing a host
//! directory share it here too), the downward API is filled in, and the control plane's DNS
//! name is dialled on loopback with the manifest's name verified (`ALT_*_HOSTNAME`). The
//! standalone install: control plane, node agent and ztunnel, until ztunnel has its snapshot
//! over ZDS and a certificate from the CA. With Istio: ztunnel against our control plane
//! standing in for istiod and our node agent standing in for istio-cni. Both then check which of 15020/15021/15000 ztunnel really serves,
//! and that the manifest declares exactly those.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{Process, WAIT, binary, in_private_netns};
use serde::Deserialize;
use serde_yaml_ng::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Env vars a container may set that its binary's `--help` does not list, each with why.
const ACCEPTED_ELSEWHERE: &[Accepted] = &[
    Accepted {
        role: Role::Proxy,
        name: "ISTIO_META_",
        prefix: true,
        reason: "forwarded, prefix stripped, as xDS node metadata (ztunnel main.rs `xds_node`), \
                 as upstream does (xds.md §1.3); e.g. ENABLE_HBONE",
    },
    Accepted {
        role: Role::Proxy,
        name: "SERVICE_ACCOUNT",
        prefix: false,
        reason: "upstream's ztunnel uses it for its own identity (self-proxy listener); ours has \
                 none and ignores it",
    },
    Accepted {
        role: Role::Proxy,
        name: "INPOD_ENABLED",
        prefix: false,
        reason: "set by upstream's chart, read by no ztunnel: a hidden flag of ours, ignored",
    },
    Accepted {
        role: Role::NodeAgent,
        name: "RUST_LOG",
        prefix: false,
        reason: "the node agent's log filter, read by ztunnel main.rs (not a `node-agent` flag)",
    },
    Accepted {
        role: Role::ControlPlane,
        name: "RUST_LOG",
        prefix: false,
        reason: "the log filter, read by tracing's EnvFilter (not a flag)",
    },
];

/// The ports upstream's ztunnel serves in its own pod (telemetry.md §c.1), by number.
const METRICS_PORT: u16 = 15020;
const METRICS_PATHS: [&str; 2] = ["/metrics", "/stats/prometheus"];
const READINESS_PORT: u16 = 15021;
const READINESS_PATH: &str = "/healthz/ready";
/// Loopback only: never to be exposed.
const ADMIN_PORT: u16 = 15000;

/// Where istio-cni and ztunnel meet (zds.md §1).
const ZDS_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// The ConfigMap istiod publishes the mesh root in, and its key.
const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
const ROOT_KEY: &str = "root-cert.pem";

/// The node every live run pretends to be on.
const NODE: &str = "node1";
const TOKEN: &str = "deploy-test-token-0123456789abcdef";

/// A workload on [`NODE`] in the example's ambient namespace, added to the control plane's
/// configuration in the live runs: with no Address resource at all, ztunnel waits for its
/// first configuration forever (empty xDS deltas are not applied), and a local workload also
/// makes ztunnel fetch a certificate, which proves the CA path.
const TEST_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: deploy-test, namespace: demo, uid: uid-deploy-test}
spec: {serviceAccountName: default, nodeName: node1, containers: [{name: app, image: app}]}
status: {podIP: 192.0.2.10, phase: Running, conditions: [{type: Ready, status: \"True\"}]}
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `ztunnel` (the proxy).
    Proxy,
    /// `ztunnel node-agent`.
    NodeAgent,
    /// `controlplane serve`.
    ControlPlane,
}

struct Accepted {
    role: Role,
    name: &'static str,
    prefix: bool,
    reason: &'static str,
}

impl Accepted {
    fn matches(&self, role: Role, name: &str) -> bool {
        self.role == role
            && if self.prefix {
                name.starts_with(self.name)
            } else {
                name == self.name
            }
    }
}

// ---------------------------------------------------------------------------------------------
// The manifests.

fn deploy_dir() -> PathBuf {
    // Overridable so the test itself can be checked against a broken copy.
    std::env::var_os("DEPLOY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"))
}

struct Document {
    file: PathBuf,
    value: Value,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn parse_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: document {}: {e}", i + 1))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every document of every YAML file under `deploy/`.
fn load_all() -> Vec<Document> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(
        !files.is_empty(),
        "no YAML under {}",
        deploy_dir().display()
    );
    files
        .into_iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            parse_documents(&text, &file.display().to_string())
                .into_iter()
                .map(move |value| Document {
                    file: file.clone(),
                    value,
                })
        })
        .collect()
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn namespace(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or("")
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// A container of ours, in its workload.
struct Ours<'a> {
    doc: &'a Document,
    role: Role,
    container: &'a Value,
}

impl Ours<'_> {
    fn workload(&self) -> &Value {
        &self.doc.value
    }

    fn pod(&self) -> &Value {
        &self.doc.value["spec"]["template"]["spec"]
    }

    fn namespace(&self) -> &str {
        namespace(self.workload())
    }

    fn what(&self) -> String {
        format!(
            "{} {}/{} container {} ({})",
            kind(self.workload()),
            self.namespace(),
            name(self.workload()),
            text(&self.container["name"], "container name"),
            self.doc.file.display()
        )
    }

    fn args(&self) -> Vec<String> {
        seq(&self.container["args"])
            .iter()
            .map(|a| match a {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("{}: args: {other:?} is not a scalar", self.what()),
            })
            .collect()
    }

    fn env_names(&self) -> Vec<String> {
        seq(&self.container["env"])
            .iter()
            .map(|e| text(&e["name"], "env name").to_owned())
            .collect()
    }

    /// A literal env value (`value:`), if the container sets one.
    fn env_value(&self, wanted: &str) -> Option<String> {
        seq(&self.container["env"])
            .iter()
            .find(|e| e["name"].as_str() == Some(wanted))
            .and_then(|e| e["value"].as_str().map(str::to_owned))
    }

    fn volume(&self, volume_name: &str) -> &Value {
        seq(&self.pod()["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(volume_name))
            .unwrap_or_else(|| panic!("{}: no volume named {volume_name}", self.what()))
    }

    /// The mount `path` lies on (longest mount path that is `path` or a parent of it), its
    /// volume, and the rest of the path below the mount.
    fn mount_for(&self, path: &str) -> Option<(&Value, &Value, String)> {
        seq(&self.container["volumeMounts"])
            .iter()
            .filter_map(|m| {
                let mount = text(&m["mountPath"], "mountPath").trim_end_matches('/');
                let rest = if path == mount {
                    Some(String::new())
                } else {
                    path.strip_prefix(&format!("{mount}/")).map(str::to_owned)
                }?;
                Some((mount.len(), m, rest))
            })
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, m, rest)| {
                let volume = self.volume(text(&m["name"], "mount name"));
                (m, volume, rest)
            })
    }

    /// A port reference (number, or a container port's name) as a number.
    fn port_number(&self, port: &Value) -> u16 {
        match port {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => seq(&self.container["ports"])
                .iter()
                .find(|p| p["name"].as_str() == Some(s.as_str()))
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{}: port {port:?} resolves to no port", self.what()))
    }

    fn container_ports(&self) -> Vec<(u16, String)> {
        seq(&self.container["ports"])
            .iter()
            .map(|p| {
                (
                    self.port_number(&p["containerPort"]),
                    p["name"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Every probe: (kind of probe, handler: `httpGet`/`tcpSocket`/..., port, path).
    fn probes(&self) -> Vec<(String, String, Option<u16>, Option<String>)> {
        let mut out = Vec::new();
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let Some(Value::Mapping(p)) = self.container.get(probe) else {
                continue;
            };
            for (handler, body) in p {
                let handler = text(handler, "probe field");
                if matches!(handler, "httpGet" | "tcpSocket" | "grpc" | "exec") {
                    let port = body.get("port").map(|port| self.port_number(port));
                    let path = body["path"].as_str().map(str::to_owned);
                    out.push((probe.to_owned(), handler.to_owned(), port, path));
                }
            }
        }
        out
    }

    fn grace_period(&self) -> Duration {
        Duration::from_secs(
            self.pod()["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        )
    }
}

fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

/// Our containers, in every workload under `deploy/`.
fn ours(docs: &[Document]) -> Vec<Ours<'_>> {
    let mut out = Vec::new();
    for doc in docs {
        if !matches!(
            kind(&doc.value),
            "DaemonSet" | "Deployment" | "StatefulSet" | "ReplicaSet" | "Job"
        ) {
            continue;
        }
        let pod = &doc.value["spec"]["template"]["spec"];
        for container in seq(&pod["containers"])
            .iter()
            .chain(seq(&pod["initContainers"]))
        {
            let image = image_name(container["image"].as_str().unwrap_or(""));
            let first_arg = seq(&container["args"]).first().and_then(Value::as_str);
            let role = match (image, first_arg) {
                ("ztunnel", Some("node-agent")) => Role::NodeAgent,
                ("ztunnel", _) => Role::Proxy,
                ("controlplane", _) => Role::ControlPlane,
                _ => continue,
            };
            if container.get("command").is_some() {
                panic!(
                    "{} {}: `command` replaces the image's entrypoint; use `args`",
                    kind(&doc.value),
                    name(&doc.value)
                );
            }
            out.push(Ours {
                doc,
                role,
                container,
            });
        }
    }
    out
}

fn one<'a, 'd>(all: &'a [Ours<'d>], role: Role, ns: &str) -> &'a Ours<'d> {
    let found: Vec<&Ours<'_>> = all
        .iter()
        .filter(|o| o.role == role && o.namespace() == ns)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {role:?} container in namespace {ns} under deploy/"
    );
    found[0]
}

// ---------------------------------------------------------------------------------------------
// What the binaries say about themselves.

#[derive(Debug, Clone)]
struct Flag {
    takes_value: bool,
    env: Option<String>,
    default: Option<String>,
}

#[derive(Debug, Clone)]
struct Help {
    flags: BTreeMap<String, Flag>,
}

impl Help {
    fn envs(&self) -> BTreeSet<&str> {
        self.flags
            .values()
            .filter_map(|f| f.env.as_deref())
            .collect()
    }

    fn by_env(&self, env: &str) -> (&str, &Flag) {
        self.flags
            .iter()
            .find(|(_, f)| f.env.as_deref() == Some(env))
            .map(|(n, f)| (n.as_str(), f))
            .unwrap_or_else(|| panic!("no flag reads {env}"))
    }
}

/// `<binary> <words...> --help`, parsed; `Err(message)` if the binary refuses the words.
fn help(bin: &str, words: &[String]) -> Result<Help, String> {
    let output = std::process::Command::new(binary(bin))
        .args(words)
        .arg("--help")
        // So `[env: NAME=]` shows no value of the test's own environment.
        .env_clear()
        .output()
        .unwrap();
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(err.lines().next().unwrap_or("").to_owned());
    }
    Ok(parse_help(&String::from_utf8_lossy(&output.stdout)))
}

/// clap's help: an option block starts at an indented line beginning with `-`; within it,
/// `[env: NAME=]` and `[default: VALUE]` (both the long and the short layout).
fn parse_help(help: &str) -> Help {
    let mut flags = BTreeMap::new();
    let mut current: Option<(String, bool, String)> = None;
    let mut finish = |current: Option<(String, bool, String)>| {
        if let Some((name, takes_value, block)) = current {
            let env = block
                .split("[env: ")
                .nth(1)
                .and_then(|rest| rest.split('=').next())
                .map(str::to_owned);
            let default = block
                .split("[default: ")
                .nth(1)
                // To the end of its line, less the closing bracket (a default may hold
                // brackets itself: `[::]:15020`), before any `[possible values: ...]`.
                .map(|rest| {
                    let line = rest.lines().next().unwrap_or("");
                    let line = line.split("] [").next().unwrap_or(line);
                    line.trim_end().trim_end_matches(']').to_owned()
                });
            flags.insert(
                name,
                Flag {
                    takes_value,
                    env,
                    default,
                },
            );
        }
    };
    for line in help.lines() {
        let indented = line.starts_with(' ');
        let trimmed = line.trim_start();
        // `--name` or `-n, --name`; not a `- value: ...` line of a "Possible values" list.
        let header = trimmed.starts_with("--")
            || (trimmed.starts_with('-')
                && trimmed[1..].starts_with(|c: char| c.is_ascii_alphanumeric()));
        if indented && header {
            finish(current.take());
            let mut tokens = trimmed.split_whitespace();
            let mut name = None;
            let mut takes_value = false;
            while let Some(token) = tokens.next() {
                if let Some(long) = token.strip_prefix("--") {
                    name = Some(long.trim_end_matches(',').to_owned());
                    takes_value = tokens.next().is_some_and(|t| t.starts_with('<'));
                    break;
                }
            }
            if let Some(name) = name {
                current = Some((name, takes_value, line.to_owned()));
            }
        } else if !indented && !trimmed.is_empty() {
            finish(current.take());
        } else if let Some((_, _, block)) = current.as_mut() {
            block.push('\n');
            block.push_str(line);
        }
    }
    finish(current.take());
    Help { flags }
}

/// A container's command line checked against its binary: the subcommand words, the flags it
/// sets (name -> values) and the help of that subcommand.
struct CommandLine {
    words: Vec<String>,
    flags: BTreeMap<String, Vec<String>>,
    help: Help,
}

impl CommandLine {
    /// The value the binary uses for flag `name`: the manifest's (arg, then env), else the
    /// default.
    fn effective(&self, ours: &Ours<'_>, name: &str) -> Option<String> {
        if let Some(values) = self.flags.get(name) {
            return values.last().cloned();
        }
        let flag = self.help.flags.get(name)?;
        if let Some(value) = flag.env.as_deref().and_then(|env| ours.env_value(env)) {
            return Some(value);
        }
        flag.default.clone()
    }

    fn effective_all(&self, ours: &Ours<'_>, name: &str) -> Vec<String> {
        match self.flags.get(name) {
            Some(values) => values.clone(),
            None => self
                .effective(ours, name)
                .map(|d| d.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        }
    }
}

fn bin_of(role: Role) -> &'static str {
    match role {
        Role::Proxy | Role::NodeAgent => "ztunnel",
        Role::ControlPlane => "controlplane",
    }
}

/// `bin` and its subcommand words, as a person would type them.
fn command_name(bin: &str, words: &[String]) -> String {
    std::iter::once(bin.to_owned())
        .chain(words.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_line(ours: &Ours<'_>, errors: &mut Vec<String>) -> CommandLine {
    let bin = bin_of(ours.role);
    let args = ours.args();
    let mut words: Vec<String> = Vec::new();
    let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut help_now = help(bin, &[]).unwrap();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if let Some(flag) = arg.strip_prefix("--") {
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (flag, None),
            };
            let Some(spec) = help_now.flags.get(flag) else {
                errors.push(format!(
                    "{}: `--{flag}` is not a flag of `{}` (see its --help)",
                    ours.what(),
                    command_name(bin, &words)
                ));
                // Its value, if it has one, is not a subcommand either.
                if inline.is_none() && args.get(i).is_some_and(|a| !a.starts_with("--")) {
                    i += 1;
                }
                continue;
            };
            let value = match (spec.takes_value, inline) {
                (true, Some(v)) => v,
                (true, None) if i < args.len() => {
                    i += 1;
                    args[i - 1].clone()
                }
                (true, None) => {
                    errors.push(format!("{}: `--{flag}` needs a value", ours.what()));
                    continue;
                }
                (false, Some(_)) => {
                    errors.push(format!("{}: `--{flag}` takes no value", ours.what()));
                    continue;
                }
                (false, None) => "true".to_owned(),
            };
            flags.entry(flag.to_owned()).or_default().push(value);
        } else if flags.is_empty() {
            let mut next = words.clone();
            next.push(arg.clone());
            match help(bin, &next) {
                Ok(h) => {
                    help_now = h;
                    words = next;
                }
                Err(message) => errors.push(format!(
                    "{}: `{bin}` refuses the argument {arg:?}: {message}",
                    ours.what()
                )),
            }
        } else {
            errors.push(format!(
                "{}: positional argument {arg:?} after flags",
                ours.what()
            ));
        }
    }
    CommandLine {
        words,
        flags,
        help: help_now,
    }
}

fn parse_duration(value: &str) -> Duration {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration {value:?}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => panic!("duration {value:?}: unknown unit"),
    }
}

// ---------------------------------------------------------------------------------------------
// The static checks.

/// What a ztunnel container declares about the HTTP ports upstream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Declared {
    metrics: bool,
    readiness: bool,
}

fn check_env(ours: &Ours<'_>, cmd: &CommandLine, errors: &mut Vec<String>) {
    let envs = cmd.help.envs();
    for env in ours.env_names() {
        let accepted = ACCEPTED_ELSEWHERE
            .iter()
            .find(|a| a.matches(ours.role, &env));
        match (envs.contains(env.as_str()), accepted) {
            (true, Some(a)) => errors.push(format!(
                "{}: {env} is now a flag's env var of `{}`; drop it from ACCEPTED_ELSEWHERE ({})",
                ours.what(),
                bin_of(ours.role),
                a.reason
            )),
            (true, None) | (false, Some(_)) => {}
            (false, None) => errors.push(format!(
                "{}: env {env} is read by no flag of `{}` and is not in ACCEPTED_ELSEWHERE \
                 (typo, or an upstream variable we do not read?)",
                ours.what(),
                command_name(bin_of(ours.role), &cmd.words)
            )),
        }
    }
}

/// `path` is absolute (or made so by the container's `workingDir`) and lies on a mount; returns
/// the mount's volume and the rest of the path below the mount.
fn on_volume<'a>(
    ours: &'a Ours<'_>,
    what: &str,
    path: &str,
    errors: &mut Vec<String>,
) -> Option<(&'a Value, String)> {
    let absolute = if path.starts_with('/') {
        path.to_owned()
    } else if let Some(dir) = ours.container["workingDir"].as_str() {
        format!(
            "{}/{}",
            dir.trim_end_matches('/'),
            path.trim_start_matches("./")
        )
    } else {
        errors.push(format!(
            "{}: {what} is {path:?}, relative to a working directory the manifest does not set \
             (the image's); set it to an absolute path",
            ours.what()
        ));
        return None;
    };
    match ours.mount_for(&absolute) {
        Some((_, volume, rest)) => Some((volume, rest)),
        None => {
            errors.push(format!(
                "{}: {what} {absolute} is on no volume mount (the image's own filesystem)",
                ours.what()
            ));
            None
        }
    }
}

/// The ZDS socket: on the host directory both sides mount.
fn check_socket(ours: &Ours<'_>, what: &str, path: &str, errors: &mut Vec<String>) {
    if let Some((volume, rest)) = on_volume(ours, what, path, errors) {
        match volume["hostPath"]["path"].as_str() {
            Some(host) => {
                let on_host = format!("{}/{rest}", host.trim_end_matches('/'));
                if on_host != ZDS_SOCKET {
                    errors.push(format!(
                        "{}: {what} is {on_host} on the host; istio-cni and ztunnel meet at {ZDS_SOCKET}",
                        ours.what()
                    ));
                }
            }
            None => errors.push(format!(
                "{}: {what} {path} is not on a hostPath volume: the node agent would never see it",
                ours.what()
            )),
        }
    }
}

fn check_proxy(
    ours: &Ours<'_>,
    cmd: &CommandLine,
    docs: &[Document],
    errors: &mut Vec<String>,
) -> Declared {
    // The ZDS socket.
    if let Some(socket) = cmd.effective(ours, "inpod-uds") {
        check_socket(ours, "INPOD_UDS", &socket, errors);
    }
    // The CA's and control plane's roots.
    if cmd.effective(ours, "ca-address").is_some() {
        match cmd.effective(ours, "ca-root-ca") {
            Some(root) if root.contains("-----BEGIN") => {}
            Some(root) => {
                if let Some((volume, rest)) = on_volume(ours, "CA_ROOT_CA", &root, errors) {
                    let cm = volume["configMap"]["name"].as_str();
                    if cm != Some(ROOT_CONFIGMAP) || rest != ROOT_KEY {
                        errors.push(format!(
                            "{}: CA_ROOT_CA {root} should be key {ROOT_KEY} of ConfigMap {ROOT_CONFIGMAP}, \
                             is {rest:?} of {volume:?}",
                            ours.what()
                        ));
                    }
                    if let Some(map) = docs.iter().find(|d| {
                        kind(&d.value) == "ConfigMap"
                            && name(&d.value) == ROOT_CONFIGMAP
                            && namespace(&d.value) == ours.namespace()
                    }) && map.value["data"].get(ROOT_KEY).is_none()
                    {
                        errors.push(format!("ConfigMap {ROOT_CONFIGMAP} has no {ROOT_KEY}"));
                    }
                }
            }
            None => errors.push(format!("{}: CA_ROOT_CA has no value", ours.what())),
        }
        // The token: its default (`./var/run/secrets/tokens/istio-token`) is only in the flag's
        // description, and relative, so the manifest must set it.
        match cmd.effective(ours, "auth-token") {
            None => errors.push(format!(
                "{}: AUTH_TOKEN is not set; the binary's default is relative to the working \
                 directory (./var/run/secrets/tokens/istio-token): set it to an absolute path",
                ours.what()
            )),
            Some(token) => {
                if let Some((volume, rest)) = on_volume(ours, "AUTH_TOKEN", &token, errors) {
                    let ok = if let Some(projected) = volume.get("projected") {
                        seq(&projected["sources"]).iter().any(|s| {
                            s["serviceAccountToken"]["path"].as_str() == Some(rest.as_str())
                                && s["serviceAccountToken"]["audience"].as_str() == Some("istio-ca")
                        })
                    } else {
                        volume.get("hostPath").is_some() || volume.get("secret").is_some()
                    };
                    if !ok {
                        errors.push(format!(
                            "{}: AUTH_TOKEN {token} is not a token file of its volume (projected \
                             token `{rest}` with audience istio-ca, a hostPath or a Secret)",
                            ours.what()
                        ));
                    }
                }
            }
        }
    }
    // Where the binary serves them, when it says so (`--stats-addr` and friends): upstream's
    // ports, and the admin API on loopback only.
    for (flag, port) in [
        ("stats-addr", METRICS_PORT),
        ("readiness-addr", READINESS_PORT),
        ("admin-addr", ADMIN_PORT),
    ] {
        let Some(addr) = cmd.effective(ours, flag) else {
            continue;
        };
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("{}: --{flag} {addr}: {e}", ours.what()));
        if addr.port() != port {
            errors.push(format!(
                "{}: --{flag} is {addr}; upstream (and this manifest) serve it on {port}",
                ours.what()
            ));
        }
        if flag == "admin-addr" && !addr.ip().is_loopback() {
            errors.push(format!(
                "{}: --admin-addr {addr}: the admin API can stop the proxy; loopback only",
                ours.what()
            ));
        }
    }
    // Ports and probes.
    let mut declared = Declared {
        metrics: false,
        readiness: false,
    };
    for (port, port_name) in ours.container_ports() {
        match port {
            METRICS_PORT if port_name == "http-metrics" => declared.metrics = true,
            READINESS_PORT if port_name == "readiness" => {}
            ADMIN_PORT => errors.push(format!(
                "{}: containerPort {ADMIN_PORT} is the admin port, bound to loopback only: never expose it",
                ours.what()
            )),
            _ => errors.push(format!(
                "{}: containerPort {port} ({port_name:?}) is not a port ztunnel serves in its own \
                 pod (15020 http-metrics, 15021 readiness)",
                ours.what()
            )),
        }
    }
    for (probe, handler, port, path) in ours.probes() {
        if handler == "httpGet"
            && port == Some(READINESS_PORT)
            && path.as_deref() == Some(READINESS_PATH)
        {
            if probe == "readinessProbe" {
                declared.readiness = true;
            }
        } else {
            errors.push(format!(
                "{}: {probe} {handler} {port:?} {path:?}: ztunnel's probe is httpGet :{READINESS_PORT}{READINESS_PATH}",
                ours.what()
            ));
        }
    }
    let annotations = &ours.workload()["spec"]["template"]["metadata"]["annotations"];
    if let Some(port) = annotations.get("prometheus.io/port") {
        if port.as_str() != Some("15020") {
            errors.push(format!(
                "{}: prometheus.io/port {port:?}: metrics are on \"15020\"",
                ours.what()
            ));
        }
        declared.metrics = true;
    }
    if let Some(path) = annotations.get("prometheus.io/path")
        && !METRICS_PATHS.contains(&path.as_str().unwrap_or(""))
    {
        errors.push(format!(
            "{}: prometheus.io/path {path:?} is not served",
            ours.what()
        ));
    }
    // Grace period covers the drain.
    let drain = parse_duration(&cmd.effective(ours, "drain-timeout").unwrap());
    if ours.grace_period() < drain {
        errors.push(format!(
            "{}: terminationGracePeriodSeconds {:?} is shorter than the drain deadline {drain:?}",
            ours.what(),
            ours.grace_period()
        ));
    }
    declared
}

fn check_node_agent(ours: &Ours<'_>, cmd: &CommandLine, errors: &mut Vec<String>) {
    match cmd.effective(ours, "pods") {
        Some(pods) => {
            on_volume(ours, "--pods", &pods, errors);
        }
        None => errors.push(format!("{}: --pods is required", ours.what())),
    }
    if let Some(socket) = cmd.effective(ours, "ztunnel-uds-address") {
        check_socket(ours, "--ztunnel-uds-address", &socket, errors);
    }
    if !ours.container_ports().is_empty() || !ours.probes().is_empty() {
        errors.push(format!(
            "{}: the node agent serves no port; it declares some",
            ours.what()
        ));
    }
    let drain = parse_duration(&cmd.effective(ours, "unenroll-drain").unwrap());
    if ours.grace_period() <= drain {
        errors.push(format!(
            "{}: terminationGracePeriodSeconds {:?} must exceed --unenroll-drain {drain:?}: a \
             stopping agent finishes pending removals first",
            ours.what(),
            ours.grace_period()
        ));
    }
}

fn listen_port(ours: &Ours<'_>, cmd: &CommandLine) -> u16 {
    let listen = cmd.effective(ours, "listen").unwrap();
    listen
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{}: --listen {listen}: {e}", ours.what()))
        .port()
}

fn check_control_plane(
    ours: &Ours<'_>,
    cmd: &CommandLine,
    docs: &[Document],
    errors: &mut Vec<String>,
) {
    for (flag, source) in [
        ("config-dir", "configMap"),
        ("ca-dir", "secret"),
        ("tokens", "secret"),
    ] {
        let Some(path) = cmd.effective(ours, flag) else {
            errors.push(format!("{}: --{flag} is not set", ours.what()));
            continue;
        };
        if let Some((volume, _)) = on_volume(ours, &format!("--{flag}"), &path, errors)
            && volume.get(source).is_none()
        {
            errors.push(format!(
                "{}: --{flag} {path} should be on a {source} volume",
                ours.what()
            ));
        }
    }
    let port = listen_port(ours, cmd);
    let declared: Vec<u16> = ours.container_ports().iter().map(|(p, _)| *p).collect();
    if declared != [port] {
        errors.push(format!(
            "{}: container ports {declared:?}; the control plane listens on {port} only",
            ours.what()
        ));
    }
    for (probe, handler, probe_port, _) in ours.probes() {
        if handler != "tcpSocket" || probe_port != Some(port) {
            errors.push(format!(
                "{}: {probe} {handler} {probe_port:?}: the control plane serves TLS on {port} \
                 only (no HTTP health endpoint): use tcpSocket {port}",
                ours.what()
            ));
        }
    }
    // The Service in front of it reaches that port.
    let labels = &ours.workload()["spec"]["template"]["metadata"]["labels"];
    for svc in docs
        .iter()
        .filter(|d| kind(&d.value) == "Service" && namespace(&d.value) == ours.namespace())
    {
        let selector = svc.value["spec"]["selector"].as_mapping();
        let selects = selector.is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)));
        if !selects {
            continue;
        }
        for p in seq(&svc.value["spec"]["ports"]) {
            let target = p.get("targetPort").unwrap_or(&p["port"]);
            if ours.port_number(target) != port {
                errors.push(format!(
                    "Service {}/{}: port {:?} targets {target:?}, not the control plane's {port}",
                    ours.namespace(),
                    name(&svc.value),
                    p["port"]
                ));
            }
        }
    }
}

/// ztunnel's `XDS_ADDRESS`/`CA_ADDRESS` reach a control plane under `deploy/` through its
/// Service, and that control plane's serving certificate names the host dialled. Addresses of
/// istiod are taken as istiod's.
fn check_addresses(
    proxy: &Ours<'_>,
    proxy_cmd: &CommandLine,
    planes: &[(&Ours<'_>, CommandLine)],
    docs: &[Document],
    errors: &mut Vec<String>,
) {
    for flag in ["xds-address", "ca-address"] {
        let Some(address) = proxy_cmd.effective(proxy, flag) else {
            continue;
        };
        let (host, port) = host_port(&address);
        let mut labels = host.split('.');
        let (svc_name, svc_ns) = (labels.next().unwrap(), labels.next().unwrap_or(""));
        if svc_name == "istiod" {
            continue;
        }
        let Some(svc) = docs.iter().find(|d| {
            kind(&d.value) == "Service"
                && name(&d.value) == svc_name
                && namespace(&d.value) == svc_ns
        }) else {
            errors.push(format!(
                "{}: {flag} {address}: no Service {svc_ns}/{svc_name} under deploy/",
                proxy.what()
            ));
            continue;
        };
        let svc_port = seq(&svc.value["spec"]["ports"])
            .iter()
            .find(|p| p["port"].as_u64() == Some(u64::from(port)));
        let Some(svc_port) = svc_port else {
            errors.push(format!(
                "{}: {flag} {address}: Service {svc_ns}/{svc_name} has no port {port}",
                proxy.what()
            ));
            continue;
        };
        let selector = svc.value["spec"]["selector"].as_mapping();
        let Some((plane, plane_cmd)) = planes.iter().find(|(p, _)| {
            let labels = &p.workload()["spec"]["template"]["metadata"]["labels"];
            p.namespace() == svc_ns
                && selector.is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
        }) else {
            errors.push(format!(
                "{}: {flag} {address}: Service {svc_ns}/{svc_name} selects no control plane",
                proxy.what()
            ));
            continue;
        };
        let target = svc_port.get("targetPort").unwrap_or(&svc_port["port"]);
        if plane.port_number(target) != listen_port(plane, plane_cmd) {
            errors.push(format!(
                "{}: {flag} {address} reaches port {target:?}, not the control plane's --listen",
                proxy.what()
            ));
        }
        let names = plane_cmd.effective_all(plane, "serving-name");
        if !names.iter().any(|n| n == &host) {
            errors.push(format!(
                "{}: {flag} dials {host}, which the control plane's serving certificate does not \
                 name (--serving-name {names:?}): ztunnel would refuse the handshake",
                proxy.what()
            ));
        }
    }
}

fn host_port(address: &str) -> (String, u16) {
    let bare = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
        .trim_end_matches('/');
    let (host, port) = bare
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("address {address} has no port"));
    (host.to_owned(), port.parse().unwrap())
}

/// Everything the static checks found, and what each ztunnel declares.
fn static_checks(docs: &[Document]) -> (Vec<String>, BTreeMap<String, Declared>) {
    let all = ours(docs);
    let mut errors = Vec::new();
    let mut declared = BTreeMap::new();
    let mut planes = Vec::new();
    let mut proxies = Vec::new();
    for o in &all {
        let cmd = command_line(o, &mut errors);
        check_env(o, &cmd, &mut errors);
        match o.role {
            Role::Proxy => {
                declared.insert(
                    o.namespace().to_owned(),
                    check_proxy(o, &cmd, docs, &mut errors),
                );
                proxies.push((o, cmd));
            }
            Role::NodeAgent => check_node_agent(o, &cmd, &mut errors),
            Role::ControlPlane => {
                check_control_plane(o, &cmd, docs, &mut errors);
                planes.push((o, cmd));
            }
        }
    }
    for (proxy, cmd) in &proxies {
        check_addresses(proxy, cmd, &planes, docs, &mut errors);
    }
    (errors, declared)
}

#[test]
fn manifests_match_the_binaries() {
    let docs = load_all();
    let all = ours(&docs);
    // The installs this test is about are all there (a rename must not make it vacuous).
    one(&all, Role::Proxy, "istio-system");
    one(&all, Role::Proxy, "mesh-system");
    one(&all, Role::NodeAgent, "mesh-system");
    one(&all, Role::ControlPlane, "mesh-system");
    let (errors, _) = static_checks(&docs);
    assert!(
        errors.is_empty(),
        "deploy/ has drifted from the binaries:\n- {}",
        errors.join("\n- ")
    );
}

#[test]
fn examples_are_in_the_control_plane_configuration() {
    let docs = load_all();
    let examples = deploy_dir().join("examples");
    let config: Vec<Value> = docs
        .iter()
        .filter(|d| kind(&d.value) == "ConfigMap" && name(&d.value) == "controlplane-config")
        .flat_map(|d| {
            d.value["data"]
                .as_mapping()
                .into_iter()
                .flatten()
                .flat_map(|(k, v)| parse_documents(text(v, "data"), text(k, "data key")))
        })
        .collect();
    assert!(!config.is_empty(), "no controlplane-config ConfigMap");
    let mut count = 0;
    for doc in docs
        .iter()
        .filter(|d| d.file.starts_with(&examples) && kind(&d.value) != "Kustomization")
    {
        count += 1;
        assert!(
            config.contains(&doc.value),
            "{} {} from {} is not (the same) in the controlplane-config ConfigMap: standalone, \
             the control plane reads that directory, not the API",
            kind(&doc.value),
            name(&doc.value),
            doc.file.display()
        );
    }
    assert!(count > 0, "no examples under deploy/examples");
}

#[test]
fn help_parsing_sees_env_and_flags() {
    // The parser the checks rely on, on the binary itself: a flag, its env var and default.
    let h = help("ztunnel", &[]).unwrap();
    let (flag, spec) = h.by_env("INPOD_UDS");
    assert_eq!(flag, "inpod-uds");
    assert!(spec.takes_value);
    assert_eq!(spec.default.as_deref(), Some(ZDS_SOCKET));
    assert!(h.envs().contains("XDS_ADDRESS") && h.envs().contains("CA_ROOT_CA"));
    assert!(
        help("ztunnel", &["node-agent".to_owned()]).unwrap().flags["dns-capture"]
            .env
            .is_none()
    );
    assert!(!help("ztunnel", &["node-agent".to_owned()]).unwrap().flags["dns-capture"].takes_value);
    let serve = help("controlplane", &["serve".to_owned()]).unwrap();
    assert_eq!(serve.flags["ca-dir"].env.as_deref(), Some("ROOT_CA_DIR"));
    assert_eq!(
        serve.flags["listen"].default.as_deref(),
        Some("0.0.0.0:15012")
    );
    let agent = help("ztunnel", &["node-agent".to_owned()]).unwrap();
    assert_eq!(agent.flags["ipv6"].default.as_deref(), Some("true"));
    assert_eq!(h.flags["proxy-mode"].default.as_deref(), Some("shared"));
    // And a word the binary refuses is seen as refused.
    assert!(help("ztunnel", &["frobnicate".to_owned()]).is_err());
}

// ---------------------------------------------------------------------------------------------
// The live runs.

/// A scratch filesystem for one install: every volume source gets one directory (a hostPath
/// by its host path, a ConfigMap or Secret by namespace and name, anything else per pod), and
/// each container's paths are rewritten through its mounts into it.
struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    fn new(test: &str) -> Self {
        let root = std::env::temp_dir().join(format!("e2e-deploy-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    fn source_path(&self, ours: &Ours<'_>, volume: &Value) -> PathBuf {
        let ns = ours.namespace();
        if let Some(host) = volume["hostPath"]["path"].as_str() {
            self.root.join("host").join(host.trim_start_matches('/'))
        } else if let Some(map) = volume["configMap"]["name"].as_str() {
            self.root.join("configmap").join(ns).join(map)
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            self.root.join("secret").join(ns).join(secret)
        } else {
            self.root
                .join("pod")
                .join(ns)
                .join(name(ours.workload()))
                .join(text(&volume["name"], "volume name"))
        }
    }

    /// Creates what the kubelet would before starting the container: directories, files of
    /// `FileOrCreate`, ConfigMaps found under deploy/ (others are the caller's to write).
    fn prepare(&self, ours: &Ours<'_>, docs: &[Document]) {
        for volume in seq(&ours.pod()["volumes"]) {
            let path = self.source_path(ours, volume);
            match volume["hostPath"]["type"].as_str() {
                Some("File") => {
                    assert!(
                        path.exists(),
                        "hostPath file {} must exist (the test writes it first)",
                        path.display()
                    );
                    continue;
                }
                Some("FileOrCreate") => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    if !path.exists() {
                        std::fs::write(&path, "").unwrap();
                    }
                    continue;
                }
                _ => std::fs::create_dir_all(&path).unwrap(),
            }
            if let Some(map) = volume["configMap"]["name"].as_str()
                && let Some(doc) = docs.iter().find(|d| {
                    kind(&d.value) == "ConfigMap"
                        && name(&d.value) == map
                        && namespace(&d.value) == ours.namespace()
                })
            {
                for (key, value) in doc.value["data"].as_mapping().into_iter().flatten() {
                    std::fs::write(path.join(text(key, "key")), text(value, "data")).unwrap();
                }
            }
        }
    }

    /// `value` as seen from outside the container: a path on a mount moves into the sandbox.
    fn map(&self, ours: &Ours<'_>, value: &str) -> String {
        if !value.starts_with('/') {
            return value.to_owned();
        }
        match ours.mount_for(value) {
            Some((mount, volume, rest)) => {
                let mut path = self.source_path(ours, volume);
                if let Some(sub) = mount["subPath"].as_str() {
                    path = path.join(sub);
                }
                if !rest.is_empty() {
                    path = path.join(rest);
                }
                path.display().to_string()
            }
            None => value.to_owned(),
        }
    }

    /// The container's environment as the kubelet would give it, paths mapped.
    fn env(&self, ours: &Ours<'_>) -> Vec<(String, String)> {
        seq(&ours.container["env"])
            .iter()
            .map(|e| {
                let env = text(&e["name"], "env name").to_owned();
                let value = if let Some(v) = e["value"].as_str() {
                    assert!(
                        !v.contains("$("),
                        "{env}: $(VAR) expansion is not modelled here"
                    );
                    v.to_owned()
                } else {
                    let field = text(
                        &e["valueFrom"]["fieldRef"]["fieldPath"],
                        "env valueFrom (only fieldRef is modelled)",
                    );
                    match field {
                        "metadata.name" => format!("{}-test", name(ours.workload())),
                        "metadata.namespace" => ours.namespace().to_owned(),
                        "spec.nodeName" => NODE.to_owned(),
                        "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                        "spec.serviceAccountName" => {
                            text(&ours.pod()["serviceAccountName"], "serviceAccountName").to_owned()
                        }
                        other => panic!("{env}: fieldRef {other} is not modelled"),
                    }
                };
                (env, self.map(ours, &value))
            })
            .collect()
    }

    fn args(&self, ours: &Ours<'_>) -> Vec<String> {
        ours.args().iter().map(|a| self.map(ours, a)).collect()
    }

    fn write(&self, path: &str, content: &str) {
        let path = Path::new(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn spawn(what: &str, ours: &Ours<'_>, args: Vec<String>, env: Vec<(String, String)>) -> Process {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    Process::spawn(what, binary(bin_of(ours.role)), &args, &env)
}

/// The tokens file a control plane needs for the ztunnel `proxy` on [`NODE`].
fn tokens_yaml(proxy: &Ours<'_>) -> String {
    format!(
        "callers:\n- {{name: ztunnel-{NODE}, token: {TOKEN}, node: {NODE}, namespace: {ns}, serviceAccount: {sa}}}\n",
        ns = proxy.namespace(),
        sa = text(&proxy.pod()["serviceAccountName"], "serviceAccountName"),
    )
}

/// ztunnel's environment as manifested, with its control plane reached on loopback: the
/// address's host becomes `127.0.0.1`, and the manifest's host name is what the serving
/// certificate must prove (`ALT_*_HOSTNAME`). Its token and root are written where it reads
/// them; `INPOD_UDS` is the mapped default when the manifest keeps the default.
fn proxy_env(sandbox: &Sandbox, proxy: &Ours<'_>, root_pem: &str) -> Vec<(String, String)> {
    let ztunnel_help = help("ztunnel", &[]).unwrap();
    let mut env = sandbox.env(proxy);
    for (address, alt) in [
        ("XDS_ADDRESS", "ALT_XDS_HOSTNAME"),
        ("CA_ADDRESS", "ALT_CA_HOSTNAME"),
    ] {
        let (_, value) = env.iter_mut().find(|(k, _)| k == address).unwrap();
        let (host, port) = host_port(value);
        *value = format!("127.0.0.1:{port}");
        env.push((alt.to_owned(), host));
    }
    let lookup = |env: &[(String, String)], name: &str| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    sandbox.write(&lookup(&env, "AUTH_TOKEN").unwrap(), TOKEN);
    sandbox.write(&lookup(&env, "CA_ROOT_CA").unwrap(), root_pem);
    if lookup(&env, "INPOD_UDS").is_none() {
        let default = ztunnel_help.flags["inpod-uds"].default.clone().unwrap();
        env.push(("INPOD_UDS".to_owned(), sandbox.map(proxy, &default)));
    }
    env
}

/// Error lines in a process's log, in either format (`ERROR` of tracing's default format, the
/// tab-separated `error` of upstream's).
fn errors_logged(process: &Process) -> usize {
    process.count(&[" ERROR "]) + process.count(&["\terror\t"])
}

/// An HTTP/1.1 GET on `addr`: `None` if nothing listens there, else the status code.
async fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream =
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) => return None,
            Err(_) => panic!("connecting to {addr} timed out"),
        };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("GET {addr}{path}: no complete answer"))
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).unwrap_or("");
    Some(
        status
            .parse()
            .unwrap_or_else(|_| panic!("GET {addr}{path}: not HTTP: {response:?}")),
    )
}

/// Which of upstream's HTTP ports the running ztunnel serves, against what its manifest
/// declares: both ways, so a port served but undeclared fails as much as one declared but not
/// served. `127.0.0.2` is a local address other than `127.0.0.1`: a server on every interface
/// answers there, a loopback-only one (`127.0.0.1`) does not.
async fn check_served_ports(what: &str, declared: Declared) {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let other = |port| SocketAddr::from(([127, 0, 0, 2], port));
    let metrics = http_get(local(METRICS_PORT), METRICS_PATHS[0])
        .await
        .is_some();
    assert_eq!(
        metrics, declared.metrics,
        "{what}: ztunnel serves metrics on {METRICS_PORT}: {metrics}; the manifest declares them \
         (containerPort http-metrics, prometheus.io annotations): {}",
        declared.metrics
    );
    if metrics {
        for path in METRICS_PATHS {
            assert_eq!(
                http_get(other(METRICS_PORT), path).await,
                Some(200),
                "{what}: GET :{METRICS_PORT}{path} on every interface"
            );
        }
    }
    let readiness = http_get(local(READINESS_PORT), READINESS_PATH)
        .await
        .is_some();
    assert_eq!(
        readiness, declared.readiness,
        "{what}: ztunnel serves {READINESS_PATH} on {READINESS_PORT}: {readiness}; the manifest \
         probes it: {}",
        declared.readiness
    );
    if readiness {
        let deadline = tokio::time::Instant::now() + WAIT;
        while http_get(other(READINESS_PORT), READINESS_PATH).await != Some(200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: never ready on {READINESS_PORT}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if http_get(local(ADMIN_PORT), "/").await.is_some() {
        assert_eq!(
            http_get(other(ADMIN_PORT), "/").await,
            None,
            "{what}: the admin port {ADMIN_PORT} answers beyond loopback"
        );
    }
}

#[test]
fn standalone_install_runs_as_manifested() {
    in_private_netns("deploy-standalone", || async {
        let docs = load_all();
        let all = ours(&docs);
        let (errors, declared) = static_checks(&docs);
        assert!(errors.is_empty(), "static checks fail first: {errors:?}");
        let plane = one(&all, Role::ControlPlane, "mesh-system");
        let agent = one(&all, Role::NodeAgent, "mesh-system");
        let proxy = one(&all, Role::Proxy, "mesh-system");
        let sandbox = Sandbox::new("standalone");

        // The control plane: its ConfigMap as the kubelet mounts it, plus one test workload;
        // an empty CA directory stands for the operator's `cacerts` (a root is generated).
        let mut errors = Vec::new();
        let plane_cmd = command_line(plane, &mut errors);
        sandbox.prepare(plane, &docs);
        let config_dir = sandbox.map(plane, &plane_cmd.effective(plane, "config-dir").unwrap());
        sandbox.write(&format!("{config_dir}/zz-deploy-test.yaml"), TEST_POD);
        sandbox.write(
            &sandbox.map(plane, &plane_cmd.effective(plane, "tokens").unwrap()),
            &tokens_yaml(proxy),
        );
        let mut cp = spawn(
            "controlplane",
            plane,
            sandbox.args(plane),
            sandbox.env(plane),
        );
        cp.wait_for_line("control plane ready").await;
        let ca_dir = sandbox.map(plane, &plane_cmd.effective(plane, "ca-dir").unwrap());
        let root = std::fs::read_to_string(Path::new(&ca_dir).join(ROOT_KEY)).unwrap();

        // The node agent, with the empty pods file a new node gets.
        sandbox.prepare(agent, &docs);
        let mut agent_process = spawn("node-agent", agent, sandbox.args(agent), sandbox.env(agent));
        agent_process.wait_for_line("node agent ready").await;

        // ztunnel: its token on the node, the control plane's root in its ConfigMap.
        let env = proxy_env(&sandbox, proxy, &root);
        sandbox.prepare(proxy, &docs);
        let mut ztunnel = spawn("ztunnel", proxy, sandbox.args(proxy), env);
        ztunnel
            .wait_for_line("in-pod snapshot applied; ready")
            .await;
        cp.wait_for_line("certificate issued").await;

        check_served_ports("standalone", declared["mesh-system"]).await;
        assert_eq!(errors_logged(&ztunnel), 0, "ztunnel logged errors");
        assert_eq!(errors_logged(&cp), 0, "the control plane logged errors");
        assert_eq!(
            errors_logged(&agent_process),
            0,
            "the node agent logged errors"
        );
    });
}

#[test]
fn with_istio_ztunnel_runs_as_manifested() {
    in_private_netns("deploy-with-istio", || async {
        let docs = load_all();
        let all = ours(&docs);
        let (errors, declared) = static_checks(&docs);
        assert!(errors.is_empty(), "static checks fail first: {errors:?}");
        let proxy = one(&all, Role::Proxy, "istio-system");
        let sandbox = Sandbox::new("with-istio");

        // Our control plane stands in for istiod: its defaults are istiod's name and the
        // istio-system/ztunnel node account.
        let dir = sandbox.root.join("istiod");
        let config = dir.join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("cluster.yaml"),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n{TEST_POD}"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("tokens.yaml"), tokens_yaml(proxy)).unwrap();
        let xds = proxy.env_value("XDS_ADDRESS").unwrap();
        let (_, port) = host_port(&xds);
        let args: Vec<String> = [
            "serve",
            "--config-dir",
            &config.display().to_string(),
            "--ca-dir",
            &dir.join("cacerts").display().to_string(),
            "--tokens",
            &dir.join("tokens.yaml").display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut istiod = Process::spawn(
            "istiod",
            binary("controlplane"),
            &args,
            &[("RUST_LOG", "info".to_owned())],
        );
        istiod.wait_for_line("control plane ready").await;
        let root = std::fs::read_to_string(dir.join("cacerts").join(ROOT_KEY)).unwrap();

        // Our node agent stands in for istio-cni: the ZDS server on the socket ztunnel uses,
        // with no pods (in-pod readiness waits for the agent's snapshot).
        let env = proxy_env(&sandbox, proxy, &root);
        sandbox.prepare(proxy, &docs);
        let socket = env
            .iter()
            .find(|(k, _)| k == "INPOD_UDS")
            .unwrap()
            .1
            .clone();
        let pods = dir.join("pods.yaml");
        std::fs::write(&pods, "").unwrap();
        let cni_args: Vec<String> = [
            "node-agent",
            "--pods",
            &pods.display().to_string(),
            "--ztunnel-uds-address",
            &socket,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut cni = Process::spawn("istio-cni", binary("ztunnel"), &cni_args, &[]);
        cni.wait_for_line("node agent ready").await;

        let mut ztunnel = spawn("ztunnel", proxy, sandbox.args(proxy), env);
        ztunnel
            .wait_for_line("in-pod snapshot applied; ready")
            .await;
        istiod.wait_for_line("certificate issued").await;

        check_served_ports("with-istio", declared["istio-system"]).await;
        assert_eq!(errors_logged(&ztunnel), 0, "ztunnel logged errors");
    });
}
