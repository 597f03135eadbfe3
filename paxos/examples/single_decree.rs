//! Single-decree Basic Paxos: three proposers race for the same slot and exactly
//! one value is chosen. Runs the sans-IO replicas in a deterministic harness with
//! a lossy, reordering network, for several seeds.
//!
//! `cargo run --example single_decree`

use paxos::harness::{Cluster, Faults};
use paxos::{Command, Protocol, Value};

fn main() {
    for seed in 0..5 {
        let mut cluster = Cluster::new(3, Protocol::Basic, seed);
        cluster.faults = Faults { drop_per_million: 100_000, duplicate_per_million: 50_000, reorder: true };
        // Every node proposes its own value at once: they duel for slot 1.
        for node in 1..=3u64 {
            let value = format!("value from node {node}");
            cluster
                .propose(node, vec![Command::new(node, 1, value.into_bytes())])
                .expect("Basic Paxos accepts proposals anywhere");
        }
        let decided = cluster.run_until(500_000, 5, |cluster| {
            cluster.members().iter().all(|node| cluster.applied(*node).iter().any(|decided| decided.slot == 1))
        });
        assert!(decided, "seed {seed}: slot 1 was not decided");
        let chosen: Vec<Value> = cluster
            .members()
            .iter()
            .map(|node| cluster.applied(*node).iter().find(|decided| decided.slot == 1).unwrap().value.clone())
            .collect();
        assert!(chosen.iter().all(|value| *value == chosen[0]), "two values chosen for one slot");
        let winner = String::from_utf8_lossy(&chosen[0].commands()[0].payload).into_owned();
        println!(
            "seed {seed}: every replica chose \"{winner}\" for slot 1 ({} messages delivered, {} lost)",
            cluster.delivered, cluster.dropped
        );
    }
    println!("exactly one value was chosen in every run");
}
