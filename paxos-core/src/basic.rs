//! Basic Paxos: every slot of the log is its own single-decree instance, run with
//! both phases by whichever replica wants it (Paxos Made Simple §2).
//!
//! Any replica proposes, so proposers collide. A preempted proposer backs off for
//! a random number of ticks from its own seeded PRNG before retrying with a higher
//! ballot, which breaks the livelock of duelling proposers (seeds 000 and 002).
//! A proposer whose slot was taken by another value retries in the next free slot.
//!
//! A replica runs at most `slots_in_flight_max` instances for its own commands at
//! once: 1 by default, the textbook's one decision at a time (each value a batch of
//! queued commands). An instance that fills a hole runs on top of that limit,
//! one at a time, so a hole is never left waiting for the limit.
//!
//! A slot this replica's acceptor accepted a value in, above the applied point,
//! counts as a hole too: if nothing is learned for a timeout, the replica runs an
//! instance there proposing the value it accepted (a no-op where it accepted
//! nothing); value adoption makes it choose whatever may already be chosen. So a
//! value accepted by a majority just before every replica crashed is learned after
//! they restart, with no new command to push an instance into its slot.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::acceptor::Acceptor;
use crate::actions::Actions;
use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::{Config, ConfigError};
use crate::learner::Learner;
use crate::message::{Command, CommandId, Message, PrepareScope, Value};
use crate::proposer::Proposer;
use crate::replica::{CompactError, Core, ProposeError, Replica, Role, Status};
use crate::storage::{DurableState, Snapshot};

#[derive(Debug)]
struct Instance {
    proposer: Proposer,
    sent_at: u64,
    retransmissions: u32,
    /// An instance filling a hole (a no-op, or the value our acceptor accepted
    /// there), outside the `slots_in_flight_max` limit.
    hole_fill: bool,
}

/// A Basic Paxos replica: acceptor, learner, and a proposer per slot it contends for.
#[derive(Debug)]
pub struct BasicPaxos {
    core: Core,
    instances: BTreeMap<Slot, Instance>,
    queue: VecDeque<Command>,
    backoff_until: u64,
    /// Preemptions in a row without getting a value of ours chosen.
    preemptions: u32,
    /// No slot below this one (and above the applied point) is free for a new
    /// instance as far as this replica knows, so the search for one starts here.
    free_from: Slot,
    /// When this replica first saw a hole below a chosen slot, if it still does.
    hole_seen_at: Option<u64>,
    /// The applied point when `hole_seen_at` was set: the hole timer restarts
    /// whenever the applied point moves, so only a stall triggers a fill.
    hole_applied: Slot,
    /// The highest slot this replica's acceptor accepted a value in (0: none).
    /// Above the applied point it is a slot that may hold a chosen value nobody
    /// has learned, so hole detection treats it like a known chosen slot.
    accepted_through: Slot,
}

impl BasicPaxos {
    /// A replica restored from `durable` (empty for a new node).
    pub fn new(config: Config, durable: &DurableState) -> Result<BasicPaxos, ConfigError> {
        let accepted_through =
            durable.slots.iter().rev().find(|(_, state)| state.accepted.is_some()).map_or(0, |(slot, _)| *slot);
        Ok(BasicPaxos {
            core: Core::new(config, durable)?,
            instances: BTreeMap::new(),
            queue: VecDeque::new(),
            backoff_until: 0,
            preemptions: 0,
            free_from: 1,
            hole_seen_at: None,
            hole_applied: 0,
            accepted_through,
        })
    }

    /// The lowest slot not known chosen, not being contended for by this replica, from `from` on.
    /// The lowest slot not known chosen and not contended for by this replica,
    /// from the `free_from` cursor on; moves the cursor there. Amortized O(1):
    /// the cursor only moves back when an instance gives its slot up.
    fn free_slot(&mut self) -> Slot {
        let mut slot = self.free_from.max(self.core.learner.applied_through() + 1);
        while self.core.learner.is_chosen(slot) || self.instances.contains_key(&slot) {
            slot += 1;
        }
        self.free_from = slot;
        slot
    }

    fn start_instance(&mut self, slot: Slot, value: Value, hole_fill: bool) {
        let above = self.core.acceptor.promised_for(slot);
        let ballot = self.core.next_ballot(above);
        let (proposer, prepare) = Proposer::start(slot, ballot, value, self.core.quorum);
        tracing::trace!(node = self.core.id(), slot, %ballot, "basic instance started");
        self.instances.insert(slot, Instance { proposer, sent_at: self.core.ticks, retransmissions: 0, hole_fill });
        // The ballot's round was just reserved: the prepare waits for that write.
        self.core.broadcast_after_persist(&prepare);
    }

    /// Starts instances for queued commands while fewer than `slots_in_flight_max`
    /// instances run (1 by default: one decision at a time).
    fn flush(&mut self) {
        if self.core.ticks < self.backoff_until {
            return;
        }
        while !self.queue.is_empty() && (self.instances.len() as u64) < self.core.config.slots_in_flight_max {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(command) = self.queue.front() {
                let full = batch.len() >= self.core.config.batch_commands_max
                    || bytes + command.payload.len() > self.core.config.batch_bytes_max;
                if full && !batch.is_empty() {
                    break;
                }
                bytes += command.payload.len();
                batch.push(self.queue.pop_front().expect("front exists"));
            }
            let slot = self.free_slot();
            self.start_instance(slot, Value::Commands(Arc::from(batch)), false);
        }
    }

    /// Drops the instances for slots this replica learned some other way (catch-up,
    /// a snapshot): they hold a place under the limit for nothing. Their own
    /// commands go back in the queue unless they were what got chosen.
    fn retire_decided(&mut self) {
        let applied = self.core.learner.applied_through();
        let decided: Vec<Slot> = self
            .instances
            .keys()
            .copied()
            .filter(|slot| *slot <= applied || self.core.learner.is_chosen(*slot))
            .collect();
        for slot in decided {
            let instance = self.instances.remove(&slot).expect("listed above");
            if self.core.learner.chosen(slot, &self.core.acceptor) != Some(instance.proposer.own_value()) {
                self.requeue(&instance);
            }
        }
    }

    /// Puts an instance's own commands back at the head of the queue, to retry in another slot.
    /// A hole fill's value is not ours (a no-op, or what our acceptor accepted
    /// from another proposer, whose client retries): it is never requeued.
    fn requeue(&mut self, instance: &Instance) {
        if instance.hole_fill {
            return;
        }
        for command in instance.proposer.own_value().commands().iter().rev() {
            self.queue.push_front(command.clone());
        }
    }

    fn on_promise(&mut self, from: NodeId, ballot: Ballot, slot: Slot, accepted: Vec<crate::message::AcceptedEntry>) {
        let Some(voter) = self.core.bit(from) else { return };
        let Some(instance) = self.instances.get_mut(&slot) else { return };
        if let Some(accept) = instance.proposer.on_promise(voter, ballot, accepted) {
            instance.sent_at = self.core.ticks;
            instance.retransmissions = 0;
            self.core.broadcast(&accept);
        }
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slot: Slot) {
        let Some(voter) = self.core.bit(from) else { return };
        let Some(instance) = self.instances.get_mut(&slot) else { return };
        let Some(outcome) = instance.proposer.on_accepted(voter, ballot) else { return };
        let instance = self.instances.remove(&slot).expect("present above");
        if outcome.own {
            self.preemptions = 0;
        } else {
            // Our slot went to an earlier proposal (value adoption); ours waits for another.
            self.requeue(&instance);
        }
        self.core.learn(slot, outcome.value.clone());
        self.core.broadcast_to_peers(Message::Chosen { slot, value: outcome.value });
        self.core.apply();
        self.flush();
    }

    fn on_nack(&mut self, from: NodeId, ballot: Ballot, slot: Slot, promised: Ballot) {
        let compacted = promised == Ballot::COMPACTED;
        if compacted {
            // The peer compacted this slot: it is chosen, and we lag behind.
            self.core.known_chosen_through = self.core.known_chosen_through.max(slot);
            self.core.request_catch_up(from);
        }
        self.core.observe_ballot(promised);
        let Some(instance) = self.instances.get_mut(&slot) else { return };
        if !compacted && !instance.proposer.on_nack(ballot, promised) {
            return;
        }
        if compacted && instance.proposer.ballot() != ballot {
            return;
        }
        let instance = self.instances.remove(&slot).expect("present above");
        self.requeue(&instance);
        // The slot is free again (unless someone else gets it chosen first).
        self.free_from = self.free_from.min(slot);
        self.back_off();
    }

    /// Seeds 000 and 002: a randomized backoff keeps duelling proposers from
    /// livelocking. Its range doubles with each preemption in a row (up to 32
    /// times `backoff_ticks_max`), so even many proposers soon spread apart.
    fn back_off(&mut self) {
        self.preemptions = self.preemptions.saturating_add(1);
        let range = self.core.config.backoff_ticks_max.max(1) << self.preemptions.min(5);
        let backoff = self.core.rng.range_inclusive(1, range);
        self.backoff_until = self.backoff_until.max(self.core.ticks + backoff);
        tracing::debug!(node = self.core.id(), preemptions = self.preemptions, backoff, "preempted; backing off");
    }

    fn on_chosen(&mut self, slot: Slot, value: Value) {
        self.core.learn(slot, value);
        self.core.known_chosen_through = self.core.known_chosen_through.max(slot);
        if let Some(instance) = self.instances.remove(&slot) {
            // Somebody else decided this slot; retry our value elsewhere, unless it won.
            if self.core.learner.chosen(slot, &self.core.acceptor) != Some(instance.proposer.own_value()) {
                self.requeue(&instance);
            }
        }
        self.core.apply();
        self.flush();
    }

    fn any_peer(&mut self) -> Option<NodeId> {
        let peers: Vec<NodeId> =
            self.core.config.members.iter().copied().filter(|member| *member != self.core.id()).collect();
        if peers.is_empty() {
            return None;
        }
        let pick = self.core.rng.range_inclusive(0, peers.len() as u64 - 1) as usize;
        Some(peers[pick])
    }
}

impl Replica for BasicPaxos {
    fn propose_from(&mut self, commands: &mut Vec<Command>) -> Result<(), ProposeError> {
        let pending_max = self.core.config.pending_commands_max;
        if self.queue.len() + commands.len() > pending_max {
            return Err(ProposeError::Busy { pending_max });
        }
        self.queue.extend(commands.drain(..));
        self.flush();
        Ok(())
    }

    fn on_message(&mut self, from: NodeId, message: Message) {
        if self.core.bit(from).is_none() {
            tracing::warn!(node = self.core.id(), from, kind = message.kind(), "message from a non-member ignored");
            return;
        }
        match message {
            Message::Prepare { ballot, scope: scope @ PrepareScope::Slot(_) } => {
                self.core.reply_to_prepare(from, ballot, scope);
            }
            Message::Prepare { scope: PrepareScope::From(_), .. } => {
                tracing::warn!(node = self.core.id(), from, "log-wide prepare in a Basic Paxos cluster ignored");
            }
            Message::Promise { ballot, scope: PrepareScope::Slot(slot), accepted, chosen_through, .. } => {
                self.core.known_chosen_through = self.core.known_chosen_through.max(chosen_through);
                self.on_promise(from, ballot, slot, accepted.into_vec())
            }
            Message::Promise { .. } => {}
            Message::Accept { ballot, first_slot, values, .. } => {
                let count = values.len() as u64;
                if self.core.reply_to_accept(from, ballot, first_slot, Cow::Owned(values), false) && count > 0 {
                    let last = first_slot + count - 1;
                    self.accepted_through = self.accepted_through.max(last);
                }
            }
            Message::Accepted { ballot, first_slot, count } => {
                for slot in first_slot..first_slot + count {
                    self.on_accepted(from, ballot, slot);
                }
            }
            Message::Nack { ballot, slot, promised } => self.on_nack(from, ballot, slot, promised),
            Message::Chosen { slot, value } => self.on_chosen(slot, value),
            Message::CatchUpRequest { from_slot } => self.core.on_catch_up_request(from, from_slot),
            Message::CatchUp { first_slot, values } => {
                self.core.on_catch_up(from, first_slot, values);
                self.retire_decided();
                self.flush();
            }
            Message::Commit { chosen_through, .. } => {
                // Anti-entropy gossip: learn that we lag, or help a peer that does.
                self.core.known_chosen_through = self.core.known_chosen_through.max(chosen_through);
                if chosen_through < self.core.learner.applied_through() {
                    self.core.on_catch_up_request(from, chosen_through + 1);
                }
                self.core.request_catch_up(from);
            }
            Message::SnapshotPartRequest { id, offset } => self.core.on_snapshot_part_request(from, id, offset),
            Message::SnapshotPart { id, offset, total, bytes } => {
                if self.core.on_snapshot_part(from, id, offset, total, bytes) {
                    // Instances for slots the snapshot covers are decided: retry their values.
                    self.retire_decided();
                    self.flush();
                }
            }
            Message::Forward { commands } => {
                if let Err(error) = self.propose(commands) {
                    tracing::debug!(node = self.core.id(), from, %error, "dropping forwarded commands");
                }
            }
        }
    }

    fn tick(&mut self) {
        self.core.ticks += 1;
        self.core.forget_idle_snapshot_encodings();
        let ticks = self.core.ticks;
        let mut resend = Vec::new();
        for instance in self.instances.values_mut() {
            if instance.sent_at + self.core.retransmit_after(instance.retransmissions) <= ticks {
                instance.sent_at = ticks;
                instance.retransmissions += 1;
                resend.extend(instance.proposer.retransmission());
            }
        }
        for message in resend {
            // Its ballot's round may still be waiting for its write.
            self.core.broadcast_after_persist(&message);
        }
        // Every election timeout, tell one random peer how far this replica has
        // applied. A replica that restarted or missed `Chosen` messages learns
        // that it lags even when no new command is proposed.
        if ticks.is_multiple_of(self.core.config.election_timeout_ticks) {
            if let Some(peer) = self.any_peer() {
                let chosen_through = self.core.learner.applied_through();
                self.core.actions.send(peer, Message::Commit { ballot: Ballot::ZERO, chosen_through });
            }
        }
        // A hole below a chosen slot: ask a peer, and if that does not fill it,
        // run an instance with a no-op there (seed 004), which either chooses the
        // no-op or learns the value already chosen. A value our acceptor accepted
        // above the applied point marks a hole the same way: it may be chosen
        // with nobody knowing (every replica crashed before learning it), and
        // no new command may ever come to run an instance there.
        let applied = self.core.learner.applied_through();
        let has_hole = self.core.learner.chosen_end() > applied + 1
            || self.core.known_chosen_through > applied
            || self.accepted_through > applied;
        if has_hole && self.hole_applied != applied {
            // Progress since the timer started: it measures a stall, not a busy log.
            self.hole_seen_at = None;
        }
        self.hole_applied = applied;
        if has_hole {
            if self.core.known_chosen_through > applied {
                if let Some(peer) = self.any_peer() {
                    self.core.request_catch_up(peer);
                }
            }
            // Each replica waits its own random delay, so they do not all fill
            // the same hole at the same moment and duel over it.
            let timeout = self.core.config.election_timeout_ticks;
            let due_at = match self.hole_seen_at {
                Some(due_at) => due_at,
                None => *self.hole_seen_at.insert(ticks + self.core.rng.range_inclusive(0, timeout)),
            };
            let hole = applied + 1;
            // Outside the in-flight limit (so the limit never blocks a hole), but
            // one fill at a time.
            let filling = self.instances.values().any(|instance| instance.hole_fill);
            if ticks >= due_at + timeout
                && !self.instances.contains_key(&hole)
                && !filling
                && ticks >= self.backoff_until
            {
                tracing::debug!(
                    node = self.core.id(),
                    slot = hole,
                    "filling a hole with the value accepted there, else a no-op"
                );
                // Propose what our acceptor accepted there, if anything: adoption
                // overrides it with a higher-ballot value a quorum reports.
                let value = self.core.acceptor.accepted(hole).map_or(Value::Noop, |(_, value)| value.clone());
                self.start_instance(hole, value, true);
                self.hole_seen_at = Some(ticks + self.core.rng.range_inclusive(0, timeout));
            }
        } else {
            self.hole_seen_at = None;
        }
        self.flush();
    }

    fn take_actions(&mut self) -> Actions {
        std::mem::take(&mut self.core.actions)
    }

    fn drain_actions_into(&mut self, into: &mut Actions) {
        self.core.drain_actions_into(into);
    }

    fn status(&self) -> Status {
        Status {
            node_id: self.core.id(),
            role: Role::Proposer,
            leader: None,
            promised: self.core.acceptor.promised(),
            applied_through: self.core.learner.applied_through(),
            known_chosen_through: self.core.known_chosen_through,
            next_index: self.core.learner.next_index(),
            queued_commands: self.queue.len(),
            peer_lag: Vec::new(),
        }
    }

    fn learner(&self) -> &Learner {
        &self.core.learner
    }

    fn acceptor(&self) -> &Acceptor {
        &self.core.acceptor
    }

    fn compact(&mut self, through_slot: Slot, data: Vec<u8>) -> Result<(), CompactError> {
        self.core.compact(through_slot, data)
    }

    fn for_each_held_command(&self, held: &mut dyn FnMut(CommandId)) {
        self.queue.iter().for_each(|command| held(command.id));
        // An instance that loses its slot puts its own commands back in the queue.
        for instance in self.instances.values().filter(|instance| !instance.hole_fill) {
            instance.proposer.own_value().commands().iter().for_each(|command| held(command.id));
        }
    }

    fn snapshot(&self) -> Option<&Snapshot> {
        self.core.snapshot.as_ref()
    }

    fn check_invariants(&self) {
        self.core.check_invariants();
        // At most `slots_in_flight_max` instances for our commands, plus one hole fill.
        let fills = self.instances.values().filter(|instance| instance.hole_fill).count() as u64;
        assert!(fills <= 1, "more than one hole fill at a time");
        assert!(self.instances.len() as u64 - fills <= self.core.config.slots_in_flight_max);
        for (slot, instance) in &self.instances {
            assert_eq!(*slot, instance.proposer.slot());
            assert_eq!(instance.proposer.ballot().node, self.core.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AcceptedEntry, Outgoing};
    use crate::storage::StorageOp;

    fn replica(id: NodeId) -> BasicPaxos {
        BasicPaxos::new(Config::new(id, [1, 2, 3], crate::config::Protocol::Basic), &DurableState::default()).unwrap()
    }

    #[test]
    fn a_proposal_runs_phase_1_for_one_slot_after_reserving_the_round() {
        let mut proposer = replica(1);
        proposer.propose(vec![Command::new(1, 1, b"x".to_vec())]).unwrap();
        let actions = proposer.take_actions();
        assert!(actions.send.is_empty());
        assert!(actions.persist.ops().iter().any(|op| matches!(op, StorageOp::Round(_))));
        let released = actions.persist.persist_with(|_| Ok::<(), ()>(())).unwrap();
        assert_eq!(released.len(), 3);
        assert!(released.iter().all(|o| matches!(o.message, Message::Prepare { scope: PrepareScope::Slot(1), .. })));
    }

    #[test]
    fn one_instance_at_a_time_by_default_and_more_when_raised() {
        let commands = || (1..=3).map(|sequence| Command::new(1, sequence, b"x".to_vec())).collect::<Vec<_>>();
        let prepared_slots = |replica: &mut BasicPaxos| {
            let released = replica.take_actions().persist.persist_with(|_| Ok::<(), ()>(())).unwrap();
            let mut slots: Vec<Slot> = released
                .iter()
                .filter_map(|o| match o.message {
                    Message::Prepare { scope: PrepareScope::Slot(slot), .. } => Some(slot),
                    _ => None,
                })
                .collect();
            slots.dedup();
            slots
        };
        let mut config = Config::new(1, [1, 2, 3], crate::config::Protocol::Basic);
        config.batch_commands_max = 1;
        let mut textbook = BasicPaxos::new(config.clone(), &DurableState::default()).unwrap();
        textbook.propose(commands()).unwrap();
        assert_eq!(prepared_slots(&mut textbook), vec![1], "one decision at a time");
        assert_eq!(textbook.status().queued_commands, 2);
        config.slots_in_flight_max = 3;
        let mut concurrent = BasicPaxos::new(config, &DurableState::default()).unwrap();
        concurrent.propose(commands()).unwrap();
        assert_eq!(prepared_slots(&mut concurrent), vec![1, 2, 3]);
    }

    #[test]
    fn the_proposer_adopts_a_reported_value_and_retries_its_own_elsewhere() {
        let mut proposer = replica(1);
        proposer.propose(vec![Command::new(1, 1, b"mine".to_vec())]).unwrap();
        let released = proposer.take_actions().persist.persist_with(|_| Ok::<(), ()>(())).unwrap();
        let Message::Prepare { ballot, scope } = released[0].message.clone() else { panic!("a prepare") };
        let theirs = Value::Commands(Arc::from(vec![Command::new(2, 1, b"theirs".to_vec())]));
        let reported = vec![AcceptedEntry { slot: 1, ballot: Ballot::new(0, 2), value: theirs.clone() }];
        proposer.on_message(
            2,
            Message::Promise { ballot, scope, accepted: reported.into(), chosen_through: 0, continues_at: None },
        );
        proposer.on_message(
            3,
            Message::Promise { ballot, scope, accepted: Box::default(), chosen_through: 0, continues_at: None },
        );
        let actions = proposer.take_actions();
        let accept = actions.send.iter().find(|o| o.to == 2).map(|o| o.message.clone());
        assert_eq!(
            accept,
            Some(Message::Accept { ballot, first_slot: 1, values: vec![theirs.clone()], chosen_through: 0 })
        );
        proposer.on_message(2, Message::Accepted { ballot, first_slot: 1, count: 1 });
        proposer.on_message(3, Message::Accepted { ballot, first_slot: 1, count: 1 });
        let actions = proposer.take_actions();
        assert_eq!(actions.decided[0].value, theirs);
        assert!(actions.send.iter().any(|o| o.message == Message::Chosen { slot: 1, value: theirs.clone() }));
        // Our own command goes back in the queue and gets a new instance in slot 2.
        let released = actions.persist.persist_with(|_| Ok::<(), ()>(())).unwrap();
        assert!(released.iter().any(|o| matches!(o.message, Message::Prepare { scope: PrepareScope::Slot(2), .. })));
    }

    #[test]
    fn a_preempted_proposer_backs_off_before_retrying() {
        let mut proposer = replica(1);
        proposer.propose(vec![Command::new(1, 1, b"x".to_vec())]).unwrap();
        let released = proposer.take_actions().persist.persist_with(|_| Ok::<(), ()>(())).unwrap();
        let Message::Prepare { ballot, .. } = released[0].message.clone() else { panic!("a prepare") };
        proposer.on_message(2, Message::Nack { ballot, slot: 1, promised: Ballot::new(50, 2) });
        let actions = proposer.take_actions();
        assert!(actions.send.is_empty() && actions.persist.waiting_messages() == 0, "no retry during the backoff");
        assert_eq!(proposer.status().queued_commands, 1);
        let mut retried: Vec<Outgoing> = Vec::new();
        for _ in 0..64 * proposer.core.config.backoff_ticks_max {
            proposer.tick();
            let actions = proposer.take_actions();
            retried.extend(actions.persist.persist_with(|_| Ok::<(), ()>(())).unwrap());
            if !retried.is_empty() {
                break;
            }
        }
        let Some(Message::Prepare { ballot: retry, .. }) = retried.first().map(|o| o.message.clone()) else {
            panic!("the proposer retried")
        };
        assert!(retry > Ballot::new(50, 2), "the retry is above the promise it was told");
    }
}
