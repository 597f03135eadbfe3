//! The simulator's command line: replay one seed, or run many and summarize.
//!
//! `paxos-sim --seed 42 --protocol multi` replays one run exactly;
//! `paxos-sim --seeds 10000` runs seeds 0..10000 for both protocols.

use std::io::Write;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use paxos_core::Protocol;
use paxos_sim::{run, SimConfig, Summary, DEFAULT_STEPS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Basic,
    Multi,
    Both,
}

#[derive(Parser, Debug)]
#[command(name = "paxos-sim", about = "Deterministic simulation of Basic and Multi-Paxos under faults")]
struct Args {
    /// Replay this one seed exactly.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run seeds 0..N (at least 1).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Which protocol to simulate.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    protocol: Which,
    /// Steps in each run's fault phase (at least 1).
    #[arg(long, default_value_t = DEFAULT_STEPS, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
}

fn protocols(which: Which) -> Vec<Protocol> {
    match which {
        Which::Basic => vec![Protocol::Basic],
        Which::Multi => vec![Protocol::Multi],
        Which::Both => vec![Protocol::Basic, Protocol::Multi],
    }
}

fn print_summary(runs: u64, summary: &Summary, violations: u64, started: Instant) {
    let faults = &summary.faults;
    println!("runs: {runs}, steps: {}, messages delivered: {}", summary.steps, summary.delivered);
    println!(
        "faults injected: {} (lost {}, cut by partitions {}, duplicated {}, reordered {}, crashes {}, writes lost in crashes {}, partitions made {})",
        summary.faults_injected(),
        faults.lost,
        faults.partitioned,
        faults.duplicated,
        faults.reordered,
        faults.crashes,
        faults.writes_lost,
        summary.partitions
    );
    println!(
        "restarts: {}, compactions: {}, commands submitted: {}, acknowledged: {}",
        summary.restarts, summary.compactions, summary.submitted, summary.acknowledged
    );
    println!("violations: {violations}, wall time: {:.1} s", started.elapsed().as_secs_f64());
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (0..args.seeds).collect(),
    };
    let protocols = protocols(args.protocol);
    let total = seeds.len() as u64 * protocols.len() as u64;
    let mut summary = Summary::default();
    let mut violations = 0u64;
    let mut done = 0u64;
    for seed in &seeds {
        for protocol in &protocols {
            let config = SimConfig { steps: args.steps, ..SimConfig::all_faults(*protocol, *seed) };
            match run(&config) {
                Ok(run_summary) => summary.add(&run_summary),
                Err(violation) => {
                    violations += 1;
                    eprintln!("\nVIOLATION {violation}");
                }
            }
            done += 1;
            if total > 1 && (done.is_multiple_of(20) || done == total) {
                let width = 40;
                let filled = (done * width / total) as usize;
                eprint!("\r[{}{}] {done}/{total} runs", "#".repeat(filled), ".".repeat(width as usize - filled));
                let _ = std::io::stderr().flush();
            }
        }
    }
    if total > 1 {
        eprintln!();
    }
    print_summary(total, &summary, violations, started);
    if violations > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
