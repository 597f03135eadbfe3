//! Deterministic simulation of Basic and Multi-Paxos, with an invariant checker
//! that looks only at what replicas emit and store, never at their own bookkeeping.
//!
//! One seed fixes a whole run: the replicas are the real sans-IO core, driven by
//! [`paxos_core::harness::Cluster`] with a lossy, duplicating, reordering network,
//! symmetric and one-way partitions, crash-restarts, log compaction, and storage
//! whose writes complete late (a crash loses the writes not yet complete, and the
//! replies waiting for them). After the fault phase, faults stop and every client
//! command still pending must be chosen within a bounded number of steps.
//!
//! Some histories are too deep for random faults to stumble on, so a share of
//! the seven-replica Multi-Paxos runs open with a scripted prelude that sets one
//! up ([`SimConfig::stale_leader`]) before the random faults take over.
#![deny(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use paxos_core::harness::{Cluster, FaultCounts, Faults, StorageFaults};
use paxos_core::rng::Rng;
use paxos_core::{Ballot, Command, CommandId, Config, NodeId, Protocol, Role, Slot, Value};

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
    /// Whether a Multi-Paxos run of seven or more replicas opens with a scripted
    /// prelude before its random faults: a leader cut off with one follower is
    /// overtaken by a newer leader and then hears of a slot the newer one chose
    /// (a history random faults almost never reach).
    pub stale_leader: bool,
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
            // Half the seven-replica runs: random faults almost never reach the
            // prelude's history, and the other half keep the runs unscripted.
            stale_leader: seed % 8 == 7,
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

impl Clients {
    /// A client sends a fresh command through `node`; returns its id.
    fn submit_new(&mut self, cluster: &mut Cluster, checker: &mut Checker, node: NodeId) -> CommandId {
        self.next_sequence += 1;
        let command = Command::new(1, self.next_sequence, self.next_sequence.to_le_bytes().to_vec());
        let id = command.id;
        checker.submitted.insert(id);
        submit(cluster, &command, node);
        self.pending.insert(id, (command, node));
        id
    }
}

/// A command is acknowledged once the replica its client talks to has applied
/// the slot it was decided in (directly, or through a snapshot covering it).
fn acknowledge(cluster: &Cluster, clients: &mut Clients, checker: &mut Checker) {
    clients.pending.retain(|id, (_, node)| {
        let Some(slot) = checker.slot_of.get(id) else { return true };
        let Some(replica) = cluster.replica(*node) else { return true };
        if replica.learner().applied_through() >= *slot {
            checker.acknowledged.insert(*id);
            return false;
        }
        true
    });
}

/// A write delay so long that a write drawn with it completes only when the
/// network next runs dry (the harness then completes every pending write).
const HELD_WRITE_DELAY: u64 = 1 << 40;

fn role(cluster: &Cluster, node: NodeId) -> Option<Role> {
    cluster.replica(node).map(|replica| replica.status().role)
}

fn applied_through(cluster: &Cluster, node: NodeId) -> Slot {
    cluster.replica(node).map_or(0, |replica| replica.learner().applied_through())
}

fn promised(cluster: &Cluster, node: NodeId) -> Ballot {
    cluster.replica(node).map_or(Ballot::ZERO, |replica| replica.acceptor().promised())
}

/// Drives a run step by step for a scripted prelude, checking after every step
/// exactly as the random phase does.
struct Prelude<'a> {
    cluster: &'a mut Cluster,
    checker: &'a mut Checker,
    clients: &'a mut Clients,
    step: &'a mut u64,
}

impl Prelude<'_> {
    fn checked(&mut self) -> Result<(), String> {
        *self.step += 1;
        self.checker.check(self.cluster)?;
        acknowledge(self.cluster, self.clients, self.checker);
        Ok(())
    }

    fn tick(&mut self) -> Result<(), String> {
        self.cluster.tick();
        self.checked()
    }

    /// Delivers one message. Returns false if none was waiting (after completing
    /// every pending write, held ones included).
    fn deliver(&mut self) -> Result<bool, String> {
        let delivered = self.cluster.deliver_one();
        self.checked()?;
        Ok(delivered)
    }

    fn submit_new(&mut self, node: NodeId) -> CommandId {
        self.clients.submit_new(self.cluster, self.checker, node)
    }

    /// Delivers, ticking every ten deliveries, until `done` holds; false if
    /// `steps_max` ran out. It never lets the network run dry, which would
    /// complete a held write: with nothing in flight it ticks instead.
    fn drive(&mut self, steps_max: u64, mut done: impl FnMut(&Cluster, &Checker) -> bool) -> Result<bool, String> {
        for round in 0..steps_max {
            if done(self.cluster, self.checker) {
                return Ok(true);
            }
            if self.cluster.in_flight() > 0 && round % 10 != 9 {
                self.deliver()?;
            } else {
                self.tick()?;
            }
        }
        Ok(done(self.cluster, self.checker))
    }

    /// Delivers without ticking until nothing is in flight, leaving held writes
    /// held; false if `steps_max` ran out first.
    fn drain(&mut self, steps_max: u64) -> Result<bool, String> {
        for _ in 0..steps_max {
            if self.cluster.in_flight() == 0 {
                return Ok(true);
            }
            self.deliver()?;
        }
        Ok(self.cluster.in_flight() == 0)
    }

    /// Delivers without ticking until nothing is in flight and no write is
    /// pending, held ones included.
    fn settle(&mut self, steps_max: u64) -> Result<(), String> {
        for _ in 0..steps_max {
            if !self.deliver()? {
                break;
            }
        }
        Ok(())
    }

    /// The stale-leader prelude (Multi-Paxos, seven or more replicas). It sets up
    /// the history in which a leader L learns from a peer that a newer leader
    /// chose one of L's slots, and must step down before its commit point covers
    /// that slot (`MultiPaxos::step_down_if_overtaken`):
    ///
    /// 1. The first candidate, L, is elected; one retransmission of its prepare
    ///    waits in a held write.
    /// 2. L gets a few commands chosen and applied everywhere; a follower, P,
    ///    compacts its log.
    /// 3. L and another follower, F, are cut off; L proposes one more slot, which
    ///    only F accepts.
    /// 4. The other side, P included, elects a newer leader, which chooses that
    ///    slot with another value; P learns it.
    /// 5. The network runs dry while L is still cut off from that side, so
    ///    nothing older than the held prepare is left in flight; then P joins L
    ///    and F's side and the held writes complete. P refuses the old prepare as
    ///    compacted, a refusal that reveals no promise; L catches up from P and
    ///    learns the newer leader's value for its slot. A correct L steps down
    ///    there. One that keeps leading sends F a commit point covering the slot,
    ///    and F applies the value it accepted at L's ballot.
    ///
    /// Why a held prepare: P answers "compacted" to a prepare from below its
    /// compaction point whatever it promised, but to an accept only if it
    /// promised nothing higher (otherwise it answers with its promise, and L
    /// steps down). And P serves L a catch-up, rather than a snapshot (which L
    /// would step down on too), only from above that point. So the message that
    /// sends L to P must predate slots L learned since. Under uniformly random
    /// reordering, a message that outlives a whole election on the other side is
    /// too rare to find.
    ///
    /// Each phase is bounded; one that misses its goal ends the prelude early,
    /// and the random phase goes on from wherever the cluster is.
    fn stale_leader(&mut self, summary: &mut Summary) -> Result<(), String> {
        let faults = self.cluster.faults;
        let storage = self.cluster.storage_faults;
        // Nothing lost or duplicated, and writes complete at once unless held:
        // each phase waits for its goal, not for luck.
        self.cluster.faults = Faults { drop_per_million: 0, duplicate_per_million: 0, reorder: true };
        self.cluster.storage_faults.write_delay_max = 0;
        let outcome = self.stale_leader_phases(summary);
        // However it ended, every held write completes before the random phase.
        self.cluster.heal();
        let settled = outcome.and_then(|()| self.settle(100_000));
        self.cluster.faults = faults;
        self.cluster.storage_faults = storage;
        settled
    }

    fn stale_leader_phases(&mut self, summary: &mut Summary) -> Result<(), String> {
        let members = self.cluster.members();
        // 1. Tick, delivering nothing, until the first candidate stands.
        let mut candidates = Vec::new();
        for _ in 0..100 {
            self.tick()?;
            candidates =
                members.iter().copied().filter(|node| role(self.cluster, *node) == Some(Role::Candidate)).collect();
            if !candidates.is_empty() {
                break;
            }
        }
        // Of candidates that stood on the same tick, the highest id has the highest
        // ballot (the same round): the others step down once they hear it.
        let Some(leader) = candidates.iter().copied().max() else { return Ok(()) };
        let peers: Vec<NodeId> = members.iter().copied().filter(|node| *node != leader).collect();
        // Every member hears its prepare, so none stands itself in the next few
        // ticks. Meanwhile it must not be elected yet: the promises of all but a
        // bare quorum are lost on cut links, and the last of the bare quorum's
        // arrives after the last prepare more often than not.
        let quorum = members.len() / 2 + 1;
        for peer in &peers[quorum - 1..] {
            self.cluster.block(*peer, leader);
        }
        while !members.iter().all(|node| promised(self.cluster, *node).node == leader) {
            if role(self.cluster, leader) != Some(Role::Candidate) || self.cluster.in_flight() == 0 {
                return Ok(());
            }
            self.deliver()?;
        }
        let ballot = promised(self.cluster, peers[0]);
        // Its first retransmission, `retransmit_ticks` after it stood, waits in a
        // held write (and so does every later write of its own, its votes for
        // itself included: the peers make its quorums meanwhile).
        let retransmit_ticks = Config::new(leader, members.clone(), Protocol::Multi).retransmit_ticks;
        self.cluster.storage_faults.write_delay_max = HELD_WRITE_DELAY;
        for _ in 0..retransmit_ticks {
            self.tick()?;
        }
        self.cluster.storage_faults.write_delay_max = 0;
        self.cluster.heal();
        let others_stood = peers.iter().any(|peer| role(self.cluster, *peer) == Some(Role::Candidate));
        if others_stood || role(self.cluster, leader) != Some(Role::Candidate) {
            return Ok(());
        }
        if !self.drive(2_000, |cluster, _| role(cluster, leader) == Some(Role::Leader))? {
            return Ok(());
        }

        // 2. A few commands chosen and applied everywhere, then P compacts.
        let ids: Vec<CommandId> = (0..3).map(|_| self.submit_new(leader)).collect();
        let everywhere = |cluster: &Cluster, checker: &Checker| {
            let through = ids
                .iter()
                .map(|id| checker.slot_of.get(id).copied())
                .try_fold(0, |through, slot| slot.map(|slot| through.max(slot)));
            through.is_some_and(|through| members.iter().all(|node| applied_through(cluster, *node) >= through))
        };
        if !self.drive(3_000, everywhere)? {
            return Ok(());
        }
        let (follower, compacting) = (peers[0], peers[1]);
        let through = applied_through(self.cluster, compacting);
        if self.cluster.compact(compacting, through, Vec::new()).is_err() {
            return Ok(());
        }
        summary.compactions += 1;

        // 3. L and F cut off; L's next slot is accepted by F alone.
        self.cluster.partition(&[leader, follower]);
        summary.partitions += 1;
        let slot = applied_through(self.cluster, leader) + 1;
        self.submit_new(leader);
        let accepted_by_follower = |cluster: &Cluster, _: &Checker| {
            let accepted = cluster.replica(follower).and_then(|replica| replica.acceptor().accepted(slot).cloned());
            accepted.is_some_and(|(accepted, _)| accepted == ballot)
        };
        if !self.drive(1_000, accepted_by_follower)? {
            return Ok(());
        }

        // 4. The other side elects a newer leader, which chooses the slot; P learns it.
        let majority: Vec<NodeId> = peers.iter().copied().filter(|peer| *peer != follower).collect();
        let newer =
            |cluster: &Cluster| majority.iter().copied().find(|node| role(cluster, *node) == Some(Role::Leader));
        if !self.drive(5_000, |cluster, _| newer(cluster).is_some())? {
            return Ok(());
        }
        let newer_leader = newer(self.cluster).expect("driven until one is elected");
        self.submit_new(newer_leader);
        let learned = |cluster: &Cluster, _: &Checker| {
            applied_through(cluster, compacting) >= slot && applied_through(cluster, newer_leader) >= slot
        };
        if !self.drive(3_000, learned)? {
            return Ok(());
        }

        // 5. Dry network, P on L's side, held writes complete; a few ticks for the
        // commit point.
        if !self.drain(20_000)? {
            return Ok(());
        }
        self.cluster.heal();
        self.cluster.partition(&[leader, follower, compacting]);
        summary.partitions += 1;
        for _ in 0..5 {
            self.settle(20_000)?;
            self.tick()?;
        }
        Ok(())
    }
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
        // One seed in four, messages of about one value each: long promises,
        // accepts, catch-ups and forwards then go in parts (see `message_bytes_max`).
        if config.seed % 4 == 1 {
            replica.message_bytes_max = 256;
        }
        // Compacted slots kept for catch-up: none (a lagging replica always
        // takes a snapshot), a few (it takes the kept slots or a snapshot,
        // depending on how far behind it is), or the default (nearly always the slots).
        replica.compaction_keep_slots = match config.seed % 3 {
            0 => 0,
            1 => 4,
            _ => replica.compaction_keep_slots,
        };
    });
    cluster.faults = config.faults;
    cluster.storage_faults = config.storage;
    // The checker below judges agreement from what replicas emit, not the harness.
    cluster.assert_agreement = false;
    let mut checker = Checker::default();
    let mut clients = Clients { next_sequence: 0, pending: BTreeMap::new() };
    let mut summary = Summary::default();
    let mut down: Vec<NodeId> = Vec::new();

    if config.stale_leader && config.protocol == Protocol::Multi && config.replicas >= 7 {
        let mut prelude =
            Prelude { cluster: &mut cluster, checker: &mut checker, clients: &mut clients, step: &mut *step };
        prelude.stale_leader(&mut summary)?;
    }

    for _ in 0..config.steps {
        *step += 1;
        match rng.range_inclusive(0, 99) {
            0..=19 => {
                let node = rng.range_inclusive(1, size);
                clients.submit_new(&mut cluster, &mut checker, node);
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
                    // Application state of up to 2 KiB: with the 256-byte message
                    // budget of one seed in four, a snapshot goes in up to ten parts.
                    let data = vec![node as u8; rng.range_inclusive(0, 2048) as usize];
                    if cluster.compact(node, through, data).is_ok() {
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
        // Every replica's own safety assertions (a failure panics, reported
        // as a violation with its seed), then agreement across replicas.
        cluster.check_invariants();
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
