//! What Basic and Multi-Paxos replicas share: the `Replica` interface, and the
//! acceptor, learner and catch-up plumbing both protocols drive the same way.

use std::borrow::Cow;
use std::num::NonZeroU64;

use crate::acceptor::Acceptor;
use crate::actions::{push_in_place, Actions, Event};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::{Config, ConfigError, Protocol};
use crate::kept_log::KeptLog;
use crate::learner::Learner;
use crate::message::{message_prefix, AcceptedEntry, Command, CommandId, Message, PrepareScope, Value};
use crate::rng::Rng;
use crate::snapshot_transfer::{self, SnapshotId, Taken};
use crate::storage::{DurableState, Snapshot, StorageOp};

/// Why a proposal was not taken. Each variant says what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica does not lead; send the command to `leader_hint` if known,
    /// or retry shortly while an election settles.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this replica believes in.
        leader_hint: Option<NodeId>,
    },
    /// Too many commands are already waiting for a slot; retry after a pause.
    #[error("proposal queue is full ({pending_max} commands); retry later")]
    Busy {
        /// The configured limit.
        pending_max: usize,
    },
}

/// Why a compaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    /// Only applied slots can be compacted; wait until `through` is applied.
    #[error("slot {through} is not applied yet (applied through {applied})")]
    NotApplied {
        /// The slot asked for.
        through: Slot,
        /// The applied point.
        applied: Slot,
    },
    /// The log is already compacted at or beyond `through`; nothing to do.
    #[error("already compacted through slot {held}")]
    AlreadyCompacted {
        /// The existing compaction point.
        held: Slot,
    },
}

/// The part a replica plays right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Multi-Paxos: following a leader, or waiting for one.
    Follower,
    /// Multi-Paxos: running phase 1 for a ballot of its own.
    Candidate,
    /// Multi-Paxos: phase 1 done; runs phase 2 per slot.
    Leader,
    /// Basic Paxos: every replica proposes for itself.
    Proposer,
}

/// A snapshot of what a replica knows, for monitoring and routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub node_id: NodeId,
    /// Its role.
    pub role: Role,
    /// The leader it believes in (Multi-Paxos).
    pub leader: Option<NodeId>,
    /// The highest ballot it has promised.
    pub promised: Ballot,
    /// Every slot up to this one is chosen and applied here.
    pub applied_through: Slot,
    /// The highest slot any peer reported chosen.
    pub known_chosen_through: Slot,
    /// The log index the next applied command will get.
    pub next_index: u64,
    /// Commands waiting here for a slot.
    pub queued_commands: usize,
    /// Per peer, how many slots it trails this replica's applied point by, as far
    /// as this replica can tell (leaders only; empty otherwise).
    pub peer_lag: Vec<(NodeId, Slot)>,
}

/// A replica of either protocol, as its driver sees it: a sans-IO state machine.
///
/// Feed it proposals, messages and ticks; after each call (or several), take the
/// [`Actions`] and carry them out. Nothing here does IO, reads a clock, or spawns.
pub trait Replica: Send + std::fmt::Debug {
    /// Offers client commands for the log.
    fn propose(&mut self, mut commands: Vec<Command>) -> Result<(), ProposeError> {
        self.propose_from(&mut commands)
    }
    /// [`Replica::propose`] for a driver that reuses one buffer: takes the commands
    /// out of `commands` and leaves it empty, with its capacity when the replica
    /// queues them here. When the replica refuses them (the error says why), they
    /// stay in `commands`, so nothing is lost.
    fn propose_from(&mut self, commands: &mut Vec<Command>) -> Result<(), ProposeError>;
    /// Handles a message from member `from`. Messages from strangers are ignored.
    fn on_message(&mut self, from: NodeId, message: Message);
    /// Advances logical time by one tick (timeouts, heartbeats, retransmission).
    fn tick(&mut self);
    /// Takes everything the replica has asked for since the last call.
    fn take_actions(&mut self) -> Actions;
    /// The allocation-free form of [`Replica::take_actions`] for hot loops: hands
    /// everything over in `into`, which must be empty (call [`Actions::clear`]
    /// after carrying it out), and keeps `into`'s old buffers for the next step.
    fn drain_actions_into(&mut self, into: &mut Actions);
    /// What the replica knows.
    fn status(&self) -> Status;
    /// The learner: chosen values and applied log.
    fn learner(&self) -> &Learner;
    /// The acceptor: promises and accepted values.
    fn acceptor(&self) -> &Acceptor;
    /// The fresh command at log `index` (0-based, in apply order, duplicates not
    /// counted), if applied here and not compacted away.
    fn log_entry(&self, index: u64) -> Option<&Command> {
        self.learner().get(index, self.acceptor())
    }
    /// Replaces the applied prefix through `through_slot` with a snapshot holding
    /// the application's `data`, so the log stops growing. The newest compacted
    /// slots stay in memory ([`Config::compaction_keep_slots`]) for peers that lag
    /// by a little; peers further behind are sent the snapshot instead.
    fn compact(&mut self, through_slot: Slot, data: Vec<u8>) -> Result<(), CompactError>;
    /// The latest snapshot, if the log was compacted.
    fn snapshot(&self) -> Option<&Snapshot>;
    /// Calls `held` with the id of every command this replica holds now:
    /// commands queued here, and those in slots it proposed that are not chosen
    /// yet. Proposing one of these again would only put a copy in another slot.
    /// A command can stop being held without being chosen (a leader that steps
    /// down lets go of its slots; some drops are reported in [`Event::Dropped`],
    /// not all), so a driver that waits for a command checks again later and
    /// offers it again once it is no longer held, as the node does at each timeout.
    fn for_each_held_command(&self, held: &mut dyn FnMut(CommandId));
    /// Panics if an internal safety invariant does not hold (STYLE.md rule 7).
    fn check_invariants(&self);
}

/// Builds the replica `config.protocol` names, restored from `durable`.
///
/// Slots already chosen in `durable` are applied again, so the first actions
/// deliver the recovered log to the application in order.
pub fn new_replica(config: Config, durable: &DurableState) -> Result<Box<dyn Replica>, ConfigError> {
    config.validate()?;
    Ok(match config.protocol {
        Protocol::Multi => Box::new(crate::multi::MultiPaxos::new(config, durable)?),
        Protocol::Basic => Box::new(crate::basic::BasicPaxos::new(config, durable)?),
    })
}

/// State and handlers common to both protocols.
#[derive(Debug)]
pub(crate) struct Core {
    pub config: Config,
    pub quorum: usize,
    pub rng: Rng,
    pub acceptor: Acceptor,
    pub learner: Learner,
    /// Rounds up to this one are reserved durably for this node's ballots.
    pub round_reserved: u64,
    /// The highest round seen in any ballot, ours or a peer's.
    pub highest_round_seen: u64,
    /// The highest round this node has put in a ballot of its own.
    pub own_round_used: u64,
    pub actions: Actions,
    pub ticks: u64,
    /// The highest slot a peer told us is chosen.
    pub known_chosen_through: Slot,
    /// When the last catch-up request left, if one is outstanding.
    pub catch_up_sent_at: Option<u64>,
    /// The latest snapshot, standing for the compacted prefix.
    pub snapshot: Option<Snapshot>,
    /// The encodings of our snapshots that peers are taking in parts.
    snapshot_sender: snapshot_transfer::Sender,
    /// A peer's snapshot arriving in parts.
    snapshot_receiver: snapshot_transfer::Receiver,
    /// The newest compacted slots, kept to catch peers up by log.
    kept: KeptLog,
    /// Per peer, when it was last sent our newest snapshot's first part in
    /// answer to a request for an encoding no longer served: the other
    /// requests of the same window get nothing, not a copy each.
    restarted_at: Vec<(NodeId, u64)>,
}

impl Core {
    pub fn new(config: Config, durable: &DurableState) -> Result<Core, ConfigError> {
        config.validate()?;
        let mut core = Core {
            quorum: config.quorum(),
            rng: Rng::new(config.seed),
            acceptor: Acceptor::from_durable(durable),
            learner: Learner::new(config.dedup_window),
            round_reserved: durable.round,
            highest_round_seen: durable.round.max(durable.promised.round),
            own_round_used: durable.round,
            actions: Actions::default(),
            ticks: 0,
            known_chosen_through: 0,
            catch_up_sent_at: None,
            snapshot: durable.snapshot.clone(),
            snapshot_sender: snapshot_transfer::Sender::default(),
            snapshot_receiver: snapshot_transfer::Receiver::new(4 * config.retransmit_ticks),
            kept: KeptLog::default(),
            restarted_at: Vec::new(),
            config,
        };
        if let Some(snapshot) = &durable.snapshot {
            core.learner.install(snapshot);
            core.event(Event::SnapshotInstalled(snapshot.clone()));
        }
        for (slot, state) in &durable.slots {
            if let Some(value) = &state.chosen {
                core.learner.learn(*slot, value.clone());
            }
        }
        core.learner.apply_ready(&core.acceptor, &mut core.actions.decided);
        core.known_chosen_through = core.learner.applied_through();
        Ok(core)
    }

    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// The vote bit of `node`, or `None` if it is not a member.
    pub fn bit(&self, node: NodeId) -> Option<u64> {
        self.config.member_bit(node)
    }

    pub fn observe_ballot(&mut self, ballot: Ballot) {
        if ballot != Ballot::COMPACTED {
            self.highest_round_seen = self.highest_round_seen.max(ballot.round);
        }
    }

    /// A fresh ballot of ours above every round seen and above `above`. Its round
    /// is reserved by a `Round` op, so messages carrying it must go out through
    /// `persist` (after the reservation is durable).
    pub fn next_ballot(&mut self, above: Ballot) -> Ballot {
        let round = self.highest_round_seen.max(self.own_round_used).max(above.round) + 1;
        let ballot = Ballot::new(round, self.id());
        assert!(ballot > above);
        if round > self.round_reserved {
            // Seed 001: the round is durable before the ballot is used. Reserving
            // a few rounds ahead saves a write per Basic Paxos instance.
            self.round_reserved = round + 15;
            self.actions.persist.push_op(StorageOp::Round(self.round_reserved));
        }
        self.highest_round_seen = round;
        self.own_round_used = round;
        ballot
    }

    /// Sends `message` to every member, this one included.
    pub fn broadcast(&mut self, message: &Message) {
        for member in &self.config.members {
            self.actions.send(*member, message.clone());
        }
    }

    /// Sends `message` to every member, this one included, once the pending writes are durable.
    pub fn broadcast_after_persist(&mut self, message: &Message) {
        for member in &self.config.members {
            self.actions.persist.push_message(*member, message.clone());
        }
    }

    /// Sends `message` to every member but this one: a copy to each peer but the
    /// last, which gets the message itself, so `n` peers cost `n - 1` copies.
    pub fn broadcast_to_peers(&mut self, message: Message) {
        let id = self.id();
        let Some(last) = self.config.members.iter().rposition(|member| *member != id) else { return };
        for member in &self.config.members[..last] {
            if *member != id {
                self.actions.send(*member, message.clone());
            }
        }
        self.actions.send(self.config.members[last], message);
    }

    /// Phase 1b for either protocol. Returns whether a promise was given.
    pub fn reply_to_prepare(&mut self, from: NodeId, ballot: Ballot, scope: PrepareScope) -> bool {
        self.observe_ballot(ballot);
        match self.acceptor.on_prepare(ballot, scope, self.actions.persist.ops_mut()) {
            Ok(mut accepted) => {
                let chosen_through = self.learner.applied_through();
                // A long report goes in parts, each within message_bytes_max: one
                // the transport dropped for its size would be dropped at every resend.
                let fit = message_prefix(
                    &accepted,
                    usize::MAX,
                    self.config.message_bytes_max,
                    AcceptedEntry::encoded_bytes_bound,
                );
                let continues_at =
                    accepted.get(fit).map(|entry| NonZeroU64::new(entry.slot).expect("an acceptor's slots start at 1"));
                accepted.truncate(fit);
                // Seed 001: the promise leaves only after it is durable.
                let accepted = accepted.into_boxed_slice();
                let promise = Message::Promise { ballot, scope, accepted, chosen_through, continues_at };
                self.actions.persist.push_message(from, promise);
                true
            }
            Err(promised) => {
                let slot = match scope {
                    PrepareScope::Slot(slot) => slot,
                    PrepareScope::From(_) => 0,
                };
                self.actions.send(from, Message::Nack { ballot, slot, promised });
                false
            }
        }
    }

    /// Phase 2b for either protocol. Returns whether the values were accepted.
    pub fn reply_to_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        values: Cow<'_, [Value]>,
        log_wide: bool,
    ) -> bool {
        self.observe_ballot(ballot);
        let count = values.len() as u64;
        let ops = self.actions.persist.ops_mut();
        let accepted = match values {
            Cow::Borrowed(values) => self.acceptor.on_accept(ballot, first_slot, values, log_wide, ops),
            Cow::Owned(values) => self.acceptor.on_accept_owned(ballot, first_slot, values, log_wide, ops),
        };
        match accepted {
            Ok(()) => {
                // Seed 001: the accept leaves only after it is durable.
                self.actions.persist.push_message(from, Message::Accepted { ballot, first_slot, count });
                true
            }
            Err(promised) => {
                let slot = if log_wide { 0 } else { first_slot };
                self.actions.send(from, Message::Nack { ballot, slot, promised });
                false
            }
        }
    }

    /// Records `slot` as chosen with `value`, durably. Returns whether it was news.
    ///
    /// Panics if `slot` was already chosen with a different value: that is a
    /// violation of Paxos' agreement property and the node must stop.
    pub fn learn(&mut self, slot: Slot, value: Value) -> bool {
        if slot <= self.learner.applied_through() {
            return false;
        }
        if let Some(known) = self.learner.chosen(slot, &self.acceptor) {
            assert_eq!(*known, value, "agreement violated: slot {slot} chosen with two values");
            return false;
        }
        // The learner keeps its own copy even when the acceptor holds an equal
        // value: unless the acceptor took it at the ballot the slot was chosen at
        // (which only `learn_accepted` knows), it may still accept a different one
        // at a ballot in between. The durable record can point at the acceptor's
        // value all the same: replaying the log resolves it at this point.
        let same_as_accepted = self.acceptor.accepted(slot).is_some_and(|(_, accepted)| *accepted == value);
        let record = if same_as_accepted { None } else { Some(value.clone()) };
        if !self.learner.learn(slot, value) {
            return false;
        }
        self.record_chosen(slot, record);
        true
    }

    /// Records `slot` as chosen with the value this replica's acceptor accepted
    /// for it at `ballot`, if it did: the chosen record then need not carry the value.
    ///
    /// `ballot` must be one the slot is chosen at (the leader's, for slots it
    /// committed), so every later accept of the slot carries the same value (Paxos
    /// P2b) and the learner can refer to the acceptor's copy instead of keeping one.
    pub fn learn_accepted(&mut self, slot: Slot, ballot: Ballot) -> bool {
        if slot <= self.learner.applied_through() {
            return false;
        }
        let Some((accepted_ballot, _)) = self.acceptor.accepted(slot) else { return false };
        if *accepted_ballot != ballot {
            return false;
        }
        self.record_chosen_accepted(slot)
    }

    /// Learns `slot` as chosen with the value the acceptor holds for it, and
    /// writes the chosen record, which then needs no value either.
    fn record_chosen_accepted(&mut self, slot: Slot) -> bool {
        if !self.learner.learn_accepted(slot) {
            return false;
        }
        self.record_chosen(slot, None);
        true
    }

    /// Writes the chosen record of a slot just learned (`value` is the value when
    /// the acceptor's copy is not the chosen one).
    #[inline(always)]
    fn record_chosen(&mut self, slot: Slot, value: Option<Value>) {
        push_in_place(self.actions.persist.ops_mut(), || StorageOp::Chosen { slot, value });
        self.known_chosen_through = self.known_chosen_through.max(slot.min(self.learner.chosen_end() - 1));
    }

    pub fn apply(&mut self) {
        self.learner.apply_ready(&self.acceptor, &mut self.actions.decided);
        if self.learner.applied_through() >= self.known_chosen_through {
            self.catch_up_sent_at = None;
        }
    }

    /// Asks `peer` for chosen values this replica lacks, unless a request is
    /// already outstanding and not yet due for retransmission.
    pub fn request_catch_up(&mut self, peer: NodeId) {
        if peer == self.id() || self.learner.applied_through() >= self.known_chosen_through {
            return;
        }
        if let Some(sent_at) = self.catch_up_sent_at {
            if self.ticks < sent_at + self.config.retransmit_ticks {
                return;
            }
        }
        self.catch_up_sent_at = Some(self.ticks);
        let again = self.snapshot_receiver.resume(peer, self.learner.applied_through(), self.ticks);
        if !again.is_empty() {
            // A snapshot from this peer is under way: ask again for the parts not yet here.
            for request in again {
                self.actions.send(peer, request);
            }
            return;
        }
        tracing::debug!(node = self.id(), peer, from_slot = self.learner.applied_through() + 1, "catch-up requested");
        self.actions.send(peer, Message::CatchUpRequest { from_slot: self.learner.applied_through() + 1 });
    }

    pub fn on_catch_up_request(&mut self, from: NodeId, from_slot: Slot) {
        let from_slot = from_slot.max(1);
        let count_max = self.config.catch_up_slots_max;
        let mut values = Vec::new();
        if self.snapshot.as_ref().is_some_and(|snapshot| from_slot <= snapshot.through_slot) {
            if !self.kept.holds(from_slot) {
                self.send_newest_snapshot(from);
                return;
            }
            // Compacted, but still kept: the kept slots run up to the compaction
            // point, and the learner's from just after it.
            values.extend(self.kept.run(from_slot, count_max).cloned());
        }
        let next = from_slot + values.len() as u64;
        if values.len() < count_max {
            values.extend(self.learner.chosen_run(next, count_max - values.len(), &self.acceptor));
        }
        values.truncate(message_prefix(&values, usize::MAX, self.config.message_bytes_max, Value::encoded_bytes_bound));
        if !values.is_empty() {
            self.actions.send(from, Message::CatchUp { first_slot: from_slot, values });
        }
    }

    pub fn on_catch_up(&mut self, from: NodeId, first_slot: Slot, values: Vec<Value>) {
        let count = values.len();
        for (offset, value) in values.into_iter().enumerate() {
            self.learn(first_slot + offset as u64, value);
        }
        self.known_chosen_through = self.known_chosen_through.max(first_slot + count as u64 - 1);
        self.apply();
        if self.learner.applied_through() < self.known_chosen_through {
            // More to fetch: ask again at once rather than waiting for a timeout.
            self.catch_up_sent_at = None;
            self.request_catch_up(from);
        }
    }

    pub fn compact(&mut self, through_slot: Slot, data: Vec<u8>) -> Result<(), CompactError> {
        let applied = self.learner.applied_through();
        if through_slot > applied {
            return Err(CompactError::NotApplied { through: through_slot, applied });
        }
        let held = self.snapshot.as_ref().map_or(0, |snapshot| snapshot.through_slot);
        if through_slot <= held {
            return Err(CompactError::AlreadyCompacted { held });
        }
        let snapshot = Snapshot {
            through_slot,
            next_index: self.learner.next_index_after(through_slot),
            clients: self.learner.client_windows(),
            dedup_window: self.learner.dedup_window(),
            dedup_through: applied,
            duplicates: self.learner.duplicates_after(through_slot),
            data,
        };
        tracing::info!(node = self.id(), through_slot, "compacting the log");
        self.actions.persist.push_op(StorageOp::Compact(Box::new(snapshot.clone())));
        self.discard_and_keep(through_slot);
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Drops the slots through `through_slot` from the acceptor and the learner,
    /// first moving the newest of their chosen values (all applied, so all
    /// chosen) to the kept log (see [`Config::compaction_keep_slots`]): moved,
    /// not copied, in one pass.
    fn discard_and_keep(&mut self, through_slot: Slot) {
        let slots_max = self.config.compaction_keep_slots;
        if slots_max == 0 || self.config.compaction_keep_bytes_max == 0 {
            self.kept.clear();
        } else {
            let keep_from = self.learner.first_held().max((through_slot + 1).saturating_sub(slots_max));
            self.kept.continue_at(keep_from);
            for slot in keep_from..=through_slot {
                let value = match self.learner.take_chosen(slot) {
                    Some(value) => value,
                    None => self.acceptor.take_accepted(slot).expect("a slot chosen as accepted keeps its value"),
                };
                self.kept.push(value);
            }
            self.kept.trim(slots_max, self.config.compaction_keep_bytes_max);
        }
        self.acceptor.discard_below(through_slot + 1);
        self.learner.discard_through(through_slot);
    }

    /// Most bytes of a snapshot part, so the message keeps to `message_bytes_max`.
    fn snapshot_part_max(&self) -> usize {
        self.config.message_bytes_max.saturating_sub(snapshot_transfer::PART_OVERHEAD_BYTES).max(1)
    }

    /// Sends `to` the first part of this replica's newest snapshot.
    fn send_newest_snapshot(&mut self, to: NodeId) {
        let part_max = self.snapshot_part_max();
        let Some(snapshot) = &self.snapshot else { return };
        let through_slot = snapshot.through_slot;
        if let Some(part) = self.snapshot_sender.part_of_newest(snapshot, 0, part_max, self.ticks) {
            tracing::debug!(node = self.id(), peer = to, through_slot, "sending snapshot");
            self.actions.send(to, part);
        }
    }

    /// A peer asks for the next part of a snapshot: sends it while that encoding
    /// is served, else the first part of our newest snapshot if it covers as
    /// much (the peer starts over with it). A peer that asks for more than we
    /// have gives up on us after a while and asks another.
    pub fn on_snapshot_part_request(&mut self, from: NodeId, id: SnapshotId, offset: u64) {
        let part_max = self.snapshot_part_max();
        if let Some(part) = self.snapshot_sender.part_of(id, offset, part_max, self.ticks) {
            self.actions.send(from, part);
        } else if self.snapshot.as_ref().is_some_and(|snapshot| snapshot.through_slot >= id.through_slot) {
            let ticks = self.ticks;
            let resend_after = self.config.retransmit_ticks;
            let position = self.restarted_at.iter().position(|(peer, _)| *peer == from);
            if position.is_some_and(|position| ticks < self.restarted_at[position].1 + resend_after) {
                return;
            }
            match position {
                Some(position) => self.restarted_at[position].1 = ticks,
                None => self.restarted_at.push((from, ticks)),
            }
            self.send_newest_snapshot(from);
        }
    }

    /// Takes a part of a peer's snapshot (see [`snapshot_transfer::Receiver::take`]):
    /// asks for the next part, or installs the whole. Returns whether a snapshot
    /// was installed.
    pub fn on_snapshot_part(&mut self, from: NodeId, id: SnapshotId, offset: u64, total: u64, bytes: Vec<u8>) -> bool {
        let applied = self.learner.applied_through();
        self.snapshot_receiver.forget_outrun(applied);
        if id.through_slot <= applied {
            return false;
        }
        let ticks = self.ticks;
        match self.snapshot_receiver.take(from, id, offset, total, &bytes, ticks) {
            Taken::Ignored => false,
            Taken::Next(requests) => {
                self.catch_up_sent_at = Some(ticks);
                for request in requests {
                    self.actions.send(from, request);
                }
                false
            }
            Taken::Whole(snapshot) => self.on_install_snapshot(from, *snapshot),
            Taken::Refused(reason) => {
                let through_slot = id.through_slot;
                tracing::warn!(node = self.id(), peer = from, through_slot, %reason, "dropped a snapshot");
                false
            }
        }
    }

    /// Drops the snapshot encodings no peer asked a part of for a while.
    pub fn forget_idle_snapshot_encodings(&mut self) {
        // A transfer asks at least every retransmission; one idle for sixteen is over.
        self.snapshot_sender.forget_idle(self.ticks, 16 * self.config.retransmit_ticks);
    }

    /// Installs a peer's snapshot if it is ahead of us. Returns whether it was.
    pub fn on_install_snapshot(&mut self, from: NodeId, snapshot: Snapshot) -> bool {
        if !self.learner.install(&snapshot) {
            return false;
        }
        tracing::info!(node = self.id(), peer = from, through = snapshot.through_slot, "installed a peer's snapshot");
        self.actions.persist.push_op(StorageOp::Compact(Box::new(snapshot.clone())));
        self.acceptor.discard_below(snapshot.through_slot + 1);
        // What was kept ran up to our own compaction point, below this one.
        self.kept.clear();
        self.known_chosen_through = self.known_chosen_through.max(snapshot.through_slot);
        self.snapshot = Some(snapshot.clone());
        self.event(Event::SnapshotInstalled(snapshot));
        self.apply();
        self.catch_up_sent_at = None;
        self.request_catch_up(from);
        true
    }

    /// Ticks to wait before the next retransmission of something already resent
    /// `retransmissions` times: doubling, capped at 16 times `retransmit_ticks`,
    /// so an overloaded network is not flooded with copies.
    pub fn retransmit_after(&self, retransmissions: u32) -> u64 {
        self.config.retransmit_ticks << retransmissions.min(4)
    }

    pub fn drain_actions_into(&mut self, into: &mut Actions) {
        assert!(into.is_empty(), "drain_actions_into needs an empty Actions");
        self.actions.hand_over(into);
    }

    pub fn event(&mut self, event: Event) {
        self.actions.events.push(event);
    }

    pub fn check_invariants(&self) {
        self.acceptor.check_invariants();
        self.learner.check_invariants(&self.acceptor);
        // Seed 001: a ballot's round is reserved durably before the ballot is used.
        assert!(self.own_round_used <= self.round_reserved, "ballot round used before it was reserved");
        if self.kept.len() > 0 {
            // Catch-up reads the kept slots, then the learner's, with no gap between.
            let through = self.snapshot.as_ref().map(|snapshot| snapshot.through_slot);
            assert_eq!(Some(self.kept.end() - 1), through, "kept slots end at the compaction point");
            assert!(self.kept.len() as u64 <= self.config.compaction_keep_slots);
            assert!(self.kept.bytes() <= self.config.compaction_keep_bytes_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests for parts of an encoding this replica no longer serves, the
    /// four of one window: the first is answered with the first part of the
    /// newest snapshot, the others with nothing, until a resend is due.
    #[test]
    fn a_window_of_requests_for_a_forgotten_encoding_gets_one_first_part() {
        let snapshot = Snapshot { through_slot: 40, data: vec![7; 10_000], ..Snapshot::default() };
        let durable = DurableState { snapshot: Some(snapshot), ..DurableState::default() };
        let mut core = Core::new(Config::new(1, vec![1, 2, 3], Protocol::Multi), &durable).unwrap();
        let forgotten = SnapshotId { through_slot: 40, digest: 1 };
        let first_parts = |core: &mut Core| {
            let mut actions = Actions::default();
            core.drain_actions_into(&mut actions);
            actions.send.iter().filter(|sent| matches!(sent.message, Message::SnapshotPart { offset: 0, .. })).count()
        };
        for offset in [1000, 2000, 3000, 4000] {
            core.on_snapshot_part_request(2, forgotten, offset);
        }
        assert_eq!(first_parts(&mut core), 1);
        core.on_snapshot_part_request(3, forgotten, 1000);
        assert_eq!(first_parts(&mut core), 1, "another peer is answered");
        core.ticks += core.config.retransmit_ticks;
        core.on_snapshot_part_request(2, forgotten, 1000);
        assert_eq!(first_parts(&mut core), 1, "a resend is answered");
    }
}
