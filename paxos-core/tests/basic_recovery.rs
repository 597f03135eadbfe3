//! A full-cluster power cut between "accepted by a majority" and "stored as chosen
//! anywhere": after every replica restarts, with no new client command to push an
//! instance into that slot, the accepted value must still be learned everywhere.

use paxos_core::harness::Cluster;
use paxos_core::{Command, NodeId, Protocol, Slot};

const TICKS_MAX: u64 = 2000;

fn command() -> Command {
    Command::new(7, 1, b"survives the power cut".to_vec())
}

/// Storage of every member holds an accepted value for `slot`.
fn accepted_everywhere(cluster: &Cluster, slot: Slot) -> bool {
    cluster.members().iter().all(|node| cluster.durable(*node).slots.get(&slot).is_some_and(|s| s.accepted.is_some()))
}

/// Storage of some member records `slot` as chosen.
fn chosen_anywhere(cluster: &Cluster, slot: Slot) -> bool {
    cluster.members().iter().any(|node| cluster.durable(*node).slots.get(&slot).is_some_and(|s| s.chosen.is_some()))
}

fn applied_everywhere(cluster: &Cluster) -> bool {
    cluster.members().iter().all(|node| cluster.applied_commands(*node).iter().any(|c| c.id == command().id))
}

/// Delivers messages one at a time until every acceptor has durably accepted
/// `slot`, then cuts the power everywhere: the `Accepted` replies still in flight
/// are lost with the crashed receivers, so no replica ever learned the slot chosen.
fn accept_everywhere_then_power_cut(cluster: &mut Cluster, slot: Slot) {
    let mut delivered = 0;
    while !accepted_everywhere(cluster, slot) {
        assert!(cluster.deliver_one(), "the network ran dry before every acceptor accepted");
        delivered += 1;
        assert!(delivered < 10_000, "the accepts never reached every acceptor");
    }
    assert!(!chosen_anywhere(cluster, slot), "the test wants the power cut before anyone learns the slot");
    for node in cluster.members() {
        assert!(cluster.applied_commands(node).is_empty(), "node {node} applied before the power cut");
        cluster.crash(node);
    }
    for node in cluster.members() {
        cluster.restart(node);
    }
}

/// No proposals from here on: only ticks, each followed by delivering what is in flight.
fn tick_until_applied_everywhere(cluster: &mut Cluster) -> Option<u64> {
    for tick in 1..=TICKS_MAX {
        cluster.tick();
        for _ in 0..10_000 {
            if !cluster.deliver_one() {
                break;
            }
        }
        cluster.check_invariants();
        if applied_everywhere(cluster) {
            return Some(tick);
        }
    }
    None
}

#[test]
fn basic_paxos_learns_a_value_accepted_before_a_full_power_cut() {
    for seed in 0..10 {
        let mut cluster = Cluster::new(3, Protocol::Basic, 300 + seed);
        cluster.propose(1, vec![command()]).unwrap();
        accept_everywhere_then_power_cut(&mut cluster, 1);
        let ticks = tick_until_applied_everywhere(&mut cluster);
        assert!(ticks.is_some(), "seed {seed}: the accepted slot was never learned after the restart");
        for node in cluster.members() {
            let applied: Vec<Command> = cluster.applied_commands(node);
            assert_eq!(applied, vec![command()], "seed {seed}: node {node} applied the accepted command once");
        }
    }
}

#[test]
fn basic_paxos_survivors_learn_a_value_whose_proposer_crashed_mid_instance() {
    for seed in 0..10 {
        let mut cluster = Cluster::new(3, Protocol::Basic, 500 + seed);
        cluster.propose(1, vec![command()]).unwrap();
        let mut delivered = 0;
        while !accepted_everywhere(&cluster, 1) {
            assert!(cluster.deliver_one());
            delivered += 1;
            assert!(delivered < 10_000);
        }
        assert!(!chosen_anywhere(&cluster, 1));
        // Only the proposer dies (and stays down); the survivors get no new command.
        cluster.crash(1);
        let survivors = [2, 3];
        let mut learned = false;
        for _ in 0..TICKS_MAX {
            cluster.tick();
            while cluster.deliver_one() {}
            cluster.check_invariants();
            learned = survivors.iter().all(|node| cluster.applied_commands(*node) == vec![command()]);
            if learned {
                break;
            }
        }
        assert!(learned, "seed {seed}: the survivors never learned the accepted value");
    }
}

#[test]
fn multi_paxos_learns_a_value_accepted_before_a_full_power_cut() {
    for seed in 0..10 {
        let mut cluster = Cluster::new(3, Protocol::Multi, 400 + seed);
        assert!(cluster.run_until(20_000, 50, |cluster| cluster.leader().is_some()), "no leader elected");
        let leader: NodeId = cluster.leader().unwrap();
        // Let the election's own traffic settle, so the next slot is the command's.
        cluster.run_until(1_000, 50, |_| false);
        let slot = cluster.replica(leader).unwrap().learner().applied_through() + 1;
        cluster.propose(leader, vec![command()]).unwrap();
        accept_everywhere_then_power_cut(&mut cluster, slot);
        let ticks = tick_until_applied_everywhere(&mut cluster);
        assert!(ticks.is_some(), "seed {seed}: the accepted slot was never learned after the restart");
        for node in cluster.members() {
            assert_eq!(cluster.applied_commands(node), vec![command()], "seed {seed}: node {node}");
        }
    }
}
