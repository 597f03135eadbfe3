//! `cargo xtask sim`: the deterministic simulator, built in release mode.

use anyhow::Result;
use clap::Args;

use crate::{cargo, run};

/// Arguments passed through to the `paxos-sim` binary.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Replay this one seed exactly.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run seeds 0..N (both protocols unless --protocol says otherwise; at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: Option<u64>,
    /// basic, multi or both.
    #[arg(long, default_value = "both", value_parser = ["basic", "multi", "both"])]
    protocol: String,
    /// Steps in each run's fault phase (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
}

/// Runs the simulator with `args`.
pub fn sim(args: SimArgs) -> Result<()> {
    let mut command = cargo();
    command.args(["run", "--quiet", "--release", "--package", "paxos-sim", "--bin", "paxos-sim", "--"]);
    command.args(["--protocol", &args.protocol]);
    if let Some(seed) = args.seed {
        command.args(["--seed", &seed.to_string()]);
    }
    if let Some(seeds) = args.seeds {
        command.args(["--seeds", &seeds.to_string()]);
    }
    if let Some(steps) = args.steps {
        command.args(["--steps", &steps.to_string()]);
    }
    run(command)
}
