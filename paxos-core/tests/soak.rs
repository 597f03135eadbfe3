//! A bounded randomized soak over the deterministic harness: proposals, loss,
//! duplication, reordering, partitions, crash-restart and compaction, with
//! agreement checked by the harness on every decision, log indexes compared
//! across replicas after every step, and liveness required once faults stop.
//! The full-length simulator lives in `paxos-sim`; this keeps a quick one in
//! the core's own tests, since it caught real bugs.

use std::collections::HashMap;

use paxos_core::harness::{Cluster, Faults};
use paxos_core::rng::Rng;
use paxos_core::{Command, NodeId, Protocol};

fn soak(protocol: Protocol, seed: u64, size: usize, steps: u64) {
    let mut rng = Rng::new(seed ^ 0xABCD_EF01);
    let mut cluster = Cluster::with_config(size, protocol, seed, |config| {
        config.batch_commands_max = 4;
        config.slots_in_flight_max = 8;
    });
    cluster.faults = Faults { drop_per_million: 100_000, duplicate_per_million: 50_000, reorder: true };
    let members = size as u64;
    let mut sequence = 0u64;
    let mut down: Vec<NodeId> = Vec::new();
    for step in 0..steps {
        match rng.range_inclusive(0, 99) {
            0..=29 => {
                sequence += 1;
                let node = cluster.leader().unwrap_or(rng.range_inclusive(1, members));
                let _ = cluster.propose(node, vec![Command::new(1, sequence, vec![sequence as u8])]);
            }
            30..=32 if down.len() < (size - 1) / 2 => {
                let node = rng.range_inclusive(1, members);
                if !down.contains(&node) {
                    cluster.crash(node);
                    down.push(node);
                }
            }
            33..=36 => {
                if let Some(node) = down.pop() {
                    cluster.restart(node);
                }
            }
            37 => {
                let node = rng.range_inclusive(1, members);
                cluster.partition(&[node]);
            }
            38..=40 => cluster.heal(),
            41 => {
                let node = rng.range_inclusive(1, members);
                if let Some(replica) = cluster.replica(node) {
                    let through = replica.learner().applied_through();
                    let _ = cluster.compact(node, through, Vec::new());
                }
            }
            _ => {
                for _ in 0..20 {
                    cluster.deliver_one();
                }
                if step % 3 == 0 {
                    cluster.tick();
                }
            }
        }
        cluster.check_invariants();
        // Replicas that applied the same slots gave their commands the same indexes.
        let mut next_index_at: HashMap<u64, u64> = HashMap::new();
        for node in cluster.members() {
            let Some(replica) = cluster.replica(node) else { continue };
            let status = replica.status();
            if let Some(other) = next_index_at.insert(status.applied_through, status.next_index) {
                assert_eq!(other, status.next_index, "{protocol:?} seed {seed} step {step}: log indexes diverged");
            }
        }
    }
    // Liveness: faults stop, everyone is back, a new command gets applied everywhere.
    cluster.heal();
    for node in down.drain(..) {
        cluster.restart(node);
    }
    cluster.faults = Faults::default();
    let final_command = Command::new(2, 1, Vec::new());
    for attempt in 0..300u64 {
        let node = cluster.leader().unwrap_or(attempt % members + 1);
        let _ = cluster.propose(node, vec![final_command.clone()]);
        let applied_everywhere = cluster.run_until(2000, 20, |cluster| {
            cluster.members().iter().all(|node| {
                let replica = cluster.replica(*node).unwrap();
                replica.learner().applied_through() >= 1
                    && cluster.applied_commands(*node).iter().any(|command| command.id == final_command.id)
            })
        });
        if applied_everywhere {
            return;
        }
    }
    panic!("{protocol:?} seed {seed} size {size}: no progress after faults stopped");
}

#[test]
fn multi_paxos_survives_a_randomized_soak() {
    for seed in 0..20 {
        soak(Protocol::Multi, seed, 3, 1500);
        soak(Protocol::Multi, seed, 5, 1500);
    }
}

#[test]
fn basic_paxos_survives_a_randomized_soak() {
    for seed in 0..20 {
        soak(Protocol::Basic, seed, 3, 1500);
        soak(Protocol::Basic, seed, 5, 1500);
    }
}
