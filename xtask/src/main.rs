//! The workspace's automation: `cargo xtask <command>`.
//!
//! - `test`: the test suite CI runs (the README's test command).
//! - `features`, `doc`, `package`, `examples`: release checks (feature matrix, docs,
//!   packaging, every example run to completion).
//! - `bench`: Basic versus Multi-Paxos throughput (see `paxos-bench`).

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod checks;
mod sim;

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Automation for the Paxos workspace")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Runs every test in the workspace, and the feature-gated OmniPaxos harness's, as CI does.
    Test,
    /// Builds every documented feature combination of the `paxos` facade.
    Features,
    /// Builds the API docs with warnings denied.
    Doc,
    /// Packages every publishable crate and verifies each builds alone.
    Package,
    /// Runs every example of the `paxos` facade to completion.
    Examples,
    /// Deterministic simulation: `--seed S` replays one run, `--seeds N` soaks.
    Sim(sim::SimArgs),
    /// Basic versus Multi-Paxos throughput, latency and memory: a table,
    /// target/paxos-bench/report.json and report.svg; `--full` runs the criterion suite.
    Bench(Box<bench::BenchArgs>),
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

pub(crate) fn run(mut command: Command) -> Result<()> {
    eprintln!("+ {command:?}");
    let status = command.status().with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Errors end the output as one plain line (no backtrace, even with
/// `RUST_BACKTRACE` set): the failing step has already said why above it.
fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Test => {
            let mut command = cargo();
            command.args(["test", "--workspace"]);
            run(command)?;
            // The OmniPaxos head-to-head is behind a feature that is off by default;
            // its harness's own tests (agreement, trimming, tamper detection) run here.
            let mut command = cargo();
            command.args(["test", "-p", "paxos-bench", "--features", "compare-omnipaxos", "--lib", "omnipaxos_loop"]);
            run(command)
        }
        Task::Features => checks::features(),
        Task::Doc => checks::doc(),
        Task::Package => checks::package(),
        Task::Examples => checks::examples(),
        Task::Sim(args) => sim::sim(args),
        Task::Bench(args) => bench::bench(*args),
    }
}
