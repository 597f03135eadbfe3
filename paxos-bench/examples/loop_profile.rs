//! Runs the protocol alone for a fixed number of commands and prints the time,
//! for profilers that count instructions (`valgrind --tool=callgrind`) where a
//! time window would make runs incomparable.
//!
//! `cargo run --release -p paxos-bench --example loop_profile -- multi 1 100000`
//! (protocol, commands in flight, commands; 3 replicas, 8-byte commands, batching on).
//!
//! Instructions per command, without the set-up and the final check: run it under
//! `valgrind --tool=callgrind` with 100000 and with 300000 commands and divide the
//! difference of the two `refs` totals by 200000. The same difference of two
//! `perf stat -e task-clock` runs gives the time per command.

use anyhow::{bail, Context, Result};
use paxos_bench::protocol_loop::LoopCluster;
use paxos_bench::{Spec, StorageKind, TransportKind};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [protocol, in_flight, commands] = args.as_slice() else {
        bail!("usage: loop_profile <basic|multi> <in-flight> <commands>");
    };
    let spec = Spec {
        protocol: protocol.parse().context("protocol")?,
        transport: TransportKind::Loop,
        storage: StorageKind::Memory,
        replicas: 3,
        command_bytes: 8,
        in_flight: in_flight.parse().context("in-flight")?,
        batch: true,
    };
    let commands: u64 = commands.parse().context("commands")?;
    let mut cluster = LoopCluster::new(&spec)?;
    let elapsed = cluster.run_commands(commands)?;
    cluster.finish()?;
    let rate = commands as f64 / elapsed.as_secs_f64();
    println!("{} if={} {commands} commands in {elapsed:?}: {rate:.0}/s", spec.protocol, spec.in_flight);
    Ok(())
}
