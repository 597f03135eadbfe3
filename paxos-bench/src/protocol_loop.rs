//! The protocol alone: sans-IO replicas driven in one thread, messages passed in
//! per-replica outboxes (`Vec`s), no runtime, no serialization, storage an
//! in-memory log of ops per replica ([`MemoryLog`]). What it measures is the
//! cost of the protocol.
//!
//! The load is a closed loop of `in_flight` clients: each has one command
//! outstanding, and when the proposing replica applies it (it shows up in
//! `Actions::decided`), the client submits its next one. Multi-Paxos proposes at
//! the elected leader; Basic Paxos at replica 1. Every step is a round: propose
//! what the clients submitted, deliver every queued message, then carry out every
//! replica's actions (sends, persist-then-send, decisions).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use paxos_core::{
    new_replica, Actions, Command, CommandId, Config, ConfigError, DurableState, Event, NodeId, Outgoing, ProposeError,
    Replica, Role, Slot, StorageOp,
};

use crate::check::{check_agreement, AgreementError, AppliedLog, Submitted};
use crate::measure::Measurement;
use crate::spec::{Spec, SpecError};

/// Each replica compacts its log (an empty snapshot) as a real deployment would,
/// so long runs keep memory bounded, and as soon as that pays: once it holds
/// [`COMPACT_MIN_SLOTS`] applied slots and has applied at least
/// [`COMPACT_COMMANDS_PER_CLIENT`] commands per client since the last snapshot
/// (each snapshot copies every client's dedup window, so compacting more often
/// than that would cost more than the protocol itself). Whatever the load, it
/// compacts at the latest after [`COMPACT_MAX_SLOTS`] slots or
/// [`COMPACT_MAX_COMMANDS`] commands.
///
/// A small log stays in the cache: with one command in flight (one slot per
/// command), compacting every 1,024 slots rather than every 16,384 ran the loop
/// about 10% faster and halved its peak memory.
///
/// The loop's replicas keep no compacted slots for catch-up
/// (`Config::compaction_keep_slots` is 0): none ever lags, and compacting this
/// often, the default 1,024 kept slots would pass every slot through the kept
/// log, about 6% more instructions per command at one in flight (callgrind,
/// `loop_profile multi 1 200000`: 1,218M against 1,144M). The node runs keep the default.
pub const COMPACT_MIN_SLOTS: u64 = 1024;
/// See [`COMPACT_MIN_SLOTS`].
pub const COMPACT_COMMANDS_PER_CLIENT: u64 = 64;
/// See [`COMPACT_MIN_SLOTS`].
pub const COMPACT_MAX_SLOTS: u64 = 16_384;
/// See [`COMPACT_MIN_SLOTS`].
pub const COMPACT_MAX_COMMANDS: u64 = 1 << 18;
/// One command in this many has its commit latency timed, picked by submission
/// order (which has nothing to do with how long a command takes, so the sample is
/// unbiased). Reading the clock for every command took about an eighth of the
/// loop's throughput at one command in flight.
pub const LATENCY_SAMPLE_EVERY: u64 = 16;
/// Most consecutive idle rounds (each one a tick of every replica) before a run gives up.
pub const IDLE_TICKS_MAX: u64 = 10_000;
/// Most wall-clock time `finish` spends draining and catching up.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Most ticks spent electing a Multi-Paxos leader.
pub const ELECTION_TICKS_MAX: u64 = 10_000;

/// In-memory storage for the loop: an append-only log of ops on top of a
/// checkpoint, the in-memory shape of a write-ahead log. Appending is a push (a
/// value is an `Arc`, so no command is copied); a `Compact` op folds the log into
/// the checkpoint, skipping ops of compacted slots, so memory stays bounded.
/// [`MemoryLog::load`] gives the state a restart would recover.
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    checkpoint: DurableState,
    ops: Vec<StorageOp>,
}

fn op_slot(op: &StorageOp) -> Option<Slot> {
    match op {
        StorageOp::PromiseSlot { slot, .. } | StorageOp::Accept { slot, .. } | StorageOp::Chosen { slot, .. } => {
            Some(*slot)
        }
        StorageOp::Promise(_) | StorageOp::Round(_) | StorageOp::Compact(_) => None,
    }
}

impl MemoryLog {
    /// Makes `ops` durable (in memory), in order, taking them out of the vector.
    #[inline]
    pub fn append(&mut self, ops: &mut Vec<StorageOp>) {
        if ops.iter().any(|op| matches!(op, StorageOp::Compact(_))) {
            self.append_compacting(ops);
        } else {
            self.ops.append(ops);
        }
    }

    /// [`MemoryLog::append`] for a batch with a compaction in it: each `Compact`
    /// folds what came before it.
    #[inline(never)]
    fn append_compacting(&mut self, ops: &mut Vec<StorageOp>) {
        for op in ops.drain(..) {
            if let StorageOp::Compact(snapshot) = &op {
                self.fold(&op, snapshot.through_slot);
            } else {
                self.ops.push(op);
            }
        }
    }

    /// Applies `compact` (through `through`) after every held op of a slot it
    /// does not cover, and drops the others: what replaying would leave.
    fn fold(&mut self, compact: &StorageOp, through: Slot) {
        self.ops.retain(|held| op_slot(held).is_none_or(|slot| slot > through));
        for earlier in self.ops.drain(..) {
            self.checkpoint.apply(&earlier);
        }
        self.checkpoint.apply(compact);
    }

    /// The state a replica would recover: the checkpoint with the log replayed.
    pub fn load(&self) -> DurableState {
        let mut state = self.checkpoint.clone();
        for op in &self.ops {
            state.apply(op);
        }
        state
    }

    /// Ops held since the last compaction.
    pub fn ops_held(&self) -> usize {
        self.ops.len()
    }
}

/// Why a loop run stopped without figures.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The spec is not runnable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The replica configuration is invalid.
    #[error("invalid replica configuration")]
    Config(#[from] ConfigError),
    /// No Multi-Paxos leader emerged.
    #[error("no leader elected within {ELECTION_TICKS_MAX} ticks")]
    NoLeader,
    /// The proposing replica refused commands.
    #[error("the proposer refused commands")]
    Propose(#[from] ProposeError),
    /// Nothing moved for too long.
    #[error("no progress: {outstanding} commands outstanding after {what}")]
    Stalled {
        /// Commands submitted and not applied.
        outstanding: usize,
        /// What timed out.
        what: &'static str,
    },
    /// The replicas' logs do not agree; the figures are void.
    #[error("the replicas' logs disagree, so no figure is reported")]
    Agreement(#[from] AgreementError),
}

/// A cluster driven a round at a time in one thread, by [`run_rounds_until`]:
/// this loop's, and the OmniPaxos one it is compared with, so both follow the
/// same policy for idle rounds, ticks and deadlines.
pub(crate) trait Rounds {
    /// Why a run stopped.
    type Error;
    /// One round; returns whether anything happened.
    fn round(&mut self) -> Result<bool, Self::Error>;
    /// Advances every replica by one tick.
    fn tick_all(&mut self);
    /// The error for a run that stopped moving while waiting for `what`.
    fn stalled(&self, what: &'static str) -> Self::Error;
}

/// Runs rounds of `cluster` until `done` holds, ticking when a round did nothing;
/// fails after [`IDLE_TICKS_MAX`] idle rounds in a row or at `deadline` (checked
/// every 256 rounds: reading the clock costs more than a round at one in flight).
pub(crate) fn run_rounds_until<C: Rounds>(
    cluster: &mut C,
    mut done: impl FnMut(&C) -> bool,
    deadline: Option<Instant>,
    what: &'static str,
) -> Result<(), C::Error> {
    let mut idle = 0;
    let mut checks = 0u32;
    while !done(cluster) {
        if cluster.round()? {
            idle = 0;
        } else {
            idle += 1;
            if idle > IDLE_TICKS_MAX {
                return Err(cluster.stalled(what));
            }
            cluster.tick_all();
        }
        checks = checks.wrapping_add(1);
        if checks.is_multiple_of(256) && deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(cluster.stalled(what));
        }
    }
    Ok(())
}

impl Rounds for LoopCluster {
    type Error = LoopError;

    fn round(&mut self) -> Result<bool, LoopError> {
        LoopCluster::round(self)
    }

    fn tick_all(&mut self) {
        LoopCluster::tick_all(self)
    }

    fn stalled(&self, what: &'static str) -> LoopError {
        LoopError::Stalled { outstanding: self.outstanding, what }
    }
}

/// A cluster of sans-IO replicas and its closed-loop clients, in one thread.
#[derive(Debug)]
pub struct LoopCluster {
    replicas: Vec<Box<dyn Replica>>,
    /// Per replica: whether it was stepped (proposal, message, tick, compaction)
    /// since its actions were last taken. Only a stepped replica has actions.
    stepped: Vec<bool>,
    durable: Vec<MemoryLog>,
    compacted_through: Vec<Slot>,
    compacted_commands: Vec<u64>,
    /// Per replica: the messages it sent in the last round (its sends, then the
    /// ones its writes released, each in order), delivered at the start of the next round.
    outboxes: Vec<Vec<Outgoing>>,
    actions: Actions,
    proposer: usize,
    logs: Vec<AppliedLog>,
    submitted: Submitted,
    payload: Vec<u8>,
    /// Per client (index = client id - 1): next sequence, and when its outstanding
    /// command was submitted if that command is timed (see [`LATENCY_SAMPLE_EVERY`]).
    next_sequence: Vec<u64>,
    submitted_at: Vec<Option<Instant>>,
    /// Commands submitted so far, retries not counted.
    submissions: u64,
    /// Commands submitted by clients and not yet proposed.
    ready: Vec<Command>,
    /// Clients whose command was applied at the proposer this round.
    just_completed: Vec<u32>,
    outstanding: usize,
    completed: u64,
    refill: bool,
    recording: bool,
    measurement: Measurement,
    rounds: u64,
}

impl LoopCluster {
    /// Builds the replicas, elects a leader (Multi-Paxos), and submits the first
    /// `spec.in_flight` commands.
    pub fn new(spec: &Spec) -> Result<LoopCluster, LoopError> {
        spec.validate()?;
        let members: Vec<NodeId> = (1..=spec.replicas as NodeId).collect();
        let mut replicas = Vec::with_capacity(spec.replicas);
        for id in &members {
            let mut config = Config::new(*id, members.clone(), spec.protocol.into());
            config.batch_commands_max = spec.batch_commands_max();
            config.pending_commands_max = config.pending_commands_max.max(2 * spec.in_flight);
            config.compaction_keep_slots = 0;
            replicas.push(new_replica(config, &DurableState::default())?);
        }
        let mut cluster = LoopCluster {
            // Restored replicas may start with actions (the recovered log to deliver).
            stepped: vec![true; spec.replicas],
            durable: vec![MemoryLog::default(); spec.replicas],
            compacted_through: vec![0; spec.replicas],
            compacted_commands: vec![0; spec.replicas],
            outboxes: vec![Vec::new(); spec.replicas],
            actions: Actions::default(),
            proposer: 0,
            logs: vec![AppliedLog::default(); spec.replicas],
            submitted: Submitted::default(),
            payload: vec![0xA5; spec.command_bytes],
            next_sequence: vec![0; spec.in_flight],
            submitted_at: vec![None; spec.in_flight],
            submissions: 0,
            ready: Vec::with_capacity(spec.in_flight),
            just_completed: Vec::with_capacity(spec.in_flight),
            outstanding: 0,
            completed: 0,
            refill: true,
            recording: false,
            measurement: Measurement::new(),
            rounds: 0,
            replicas,
        };
        if spec.protocol == crate::ProtocolKind::Multi {
            cluster.proposer = cluster.elect()?;
        }
        let mut clock = None;
        for client in 0..spec.in_flight {
            cluster.submit(client, &mut clock);
        }
        Ok(cluster)
    }

    /// Ticks every replica until one leads; returns its position.
    fn elect(&mut self) -> Result<usize, LoopError> {
        for _ in 0..ELECTION_TICKS_MAX {
            self.tick_all();
            while self.round()? {}
            if let Some(leader) = self.replicas.iter().position(|replica| replica.status().role == Role::Leader) {
                return Ok(leader);
            }
        }
        Err(LoopError::NoLeader)
    }

    /// Advances every replica by one tick.
    fn tick_all(&mut self) {
        for replica in &mut self.replicas {
            replica.tick();
        }
        self.stepped.fill(true);
    }

    /// The position of the replica clients propose to.
    pub fn proposer(&self) -> usize {
        self.proposer
    }

    /// Submits `client`'s next command. `clock` is the round's time, read at
    /// most once a round and only when a timed command needs it.
    fn submit(&mut self, client: usize, clock: &mut Option<Instant>) {
        let sequence = self.next_sequence[client];
        self.next_sequence[client] += 1;
        let id = CommandId { client: client as u64 + 1, sequence };
        self.submitted.record(id);
        let timed = self.submissions.is_multiple_of(LATENCY_SAMPLE_EVERY);
        self.submissions += 1;
        self.submitted_at[client] = timed.then(|| *clock.get_or_insert_with(Instant::now));
        self.ready.push(Command { id, payload: self.payload.clone() });
        self.outstanding += 1;
    }

    /// One round; returns whether anything happened.
    fn round(&mut self) -> Result<bool, LoopError> {
        self.rounds += 1;
        let mut progress = false;
        if !self.ready.is_empty() {
            // The replica takes the commands and leaves the buffer for the next round's.
            self.replicas[self.proposer].propose_from(&mut self.ready)?;
            self.stepped[self.proposer] = true;
            progress = true;
        }
        // Last round's messages, sender by sender, each sender's in the order it
        // sent them: the order one queue of every message would give.
        for (position, outbox) in self.outboxes.iter_mut().enumerate() {
            if outbox.is_empty() {
                continue;
            }
            progress = true;
            let from = position as NodeId + 1;
            for Outgoing { to, message } in outbox.drain(..) {
                let to = (to - 1) as usize;
                self.replicas[to].on_message(from, message);
                self.stepped[to] = true;
            }
        }
        // Fields are borrowed one by one (no `self` method calls here), so the
        // action buffers are used in place and keep their allocations.
        let actions = &mut self.actions;
        for position in 0..self.replicas.len() {
            if !std::mem::replace(&mut self.stepped[position], false) {
                continue;
            }
            self.replicas[position].drain_actions_into(actions);
            if actions.is_empty() {
                continue;
            }
            progress = true;
            // The outbox was emptied above: it takes the sends as they are, then
            // the messages released once their writes are in the log.
            let outbox = &mut self.outboxes[position];
            std::mem::swap(outbox, &mut actions.send);
            let durable = &mut self.durable[position];
            let written = actions.persist.persist_with_into(
                |ops| {
                    durable.append(ops);
                    Ok::<(), Infallible>(())
                },
                outbox,
            );
            match written {
                Ok(()) => {}
                Err(never) => match never {},
            }
            let log = &mut self.logs[position];
            let is_proposer = position == self.proposer;
            for decided in &actions.decided {
                if decided.duplicates.is_empty() {
                    // Every command is fresh: what `entries` gives, without looking for duplicates.
                    let commands = decided.value.commands();
                    for (index, command) in (decided.first_index..).zip(commands) {
                        log.record(index, decided.slot, command.id);
                    }
                    if is_proposer {
                        self.just_completed.extend(commands.iter().map(|command| (command.id.client - 1) as u32));
                    }
                } else {
                    for (index, command) in decided.entries() {
                        log.record(index, decided.slot, command.id);
                        if is_proposer {
                            self.just_completed.push((command.id.client - 1) as u32);
                        }
                    }
                }
            }
            for event in &actions.events {
                if let Event::Dropped { ids, .. } = event {
                    // Offer them again under the same ids; the replicas apply each at most once.
                    for id in ids {
                        self.ready.push(Command { id: *id, payload: self.payload.clone() });
                    }
                }
            }
            // `send` and `persist` are empty now; only these two hold anything.
            actions.decided.clear();
            actions.events.clear();
        }
        if !self.just_completed.is_empty() {
            let mut clock = None;
            let mut completed = std::mem::take(&mut self.just_completed);
            for client in completed.drain(..) {
                let client = client as usize;
                if let Some(submitted_at) = self.submitted_at[client].take() {
                    if self.recording {
                        let now = *clock.get_or_insert_with(Instant::now);
                        self.measurement.record_latency(now.saturating_duration_since(submitted_at));
                    }
                }
                self.outstanding -= 1;
                self.completed += 1;
                if self.refill {
                    self.submit(client, &mut clock);
                }
            }
            self.just_completed = completed;
        }
        if self.rounds.is_multiple_of(16) {
            self.compact();
        }
        Ok(progress)
    }

    fn compact(&mut self) {
        let clients = self.next_sequence.len() as u64;
        for (position, replica) in self.replicas.iter_mut().enumerate() {
            let applied = replica.learner().applied_through();
            let commands = self.logs[position].count;
            let slots = applied.saturating_sub(self.compacted_through[position]);
            let since = commands.saturating_sub(self.compacted_commands[position]);
            let due = slots >= COMPACT_MAX_SLOTS
                || (since >= COMPACT_MAX_COMMANDS && slots > 0)
                || (slots >= COMPACT_MIN_SLOTS && since >= COMPACT_COMMANDS_PER_CLIENT * clients);
            if due && replica.compact(applied, Vec::new()).is_ok() {
                self.stepped[position] = true;
                self.compacted_through[position] = applied;
                self.compacted_commands[position] = commands;
            }
        }
    }

    /// Runs rounds until `done` holds (see [`run_rounds_until`]).
    fn run_until(
        &mut self,
        done: impl FnMut(&LoopCluster) -> bool,
        deadline: Option<Instant>,
        what: &'static str,
    ) -> Result<(), LoopError> {
        run_rounds_until(self, done, deadline, what)
    }

    /// Runs `warm_up`, then measures for `window`: commands applied at the
    /// proposer and their commit latencies.
    pub fn run_for(&mut self, warm_up: Duration, window: Duration) -> Result<Measurement, LoopError> {
        let start = Instant::now();
        let warm_end = start + warm_up;
        self.run_until(|_| Instant::now() >= warm_end, None, "warm-up")?;
        let measured_from = Instant::now();
        let completed_before = self.completed;
        self.recording = true;
        let end = measured_from + window;
        let mut rounds = 0u32;
        // Reading the clock every round would cost more than a round with one command in flight.
        self.run_until(
            |_| {
                rounds = rounds.wrapping_add(1);
                rounds.is_multiple_of(64) && Instant::now() >= end
            },
            None,
            "measurement",
        )?;
        self.recording = false;
        let mut measurement = std::mem::take(&mut self.measurement);
        measurement.elapsed = measured_from.elapsed();
        measurement.commands = self.completed - completed_before;
        Ok(measurement)
    }

    /// Runs until `count` more commands are applied at the proposer; returns how long that took.
    /// The pipeline stays full, so back-to-back calls measure steady state (criterion's `iter_custom`).
    pub fn run_commands(&mut self, count: u64) -> Result<Duration, LoopError> {
        let target = self.completed + count;
        let start = Instant::now();
        self.run_until(|cluster| cluster.completed >= target, Some(start + FINISH_TIMEOUT), "run_commands")?;
        Ok(start.elapsed())
    }

    /// Stops submitting, lets every outstanding command be applied, lets every
    /// replica catch up, and checks the logs (see [`crate::check`]).
    pub fn finish(&mut self) -> Result<(), LoopError> {
        self.refill = false;
        let deadline = Instant::now() + FINISH_TIMEOUT;
        self.run_until(|cluster| cluster.outstanding == 0, Some(deadline), "draining")?;
        let target = self.submitted.count;
        // Followers learn the last decisions from the leader's next heartbeat: keep ticking.
        for _ in 0..IDLE_TICKS_MAX {
            if self.logs.iter().all(|log| log.count >= target) {
                break;
            }
            self.tick_all();
            while self.round()? {
                if Instant::now() >= deadline {
                    return Err(LoopError::Stalled { outstanding: self.outstanding, what: "catch-up" });
                }
            }
        }
        check_agreement(&self.logs, &self.submitted)?;
        Ok(())
    }

    /// What each replica applied so far.
    pub fn logs(&self) -> &[AppliedLog] {
        &self.logs
    }

    /// Each replica's storage.
    pub fn storage(&self) -> &[MemoryLog] {
        &self.durable
    }

    /// What the clients submitted so far.
    pub fn submitted(&self) -> &Submitted {
        &self.submitted
    }

    /// Commands applied at the proposer so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }
}

/// Runs one configuration of the protocol alone: builds the cluster, warms up,
/// measures for `window`, then drains and checks agreement.
pub fn run(spec: &Spec, warm_up: Duration, window: Duration) -> Result<Measurement, LoopError> {
    let mut cluster = LoopCluster::new(spec)?;
    let measurement = cluster.run_for(warm_up, window)?;
    cluster.finish()?;
    Ok(measurement)
}

#[cfg(test)]
mod tests {
    use paxos_core::{Ballot, Command, Snapshot, Value};

    use super::*;

    fn accept(slot: Slot, round: u64) -> StorageOp {
        let value = Value::Commands(vec![Command::new(1, slot, vec![slot as u8])].into());
        StorageOp::Accept { slot, ballot: Ballot::new(round, 1), value }
    }

    #[test]
    fn memory_log_recovers_what_applying_every_op_gives() {
        let mut log = MemoryLog::default();
        let mut direct = DurableState::default();
        let mut ops = vec![StorageOp::Round(16), StorageOp::Promise(Ballot::new(3, 1))];
        for slot in 1..=10 {
            ops.push(accept(slot, 3));
            ops.push(StorageOp::Chosen { slot, value: None });
        }
        ops.push(StorageOp::Compact(Box::new(Snapshot {
            through_slot: 6,
            next_index: 6,
            dedup_through: 10,
            ..Snapshot::default()
        })));
        ops.push(accept(11, 4));
        ops.push(StorageOp::PromiseSlot { slot: 12, ballot: Ballot::new(5, 2) });
        for chunk in ops.chunks(3) {
            for op in chunk {
                direct.apply(op);
            }
            let mut batch = chunk.to_vec();
            log.append(&mut batch);
            assert!(batch.is_empty(), "the log takes every op");
        }
        assert_eq!(log.load(), direct);
        assert_eq!(log.ops_held(), 2, "the compaction folded everything before it");
    }
}
