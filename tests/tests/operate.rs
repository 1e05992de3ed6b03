//! The operator's side of the storefront (`e2e::storefront`, the mesh `make demo` tells):
//! every metric the Grafana dashboard queries is exported by its ztunnels, and every
//! ```` ```sh demo ```` block of `docs/runbooks/*.md` runs against it and checks its own result.
//!
//! The blocks run as `bash -euo pipefail` scripts in node2's network namespace, so
//! `localhost:15000/15020/15021` are node2's ztunnel, as after a `kubectl port-forward`. What
//! they may use is set up by [`RunbookEnv`] and documented in docs/runbooks/README.md.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::storefront::{EXPECTED_MORNING, PORT, Storefront};
use e2e::{binary, on_current_thread as run};
use tokio::process::Command;

/// Upper bound for one runbook block (its own polls are shorter).
const BLOCK_WAIT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn storefront(test: &str) -> Storefront {
    let mut shop = Storefront::new(test);
    shop.start().await;
    let morning = shop.morning().await;
    assert_eq!(
        morning.orders,
        EXPECTED_MORNING.to_vec(),
        "the storefront's traffic did not go as it always does"
    );
    // Access records and counters are final once the destination logged each close.
    let node2 = shop.node2;
    let ztunnel = shop.mesh.ztunnel(node2);
    ztunnel
        .wait_for_line("inbound plaintext connection complete")
        .await;
    ztunnel
        .wait_for_lines(&["inbound connection complete"], 2)
        .await;
    shop
}

/// Runs `program args` in the namespace of `node` and returns stdout; panics if it fails.
async fn on_node(shop: &Storefront, node: e2e::topology::NodeId, args: &[&str]) -> String {
    let netns = shop.mesh.cluster.node(node).netns().name().to_owned();
    let output = tokio::time::timeout(
        e2e::WAIT,
        Command::new("ip")
            .args(["netns", "exec", &netns])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{args:?} in {netns} did not finish"))
    .unwrap();
    assert!(
        output.status.success(),
        "{args:?} in {netns} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every identifier in a PromQL expression that names one of our metric families.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const FAMILIES: [&str; 5] = [
        "istio_",
        "ztunnel_",
        "workload_manager_",
        "process_",
        "tokio_",
    ];
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| FAMILIES.iter().any(|prefix| word.starts_with(prefix)))
        .map(str::to_owned)
        .collect()
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_only_metrics_a_running_ztunnel_exports() {
    let path = repo().join("deploy/dashboards/ztunnel.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let named: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    for family in [
        "istio_tcp_connections_opened_total",
        "istio_authz_dry_run_total",
        "ztunnel_certificate_expiration_timestamp_seconds",
    ] {
        assert!(
            named.contains(family),
            "the dashboard never queries {family}"
        );
    }
    run(async move {
        let shop = storefront("dashboard").await;
        let mut exported = BTreeSet::new();
        for node in [shop.node1, shop.node2] {
            let text = on_node(
                &shop,
                node,
                &["curl", "-sS", "--max-time", "5", "localhost:15020/metrics"],
            )
            .await;
            exported.extend(
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| l.split(['{', ' ']).next())
                    .map(str::to_owned),
            );
        }
        let missing: Vec<&String> = named.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "deploy/dashboards/ztunnel.json queries metrics no ztunnel exported after the storefront's traffic: {missing:?}"
        );
    });
}

/// One ```` ```sh demo ```` block: where it is, and its script.
struct Block {
    file: String,
    line: usize,
    script: String,
}

fn demo_blocks(dir: &Path) -> Vec<Block> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut blocks = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut open: Option<Block> = None;
        for (index, line) in text.lines().enumerate() {
            match open.as_mut() {
                None if line.trim() == "```sh demo" => {
                    open = Some(Block {
                        file: file.clone(),
                        line: index + 1,
                        script: String::new(),
                    });
                }
                None => {}
                Some(_) if line.trim() == "```" => blocks.push(open.take().unwrap()),
                Some(block) => writeln!(block.script, "{line}").unwrap(),
            }
        }
        assert!(open.is_none(), "{file}: a ```sh demo block is never closed");
    }
    blocks
}

/// `order FROM TO`: what a runbook uses for "make a request from pod FROM to pod TO".
fn order_script(shop: &Storefront) -> String {
    let mut script = String::from(
        "#!/bin/bash\n# order FROM TO: one request from pod FROM to pod TO:PORT; 0 when the echo came back.\nset -u\n",
    );
    let names = ["web", "legacy", "api", "catalog", "outsider"];
    script.push_str("case \"${1:-}\" in\n");
    for name in names {
        let netns = shop.pod(name).netns().name().to_owned();
        writeln!(script, "  {name}) from={netns} ;;").unwrap();
    }
    script.push_str("  *) echo \"order: unknown pod '${1:-}'\" >&2; exit 64 ;;\nesac\n");
    script.push_str("case \"${2:-}\" in\n");
    for name in names {
        writeln!(script, "  {name}) to={} ;;", shop.pod(name).ip()).unwrap();
    }
    script.push_str("  *) echo \"order: unknown pod '${2:-}'\" >&2; exit 64 ;;\nesac\n");
    writeln!(
        script,
        "exec ip netns exec \"$from\" timeout 10 bash -c 'exec 3<>/dev/tcp/'\"$to\"'/{PORT} || exit 1; printf order >&3; IFS= read -r -t 5 -N 5 reply <&3 2>/dev/null && [ \"$reply\" = order ]' 2>/dev/null"
    )
    .unwrap();
    script
}

#[test]
fn runbook_demo_blocks_run_against_the_storefront() {
    let blocks = demo_blocks(&repo().join("docs/runbooks"));
    let files: BTreeSet<&str> = blocks.iter().map(|b| b.file.as_str()).collect();
    for runbook in [
        "install.md",
        "mtls-rollout.md",
        "authorization.md",
        "certificates.md",
        "observability.md",
        "tuning.md",
        "troubleshooting.md",
    ] {
        assert!(files.contains(runbook), "{runbook} has no ```sh demo block");
    }
    run(async move {
        let mut shop = storefront("runbooks").await;
        let tools = shop.mesh.world.dir().join("runbook-bin");
        std::fs::create_dir_all(&tools).unwrap();
        let order = tools.join("order");
        std::fs::write(&order, order_script(&shop)).unwrap();
        std::fs::set_permissions(&order, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let bins = binary("controlplane").parent().unwrap().to_owned();
        let path = format!(
            "{}:{}:{}",
            tools.display(),
            bins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let ztunnels = [shop.node1, shop.node2]
            .map(|n| format!("{}:15020", shop.mesh.cluster.node(n).gateway()))
            .join(" ");
        let log = shop.mesh.world.dir().join("ztunnel-node2.log");
        let node2 = shop.node2;
        let netns = shop.mesh.cluster.node(node2).netns().name().to_owned();
        for block in &blocks {
            let run = Command::new("ip")
                .args(["netns", "exec", &netns, "bash", "-euo", "pipefail", "-c"])
                .arg(&block.script)
                .env("PATH", &path)
                .env("ZTUNNELS", &ztunnels)
                .env("CONFIG_DIR", shop.mesh.config_dir())
                .env("ZTUNNEL_LOG", &log)
                .current_dir(shop.mesh.world.dir())
                .kill_on_drop(true)
                .output();
            let where_ = format!("docs/runbooks/{}:{}", block.file, block.line);
            // The log file follows the process while the block runs, as `kubectl logs -f` would.
            let follow_log = async {
                loop {
                    let lines = shop.mesh.ztunnel(node2).lines().join("\n");
                    let staging = log.with_extension("new");
                    std::fs::write(&staging, lines + "\n").unwrap();
                    std::fs::rename(&staging, &log).unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            let output = tokio::time::timeout(BLOCK_WAIT, async {
                tokio::select! {
                    output = run => output,
                    () = follow_log => unreachable!("following the log never ends"),
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{where_}: did not finish in {BLOCK_WAIT:?}:\n{}",
                    block.script
                )
            })
            .unwrap();
            assert!(
                output.status.success(),
                "{where_}: failed ({}):\n{}\n--- stdout\n{}\n--- stderr\n{}",
                output.status,
                block.script,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(blocks.len() >= 10, "only {} demo blocks", blocks.len());
    });
}
