//! Scenario tests over the deterministic harness: the situations the seeds
//! describe, replayed with loss, crashes, partitions and duelling proposers.

use paxos_core::harness::{Cluster, Faults};
use paxos_core::{Command, NodeId, Protocol, Role};

fn command(client: u64, sequence: u64) -> Command {
    Command::new(client, sequence, format!("c{client}-{sequence}").into_bytes())
}

/// Every live replica has applied at least `count` commands.
fn all_applied(cluster: &Cluster, nodes: &[NodeId], count: usize) -> bool {
    nodes.iter().all(|node| cluster.applied_commands(*node).len() >= count)
}

fn assert_same_log(cluster: &Cluster, nodes: &[NodeId]) {
    let reference = cluster.applied_commands(nodes[0]);
    for node in &nodes[1..] {
        let log = cluster.applied_commands(*node);
        let common = reference.len().min(log.len());
        assert_eq!(reference[..common], log[..common], "replicas {} and {node} disagree", nodes[0]);
    }
}

/// A client that retries under the same id until `observer` applied the command.
fn submit(cluster: &mut Cluster, observer: NodeId, client: u64, sequence: u64) {
    for attempt in 0..200u64 {
        let members = cluster.members();
        let node = cluster.leader().unwrap_or(members[(attempt as usize) % members.len()]);
        let _ = cluster.propose(node, vec![command(client, sequence)]);
        let applied = cluster.run_until(400, 20, |cluster| {
            cluster.applied_commands(observer).iter().any(|c| c.id == command(client, sequence).id)
        });
        if applied {
            return;
        }
    }
    panic!("command ({client}, {sequence}) never applied at {observer}");
}

fn elect(cluster: &mut Cluster) -> NodeId {
    assert!(cluster.run_until(20_000, 50, |cluster| cluster.leader().is_some()), "no leader elected");
    cluster.leader().unwrap()
}

#[test]
fn multi_paxos_replicates_a_log_to_every_replica() {
    let mut cluster = Cluster::new(3, Protocol::Multi, 1);
    let leader = elect(&mut cluster);
    for sequence in 1..=100 {
        cluster.propose(leader, vec![command(1, sequence)]).unwrap();
    }
    assert!(cluster.run_until(50_000, 50, |cluster| all_applied(cluster, &[1, 2, 3], 100)));
    assert_same_log(&cluster, &[1, 2, 3]);
    assert_eq!(cluster.applied_commands(1).len(), 100, "each command applied exactly once");
}

#[test]
fn multi_paxos_runs_phase_1_once_then_only_phase_2() {
    let mut cluster = Cluster::new(3, Protocol::Multi, 2);
    let leader = elect(&mut cluster);
    let promised = cluster.replica(leader).unwrap().status().promised;
    for sequence in 1..=50 {
        cluster.propose(leader, vec![command(1, sequence)]).unwrap();
        assert!(cluster.run_until(10_000, 50, |cluster| all_applied(cluster, &[leader], sequence as usize)));
    }
    assert_eq!(cluster.replica(leader).unwrap().status().promised, promised, "no new ballot was needed");
    assert_eq!(cluster.leader(), Some(leader));
}

#[test]
fn a_follower_forwards_commands_to_the_leader() {
    let mut cluster = Cluster::new(3, Protocol::Multi, 3);
    let leader = elect(&mut cluster);
    // Let followers learn who leads from a heartbeat.
    assert!(cluster.run_until(10_000, 50, |cluster| {
        cluster.members().iter().all(|node| cluster.replica(*node).unwrap().status().leader == Some(leader))
    }));
    let follower = cluster.members().into_iter().find(|node| *node != leader).unwrap();
    cluster.propose(follower, vec![command(9, 1)]).unwrap();
    assert!(cluster.run_until(10_000, 50, |cluster| all_applied(cluster, &[1, 2, 3], 1)));
}

#[test]
fn batching_and_pipelining_put_many_commands_in_few_slots() {
    let mut cluster = Cluster::with_config(3, Protocol::Multi, 4, |config| {
        config.batch_commands_max = 100;
        config.slots_in_flight_max = 4;
    });
    let leader = elect(&mut cluster);
    let commands = (1..=1000).map(|sequence| command(1, sequence)).collect();
    cluster.propose(leader, commands).unwrap();
    assert!(cluster.run_until(50_000, 50, |cluster| all_applied(cluster, &[1, 2, 3], 1000)));
    let slots = cluster.applied(leader).iter().filter(|decided| !decided.value.commands().is_empty()).count();
    assert!(slots <= 20, "1000 commands took {slots} slots");
}

#[test]
fn loss_and_duplication_are_tolerated_and_lost_messages_retransmitted() {
    for protocol in [Protocol::Multi, Protocol::Basic] {
        let mut cluster = Cluster::new(3, protocol, 5);
        cluster.faults = Faults { drop_per_million: 200_000, duplicate_per_million: 100_000, reorder: true };
        // A client retries under the same id until its command is applied (dedup
        // makes that safe), as NodeHandle::add does.
        for sequence in 1..=30u64 {
            submit(&mut cluster, 1, 1, sequence);
        }
        let done = cluster.run_until(200_000, 20, |cluster| all_applied(cluster, &[1, 2, 3], 30));
        assert!(done, "{protocol:?}: commands not all applied under loss");
        assert_same_log(&cluster, &[1, 2, 3]);
        assert!(cluster.dropped > 0, "the test dropped nothing");
    }
}

#[test]
fn minority_crash_progress_majority_crash_no_progress_restart_resumes() {
    for protocol in [Protocol::Multi, Protocol::Basic] {
        let mut cluster = Cluster::new(5, protocol, 6);
        cluster.faults = Faults { drop_per_million: 50_000, duplicate_per_million: 0, reorder: true };
        let proposer = 1;
        cluster.crash(4);
        cluster.crash(5);
        let propose = |cluster: &mut Cluster, sequence: u64| {
            for _ in 0..2000 {
                let target = cluster.leader().unwrap_or(proposer);
                if cluster.propose(target, vec![command(1, sequence)]).is_ok() {
                    return;
                }
                cluster.run_until(50, 10, |_| false);
            }
            panic!("could not propose");
        };
        for sequence in 1..=10 {
            propose(&mut cluster, sequence);
        }
        assert!(
            cluster.run_until(200_000, 20, |cluster| all_applied(cluster, &[1, 2, 3], 10)),
            "{protocol:?}: a majority is up, so progress continues"
        );

        // Majority down: nothing new is chosen, and nothing wrong.
        cluster.crash(2);
        cluster.crash(3);
        let before = cluster.applied_commands(1).len();
        let _ = cluster.propose(1, vec![command(1, 11)]);
        cluster.run_until(20_000, 20, |_| false);
        assert_eq!(cluster.applied_commands(1).len(), before, "{protocol:?}: no progress without a majority");

        // Restart: the majority is back and the pending command goes through.
        for node in [2, 3, 4, 5] {
            cluster.restart(node);
        }
        propose(&mut cluster, 11);
        assert!(
            cluster.run_until(400_000, 20, |cluster| cluster.applied_commands(1).iter().any(|c| c.id.sequence == 11)),
            "{protocol:?}: progress resumes after restart"
        );
        assert!(cluster.run_until(400_000, 20, |cluster| all_applied(cluster, &[1, 2, 3, 4, 5], before + 1)));
        assert_same_log(&cluster, &[1, 2, 3, 4, 5]);
    }
}

#[test]
fn duelling_basic_proposers_eventually_decide() {
    for seed in 0..20 {
        let mut cluster = Cluster::new(3, Protocol::Basic, 100 + seed);
        // Every node proposes at once, for the same first slot.
        for node in 1..=3 {
            cluster.propose(node, vec![command(node, 1)]).unwrap();
        }
        assert!(
            cluster.run_until(200_000, 5, |cluster| all_applied(cluster, &[1, 2, 3], 3)),
            "seed {seed}: duelling proposers livelocked"
        );
        assert_same_log(&cluster, &[1, 2, 3]);
    }
}

#[test]
fn new_multi_leader_fills_holes_and_keeps_in_flight_values() {
    for seed in 0..10 {
        let mut cluster = Cluster::with_config(3, Protocol::Multi, 200 + seed, |config| {
            config.batch_commands_max = 1;
        });
        let leader = elect(&mut cluster);
        cluster.run_until(1000, 50, |_| false);
        for sequence in 1..=20 {
            cluster.propose(leader, vec![command(1, sequence)]).unwrap();
        }
        // Deliver a few messages, so some slots are accepted by one follower only,
        // then crash the leader with slots in flight.
        for _ in 0..(7 + seed as usize * 3) {
            cluster.deliver_one();
        }
        cluster.crash(leader);
        let survivors: Vec<NodeId> = cluster.members().into_iter().filter(|node| *node != leader).collect();
        assert!(cluster.run_until(50_000, 20, |cluster| cluster.leader().is_some_and(|new| new != leader)));
        let new_leader = cluster.leader().unwrap();
        for sequence in 21..=25 {
            cluster.propose(new_leader, vec![command(2, sequence)]).unwrap();
        }
        assert!(cluster.run_until(100_000, 20, |cluster| {
            survivors
                .iter()
                .all(|node| cluster.applied_commands(*node).iter().filter(|c| c.id.client == 2).count() == 5)
        }));
        assert_same_log(&cluster, &survivors);
        // The old leader restarts and catches up to the same log.
        cluster.restart(leader);
        let target = cluster.applied_commands(survivors[0]).len();
        assert!(cluster.run_until(100_000, 20, |cluster| all_applied(cluster, &[leader], target)), "seed {seed}");
        assert_same_log(&cluster, &[survivors[0], survivors[1], leader]);
        let status = cluster.replica(leader).unwrap().status();
        assert_ne!(status.role, Role::Leader);
    }
}

#[test]
fn partition_heals_and_the_old_leader_steps_down() {
    let mut cluster = Cluster::new(5, Protocol::Multi, 9);
    let leader = elect(&mut cluster);
    cluster.propose(leader, vec![command(1, 1)]).unwrap();
    assert!(cluster.run_until(10_000, 20, |cluster| all_applied(cluster, &[1, 2, 3, 4, 5], 1)));
    let minority: Vec<NodeId> = vec![leader, leader % 5 + 1];
    cluster.partition(&minority);
    let majority: Vec<NodeId> = cluster.members().into_iter().filter(|node| !minority.contains(node)).collect();
    // The old leader can accept proposals but cannot get them chosen.
    let _ = cluster.propose(leader, vec![command(1, 2)]);
    assert!(cluster.run_until(50_000, 20, |cluster| { cluster.leader().is_some_and(|new| majority.contains(&new)) }));
    let new_leader = cluster.leader().unwrap();
    cluster.propose(new_leader, vec![command(2, 1)]).unwrap();
    assert!(cluster.run_until(50_000, 20, |cluster| all_applied(cluster, &majority, 2)));
    cluster.heal();
    assert!(cluster.run_until(100_000, 20, |cluster| {
        cluster.replica(leader).unwrap().status().role != Role::Leader && all_applied(cluster, &[leader], 2)
    }));
    assert_same_log(&cluster, &cluster.members());
}

#[test]
fn a_one_way_partition_does_not_break_agreement() {
    let mut cluster = Cluster::new(3, Protocol::Multi, 10);
    let leader = elect(&mut cluster);
    let follower = leader % 3 + 1;
    cluster.block(leader, follower);
    for sequence in 1..=10 {
        cluster.propose(leader, vec![command(1, sequence)]).unwrap();
    }
    assert!(cluster
        .run_until(100_000, 20, |cluster| cluster.members().iter().any(|n| cluster.applied_commands(*n).len() >= 10)));
    cluster.heal();
    assert!(cluster.run_until(100_000, 20, |cluster| all_applied(cluster, &[1, 2, 3], 10)));
    assert_same_log(&cluster, &[1, 2, 3]);
}

#[test]
fn a_retried_command_is_applied_once() {
    let mut cluster = Cluster::new(3, Protocol::Multi, 11);
    let leader = elect(&mut cluster);
    cluster.propose(leader, vec![command(5, 1)]).unwrap();
    cluster.propose(leader, vec![command(5, 1)]).unwrap();
    cluster.propose(leader, vec![command(5, 2)]).unwrap();
    assert!(cluster.run_until(20_000, 20, |cluster| all_applied(cluster, &[1, 2, 3], 2)));
    cluster.run_until(2_000, 20, |_| false);
    for node in cluster.members() {
        let sequences: Vec<u64> = cluster.applied_commands(node).iter().map(|c| c.id.sequence).collect();
        assert_eq!(sequences, vec![1, 2], "node {node}");
    }
}

#[test]
fn a_restarted_replica_recovers_its_log_from_storage() {
    let mut cluster = Cluster::new(3, Protocol::Multi, 12);
    let leader = elect(&mut cluster);
    for sequence in 1..=10 {
        cluster.propose(leader, vec![command(1, sequence)]).unwrap();
    }
    assert!(cluster.run_until(20_000, 20, |cluster| all_applied(cluster, &[1, 2, 3], 10)));
    let before = cluster.replica(leader).unwrap().acceptor().promised();
    cluster.crash(leader);
    cluster.restart(leader);
    // The log is re-applied from storage alone, before any message arrives.
    assert_eq!(cluster.applied_commands(leader).len(), 10);
    assert_eq!(cluster.replica(leader).unwrap().acceptor().promised(), before, "the promise survived");
    assert!(cluster.durable(leader).round >= before.round, "the ballot round was reserved durably");
}

#[test]
fn a_replica_behind_the_compaction_point_is_sent_the_snapshot() {
    for protocol in [Protocol::Multi, Protocol::Basic] {
        // The others keep the last 8 compacted slots, and node 3 lacks all 40.
        let mut cluster = Cluster::with_config(3, protocol, 13, |config| config.compaction_keep_slots = 8);
        cluster.crash(3);
        for sequence in 1..=40 {
            submit(&mut cluster, 1, 1, sequence);
        }
        assert!(cluster.run_until(50_000, 20, |cluster| all_applied(cluster, &[1, 2], 40)), "{protocol:?}");
        for node in [1, 2] {
            let through = cluster.replica(node).unwrap().learner().applied_through();
            cluster.compact(node, through, b"state".to_vec()).unwrap();
            assert_eq!(
                cluster.compact(node, through, Vec::new()),
                Err(paxos_core::CompactError::AlreadyCompacted { held: through })
            );
            assert!(cluster.durable(node).slots.keys().all(|slot| *slot > through), "storage dropped the prefix");
        }
        cluster.restart(3);
        for sequence in 41..=45 {
            submit(&mut cluster, 1, 1, sequence);
        }
        let caught_up = cluster.run_until(100_000, 20, |cluster| {
            cluster.replica(3).unwrap().status().next_index >= 45 && all_applied(cluster, &[1, 2], 45)
        });
        assert!(caught_up, "{protocol:?}: node 3 caught up through the snapshot");
        let installed = cluster
            .events(3)
            .iter()
            .any(|event| matches!(event, paxos_core::Event::SnapshotInstalled(snapshot) if snapshot.data == b"state"));
        assert!(installed, "{protocol:?}: node 3 received the snapshot");
        // After the snapshot, node 3 applies exactly the commands the others applied after it.
        let tail_3: Vec<u64> = cluster.applied_commands(3).iter().map(|c| c.id.sequence).collect();
        let tail_1: Vec<u64> = cluster.applied_commands(1).iter().map(|c| c.id.sequence).filter(|s| *s > 40).collect();
        assert_eq!(tail_3, tail_1, "{protocol:?}");
        assert_eq!(cluster.replica(3).unwrap().status().next_index, cluster.replica(1).unwrap().status().next_index);
    }
}

/// A replica only a little behind the compaction point catches up from the
/// compacted slots the others still keep, as from the log, and never takes a
/// snapshot: it applies every command, in the others' order, itself. Under loss,
/// duplication and reordering, four slots per catch-up message, and with the
/// others compacting again while it is half way.
#[test]
fn a_replica_a_little_behind_the_compaction_point_catches_up_from_kept_slots() {
    for protocol in [Protocol::Multi, Protocol::Basic] {
        let mut cluster = Cluster::with_config(3, protocol, 17, |config| {
            config.compaction_keep_slots = 64;
            config.catch_up_slots_max = 4;
            // One command a slot, so catching up takes many messages.
            config.batch_commands_max = 1;
        });
        for sequence in 1..=10 {
            submit(&mut cluster, 1, 1, sequence);
        }
        assert!(cluster.run_until(50_000, 20, |cluster| all_applied(cluster, &[1, 2, 3], 10)), "{protocol:?}");
        cluster.crash(3);
        for sequence in 11..=40 {
            submit(&mut cluster, 1, 1, sequence);
        }
        assert!(cluster.run_until(50_000, 20, |cluster| all_applied(cluster, &[1, 2], 40)), "{protocol:?}");
        let compact_all = |cluster: &mut Cluster| {
            for node in [1, 2] {
                let through = cluster.replica(node).unwrap().learner().applied_through();
                cluster.compact(node, through, b"state".to_vec()).unwrap();
                assert!(cluster.durable(node).slots.keys().all(|slot| *slot > through), "storage dropped the prefix");
            }
        };
        compact_all(&mut cluster);
        cluster.faults = Faults { drop_per_million: 100_000, duplicate_per_million: 100_000, reorder: true };
        cluster.restart(3);
        // A new command makes node 3 hear of what it lacks.
        let proposer = cluster.leader().unwrap_or(1);
        let _ = cluster.propose(proposer, vec![command(1, 41)]);
        let half_way = cluster.run_until(200_000, 20, |cluster| cluster.applied_commands(3).len() >= 25);
        assert!(half_way, "{protocol:?}: node 3 started catching up");
        assert!(cluster.applied_commands(3).len() < 40, "{protocol:?}: node 3 caught up before the test could compact");
        assert!(cluster.run_until(200_000, 20, |cluster| all_applied(cluster, &[1, 2], 41)), "{protocol:?}");
        compact_all(&mut cluster);
        for sequence in 42..=45 {
            submit(&mut cluster, 1, 1, sequence);
        }
        let caught_up = cluster.run_until(200_000, 20, |cluster| {
            cluster.replica(3).unwrap().status().next_index >= 45 && all_applied(cluster, &[1, 2], 45)
        });
        assert!(caught_up, "{protocol:?}: node 3 caught up");
        let installed = cluster.events(3).iter().any(|event| matches!(event, paxos_core::Event::SnapshotInstalled(_)));
        assert!(!installed, "{protocol:?}: node 3 was sent a snapshot though the slots it lacked were kept");
        let applied_3: Vec<u64> = cluster.applied_commands(3).iter().map(|c| c.id.sequence).collect();
        let applied_1: Vec<u64> = cluster.applied_commands(1).iter().map(|c| c.id.sequence).collect();
        assert_eq!(applied_3, applied_1, "{protocol:?}: node 3 applied the others' log");
        assert_eq!(applied_3.len(), 45, "{protocol:?}");
        assert!(cluster.dropped > 0, "{protocol:?}: the test dropped nothing");
    }
}

/// A snapshot larger than a message goes in parts, up to four asked for at once, and
/// arrives whole under loss, duplication and reordering: with 4 KiB messages,
/// 100 KiB of application state takes at least 25 parts. A snapshot sent whole
/// would be larger than any message the transports carry, and dropped every time.
#[test]
fn a_snapshot_larger_than_a_message_goes_in_parts() {
    let state: Vec<u8> = (0..100 << 10).map(|byte: u32| (byte % 251) as u8).collect();
    for protocol in [Protocol::Multi, Protocol::Basic] {
        let mut cluster = Cluster::with_config(3, protocol, 21, |config| {
            config.message_bytes_max = 4 << 10;
            config.compaction_keep_slots = 0;
        });
        cluster.crash(3);
        for sequence in 1..=20 {
            submit(&mut cluster, 1, 1, sequence);
        }
        assert!(cluster.run_until(50_000, 20, |cluster| all_applied(cluster, &[1, 2], 20)), "{protocol:?}");
        for node in [1, 2] {
            let through = cluster.replica(node).unwrap().learner().applied_through();
            cluster.compact(node, through, state.clone()).unwrap();
        }
        cluster.faults = Faults { drop_per_million: 100_000, duplicate_per_million: 100_000, reorder: true };
        // A transport's frame limit: what does not fit is lost, as on the wire.
        cluster.frame_bytes_max = Some(8 << 10);
        cluster.restart(3);
        for sequence in 21..=24 {
            submit(&mut cluster, 1, 1, sequence);
        }
        let caught_up = cluster.run_until(400_000, 20, |cluster| {
            cluster.replica(3).unwrap().status().next_index >= 24 && all_applied(cluster, &[1, 2], 24)
        });
        assert!(caught_up, "{protocol:?}: node 3 caught up through the snapshot");
        let installed: Vec<&Vec<u8>> = cluster
            .events(3)
            .iter()
            .filter_map(|event| match event {
                paxos_core::Event::SnapshotInstalled(snapshot) => Some(&snapshot.data),
                _ => None,
            })
            .collect();
        assert!(!installed.is_empty(), "{protocol:?}: node 3 installed no snapshot");
        assert!(installed.iter().all(|data| **data == state), "{protocol:?}: the state arrived altered");
        assert_eq!(
            cluster.durable(3).snapshot.as_ref().map(|snapshot| &snapshot.data),
            Some(&state),
            "{protocol:?}: node 3 keeps the snapshot durably"
        );
        assert_eq!(cluster.replica(3).unwrap().status().next_index, cluster.replica(1).unwrap().status().next_index);
        assert!(cluster.dropped > 0, "{protocol:?}: the test dropped nothing");
        assert_eq!(cluster.oversize_dropped, 0, "{protocol:?}: a message outgrew the frame limit");
    }
}
