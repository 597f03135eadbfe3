//! The proposer: phase 1 to a majority, value adoption, phase 2 (Paxos Made Simple §2.2).
//!
//! [`PromiseTally`] is the adoption rule both protocols share. [`Proposer`] is one
//! single-decree instance, the unit of Basic Paxos.

use std::collections::BTreeMap;

use crate::ballot::{Ballot, Slot};
use crate::message::{AcceptedEntry, Message, PrepareScope, Value};

/// Phase 1 replies for one ballot, and the highest-ballot accepted proposal per slot.
#[derive(Clone, Debug)]
pub struct PromiseTally {
    ballot: Ballot,
    voters: u64,
    highest: BTreeMap<Slot, (Ballot, Value)>,
}

impl PromiseTally {
    /// An empty tally for `ballot`.
    pub fn new(ballot: Ballot) -> PromiseTally {
        PromiseTally { ballot, voters: 0, highest: BTreeMap::new() }
    }

    /// The ballot being tallied.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// Records a promise from the member with vote bit `voter`, once. Returns the
    /// number of distinct promisers so far.
    ///
    /// A promise reporting a value accepted at or above the ballot it promises is
    /// impossible from a correct acceptor; it is dropped whole (and logged), never
    /// counted, so a broken peer cannot steer value adoption.
    pub fn on_promise(&mut self, voter: u64, accepted: Vec<AcceptedEntry>) -> usize {
        if self.add_part(voter, accepted) {
            self.voters |= voter;
        }
        self.voters.count_ones() as usize
    }

    /// Records one part of a promise that comes in several (see
    /// [`Message::Promise`]'s `continues_at`) without counting its promiser, which
    /// [`PromiseTally::on_promise`] does with the last part. Returns false, having
    /// recorded nothing, for a promiser already counted or an impossible report.
    pub fn add_part(&mut self, voter: u64, accepted: Vec<AcceptedEntry>) -> bool {
        if self.voters & voter != 0 {
            return false;
        }
        if let Some(bad) = accepted.iter().find(|entry| entry.ballot >= self.ballot) {
            tracing::error!(ballot = %self.ballot, reported = %bad.ballot, slot = bad.slot, "promise reports a value accepted at or above its ballot; dropped");
            return false;
        }
        for entry in accepted {
            // Paxos Made Simple §2.2 P2c: keep the value of the highest-numbered
            // accepted proposal reported for each slot.
            match self.highest.get(&entry.slot) {
                Some((ballot, _)) if *ballot >= entry.ballot => {}
                _ => {
                    self.highest.insert(entry.slot, (entry.ballot, entry.value));
                }
            }
        }
        true
    }

    /// Seed 000's rule: the value of the highest-ballot accepted proposal reported
    /// for `slot`, or `own` if no promiser reported one.
    pub fn adopt(&self, slot: Slot, own: Value) -> Value {
        #[cfg(feature = "mutations")]
        if crate::mutations::active(crate::mutations::Mutation::ProposerSkipsAdoption) {
            return own;
        }
        match self.highest.get(&slot) {
            Some((_, value)) => value.clone(),
            None => own,
        }
    }

    /// The highest slot any promiser reported an accepted value for.
    pub fn highest_reported_slot(&self) -> Option<Slot> {
        self.highest.keys().next_back().copied()
    }
}

/// Where a single-decree proposer is.
#[derive(Clone, Debug)]
enum Phase {
    Preparing(PromiseTally),
    Accepting { value: Value, voters: u64 },
    Chosen(Value),
    Preempted { promised: Ballot },
}

/// One single-decree Paxos instance, driven by one proposer for one slot.
#[derive(Clone, Debug)]
pub struct Proposer {
    slot: Slot,
    ballot: Ballot,
    own: Value,
    quorum: usize,
    phase: Phase,
}

/// What the proposer's value turned out to be once chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The chosen value.
    pub value: Value,
    /// Whether it is the value this proposer started with.
    pub own: bool,
}

impl Proposer {
    /// Starts phase 1 for `slot` with `ballot`, proposing `own` if nothing was
    /// accepted before. Returns the proposer and the prepare to send to every acceptor.
    pub fn start(slot: Slot, ballot: Ballot, own: Value, quorum: usize) -> (Proposer, Message) {
        assert!(quorum >= 1);
        let proposer = Proposer { slot, ballot, own, quorum, phase: Phase::Preparing(PromiseTally::new(ballot)) };
        (proposer, Message::Prepare { ballot, scope: PrepareScope::Slot(slot) })
    }

    /// The instance's slot.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The instance's ballot.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// The value this proposer wants chosen.
    pub fn own_value(&self) -> &Value {
        &self.own
    }

    /// The chosen value, once a majority accepted it.
    pub fn chosen(&self) -> Option<&Value> {
        match &self.phase {
            Phase::Chosen(value) => Some(value),
            _ => None,
        }
    }

    /// The higher promise that preempted this proposer, if one did.
    pub fn preempted_by(&self) -> Option<Ballot> {
        match self.phase {
            Phase::Preempted { promised } => Some(promised),
            _ => None,
        }
    }

    /// The message to resend if replies are slow: the prepare or the accept.
    pub fn retransmission(&self) -> Option<Message> {
        match &self.phase {
            Phase::Preparing(_) => Some(Message::Prepare { ballot: self.ballot, scope: PrepareScope::Slot(self.slot) }),
            Phase::Accepting { value, .. } => Some(Message::Accept {
                ballot: self.ballot,
                first_slot: self.slot,
                values: vec![value.clone()],
                chosen_through: 0,
            }),
            Phase::Chosen(_) | Phase::Preempted { .. } => None,
        }
    }

    /// Phase 1b. Once a majority promised, returns the accept to send, carrying
    /// the adopted value (seed 000).
    pub fn on_promise(&mut self, voter: u64, ballot: Ballot, accepted: Vec<AcceptedEntry>) -> Option<Message> {
        let Phase::Preparing(tally) = &mut self.phase else { return None };
        if ballot != self.ballot {
            return None;
        }
        let accepted = accepted.into_iter().filter(|entry| entry.slot == self.slot).collect();
        if tally.on_promise(voter, accepted) < self.quorum {
            return None;
        }
        let value = tally.adopt(self.slot, self.own.clone());
        self.phase = Phase::Accepting { value: value.clone(), voters: 0 };
        Some(Message::Accept { ballot: self.ballot, first_slot: self.slot, values: vec![value], chosen_through: 0 })
    }

    /// Phase 2b. Returns the outcome once a majority accepted this ballot.
    pub fn on_accepted(&mut self, voter: u64, ballot: Ballot) -> Option<Outcome> {
        let Phase::Accepting { value, voters } = &mut self.phase else { return None };
        if ballot != self.ballot {
            return None;
        }
        *voters |= voter;
        if (voters.count_ones() as usize) < self.quorum {
            return None;
        }
        let value = value.clone();
        let own = value == self.own;
        self.phase = Phase::Chosen(value.clone());
        Some(Outcome { value, own })
    }

    /// A rejection: some acceptor promised `promised > ballot`. The instance stops;
    /// the caller retries with a ballot above `promised`, after a backoff.
    pub fn on_nack(&mut self, ballot: Ballot, promised: Ballot) -> bool {
        if ballot != self.ballot || promised <= self.ballot {
            return false;
        }
        match self.phase {
            Phase::Preparing(_) | Phase::Accepting { .. } => {
                self.phase = Phase::Preempted { promised };
                true
            }
            Phase::Chosen(_) | Phase::Preempted { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::acceptor::Acceptor;
    use crate::message::Command;

    fn value(text: &str) -> Value {
        Value::Commands(Arc::from(vec![Command::new(1, 1, text.as_bytes().to_vec())]))
    }

    /// Seed 000: A promises with nothing accepted, B reports (3, "foo"), C is silent.
    /// The proposer of round 5 must propose "foo", not its own value.
    #[test]
    fn seed_000_promise_with_accepted_foo_forces_foo_in_round_5() {
        let (mut proposer, prepare) = Proposer::start(1, Ballot::new(5, 9), value("mine"), 2);
        assert_eq!(prepare, Message::Prepare { ballot: Ballot::new(5, 9), scope: PrepareScope::Slot(1) });
        assert_eq!(proposer.on_promise(0b001, Ballot::new(5, 9), vec![]), None);
        let accept = proposer.on_promise(
            0b010,
            Ballot::new(5, 9),
            vec![AcceptedEntry { slot: 1, ballot: Ballot::new(3, 2), value: value("foo") }],
        );
        assert_eq!(
            accept,
            Some(Message::Accept {
                ballot: Ballot::new(5, 9),
                first_slot: 1,
                values: vec![value("foo")],
                chosen_through: 0
            })
        );
        assert_eq!(proposer.on_accepted(0b001, Ballot::new(5, 9)), None);
        assert_eq!(proposer.on_accepted(0b010, Ballot::new(5, 9)), Some(Outcome { value: value("foo"), own: false }));
    }

    #[test]
    fn adopts_the_highest_ballot_not_the_latest_reply() {
        let mut tally = PromiseTally::new(Ballot::new(9, 1));
        tally.on_promise(1, vec![AcceptedEntry { slot: 4, ballot: Ballot::new(7, 2), value: value("new") }]);
        tally.on_promise(2, vec![AcceptedEntry { slot: 4, ballot: Ballot::new(2, 3), value: value("old") }]);
        assert_eq!(tally.adopt(4, value("own")), value("new"));
        assert_eq!(tally.adopt(5, value("own")), value("own"));
    }

    #[test]
    fn an_impossible_promise_is_dropped_not_counted() {
        let mut tally = PromiseTally::new(Ballot::new(5, 1));
        let impossible = vec![AcceptedEntry { slot: 1, ballot: Ballot::new(6, 2), value: value("x") }];
        assert_eq!(tally.on_promise(0b10, impossible), 0);
        assert_eq!(tally.adopt(1, value("own")), value("own"));
    }

    #[test]
    fn duplicate_promises_count_once() {
        let (mut proposer, _) = Proposer::start(1, Ballot::new(1, 1), value("a"), 2);
        assert_eq!(proposer.on_promise(0b1, Ballot::new(1, 1), vec![]), None);
        assert_eq!(proposer.on_promise(0b1, Ballot::new(1, 1), vec![]), None);
        assert!(proposer.on_promise(0b10, Ballot::new(1, 1), vec![]).is_some());
    }

    #[test]
    fn nack_preempts_and_reports_the_higher_promise() {
        let (mut proposer, _) = Proposer::start(1, Ballot::new(1, 1), value("a"), 2);
        assert!(!proposer.on_nack(Ballot::new(1, 1), Ballot::new(1, 1)));
        assert!(proposer.on_nack(Ballot::new(1, 1), Ballot::new(48, 2)));
        assert_eq!(proposer.preempted_by(), Some(Ballot::new(48, 2)));
        assert_eq!(proposer.retransmission(), None);
    }

    /// Seed 001's "most interesting case", five servers. S1 prepares 3.1 at S1–S3
    /// and gets X accepted at S1 only. S5 prepares 4.5 at S3–S5, sees no accepted
    /// value and proposes Y. S3 rejects S1's older accept. Only Y is chosen.
    // Server numbers index the acceptors so the test reads like the seed's story.
    #[allow(clippy::needless_range_loop)]
    #[test]
    fn seed_001_second_proposer_misses_x_and_s3_rejects_the_older_accept() {
        let mut servers: Vec<Acceptor> = (0..5).map(|_| Acceptor::default()).collect();
        let bit = |server: usize| 1u64 << server;
        let mut ops = Vec::new();

        let (mut s1, prepare_x) = Proposer::start(1, Ballot::new(3, 1), value("X"), 3);
        let Message::Prepare { ballot: ballot_x, scope } = prepare_x else { unreachable!() };
        let mut accept_x = None;
        for server in 0..3 {
            let accepted = servers[server].on_prepare(ballot_x, scope, &mut ops).unwrap();
            accept_x = accept_x.or(s1.on_promise(bit(server), ballot_x, accepted));
        }
        let Some(Message::Accept { values: values_x, .. }) = accept_x else { panic!("S1 reached a majority") };
        assert_eq!(values_x, vec![value("X")]);
        servers[0].on_accept(ballot_x, 1, &values_x, false, &mut ops).unwrap();

        let (mut s5, prepare_y) = Proposer::start(1, Ballot::new(4, 5), value("Y"), 3);
        let Message::Prepare { ballot: ballot_y, scope } = prepare_y else { unreachable!() };
        let mut accept_y = None;
        for server in 2..5 {
            let accepted = servers[server].on_prepare(ballot_y, scope, &mut ops).unwrap();
            assert!(accepted.is_empty(), "S3–S5 have accepted nothing yet");
            accept_y = accept_y.or(s5.on_promise(bit(server), ballot_y, accepted));
        }
        let Some(Message::Accept { values: values_y, .. }) = accept_y else { panic!("S5 reached a majority") };
        assert_eq!(values_y, vec![value("Y")]);

        // S1's accept reaches S2 (accepted) and S3 (rejected: it promised 4.5).
        servers[1].on_accept(ballot_x, 1, &values_x, false, &mut ops).unwrap();
        assert_eq!(servers[2].on_accept(ballot_x, 1, &values_x, false, &mut ops), Err(ballot_y));
        assert!(s1.on_nack(ballot_x, ballot_y));

        let mut outcome = None;
        for server in 2..5 {
            servers[server].on_accept(ballot_y, 1, &values_y, false, &mut ops).unwrap();
            outcome = outcome.or(s5.on_accepted(bit(server), ballot_y));
        }
        assert_eq!(outcome, Some(Outcome { value: value("Y"), own: true }));
        let accepted_x =
            servers.iter().filter(|server| server.accepted(1).is_some_and(|(_, v)| *v == value("X"))).count();
        assert_eq!(accepted_x, 2, "X never reaches a majority");
        servers.iter().for_each(Acceptor::check_invariants);
    }
}
