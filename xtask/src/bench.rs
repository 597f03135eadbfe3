//! `cargo xtask bench`: the Basic versus Multi-Paxos comparison (the `paxos-bench`
//! binary, built in release mode), with `--full` the whole criterion suite, or
//! with `--vs-omnipaxos` the criterion head-to-head against OmniPaxos 0.2.4.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::{cargo, run};

/// Options of `cargo xtask bench`. Without matrix options it runs the default
/// comparison; with any, their cross product.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Run the whole criterion suite (`cargo bench -p paxos-bench`); HTML reports in target/criterion.
    #[arg(long)]
    full: bool,
    /// Run the criterion head-to-head of our Multi-Paxos against OmniPaxos 0.2.4, the
    /// protocol alone in the same loop (`paxos-bench` feature `compare-omnipaxos`).
    #[arg(long, conflicts_with_all = [
        "full", "transports", "storages", "replicas", "command_bytes", "in_flight", "batch", "protocols",
        "window_ms", "warm_up_ms",
    ])]
    vs_omnipaxos: bool,
    /// With --full or --vs-omnipaxos: only benchmarks whose id contains this
    /// (criterion's filter), e.g. `loop/multi` or `if10000`.
    #[arg(long)]
    filter: Option<String>,
    /// Transports (comma-separated): loop (the protocol alone), memory, tcp, zmq.
    #[arg(long, value_delimiter = ',', value_parser = ["loop", "memory", "tcp", "zmq"], conflicts_with = "full")]
    transports: Vec<String>,
    /// Storages (comma-separated): memory, file.
    #[arg(long, value_delimiter = ',', value_parser = ["memory", "file"], conflicts_with = "full")]
    storages: Vec<String>,
    /// Cluster sizes (comma-separated), 1 to 9.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=9), conflicts_with = "full")]
    replicas: Vec<u16>,
    /// Command payload sizes in bytes (comma-separated), 1 to 1048576.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1_048_576), conflicts_with = "full")]
    command_bytes: Vec<u32>,
    /// Commands in flight (comma-separated), 1 to 100000.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=100_000), conflicts_with = "full")]
    in_flight: Vec<u32>,
    /// Batching: on, off or both.
    #[arg(long, value_parser = ["on", "off", "both"], conflicts_with = "full")]
    batch: Option<String>,
    /// Protocols (comma-separated): basic, multi.
    #[arg(long, value_delimiter = ',', value_parser = ["basic", "multi"], conflicts_with = "full")]
    protocols: Vec<String>,
    /// Measured window per run, in milliseconds (default 1000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=600_000), conflicts_with = "full")]
    window_ms: Option<u64>,
    /// Warm-up per run, in milliseconds (default 300).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60_000), conflicts_with = "full")]
    warm_up_ms: Option<u64>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs the comparison or the criterion suite.
pub fn bench(args: BenchArgs) -> Result<()> {
    if args.filter.is_some() && !args.full && !args.vs_omnipaxos {
        bail!("--filter picks criterion benchmarks: it goes with --full or --vs-omnipaxos");
    }
    if args.full || args.vs_omnipaxos {
        let mut command = cargo();
        command.current_dir(workspace_root()).args(["bench", "-p", "paxos-bench"]);
        if args.vs_omnipaxos {
            command.args(["--features", "compare-omnipaxos", "--bench", "omnipaxos"]);
        }
        if let Some(filter) = &args.filter {
            command.args(["--", filter]);
        }
        run(command)?;
        println!("criterion reports: {}", target_dir().join("criterion").join("report").join("index.html").display());
        return Ok(());
    }
    let mut command = cargo();
    command.current_dir(workspace_root()).args(["run", "--release", "-p", "paxos-bench", "--bin", "paxos-bench", "--"]);
    let lists: [(&str, Vec<String>); 7] = [
        ("--transports", args.transports),
        ("--storages", args.storages),
        ("--replicas", args.replicas.iter().map(u16::to_string).collect()),
        ("--command-bytes", args.command_bytes.iter().map(u32::to_string).collect()),
        ("--in-flight", args.in_flight.iter().map(u32::to_string).collect()),
        ("--protocols", args.protocols),
        ("--batch", args.batch.into_iter().collect()),
    ];
    for (flag, values) in lists {
        if !values.is_empty() {
            command.args([flag.to_string(), values.join(",")]);
        }
    }
    if let Some(window) = args.window_ms {
        command.args(["--window-ms".to_string(), window.to_string()]);
    }
    if let Some(warm_up) = args.warm_up_ms {
        command.args(["--warm-up-ms".to_string(), warm_up.to_string()]);
    }
    command.arg("--out").arg(target_dir().join("paxos-bench"));
    run(command)
}
