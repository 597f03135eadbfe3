//! Multi-Paxos: a stable leader runs phase 1 once for the whole log, then phase 2
//! per slot, pipelined and batched (Paxos Made Simple §3; seed 004).
//!
//! A follower that hears nothing from a leader for a randomized election timeout
//! prepares a higher ballot for every slot from the first one it does not know to
//! be chosen. On a majority of promises it re-proposes the highest-ballot value
//! reported for each such slot, fills the holes with no-ops, and from then on
//! sends only accepts. The commit point rides on accepts and heartbeats.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::Arc;

use crate::acceptor::Acceptor;
use crate::actions::{Actions, Event};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::{Config, ConfigError};
use crate::learner::{AcceptTally, Learner};
use crate::message::{message_prefix, AcceptedEntry, Command, CommandId, Message, PrepareScope, Value};
use crate::proposer::PromiseTally;
use crate::replica::{CompactError, Core, ProposeError, Replica, Role, Status};
use crate::slots::SlotMap;
use crate::storage::{DurableState, Snapshot};

/// A slot this leader proposed and has not yet seen chosen.
#[derive(Clone, Debug, Default)]
struct InFlight {
    sent_at: u64,
    retransmissions: u32,
}

#[derive(Debug)]
struct Leadership {
    ballot: Ballot,
    next_slot: Slot,
    votes: AcceptTally,
    in_flight: SlotMap<InFlight>,
    commit_sent: Slot,
    heartbeat_at: u64,
    /// Per member (by position), the highest slot it is known to have accepted.
    accepted_through: Vec<Slot>,
}

#[derive(Debug)]
enum State {
    Follower,
    Candidate {
        tally: PromiseTally,
        from_slot: Slot,
        sent_at: u64,
        /// Per member position: where the next part of its promise starts, once
        /// a part said it continues (a long report comes in parts; see
        /// [`Message::Promise`]).
        parts_from: Vec<Option<Slot>>,
    },
    Leader(Box<Leadership>),
}

/// A Multi-Paxos replica: acceptor, learner, and (when elected) the leader's proposer.
#[derive(Debug)]
pub struct MultiPaxos {
    core: Core,
    state: State,
    /// The leader this replica follows, if any, and its ballot.
    leader: Option<NodeId>,
    leader_ballot: Ballot,
    ticks_since_heard: u64,
    election_timeout: u64,
    /// Elections this replica skipped to catch up first, since it last heard a leader.
    elections_deferred: u32,
    queue: VecDeque<Command>,
}

impl MultiPaxos {
    /// A replica restored from `durable` (empty for a new node).
    pub fn new(config: Config, durable: &DurableState) -> Result<MultiPaxos, ConfigError> {
        let core = Core::new(config, durable)?;
        let mut replica = MultiPaxos {
            core,
            state: State::Follower,
            leader: None,
            leader_ballot: Ballot::ZERO,
            ticks_since_heard: 0,
            election_timeout: 0,
            elections_deferred: 0,
            queue: VecDeque::new(),
        };
        replica.reset_election_timer();
        if replica.core.config.members.len() == 1 {
            // Alone, there is nobody to wait for.
            replica.start_election();
        }
        Ok(replica)
    }

    /// The ballot this replica leads or stands with, if any.
    pub fn own_ballot(&self) -> Option<Ballot> {
        match &self.state {
            State::Follower => None,
            State::Candidate { tally, .. } => Some(tally.ballot()),
            State::Leader(leadership) => Some(leadership.ballot),
        }
    }

    fn reset_election_timer(&mut self) {
        let base = self.core.config.election_timeout_ticks;
        self.ticks_since_heard = 0;
        self.election_timeout = self.core.rng.range_inclusive(base, 2 * base - 1);
    }

    fn set_leader(&mut self, leader: Option<NodeId>, ballot: Ballot) {
        if self.leader != leader || (leader.is_some() && self.leader_ballot != ballot) {
            tracing::info!(node = self.core.id(), ?leader, %ballot, "leader changed");
            self.leader = leader;
            self.leader_ballot = ballot;
            self.core.event(Event::LeaderChanged { leader, ballot });
        }
    }

    /// Gives up candidacy or leadership because `ballot` is higher than ours.
    fn step_down(&mut self, ballot: Ballot) {
        if matches!(self.state, State::Follower) {
            return;
        }
        tracing::info!(node = self.core.id(), %ballot, "stepping down");
        self.state = State::Follower;
        self.set_leader(None, ballot);
        if !self.queue.is_empty() {
            let ids = self.queue.drain(..).map(|command| command.id).collect();
            self.core.event(Event::Dropped { ids, leader_hint: None });
        }
    }

    /// Notes a message from the leader of `ballot`: it is alive, and it leads.
    fn heard_from_leader(&mut self, ballot: Ballot) {
        if ballot < self.leader_ballot {
            return;
        }
        if let Some(own) = self.own_ballot() {
            if ballot > own {
                self.step_down(ballot);
            } else {
                return;
            }
        }
        self.ticks_since_heard = 0;
        self.elections_deferred = 0;
        self.set_leader(Some(ballot.node), ballot);
    }

    fn start_election(&mut self) {
        let above = self.core.acceptor.promised().max(self.leader_ballot);
        let ballot = self.core.next_ballot(above);
        let from_slot = self.core.learner.applied_through() + 1;
        tracing::info!(node = self.core.id(), %ballot, from_slot, "standing for election (phase 1)");
        if matches!(self.state, State::Leader(_)) {
            self.step_down(ballot);
        }
        self.set_leader(None, ballot);
        let parts_from = vec![None; self.core.config.members.len()];
        self.state =
            State::Candidate { tally: PromiseTally::new(ballot), from_slot, sent_at: self.core.ticks, parts_from };
        self.reset_election_timer();
        // The prepare carries a freshly reserved round: it leaves after the reservation is durable.
        self.core.broadcast_after_persist(&Message::Prepare { ballot, scope: PrepareScope::From(from_slot) });
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        scope: PrepareScope,
        accepted: Box<[AcceptedEntry]>,
        chosen_through: Slot,
        continues_at: Option<NonZeroU64>,
    ) {
        self.core.known_chosen_through = self.core.known_chosen_through.max(chosen_through);
        let Some(voter) = self.core.bit(from) else { return };
        let ticks = self.core.ticks;
        let State::Candidate { tally, from_slot, parts_from, sent_at } = &mut self.state else { return };
        if tally.ballot() != ballot {
            return;
        }
        // Each part answers the prepare for where the previous one stopped; a
        // copy of an earlier part, or an answer to an older prepare, adds nothing.
        let position = voter.trailing_zeros() as usize;
        let expected = parts_from[position].unwrap_or(*from_slot);
        if scope != PrepareScope::From(expected) {
            return;
        }
        let accepted = accepted.into_vec();
        match continues_at.map(NonZeroU64::get) {
            None => {
                if tally.on_promise(voter, accepted) >= self.core.quorum {
                    self.become_leader();
                }
            }
            Some(next) if next > expected => {
                if tally.add_part(voter, accepted) {
                    parts_from[position] = Some(next);
                    // A long report is progress: the election does not time out
                    // while parts keep coming, and no resend asks again for parts
                    // already on their way (each would come back, megabytes at a time).
                    *sent_at = ticks;
                    self.ticks_since_heard = 0;
                    // The promise is already durable there: this asks for a report only.
                    self.core.actions.send(from, Message::Prepare { ballot, scope: PrepareScope::From(next) });
                }
            }
            Some(next) => {
                tracing::warn!(
                    node = self.core.id(),
                    from,
                    next,
                    expected,
                    "a promise part that does not move on; ignored"
                );
            }
        }
    }

    fn become_leader(&mut self) {
        let State::Candidate { tally, from_slot, .. } = std::mem::replace(&mut self.state, State::Follower) else {
            unreachable!("only a candidate becomes leader")
        };
        let ballot = tally.ballot();
        let first_unknown = self.core.learner.applied_through() + 1;
        let end = tally
            .highest_reported_slot()
            .map_or(0, |slot| slot + 1)
            .max(self.core.learner.chosen_end())
            .max(first_unknown);
        tracing::info!(node = self.core.id(), %ballot, from_slot, end, "elected leader; re-proposing and filling holes");
        let members = self.core.config.members.len();
        self.state = State::Leader(Box::new(Leadership {
            ballot,
            next_slot: first_unknown,
            votes: AcceptTally::new(first_unknown),
            in_flight: SlotMap::new(first_unknown),
            commit_sent: 0,
            heartbeat_at: self.core.ticks,
            accepted_through: vec![0; members],
        }));
        self.set_leader(Some(self.core.id()), ballot);
        // Seed 004: re-propose every value learned in phase 1 and fill holes with no-ops.
        let values: Vec<Value> = (first_unknown..end)
            .map(|slot| match self.core.learner.chosen(slot, &self.core.acceptor) {
                Some(chosen) => chosen.clone(),
                None => tally.adopt(slot, Value::Noop),
            })
            .collect();
        assert!(from_slot <= first_unknown);
        self.propose_values(values);
        self.flush();
    }

    /// Assigns consecutive slots to `values` and sends the accepts.
    fn propose_values(&mut self, values: Vec<Value>) {
        if values.is_empty() {
            return;
        }
        let State::Leader(leadership) = &mut self.state else { unreachable!("only a leader proposes") };
        let first_slot = leadership.next_slot;
        // The values themselves stay with the leader's own acceptor, which takes
        // them below at this ballot and keeps them while this replica leads.
        for offset in 0..values.len() as u64 {
            let entry =
                leadership.in_flight.get_mut(first_slot + offset).expect("in-flight window starts at the commit point");
            entry.sent_at = self.core.ticks;
        }
        leadership.next_slot += values.len() as u64;
        let ballot = leadership.ballot;
        let chosen_through = self.core.learner.applied_through();
        leadership.commit_sent = chosen_through;
        let chunk = self.core.config.accept_slots_per_message_max;
        let bytes_max = self.core.config.message_bytes_max;
        let mut first = first_slot;
        let mut values = values;
        let leader = self.core.id();
        while !values.is_empty() {
            let take = message_prefix(&values, chunk, bytes_max, Value::encoded_bytes_bound);
            let rest = values.split_off(take);
            let count = values.len() as u64;
            // The leader's own acceptor takes the accept here rather than through
            // the network: the same write, and its vote leaves only once durable.
            self.core.reply_to_accept(leader, ballot, first, Cow::Borrowed(&values), true);
            self.core.broadcast_to_peers(Message::Accept { ballot, first_slot: first, values, chosen_through });
            first += count;
            values = rest;
        }
    }

    /// Leader: how many more slots the pipeline has room for; `None` if not leading.
    fn room(&self) -> Option<u64> {
        let State::Leader(leadership) = &self.state else { return None };
        let window_start = self.core.learner.applied_through() + 1;
        Some(self.core.config.slots_in_flight_max.saturating_sub(leadership.next_slot - window_start))
    }

    /// How many of `commands`, from the first, go in one batch: at most
    /// `batch_commands_max` and `batch_bytes_max`, and at least one.
    fn batch_len<'a>(&self, commands: impl Iterator<Item = &'a Command>) -> usize {
        let mut count = 0;
        let mut bytes = 0;
        for command in commands {
            let full = count >= self.core.config.batch_commands_max
                || (bytes + command.payload.len() > self.core.config.batch_bytes_max);
            if full && count > 0 {
                break;
            }
            bytes += command.payload.len();
            count += 1;
        }
        count
    }

    /// The first batches, at most `room` of them, of `len` commands that
    /// `from(start)` iterates from position `start` on: each batch's size, and
    /// how many commands they take in all.
    fn batch_sizes<'a, I: Iterator<Item = &'a Command>>(
        &self,
        len: usize,
        room: u64,
        from: impl Fn(usize) -> I,
    ) -> (Vec<usize>, usize) {
        let mut sizes = Vec::new();
        let mut taken = 0;
        while taken < len && (sizes.len() as u64) < room {
            let count = self.batch_len(from(taken));
            sizes.push(count);
            taken += count;
        }
        (sizes, taken)
    }

    /// Leader: turns queued commands into slots while the pipeline has room.
    fn flush(&mut self) {
        let Some(room) = self.room() else { return };
        if self.queue.is_empty() {
            return;
        }
        let (sizes, taken) = self.batch_sizes(self.queue.len(), room, |start| self.queue.range(start..));
        let values = cut_batches(&sizes, &mut self.queue.drain(..taken));
        self.propose_values(values);
    }

    /// Leader with nothing queued: proposes the batches `room` slots take from
    /// the front of `commands`, cut as [`MultiPaxos::flush`] cuts them from the
    /// queue, and leaves the rest in `commands`.
    fn propose_direct(&mut self, commands: &mut Vec<Command>, room: u64) {
        let (sizes, taken) = self.batch_sizes(commands.len(), room, |start| commands[start..].iter());
        let values = cut_batches(&sizes, &mut commands.drain(..taken));
        self.propose_values(values);
    }

    fn on_accept(&mut self, from: NodeId, ballot: Ballot, first_slot: Slot, values: Vec<Value>, chosen_through: Slot) {
        if self.core.reply_to_accept(from, ballot, first_slot, Cow::Owned(values), true) {
            self.heard_from_leader(ballot);
            self.learn_commit(from, ballot, chosen_through);
        }
    }

    fn on_commit(&mut self, from: NodeId, ballot: Ballot, chosen_through: Slot) {
        let promised = self.core.acceptor.promised();
        if ballot < promised {
            // A deposed leader: tell it, so it steps down.
            self.core.actions.send(from, Message::Nack { ballot, slot: 0, promised });
            return;
        }
        self.heard_from_leader(ballot);
        self.learn_commit(from, ballot, chosen_through);
    }

    /// Follower: slots up to `chosen_through` are chosen; those this replica
    /// accepted at the leader's ballot hold the chosen value.
    fn learn_commit(&mut self, leader: NodeId, ballot: Ballot, chosen_through: Slot) {
        self.core.known_chosen_through = self.core.known_chosen_through.max(chosen_through);
        let start = self.core.learner.applied_through() + 1;
        let end = chosen_through.min(start + 2 * self.core.config.slots_in_flight_max);
        for slot in start..=end {
            self.core.learn_accepted(slot, ballot);
        }
        self.core.apply();
        self.core.request_catch_up(leader);
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, first_slot: Slot, count: u64) {
        let Some(voter) = self.core.bit(from) else { return };
        let State::Leader(leadership) = &mut self.state else { return };
        if ballot != leadership.ballot {
            return;
        }
        let position = voter.trailing_zeros() as usize;
        let last = first_slot + count.saturating_sub(1);
        leadership.accepted_through[position] = leadership.accepted_through[position].max(last);
        let mut learned = false;
        for slot in first_slot..first_slot + count {
            if slot >= leadership.next_slot {
                break;
            }
            if leadership.votes.record(slot, ballot, voter) == self.core.quorum {
                // The leader's own acceptor holds the value at this ballot.
                learned |= self.core.learn_accepted(slot, ballot);
            }
        }
        if !learned {
            // A vote after the quorum (or a stale one): nothing became ready to
            // apply, so the window and the queue are as they were.
            return;
        }
        self.core.apply();
        let applied = self.core.learner.applied_through();
        if let State::Leader(leadership) = &mut self.state {
            leadership.in_flight.discard_below(applied + 1);
            leadership.votes.discard_below(applied + 1);
        }
        self.flush();
    }

    fn on_nack(&mut self, from: NodeId, ballot: Ballot, promised: Ballot) {
        if promised == Ballot::COMPACTED {
            // The peer compacted slots we asked about: we lag behind it.
            self.core.known_chosen_through =
                self.core.known_chosen_through.max(self.core.learner.applied_through() + 1);
            self.core.request_catch_up(from);
            return;
        }
        self.core.observe_ballot(promised);
        if let Some(own) = self.own_ballot() {
            if ballot == own && promised > own {
                self.step_down(promised);
                self.reset_election_timer();
            }
        }
    }

    /// A leader told by a peer that slots from `first_slot` are chosen with
    /// `values` steps down if one of them is not what it proposed there at its
    /// ballot, or lies beyond what it proposed: a newer leader chose it, so this
    /// one is stale. It must step down before it learns them. Otherwise its
    /// commit point would soon cover a slot whose value accepted at its ballot is
    /// not the chosen one, and followers learn from the commit point exactly the
    /// values they accepted at the leader's ballot.
    fn step_down_if_overtaken(&mut self, first_slot: Slot, values: &[Value]) {
        #[cfg(feature = "mutations")]
        if crate::mutations::active(crate::mutations::Mutation::LeaderIgnoresOvertaking) {
            return;
        }
        let State::Leader(leadership) = &self.state else { return };
        let applied = self.core.learner.applied_through();
        let overtaken = (first_slot..).zip(values).any(|(slot, value)| {
            slot > applied
                && (slot >= leadership.next_slot
                    || !self
                        .core
                        .acceptor
                        .accepted(slot)
                        .is_some_and(|(ballot, ours)| *ballot == leadership.ballot && ours == value))
        });
        if overtaken {
            let ballot = leadership.ballot;
            tracing::info!(node = self.core.id(), %ballot, first_slot, "a peer reports slots chosen by a newer leader");
            self.step_down(ballot);
        }
    }

    fn on_forward(&mut self, from: NodeId, commands: Vec<Command>) {
        match self.propose(commands) {
            Ok(()) => {}
            Err(error) => {
                tracing::debug!(node = self.core.id(), from, %error, "dropping forwarded commands");
            }
        }
    }

    fn random_peer(&mut self) -> Option<NodeId> {
        let peers: Vec<NodeId> =
            self.core.config.members.iter().copied().filter(|member| *member != self.core.id()).collect();
        if peers.is_empty() {
            return None;
        }
        let pick = self.core.rng.range_inclusive(0, peers.len() as u64 - 1) as usize;
        Some(peers[pick])
    }

    fn leader_tick(&mut self) {
        let ticks = self.core.ticks;
        let heartbeat_ticks = self.core.config.heartbeat_ticks;
        let chosen_through = self.core.learner.applied_through();
        let members = self.core.config.members.clone();
        let State::Leader(leadership) = &mut self.state else { return };
        // The commit point rides on accepts; when none carried the latest one, a
        // commit goes out on the next tick (or with the heartbeat), not one per slot.
        if ticks >= leadership.heartbeat_at + heartbeat_ticks || chosen_through > leadership.commit_sent {
            leadership.heartbeat_at = ticks;
            leadership.commit_sent = chosen_through;
            let message = Message::Commit { ballot: leadership.ballot, chosen_through };
            self.core.broadcast_to_peers(message);
        }
        let State::Leader(leadership) = &mut self.state else { return };
        // Retransmit accepts that a member has not acknowledged in time, in
        // messages no larger than a first send's.
        let ballot = leadership.ballot;
        let slots_max = self.core.config.accept_slots_per_message_max;
        let bytes_max = self.core.config.message_bytes_max;
        let mut resend: Vec<(NodeId, Slot, Vec<Value>, usize)> = Vec::new();
        for slot in chosen_through + 1..leadership.next_slot {
            let Some(entry) = leadership.in_flight.get_mut(slot) else { continue };
            if entry.sent_at + self.core.retransmit_after(entry.retransmissions) > ticks {
                continue;
            }
            let Some((_, value)) = self.core.acceptor.accepted(slot).filter(|(accepted, _)| *accepted == ballot) else {
                continue;
            };
            let value = value.clone();
            let value_bytes = value.encoded_bytes_bound();
            entry.sent_at = ticks;
            entry.retransmissions += 1;
            let voters = leadership.votes.voters(slot, ballot);
            for (position, member) in members.iter().enumerate() {
                if voters & (1 << position) != 0 {
                    continue;
                }
                match resend.iter_mut().rev().find(|(to, _, _, _)| to == member) {
                    Some((_, first, values, bytes))
                        if *first + values.len() as u64 == slot
                            && values.len() < slots_max
                            && *bytes + value_bytes <= bytes_max =>
                    {
                        values.push(value.clone());
                        *bytes += value_bytes;
                    }
                    _ => resend.push((*member, slot, vec![value.clone()], value_bytes)),
                }
            }
        }
        if !resend.is_empty() {
            tracing::debug!(node = self.core.id(), messages = resend.len(), "retransmitting accepts");
        }
        for (to, first_slot, values, _) in resend {
            self.core.actions.send(to, Message::Accept { ballot, first_slot, values, chosen_through });
        }
    }
}

/// One value per size in `sizes`, each a batch of that many commands taken in
/// order from `front`, which must hold at least their sum.
fn cut_batches(sizes: &[usize], front: &mut impl Iterator<Item = Command>) -> Vec<Value> {
    sizes
        .iter()
        .map(|count| {
            let batch: Arc<[Command]> = if *count == 1 {
                // Without batching (or with one command waiting), skip the staging vector.
                Arc::new([front.next().expect("sizes add up to at most what front holds")])
            } else {
                front.by_ref().take(*count).collect()
            };
            Value::Commands(batch)
        })
        .collect()
}

impl Replica for MultiPaxos {
    fn propose_from(&mut self, commands: &mut Vec<Command>) -> Result<(), ProposeError> {
        match &self.state {
            State::Leader(_) | State::Candidate { .. } => {
                let pending_max = self.core.config.pending_commands_max;
                if self.queue.len() + commands.len() > pending_max {
                    return Err(ProposeError::Busy { pending_max });
                }
                if self.queue.is_empty() && !commands.is_empty() {
                    // Nothing waits: the batches the pipeline has room for go
                    // straight from `commands` (one move per command, where the
                    // queue takes two), and only the rest waits in the queue.
                    let room = self.room().unwrap_or(0);
                    if room > 0 && self.batch_len(commands.iter()) == commands.len() {
                        // One batch, the usual case, skips the list of sizes
                        // `propose_direct` builds: at one command in flight that
                        // path cost 5,951 instructions per command against 5,640.
                        let batch: Arc<[Command]> = commands.drain(..).collect();
                        self.propose_values(vec![Value::Commands(batch)]);
                        return Ok(());
                    }
                    self.propose_direct(commands, room);
                }
                self.queue.extend(commands.drain(..));
                self.flush();
                Ok(())
            }
            State::Follower => match self.leader {
                Some(leader) if leader != self.core.id() => {
                    let bytes_max = self.core.config.message_bytes_max;
                    while !commands.is_empty() {
                        let take = message_prefix(commands, usize::MAX, bytes_max, Command::encoded_bytes_bound);
                        let rest = commands.split_off(take);
                        let forwarded = std::mem::replace(commands, rest);
                        self.core.actions.send(leader, Message::Forward { commands: forwarded });
                    }
                    Ok(())
                }
                _ => Err(ProposeError::NotLeader { leader_hint: None }),
            },
        }
    }

    fn on_message(&mut self, from: NodeId, message: Message) {
        if self.core.bit(from).is_none() {
            tracing::warn!(node = self.core.id(), from, kind = message.kind(), "message from a non-member ignored");
            return;
        }
        match message {
            Message::Prepare { ballot, scope } => {
                if self.core.reply_to_prepare(from, ballot, scope) && from != self.core.id() {
                    if self.own_ballot().is_some_and(|own| ballot > own) {
                        self.step_down(ballot);
                    }
                    // A live candidate: give it time to win before standing ourselves.
                    self.reset_election_timer();
                    if ballot > self.leader_ballot {
                        self.set_leader(None, ballot);
                    }
                }
            }
            Message::Promise { ballot, scope, accepted, chosen_through, continues_at } => {
                self.on_promise(from, ballot, scope, accepted, chosen_through, continues_at)
            }
            Message::Accept { ballot, first_slot, values, chosen_through } => {
                self.on_accept(from, ballot, first_slot, values, chosen_through)
            }
            Message::Accepted { ballot, first_slot, count } => self.on_accepted(from, ballot, first_slot, count),
            Message::Nack { ballot, promised, .. } => self.on_nack(from, ballot, promised),
            Message::Commit { ballot, chosen_through } => self.on_commit(from, ballot, chosen_through),
            Message::Chosen { slot, value } => {
                self.step_down_if_overtaken(slot, std::slice::from_ref(&value));
                self.core.learn(slot, value);
                self.core.apply();
            }
            Message::CatchUpRequest { from_slot } => self.core.on_catch_up_request(from, from_slot),
            Message::CatchUp { first_slot, values } => {
                self.step_down_if_overtaken(first_slot, &values);
                self.core.on_catch_up(from, first_slot, values)
            }
            Message::SnapshotPartRequest { id, offset } => self.core.on_snapshot_part_request(from, id, offset),
            Message::SnapshotPart { id, offset, total, bytes } => {
                if self.core.on_snapshot_part(from, id, offset, total, bytes) {
                    if let Some(own) = self.own_ballot() {
                        // We were behind; let an up-to-date replica lead.
                        self.step_down(own);
                    }
                }
            }
            Message::Forward { commands } => self.on_forward(from, commands),
        }
    }

    fn tick(&mut self) {
        self.core.ticks += 1;
        self.core.forget_idle_snapshot_encodings();
        match &self.state {
            State::Leader(_) => self.leader_tick(),
            State::Candidate { sent_at, .. } => {
                self.ticks_since_heard += 1;
                if self.ticks_since_heard >= self.election_timeout {
                    self.start_election();
                } else if self.core.ticks >= sent_at + self.core.config.retransmit_ticks {
                    let ticks = self.core.ticks;
                    let members = &self.core.config.members;
                    let State::Candidate { tally, from_slot, sent_at, parts_from } = &mut self.state else {
                        unreachable!("matched above")
                    };
                    *sent_at = ticks;
                    let ballot = tally.ballot();
                    // Ask every member again, each from where its report stands;
                    // like the first copy, a prepare may not overtake the write
                    // reserving its round.
                    for (position, member) in members.iter().enumerate() {
                        let scope = PrepareScope::From(parts_from[position].unwrap_or(*from_slot));
                        self.core.actions.persist.push_message(*member, Message::Prepare { ballot, scope });
                    }
                }
            }
            State::Follower => {
                self.ticks_since_heard += 1;
                if self.ticks_since_heard >= self.election_timeout {
                    let lagging = self.core.known_chosen_through
                        > self.core.learner.applied_through() + self.core.config.catch_up_slots_max as u64;
                    if lagging && self.elections_deferred == 0 {
                        // A replica that knows it lags far behind first spends one election
                        // timeout catching up from a peer, so that an up-to-date replica
                        // likely wins and a new leader need not re-propose a long tail. It
                        // defers only once: the peers may all be gone.
                        self.elections_deferred += 1;
                        self.reset_election_timer();
                        if let Some(peer) = self.random_peer() {
                            self.core.catch_up_sent_at = None;
                            self.core.request_catch_up(peer);
                        }
                    } else {
                        self.start_election();
                    }
                }
            }
        }
        if let Some(leader) = self.leader {
            self.core.request_catch_up(leader);
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
        let applied = self.core.learner.applied_through();
        let peer_lag = match &self.state {
            State::Leader(leadership) => self
                .core
                .config
                .members
                .iter()
                .zip(&leadership.accepted_through)
                .filter(|(member, _)| **member != self.core.id())
                .map(|(member, through)| (*member, applied.saturating_sub(*through)))
                .collect(),
            _ => Vec::new(),
        };
        Status {
            node_id: self.core.id(),
            role: match self.state {
                State::Follower => Role::Follower,
                State::Candidate { .. } => Role::Candidate,
                State::Leader(_) => Role::Leader,
            },
            leader: self.leader,
            promised: self.core.acceptor.promised(),
            applied_through: applied,
            known_chosen_through: self.core.known_chosen_through,
            next_index: self.core.learner.next_index(),
            queued_commands: self.queue.len(),
            peer_lag,
        }
    }

    fn learner(&self) -> &Learner {
        &self.core.learner
    }

    fn acceptor(&self) -> &Acceptor {
        &self.core.acceptor
    }

    fn compact(&mut self, through_slot: Slot, data: Vec<u8>) -> Result<(), CompactError> {
        self.core.compact(through_slot, data)?;
        if let State::Leader(leadership) = &mut self.state {
            leadership.votes.discard_below(through_slot + 1);
            leadership.in_flight.discard_below(through_slot + 1);
        }
        Ok(())
    }

    fn for_each_held_command(&self, held: &mut dyn FnMut(CommandId)) {
        self.queue.iter().for_each(|command| held(command.id));
        if let State::Leader(leadership) = &self.state {
            // The leader's own acceptor holds every value it proposed and has not applied.
            for slot in self.core.learner.applied_through() + 1..leadership.next_slot {
                if let Some((_, value)) = self.core.acceptor.accepted(slot) {
                    value.commands().iter().for_each(|command| held(command.id));
                }
            }
        }
    }

    fn snapshot(&self) -> Option<&Snapshot> {
        self.core.snapshot.as_ref()
    }

    fn check_invariants(&self) {
        self.core.check_invariants();
        if let State::Leader(leadership) = &self.state {
            assert!(leadership.next_slot > self.core.learner.applied_through());
            for slot in self.core.learner.applied_through() + 1..leadership.next_slot {
                let held = self.core.acceptor.accepted(slot).is_some_and(|(ballot, _)| *ballot == leadership.ballot);
                assert!(held, "the leader's acceptor lost in-flight slot {slot} at the leader's ballot");
            }
            assert_eq!(leadership.ballot.node, self.core.id(), "a leader leads with its own ballot");
        }
        assert!(self.queue.len() <= self.core.config.pending_commands_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CommandId, Outgoing};
    use crate::storage::StorageOp;

    fn replica(id: NodeId) -> MultiPaxos {
        MultiPaxos::new(Config::new(id, [1, 2, 3], crate::config::Protocol::Multi), &DurableState::default()).unwrap()
    }

    /// Carries out the persist as a driver would and returns the released messages.
    fn persist(actions: Actions) -> (Vec<StorageOp>, Vec<Outgoing>, Vec<Outgoing>) {
        let ops = actions.persist.ops().to_vec();
        let released = actions.persist.persist_with(|_| Ok::<(), ()>(())).unwrap();
        (ops, actions.send, released)
    }

    fn value(text: &str) -> Value {
        Value::Commands(Arc::from(vec![Command::new(1, 1, text.as_bytes().to_vec())]))
    }

    #[test]
    fn an_election_reserves_its_round_before_the_prepare_leaves() {
        let mut candidate = replica(1);
        let mut actions = Actions::default();
        for _ in 0..4 * candidate.core.config.election_timeout_ticks {
            candidate.tick();
            actions.merge(candidate.take_actions());
        }
        assert!(actions.send.is_empty(), "nothing may leave before the round is durable, retransmissions included");
        let (ops, _, released) = persist(actions);
        let ballot = candidate.own_ballot().expect("standing for election");
        assert!(ops.iter().any(|op| matches!(op, StorageOp::Round(round) if *round >= ballot.round)));
        assert!(released.len() >= 3, "a prepare to every member, itself included");
        let last_round: Vec<&Outgoing> = released.iter().rev().take(3).collect();
        for outgoing in last_round {
            assert_eq!(outgoing.message, Message::Prepare { ballot, scope: PrepareScope::From(1) });
        }
    }

    #[test]
    fn a_follower_persists_an_accept_before_acknowledging_it() {
        let mut follower = replica(2);
        let ballot = Ballot::new(4, 1);
        follower.on_message(
            1,
            Message::Accept { ballot, first_slot: 1, values: vec![value("a"), value("b")], chosen_through: 0 },
        );
        let (ops, immediate, released) = persist(follower.take_actions());
        assert!(immediate.is_empty(), "the acknowledgement waits for the write");
        assert_eq!(
            ops,
            vec![
                StorageOp::Promise(ballot),
                StorageOp::Accept { slot: 1, ballot, value: value("a") },
                StorageOp::Accept { slot: 2, ballot, value: value("b") },
            ]
        );
        assert_eq!(released, vec![Outgoing { to: 1, message: Message::Accepted { ballot, first_slot: 1, count: 2 } }]);
        assert_eq!(follower.status().leader, Some(1));
    }

    #[test]
    fn a_stale_accept_is_refused_at_once_with_the_promise() {
        let mut follower = replica(2);
        follower.on_message(3, Message::Prepare { ballot: Ballot::new(9, 3), scope: PrepareScope::From(1) });
        let _ = follower.take_actions();
        follower.on_message(
            1,
            Message::Accept { ballot: Ballot::new(4, 1), first_slot: 1, values: vec![value("a")], chosen_through: 0 },
        );
        let (ops, immediate, released) = persist(follower.take_actions());
        assert!(ops.is_empty() && released.is_empty());
        assert_eq!(
            immediate,
            vec![Outgoing {
                to: 1,
                message: Message::Nack { ballot: Ballot::new(4, 1), slot: 0, promised: Ballot::new(9, 3) }
            }]
        );
    }

    #[test]
    fn a_commit_point_applies_slots_accepted_at_the_leaders_ballot() {
        let mut follower = replica(2);
        let ballot = Ballot::new(4, 1);
        follower.on_message(1, Message::Accept { ballot, first_slot: 1, values: vec![value("a")], chosen_through: 0 });
        let _ = follower.take_actions();
        follower.on_message(1, Message::Commit { ballot, chosen_through: 1 });
        let actions = follower.take_actions();
        assert_eq!(actions.decided.len(), 1);
        assert_eq!(actions.decided[0].slot, 1);
        assert_eq!(actions.persist.ops(), &[StorageOp::Chosen { slot: 1, value: None }]);
    }

    #[test]
    #[should_panic(expected = "agreement violated")]
    fn a_second_value_for_a_slot_learned_from_the_commit_point_stops_the_node() {
        let mut follower = replica(2);
        let ballot = Ballot::new(4, 1);
        // Slot 1 is a hole, so slot 2 stays chosen but unapplied.
        follower.on_message(1, Message::Accept { ballot, first_slot: 2, values: vec![value("a")], chosen_through: 0 });
        follower.on_message(1, Message::Commit { ballot, chosen_through: 2 });
        assert_eq!(follower.core.learner.chosen(2, &follower.core.acceptor), Some(&value("a")));
        follower.on_message(3, Message::Chosen { slot: 2, value: value("b") });
    }

    #[test]
    fn a_new_leader_reproposes_reported_values_and_fills_holes_with_noops() {
        let mut candidate = replica(1);
        for _ in 0..2 * candidate.core.config.election_timeout_ticks {
            candidate.tick();
        }
        let _ = candidate.take_actions();
        let ballot = candidate.own_ballot().unwrap();
        let reported = vec![AcceptedEntry { slot: 3, ballot: Ballot::new(0, 2), value: value("kept") }];
        candidate.on_message(
            2,
            Message::Promise {
                ballot,
                scope: PrepareScope::From(1),
                accepted: reported.into(),
                chosen_through: 0,
                continues_at: None,
            },
        );
        candidate.on_message(3, empty_promise(ballot));
        assert_eq!(candidate.status().role, Role::Leader);
        let actions = candidate.take_actions();
        let accepts: Vec<&Message> = actions.send.iter().filter(|o| o.to == 2).map(|o| &o.message).collect();
        assert_eq!(
            accepts,
            vec![&Message::Accept {
                ballot,
                first_slot: 1,
                values: vec![Value::Noop, Value::Noop, value("kept")],
                chosen_through: 0
            }]
        );
    }

    #[test]
    fn a_follower_forwards_commands_to_the_leader_it_knows() {
        let mut follower = replica(2);
        assert_eq!(
            follower.propose(vec![Command::new(5, 1, vec![])]),
            Err(ProposeError::NotLeader { leader_hint: None })
        );
        follower.on_message(1, Message::Commit { ballot: Ballot::new(2, 1), chosen_through: 0 });
        let _ = follower.take_actions();
        follower.propose(vec![Command::new(5, 1, vec![])]).unwrap();
        let actions = follower.take_actions();
        assert_eq!(
            actions.send,
            vec![Outgoing { to: 1, message: Message::Forward { commands: vec![Command::new(5, 1, vec![])] } }]
        );
    }

    #[test]
    fn proposing_from_a_buffer_keeps_refused_commands_and_empties_it_otherwise() {
        let mut follower = replica(2);
        let mut buffer = vec![Command::new(5, 1, vec![1]), Command::new(5, 2, vec![2])];
        assert_eq!(follower.propose_from(&mut buffer), Err(ProposeError::NotLeader { leader_hint: None }));
        assert_eq!(buffer.len(), 2, "refused commands stay with the caller");

        let (mut leader, _) = elected(Config::new(1, [1, 2, 3], crate::config::Protocol::Multi));
        let capacity = buffer.capacity();
        leader.propose_from(&mut buffer).unwrap();
        assert!(buffer.is_empty());
        assert_eq!(buffer.capacity(), capacity, "the buffer keeps its allocation for the next batch");
        let accepts: Vec<Message> =
            leader.take_actions().send.into_iter().filter(|o| o.to == 2).map(|o| o.message).collect();
        let [Message::Accept { values, .. }] = accepts.as_slice() else {
            panic!("one accept to each peer: {accepts:?}")
        };
        let proposed: Vec<CommandId> =
            values.iter().flat_map(|value| value.commands().iter().map(|command| command.id)).collect();
        assert_eq!(proposed, vec![CommandId { client: 5, sequence: 1 }, CommandId { client: 5, sequence: 2 }]);
    }

    /// A whole promise of the log from slot 1 at `ballot`, reporting nothing accepted.
    fn empty_promise(ballot: Ballot) -> Message {
        Message::Promise {
            ballot,
            scope: PrepareScope::From(1),
            accepted: Box::default(),
            chosen_through: 0,
            continues_at: None,
        }
    }

    /// Node 1 of `config`, elected by promises from nodes 2 and 3, with its actions so far taken.
    fn elected(config: Config) -> (MultiPaxos, Ballot) {
        let mut leader = MultiPaxos::new(config, &DurableState::default()).unwrap();
        for _ in 0..2 * leader.core.config.election_timeout_ticks {
            leader.tick();
        }
        let _ = leader.take_actions();
        let ballot = leader.own_ballot().unwrap();
        for peer in [2, 3] {
            leader.on_message(peer, empty_promise(ballot));
        }
        assert_eq!(leader.status().role, Role::Leader);
        let _ = accepted_batches(&mut leader);
        (leader, ballot)
    }

    /// Carries out node 1's actions as a driver would (its messages to itself
    /// delivered) and returns the batches of the accepts it sends node 2, as
    /// client sequences.
    fn accepted_batches(leader: &mut MultiPaxos) -> Vec<Vec<u64>> {
        let mut batches = Vec::new();
        loop {
            let actions = leader.take_actions();
            if actions.is_empty() {
                return batches;
            }
            let (_, send, released) = persist(actions);
            for outgoing in send.into_iter().chain(released) {
                match (outgoing.to, outgoing.message) {
                    (1, message) => leader.on_message(1, message),
                    (2, Message::Accept { values, .. }) => batches.extend(
                        values.iter().map(|value| value.commands().iter().map(|command| command.id.sequence).collect()),
                    ),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn commands_beyond_one_batch_or_the_pipeline_wait_in_the_queue_in_order() {
        let mut config = Config::new(1, [1, 2, 3], crate::config::Protocol::Multi);
        config.batch_commands_max = 2;
        config.slots_in_flight_max = 2;
        let (mut leader, ballot) = elected(config);
        let commands = |sequences: &[u64]| -> Vec<Command> {
            sequences.iter().map(|sequence| Command::new(5, *sequence, vec![*sequence as u8])).collect()
        };

        // Three commands are two batches: both slots of the pipeline.
        leader.propose_from(&mut commands(&[1, 2, 3])).unwrap();
        assert_eq!(accepted_batches(&mut leader), vec![vec![1, 2], vec![3]]);
        // One that would make a batch alone waits while the pipeline is full.
        leader.propose_from(&mut commands(&[4])).unwrap();
        leader.propose_from(&mut commands(&[5])).unwrap();
        assert!(accepted_batches(&mut leader).is_empty());
        // Once both slots are chosen, the queue goes out in order.
        leader.on_message(2, Message::Accepted { ballot, first_slot: 1, count: 2 });
        assert_eq!(accepted_batches(&mut leader), vec![vec![4, 5]]);
        // With nothing waiting, a batch goes straight out.
        leader.on_message(2, Message::Accepted { ballot, first_slot: 3, count: 1 });
        let _ = accepted_batches(&mut leader);
        leader.propose_from(&mut commands(&[6, 7])).unwrap();
        assert_eq!(accepted_batches(&mut leader), vec![vec![6, 7]]);
        // Three batches with room for two: those two go straight out, the third
        // waits in the queue until a slot is chosen.
        leader.on_message(2, Message::Accepted { ballot, first_slot: 4, count: 1 });
        let _ = accepted_batches(&mut leader);
        leader.propose_from(&mut commands(&[8, 9, 10, 11, 12])).unwrap();
        assert_eq!(accepted_batches(&mut leader), vec![vec![8, 9], vec![10, 11]]);
        leader.on_message(2, Message::Accepted { ballot, first_slot: 5, count: 1 });
        assert_eq!(accepted_batches(&mut leader), vec![vec![12]]);
    }

    /// Every message `actions` send, at once or once written.
    fn all_sent(actions: Actions) -> Vec<Outgoing> {
        let (_, mut sent, released) = persist(actions);
        sent.extend(released);
        sent
    }

    /// Accepts (first sends and resends), catch-ups and forwards of large commands
    /// are cut so each encodes to about `message_bytes_max` at most: a transport
    /// drops a frame above its limit, and would drop the same resend every time.
    #[test]
    fn messages_that_carry_values_keep_to_message_bytes_max() {
        const LIMIT: usize = 4096;
        let fits = |outgoing: &Outgoing| {
            let bytes = crate::wire::encode(1, &outgoing.message).len();
            assert!(bytes <= LIMIT + 64, "a {} of {bytes} bytes", outgoing.message.kind());
        };
        let mut config = Config::new(1, [1, 2, 3], crate::config::Protocol::Multi);
        config.batch_bytes_max = 1024;
        config.message_bytes_max = LIMIT;
        let (mut leader, ballot) = elected(config.clone());
        let commands: Vec<Command> = (1..=16).map(|sequence| Command::new(9, sequence, vec![7; 1000])).collect();
        leader.propose(commands.clone()).unwrap();
        let accepts: Vec<Outgoing> = all_sent(leader.take_actions()).into_iter().filter(|sent| sent.to == 2).collect();
        accepts.iter().for_each(fits);
        let slots: usize = accepts
            .iter()
            .map(|sent| match &sent.message {
                Message::Accept { values, .. } => values.len(),
                other => panic!("unexpected {other:?}"),
            })
            .sum();
        assert_eq!(slots, 16, "one command a slot, every slot sent");
        assert!(accepts.len() >= 6, "at most 3 slots of 1 KiB in 4 KiB: {} accepts", accepts.len());

        // Nobody answered: the resends are cut the same way.
        for _ in 0..8 * config.retransmit_ticks {
            leader.tick();
        }
        let resent = all_sent(leader.take_actions());
        assert!(resent.iter().any(|sent| matches!(sent.message, Message::Accept { .. })));
        resent.iter().for_each(fits);

        // Chosen, the slots go to a lagging peer in several catch-ups.
        for peer in [2, 3] {
            leader.on_message(peer, Message::Accepted { ballot, first_slot: 1, count: 16 });
        }
        let _ = leader.take_actions();
        leader.on_message(3, Message::CatchUpRequest { from_slot: 1 });
        let catch_up = all_sent(leader.take_actions());
        catch_up.iter().for_each(fits);
        assert!(
            matches!(&catch_up[..], [Outgoing { message: Message::CatchUp { values, .. }, .. }] if values.len() == 3)
        );

        // A follower forwards them to the leader in parts.
        let mut follower = MultiPaxos::new(Config { node_id: 2, ..config }, &DurableState::default()).unwrap();
        follower.on_message(1, Message::Commit { ballot, chosen_through: 0 });
        let _ = follower.take_actions();
        follower.propose(commands).unwrap();
        let forwards = all_sent(follower.take_actions());
        forwards.iter().for_each(fits);
        let forwarded: usize = forwards
            .iter()
            .map(|sent| match &sent.message {
                Message::Forward { commands } => commands.len(),
                other => panic!("unexpected {other:?}"),
            })
            .sum();
        assert_eq!((forwarded, forwards.len() >= 4), (16, true));
    }

    /// Node 2, which accepted `count` values of 1 KiB at ballot 1.1, and node 3,
    /// standing for election with its own promise counted, both with batches of
    /// at most 1 KiB and messages of at most `message_bytes_max`; the candidate's
    /// ballot, and the values.
    fn a_candidate_and_an_acceptor_of(
        count: u64,
        message_bytes_max: usize,
    ) -> (MultiPaxos, MultiPaxos, Ballot, Vec<Value>) {
        let mut config = Config::new(1, [1, 2, 3], crate::config::Protocol::Multi);
        config.batch_bytes_max = 1024;
        config.message_bytes_max = message_bytes_max;
        let values: Vec<Value> = (1..=count)
            .map(|sequence| Value::Commands(Arc::from(vec![Command::new(9, sequence, vec![7; 1000])])))
            .collect();
        let mut acceptor = MultiPaxos::new(Config { node_id: 2, ..config.clone() }, &DurableState::default()).unwrap();
        let accept =
            Message::Accept { ballot: Ballot::new(1, 1), first_slot: 1, values: values.clone(), chosen_through: 0 };
        acceptor.on_message(1, accept);
        let _ = acceptor.take_actions();
        let mut candidate = MultiPaxos::new(Config { node_id: 3, ..config }, &DurableState::default()).unwrap();
        while candidate.own_ballot().is_none() {
            candidate.tick();
        }
        let _ = candidate.take_actions();
        let ballot = candidate.own_ballot().unwrap();
        candidate.on_message(3, empty_promise(ballot));
        (acceptor, candidate, ballot, values)
    }

    /// A promise too long for one message comes in parts, each within
    /// `message_bytes_max`; the candidate asks for each next part, ignores copies
    /// of earlier ones, counts the promiser only with the last, and re-proposes
    /// what every part reported (seed 004).
    #[test]
    fn a_long_promise_comes_in_parts_and_the_candidate_adopts_from_every_part() {
        const LIMIT: usize = 4096;
        let (mut acceptor, mut candidate, ballot, values) = a_candidate_and_an_acceptor_of(10, LIMIT);

        let mut prepare = Message::Prepare { ballot, scope: PrepareScope::From(1) };
        let mut reported = Vec::new();
        let mut parts = Vec::new();
        let last_sent = loop {
            acceptor.on_message(3, prepare);
            let [Outgoing { to: 3, message: promise }] = &all_sent(acceptor.take_actions())[..] else {
                panic!("one promise to the candidate")
            };
            let bytes = crate::wire::encode(2, promise).len();
            assert!(bytes <= LIMIT + 64, "a promise part of {bytes} bytes");
            let Message::Promise { accepted, continues_at, .. } = promise else { panic!("{promise:?}") };
            reported.extend(accepted.iter().map(|entry| entry.slot));
            parts.push(promise.clone());
            candidate.on_message(2, promise.clone());
            let asked = all_sent(candidate.take_actions());
            if continues_at.is_none() {
                break asked;
            }
            assert_eq!(candidate.status().role, Role::Candidate, "not counted before the last part");
            // A copy of the first part, late, asks for nothing.
            candidate.on_message(2, parts[0].clone());
            assert!(candidate.take_actions().is_empty());
            let [Outgoing { to: 2, message }] = &asked[..] else { panic!("one prepare for the next part: {asked:?}") };
            assert_eq!(*message, Message::Prepare { ballot, scope: PrepareScope::From(continues_at.unwrap().get()) });
            prepare = message.clone();
        };
        assert_eq!(reported, (1..=10).collect::<Vec<Slot>>(), "every slot reported once, in order");
        assert!(parts.len() >= 4, "about 3 values of 1 KiB a part: {} parts", parts.len());
        assert_eq!(candidate.status().role, Role::Leader);
        // Every reported value re-proposed in its slot, to each peer.
        let ids = |values: &[Value]| -> Vec<CommandId> {
            values.iter().flat_map(|value| value.commands().iter().map(|command| command.id)).collect()
        };
        let mut proposed = Vec::new();
        for sent in last_sent {
            if let (2, Message::Accept { first_slot, values, .. }) = (sent.to, sent.message) {
                assert_eq!(first_slot, proposed.len() as u64 + 1);
                proposed.extend(values);
            }
        }
        assert_eq!(ids(&proposed), ids(&values));
        assert!(proposed == values, "the values themselves, not only their ids");
    }

    /// Parts of a long promise that keep coming are progress: the candidate does
    /// not time out and start over (at a higher ballot, asking for every part
    /// again) while they arrive, however many election timeouts they take.
    #[test]
    fn a_candidate_receiving_promise_parts_does_not_time_out() {
        let (mut acceptor, mut candidate, ballot, _) = a_candidate_and_an_acceptor_of(12, 2048);
        let timeout = candidate.core.config.election_timeout_ticks;
        let mut prepare = Message::Prepare { ballot, scope: PrepareScope::From(1) };
        let mut parts = 0;
        while candidate.status().role == Role::Candidate {
            acceptor.on_message(3, prepare.clone());
            let [Outgoing { message: promise, .. }] = &all_sent(acceptor.take_actions())[..] else {
                panic!("a promise")
            };
            // Most of an election timeout passes before each part arrives.
            for _ in 0..timeout - 1 {
                candidate.tick();
            }
            candidate.on_message(2, promise.clone());
            parts += 1;
            assert_eq!(candidate.own_ballot(), Some(ballot), "the election started over after {parts} parts");
            // It asks for the next part (a resend during the wait asks for the one before).
            for sent in all_sent(candidate.take_actions()) {
                if let (2, Message::Prepare { scope: PrepareScope::From(from), .. }) = (sent.to, &sent.message) {
                    if matches!(prepare, Message::Prepare { scope: PrepareScope::From(asked), .. } if *from > asked) {
                        prepare = sent.message.clone();
                    }
                }
            }
        }
        assert!(parts >= 6, "{parts} parts");
        assert_eq!(candidate.status().role, Role::Leader);
    }
}
