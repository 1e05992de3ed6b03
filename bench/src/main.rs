//! `meshbench`: in one run, the direct path and the mesh path through our ztunnel and, when its
//! binary is present, upstream ztunnel — single-stream throughput, request/response latency,
//! new connections per second, agent memory and CPU — each path in its own private network
//! namespace with the same topology, capture rules and load generators. Prints a table and
//! writes the figures as JSON under `bench/results/`. Must run as root (namespaces, iptables).
//!
//! Measures only: nothing here asserts on time, and no test runs it.

// The report table is this program's output: stdout is where it belongs.
#![allow(clippy::print_stdout)]

mod agent;
mod l7;
mod l7_procs;
mod l7_report;
mod load;
mod measure;
mod netns;
mod procstat;
mod provenance;
mod report;
mod server;
mod summary;
mod topology;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use time::OffsetDateTime;

use crate::agent::Flavour;
use crate::measure::{Settings, measure};
use crate::report::{Column, Run};

/// The workspace root, as built (bench/ is one of its members).
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Direct path vs mesh path (ours, upstream), measured side by side in one run.
#[derive(Debug, Parser)]
#[command(name = "meshbench", about)]
struct Args {
    /// Our ztunnel binary [default: <workspace>/target/release/ztunnel].
    #[arg(long)]
    ztunnel: Option<PathBuf>,
    /// Upstream ztunnel binary; its column is skipped, with a message, if the file is absent
    /// [default: <workspace>/../shared/peers/ztunnel-upstream].
    #[arg(long)]
    upstream: Option<PathBuf>,
    /// Skip the upstream column.
    #[arg(long)]
    no_upstream: bool,
    /// Directory the JSON result is written to [default: <workspace>/bench/results].
    #[arg(long)]
    results: Option<PathBuf>,
    /// Measured window of each phase, in seconds.
    #[arg(long, default_value_t = 3.0)]
    window: f64,
    /// Warm-up before each window, in seconds.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Concurrent connect/request/close loops in the connection-rate phase.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Rounds over all paths, interleaved; the table shows each metric's median round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The waypoint binary, for the HTTP table [default: <workspace>/target/release/waypoint].
    #[arg(long)]
    waypoint: Option<PathBuf>,
    /// The control plane binary (the waypoint's CA and xDS) [default:
    /// <workspace>/target/release/controlplane].
    #[arg(long)]
    controlplane: Option<PathBuf>,
    /// Skip the HTTP table (direct, ztunnel, ztunnel + waypoint).
    #[arg(long)]
    no_http: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("meshbench creates network namespaces and iptables rules: run it as root");
    }
    if !(args.window > 0.0 && args.warmup >= 0.0 && args.concurrency > 0 && args.rounds > 0) {
        bail!("--window and --rounds must be > 0, --warmup >= 0, --concurrency > 0");
    }
    let root = std::fs::canonicalize(WORKSPACE).unwrap_or_else(|_| PathBuf::from(WORKSPACE));
    let root = root.as_path();
    let ours = args
        .ztunnel
        .clone()
        .unwrap_or_else(|| root.join("target/release/ztunnel"));
    let ours_binary = ours.clone();
    if !ours.exists() {
        bail!(
            "our ztunnel not found at {}: build it (cargo build --release --bins) or pass --ztunnel",
            ours.display()
        );
    }
    let upstream = args
        .upstream
        .unwrap_or_else(|| root.join("../shared/peers/ztunnel-upstream"));
    let settings = Settings {
        window_s: args.window,
        warmup_s: args.warmup,
        concurrency: args.concurrency,
        rounds: args.rounds,
    };
    let started = OffsetDateTime::now_utc();

    let mut columns = vec![
        Column::new(measure::Path::Direct),
        Column::new(measure::Path::Mesh {
            flavour: Flavour::Ours,
            binary: ours,
        }),
        Column::new(measure::Path::Mesh {
            flavour: Flavour::Upstream,
            binary: upstream.clone(),
        }),
    ];
    if let Some(upstream_column) = columns.last_mut() {
        if args.no_upstream {
            upstream_column.not_measured = Some("--no-upstream given".to_owned());
        } else if !upstream.exists() {
            let reason = format!("binary absent at {}", upstream.display());
            eprintln!("meshbench: upstream: not measured ({reason})");
            upstream_column.not_measured = Some(reason);
        }
    }
    for round in 1..=settings.rounds {
        for column in &mut columns {
            measure_round(column, round, settings);
        }
    }
    for column in &mut columns {
        column.summarise();
    }
    let http = (!args.no_http).then(|| {
        let binaries = l7::Binaries {
            ztunnel: ours_binary.clone(),
            waypoint: args
                .waypoint
                .clone()
                .unwrap_or_else(|| root.join("target/release/waypoint")),
            controlplane: args
                .controlplane
                .clone()
                .unwrap_or_else(|| root.join("target/release/controlplane")),
        };
        measure_http(&binaries, settings)
    });

    let (timestamp, stem) = provenance::utc_stamps(started);
    let run = Run {
        timestamp,
        commit: provenance::commit(root),
        machine: provenance::Machine::current(),
        settings,
        columns,
    };
    println!("{}", run.table());
    let mut json = run.json();
    if let Some(http) = &http {
        println!("{}", l7_report::table(http, settings.concurrency));
        json["http"] = l7_report::json(http);
    }
    let results = args.results.unwrap_or_else(|| root.join("bench/results"));
    let file = write_json(&json, &results, &stem)?;
    println!("results: {}", file.display());

    let failed: Vec<&str> = run
        .columns
        .iter()
        .filter(|c| c.name != Flavour::Upstream.name() && c.result.is_none())
        .map(|c| c.name)
        .chain(
            http.iter()
                .flatten()
                .filter(|c| c.result.is_none())
                .map(|c| c.name),
        )
        .collect();
    if !failed.is_empty() {
        bail!("not measured: {}", failed.join(", "));
    }
    Ok(())
}

/// Measures one round of a column's path, unless an earlier round failed; a failure marks the
/// column "not measured" (the full reason goes to stderr and the JSON).
fn measure_round(column: &mut Column, round: usize, settings: Settings) {
    if column.not_measured.is_some() {
        return;
    }
    eprintln!(
        "meshbench: round {round}/{}: {} ...",
        settings.rounds, column.name
    );
    match measure(column.path.clone(), settings) {
        Ok(result) => column.rounds.push(result),
        Err(e) => {
            let log = e
                .agent_log()
                .map(|tail| format!("\nthe agent's log ends:\n{tail}"))
                .unwrap_or_default();
            let reason = format!("{:#}{log}", anyhow::Error::from(e));
            eprintln!("meshbench: {}: not measured: {reason}", column.name);
            column.not_measured = Some(reason);
        }
    }
}

/// The HTTP columns, their rounds interleaved like the TCP ones.
fn measure_http(binaries: &l7::Binaries, settings: Settings) -> Vec<l7_report::L7Column> {
    let mut columns: Vec<l7_report::L7Column> = [
        l7::L7Path::Direct,
        l7::L7Path::Ztunnel,
        l7::L7Path::Waypoint,
    ]
    .into_iter()
    .map(l7_report::L7Column::new)
    .collect();
    for binary in [&binaries.waypoint, &binaries.controlplane] {
        if !binary.exists() {
            let reason = format!(
                "{} not found: build it (cargo build --release --bins)",
                binary.display()
            );
            eprintln!("meshbench: waypoint: not measured ({reason})");
            if let Some(c) = columns.last_mut() {
                c.not_measured = Some(reason);
            }
        }
    }
    for round in 1..=settings.rounds {
        for column in &mut columns {
            if column.not_measured.is_some() {
                continue;
            }
            eprintln!(
                "meshbench: HTTP round {round}/{}: {} ...",
                settings.rounds, column.name
            );
            match l7::measure_l7(column.path, binaries, settings) {
                Ok(result) => column.rounds.push(result),
                Err(e) => {
                    let reason = format!("{:#}", anyhow::Error::from(e));
                    eprintln!("meshbench: HTTP {}: not measured: {reason}", column.name);
                    column.not_measured = Some(reason);
                }
            }
        }
    }
    for column in &mut columns {
        column.summarise();
    }
    columns
}

fn write_json(json: &serde_json::Value, dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{stem}.json"));
    // Written aside then renamed, so a reader never sees half a file (`*.tmp` is git-ignored).
    let partial = dir.join(format!("{stem}.json.tmp"));
    let text = serde_json::to_string_pretty(json).context("encoding the results")?;
    std::fs::write(&partial, text + "\n")
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &file).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}
