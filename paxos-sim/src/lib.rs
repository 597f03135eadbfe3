//! Deterministic simulation of Basic and Multi-Paxos, with an invariant checker
//! that looks only at what replicas emit and store, never at their own bookkeeping.
//!
//! One seed fixes a whole run: the replicas are the real sans-IO core, driven by
//! [`paxos_core::harness::Cluster`] with a lossy, duplicating, reordering network,
//! symmetric and one-way partitions, crash-restarts, log compaction, and storage
//! whose writes complete late (a crash loses the writes not yet complete, and the
//! replies waiting for them). After the fault phase, faults stop and every client
//! command still pending must be chosen within a bounded number of steps.
#![deny(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use paxos_core::harness::{Cluster, FaultCounts, Faults, StorageFaults};
use paxos_core::rng::Rng;
use paxos_core::{Ballot, Command, CommandId, NodeId, Protocol, Slot, Value};

/// Steps of the fault phase unless told otherwise (the command line's `--steps` default).
pub const DEFAULT_STEPS: u64 = 2_000;

/// One simulation run's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Basic or Multi-Paxos.
    pub protocol: Protocol,
    /// Cluster size.
    pub replicas: usize,
    /// Fixes every random choice of the run.
    pub seed: u64,
    /// Steps of the fault phase.
    pub steps: u64,
    /// Network loss and duplication rates; reordering on or off.
    pub faults: Faults,
    /// Late writes and the planted reply-before-persist bug.
    pub storage: StorageFaults,
}

impl SimConfig {
    /// Every fault on, at rates that still let a run make progress.
    pub fn all_faults(protocol: Protocol, seed: u64) -> SimConfig {
        SimConfig {
            protocol,
            // Half the runs with 3 replicas, where faults bite most often; the rest
            // with 5 and 7. Some stale-leader histories need two quorums and a
            // replica outside both, which takes 7.
            replicas: [3, 5, 3, 7][(seed % 4) as usize],
            seed,
            steps: DEFAULT_STEPS,
            faults: Faults { drop_per_million: 100_000, duplicate_per_million: 50_000, reorder: true },
            storage: StorageFaults { write_delay_max: 20, reply_before_persist: false },
        }
    }
}

/// What a passing run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Steps taken, fault phase and liveness phase together.
    pub steps: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Network and storage faults, by kind.
    pub faults: FaultCounts,
    /// Partitions made (symmetric and one-way).
    pub partitions: u64,
    /// Crash-restarts.
    pub restarts: u64,
    /// Log compactions.
    pub compactions: u64,
    /// Distinct commands clients submitted.
    pub submitted: u64,
    /// Commands acknowledged to their client.
    pub acknowledged: u64,
}

impl Summary {
    /// Adds another run's counts to this one.
    pub fn add(&mut self, other: &Summary) {
        self.steps += other.steps;
        self.delivered += other.delivered;
        self.faults.lost += other.faults.lost;
        self.faults.partitioned += other.faults.partitioned;
        self.faults.duplicated += other.faults.duplicated;
        self.faults.reordered += other.faults.reordered;
        self.faults.crashes += other.faults.crashes;
        self.faults.writes_lost += other.faults.writes_lost;
        self.partitions += other.partitions;
        self.restarts += other.restarts;
        self.compactions += other.compactions;
        self.submitted += other.submitted;
        self.acknowledged += other.acknowledged;
    }

    /// Faults injected, all kinds together.
    pub fn faults_injected(&self) -> u64 {
        let f = &self.faults;
        f.lost + f.partitioned + f.duplicated + f.reordered + f.crashes + f.writes_lost + self.partitions
    }
}

/// A broken invariant, with what it takes to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The run's protocol.
    pub protocol: Protocol,
    /// The run's seed.
    pub seed: u64,
    /// Steps of the run's fault phase ([`SimConfig::steps`]); the replay needs them too.
    pub steps: u64,
    /// The step at which the checker saw it.
    pub step: u64,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            Protocol::Basic => "basic",
            Protocol::Multi => "multi",
        };
        write!(
            f,
            "{protocol} seed {} step {}: {} (replay: cargo xtask sim --seed {} --protocol {protocol}",
            self.seed, self.step, self.what, self.seed
        )?;
        if self.steps != DEFAULT_STEPS {
            write!(f, " --steps {}", self.steps)?;
        }
        write!(f, ")")
    }
}

/// The checker's own record of the run, built only from emitted decisions and storage.
#[derive(Default)]
struct Checker {
    /// The first value ever decided for each slot, on any replica.
    decided: BTreeMap<Slot, Value>,
    /// The slot each decided command id was first decided in.
    slot_of: HashMap<CommandId, Slot>,
    submitted: HashSet<CommandId>,
    /// Per replica: how many of its current incarnation's decisions were checked,
    /// and the command ids it applied in that incarnation.
    seen: HashMap<NodeId, (usize, HashSet<CommandId>)>,
    /// Per replica, the highest promise storage ever held.
    durable_promised: HashMap<NodeId, Ballot>,
    acknowledged: HashSet<CommandId>,
}

impl Checker {
    fn check(&mut self, cluster: &Cluster) -> Result<(), String> {
        for node in cluster.members() {
            // Acceptors: the durable promise never goes down, across restarts too,
            // and covers every durable accepted ballot.
            let durable = cluster.durable(node);
            let previous = self.durable_promised.entry(node).or_insert(Ballot::ZERO);
            if durable.promised < *previous {
                return Err(format!(
                    "replica {node}'s durable promise went down from {previous} to {}",
                    durable.promised
                ));
            }
            *previous = durable.promised;
            for (slot, state) in &durable.slots {
                if let Some((ballot, _)) = &state.accepted {
                    if *ballot > durable.promised.max(state.promised) {
                        return Err(format!(
                            "replica {node} stored slot {slot} accepted at {ballot} above its promise"
                        ));
                    }
                }
            }
            let Some(replica) = cluster.replica(node) else { continue };
            if replica.acceptor().promised() < durable.promised {
                return Err(format!("replica {node} runs with a promise below what it stored"));
            }
            let (checked, applied) = self.seen.entry(node).or_default();
            for decided in &cluster.applied(node)[*checked..] {
                // Agreement: one value per slot, across replicas and all time.
                match self.decided.get(&decided.slot) {
                    Some(value) if *value != decided.value => {
                        return Err(format!("slot {} decided with two values", decided.slot));
                    }
                    Some(_) => {}
                    None => {
                        self.decided.insert(decided.slot, decided.value.clone());
                    }
                }
                for command in decided.value.commands() {
                    // Validity: only what clients proposed (or no-ops) is chosen.
                    if !self.submitted.contains(&command.id) {
                        return Err(format!("slot {} holds a command no client submitted", decided.slot));
                    }
                    self.slot_of.entry(command.id).or_insert(decided.slot);
                }
                // No double application within one incarnation of a replica.
                for (_, command) in decided.entries() {
                    if !applied.insert(command.id) {
                        return Err(format!("replica {node} applied {:?} twice", command.id));
                    }
                }
            }
            *checked = cluster.applied(node).len();
        }
        Ok(())
    }

    fn restarted(&mut self, node: NodeId) {
        self.seen.remove(&node);
    }
}

/// The client side: which commands are pending, and at which replica.
struct Clients {
    next_sequence: u64,
    pending: BTreeMap<CommandId, (Command, NodeId)>,
}

fn submit(cluster: &mut Cluster, command: &Command, node: NodeId) {
    let target = cluster.leader().unwrap_or(node);
    let _ = cluster.propose(target, vec![command.clone()]);
}

/// Runs one simulation. A panic inside a replica (its own safety assertions)
/// counts as a violation too.
pub fn run(config: &SimConfig) -> Result<Summary, Violation> {
    let mut step = 0u64;
    let outcome = catch_unwind(AssertUnwindSafe(|| run_inner(config, &mut step)));
    let violation =
        |what: String| Violation { protocol: config.protocol, seed: config.seed, steps: config.steps, step, what };
    match outcome {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(what)) => Err(violation(what)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a replica panicked".to_string());
            Err(violation(format!("panic: {message}")))
        }
    }
}

fn run_inner(config: &SimConfig, step: &mut u64) -> Result<Summary, String> {
    let size = config.replicas as u64;
    let mut rng = Rng::new(config.seed ^ 0x5EED_5EED_5EED_5EED);
    let mut cluster = Cluster::with_config(config.replicas, config.protocol, config.seed, |replica| {
        replica.batch_commands_max = 4;
        replica.slots_in_flight_max = 8;
    });
    cluster.faults = config.faults;
    cluster.storage_faults = config.storage;
    // The checker below judges agreement from what replicas emit, not the harness.
    cluster.assert_agreement = false;
    let mut checker = Checker::default();
    let mut clients = Clients { next_sequence: 0, pending: BTreeMap::new() };
    let mut summary = Summary::default();
    let mut down: Vec<NodeId> = Vec::new();

    // A command is acknowledged once the replica its client talks to has applied
    // the slot it was decided in (directly, or through a snapshot covering it).
    let acknowledge = |cluster: &Cluster, clients: &mut Clients, checker: &mut Checker| {
        clients.pending.retain(|id, (_, node)| {
            let Some(slot) = checker.slot_of.get(id) else { return true };
            let Some(replica) = cluster.replica(*node) else { return true };
            if replica.learner().applied_through() >= *slot {
                checker.acknowledged.insert(*id);
                return false;
            }
            true
        });
    };

    for _ in 0..config.steps {
        *step += 1;
        match rng.range_inclusive(0, 99) {
            0..=19 => {
                clients.next_sequence += 1;
                let command = Command::new(1, clients.next_sequence, clients.next_sequence.to_le_bytes().to_vec());
                let node = rng.range_inclusive(1, size);
                checker.submitted.insert(command.id);
                submit(&mut cluster, &command, node);
                clients.pending.insert(command.id, (command, node));
            }
            20..=22 => {
                // A client retries a pending command under the same id.
                if let Some((command, node)) = clients.pending.values().next().cloned() {
                    submit(&mut cluster, &command, node);
                }
            }
            23..=25 if down.len() < (config.replicas - 1) / 2 => {
                let node = rng.range_inclusive(1, size);
                if !down.contains(&node) {
                    cluster.crash(node);
                    down.push(node);
                }
            }
            26..=29 => {
                if let Some(node) = down.pop() {
                    cluster.restart(node);
                    checker.restarted(node);
                    summary.restarts += 1;
                }
            }
            30 => {
                let node = rng.range_inclusive(1, size);
                cluster.partition(&[node]);
                summary.partitions += 1;
            }
            31 => {
                let (from, to) = (rng.range_inclusive(1, size), rng.range_inclusive(1, size));
                if from != to {
                    cluster.block(from, to);
                    summary.partitions += 1;
                }
            }
            32..=34 => cluster.heal(),
            35 => {
                let node = rng.range_inclusive(1, size);
                if let Some(replica) = cluster.replica(node) {
                    let through = replica.learner().applied_through();
                    if cluster.compact(node, through, Vec::new()).is_ok() {
                        summary.compactions += 1;
                    }
                }
            }
            _ => {
                for _ in 0..10 {
                    cluster.deliver_one();
                }
                if rng.chance(1, 3) {
                    cluster.tick();
                }
            }
        }
        checker.check(&cluster)?;
        acknowledge(&cluster, &mut clients, &mut checker);
    }

    // Liveness: faults stop, every replica is up and connected; every pending
    // command must be chosen within a bounded number of steps.
    cluster.heal();
    for node in down.drain(..) {
        cluster.restart(node);
        checker.restarted(node);
        summary.restarts += 1;
    }
    cluster.faults = Faults::default();
    cluster.storage_faults.write_delay_max = 0;
    let liveness_steps_max = 200_000u64;
    let mut liveness_steps = 0u64;
    while !clients.pending.is_empty() {
        if liveness_steps >= liveness_steps_max {
            if std::env::var_os("PAXOS_SIM_DUMP").is_some() {
                eprintln!("in flight: {}", cluster.in_flight());
                for node in cluster.members() {
                    let replica = cluster.replica(node).expect("all up");
                    eprintln!("{:?}", replica.status());
                    let dump = format!("{replica:?}");
                    let at = dump.find("instances").unwrap_or(0);
                    eprintln!("{}", &dump[at..(at + 1500).min(dump.len())]);
                }
            }
            return Err(format!(
                "liveness: {} commands still pending {liveness_steps_max} steps after faults stopped",
                clients.pending.len()
            ));
        }
        let retries: Vec<(Command, NodeId)> = clients.pending.values().cloned().collect();
        for (command, node) in &retries {
            submit(&mut cluster, command, *node);
        }
        // Clients retry on a timeout, not on every step: re-offering everything too
        // often only floods the proposers' queues.
        for _ in 0..5_000 {
            *step += 1;
            liveness_steps += 1;
            // After the faults, the network is fast compared to the timeouts
            // (Paxos' liveness assumption): many deliveries per tick.
            if !cluster.deliver_one() || liveness_steps.is_multiple_of(200) {
                cluster.tick();
            }
        }
        checker.check(&cluster)?;
        acknowledge(&cluster, &mut clients, &mut checker);
    }
    // Durability: every acknowledged command is in the decided log, and every
    // replica has applied past its slot.
    for id in &checker.acknowledged {
        let Some(slot) = checker.slot_of.get(id) else {
            return Err(format!("acknowledged command {id:?} is not in the decided log"));
        };
        for node in cluster.members() {
            let applied = cluster.replica(node).expect("all up").learner().applied_through();
            if applied < *slot {
                // Give laggards a bounded chance to catch up before judging.
                let caught_up = cluster.run_until(50_000, 10, |cluster| {
                    cluster.replica(node).expect("all up").learner().applied_through() >= *slot
                });
                if !caught_up {
                    return Err(format!("replica {node} never applied slot {slot} holding acknowledged {id:?}"));
                }
            }
        }
    }
    checker.check(&cluster)?;
    summary.steps = *step;
    summary.delivered = cluster.delivered;
    summary.faults = cluster.fault_counts;
    summary.submitted = checker.submitted.len() as u64;
    summary.acknowledged = checker.acknowledged.len() as u64;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(steps: u64) -> Violation {
        Violation { protocol: Protocol::Multi, seed: 42, steps, step: 7, what: "slot 3 decided with two values".into() }
    }

    #[test]
    fn the_replay_line_names_the_steps_only_when_they_differ_from_the_default() {
        let default = violation(DEFAULT_STEPS).to_string();
        assert!(default.ends_with("(replay: cargo xtask sim --seed 42 --protocol multi)"), "{default}");
        assert!(!default.contains("--steps"), "{default}");
        let longer = violation(5_000).to_string();
        assert!(longer.ends_with("(replay: cargo xtask sim --seed 42 --protocol multi --steps 5000)"), "{longer}");
    }
}
