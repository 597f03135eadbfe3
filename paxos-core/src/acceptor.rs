//! The acceptor: promises and accepts, and nothing else (Paxos Made Simple §2.2).
//!
//! An acceptor holds the promised ballot (minProposal) and, per slot, the accepted
//! ballot and value. Every change it makes is returned as a [`StorageOp`] that the
//! caller must make durable before any reply built from it leaves the node.

use crate::actions::push_in_place;
use crate::ballot::{Ballot, Slot};
use crate::message::{AcceptedEntry, PrepareScope, Value};
use crate::slots::SlotMap;
use crate::storage::{DurableState, StorageOp};

/// One slot as the acceptor sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptorSlot {
    /// Promise for this slot alone (Basic Paxos instances); `Ballot::ZERO` if none.
    pub promised: Ballot,
    /// The accepted proposal, if any.
    pub accepted: Option<(Ballot, Value)>,
}

/// The acceptor role for a whole log.
#[derive(Clone, Debug)]
pub struct Acceptor {
    /// Log-wide promise, set by Multi-Paxos prepares (minProposal).
    promised: Ballot,
    slots: SlotMap<AcceptorSlot>,
}

impl Default for Acceptor {
    fn default() -> Self {
        Acceptor { promised: Ballot::ZERO, slots: SlotMap::new(1) }
    }
}

impl Acceptor {
    /// Rebuilds the acceptor from what storage recovered.
    pub fn from_durable(state: &DurableState) -> Acceptor {
        let first = state.snapshot.as_ref().map_or(1, |snapshot| snapshot.through_slot + 1);
        let mut acceptor = Acceptor { promised: state.promised, slots: SlotMap::new(first) };
        for (slot, durable) in &state.slots {
            if durable.accepted.is_none() && durable.promised == Ballot::ZERO {
                continue;
            }
            let Some(entry) = acceptor.slots.get_mut(*slot) else { continue };
            entry.promised = durable.promised;
            entry.accepted = durable.accepted.clone();
        }
        acceptor.check_invariants();
        acceptor
    }

    /// The log-wide promise.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The promise in force for `slot`: the higher of the log-wide and the slot's own.
    pub fn promised_for(&self, slot: Slot) -> Ballot {
        let own = self.slots.get(slot).map_or(Ballot::ZERO, |entry| entry.promised);
        self.promised.max(own)
    }

    /// The accepted proposal at `slot`, if any.
    pub fn accepted(&self, slot: Slot) -> Option<&(Ballot, Value)> {
        self.slots.get(slot).and_then(|entry| entry.accepted.as_ref())
    }

    /// Phase 1b. Promises `ballot` if it is higher than every promise in scope and
    /// returns the accepted proposals in scope; otherwise returns the promise that
    /// beats it, for the Nack.
    ///
    /// A prepare equal to the current promise is answered again (it is a
    /// retransmission by the same proposer, since ballots are unique per node), and
    /// writes nothing new.
    pub fn on_prepare(
        &mut self,
        ballot: Ballot,
        scope: PrepareScope,
        ops: &mut Vec<StorageOp>,
    ) -> Result<Vec<AcceptedEntry>, Ballot> {
        match scope {
            PrepareScope::From(first) => {
                if first < self.slots.first() {
                    // Slots below our compaction point are chosen, but we no longer
                    // hold what we accepted there: a promise would hide it from the
                    // proposer's value adoption. The proposer must catch up first.
                    return Err(Ballot::COMPACTED);
                }
                // Paxos Made Simple §2.2 P1a: never promise below an earlier promise.
                let highest_slot_promise =
                    self.slots.iter_from(first).map(|(_, entry)| entry.promised).max().unwrap_or(Ballot::ZERO);
                let beaten_by = self.promised.max(highest_slot_promise);
                if ballot < beaten_by {
                    return Err(beaten_by);
                }
                if ballot > self.promised {
                    self.promised = ballot;
                    ops.push(StorageOp::Promise(ballot));
                }
                assert!(self.promised >= ballot);
                let accepted = self
                    .slots
                    .iter_from(first)
                    .filter_map(|(slot, entry)| {
                        entry.accepted.as_ref().map(|(accepted_ballot, value)| AcceptedEntry {
                            slot,
                            ballot: *accepted_ballot,
                            value: value.clone(),
                        })
                    })
                    .collect();
                Ok(accepted)
            }
            PrepareScope::Slot(slot) => {
                let beaten_by = self.promised_for(slot);
                if ballot < beaten_by {
                    return Err(beaten_by);
                }
                let Some(entry) = self.slots.get_mut(slot) else {
                    // The slot was compacted away: it is long chosen. Refuse, and
                    // the proposer learns the value by catching up.
                    return Err(Ballot::COMPACTED);
                };
                if ballot > entry.promised {
                    entry.promised = ballot;
                    ops.push(StorageOp::PromiseSlot { slot, ballot });
                }
                let accepted = entry.accepted.as_ref().map(|(accepted_ballot, value)| AcceptedEntry {
                    slot,
                    ballot: *accepted_ballot,
                    value: value.clone(),
                });
                Ok(accepted.into_iter().collect())
            }
        }
    }

    /// Phase 2b. Accepts `values` at consecutive slots from `first_slot` if
    /// `ballot` is at least every promise involved; otherwise returns the promise
    /// that beats it.
    ///
    /// With `log_wide` (Multi-Paxos), accepting also raises the log-wide promise to
    /// `ballot`: a leader's accept implies its phase 1 succeeded.
    pub fn on_accept(
        &mut self,
        ballot: Ballot,
        first_slot: Slot,
        values: &[Value],
        log_wide: bool,
        ops: &mut Vec<StorageOp>,
    ) -> Result<(), Ballot> {
        self.accept_each(ballot, first_slot, values.len(), log_wide, ops, |offset| values[offset].clone())
    }

    /// [`Acceptor::on_accept`] for values the caller gives up, such as a received
    /// message's: the acceptor keeps them rather than copies, which saves a
    /// reference count up and down per value on every follower.
    pub fn on_accept_owned(
        &mut self,
        ballot: Ballot,
        first_slot: Slot,
        mut values: Vec<Value>,
        log_wide: bool,
        ops: &mut Vec<StorageOp>,
    ) -> Result<(), Ballot> {
        let count = values.len();
        self.accept_each(ballot, first_slot, count, log_wide, ops, |offset| {
            std::mem::replace(&mut values[offset], Value::Noop)
        })
    }

    /// The accept rule for `count` values from `first_slot`, whose value at
    /// `offset` `take(offset)` hands over (at most once per offset).
    fn accept_each(
        &mut self,
        ballot: Ballot,
        first_slot: Slot,
        count: usize,
        log_wide: bool,
        ops: &mut Vec<StorageOp>,
        mut take: impl FnMut(usize) -> Value,
    ) -> Result<(), Ballot> {
        // Paxos Made Simple §2.2 P1a: accept only if no higher promise was made.
        for offset in 0..count as u64 {
            let promised = self.promised_for(first_slot + offset);
            #[cfg(feature = "mutations")]
            if crate::mutations::active(crate::mutations::Mutation::AcceptorIgnoresPromise) {
                continue;
            }
            if ballot < promised {
                return Err(promised);
            }
        }
        if first_slot < self.slots.first() {
            // Compacted slots are long chosen; the sender must catch up instead.
            // Accepting without storing would be a false vote. Refused, the accept
            // promises nothing either: a leader whose acceptor took a higher promise
            // without a step down would keep proposing what its acceptor refuses.
            return Err(Ballot::COMPACTED);
        }
        if log_wide && ballot > self.promised {
            self.promised = ballot;
            ops.push(StorageOp::Promise(ballot));
        }
        for offset in 0..count {
            let slot = first_slot + offset as u64;
            let entry = self.slots.get_mut(slot).expect("checked against the window above");
            if let Some((accepted_ballot, _)) = &entry.accepted {
                if *accepted_ballot == ballot {
                    // A duplicate: ballots are unique, so the value is the same.
                    continue;
                }
            }
            // Accepting at a ballot is also a promise of it, for this slot.
            entry.promised = entry.promised.max(ballot);
            let value = take(offset);
            push_in_place(ops, || StorageOp::Accept { slot, ballot, value: value.clone() });
            entry.accepted = Some((ballot, value));
        }
        Ok(())
    }

    /// Forgets slots below `slot`, whose values are chosen and applied here.
    /// From then on, prepares and accepts that cover them are refused with
    /// [`Ballot::COMPACTED`], so no quorum can count this acceptor as having
    /// accepted nothing there.
    pub fn discard_below(&mut self, slot: Slot) {
        self.slots.discard_below(slot);
    }

    /// Moves out the value accepted in `slot`, about to be discarded: only a
    /// compaction may call this, just before [`Acceptor::discard_below`].
    pub(crate) fn take_accepted(&mut self, slot: Slot) -> Option<Value> {
        self.slots.get_mut(slot)?.accepted.take().map(|(_, value)| value)
    }

    /// The lowest slot this acceptor still holds state for.
    pub fn first_slot(&self) -> Slot {
        self.slots.first()
    }

    /// Safety assertions, on in release builds (STYLE.md rule 7).
    pub fn check_invariants(&self) {
        for (slot, entry) in self.slots.iter_from(0) {
            if let Some((accepted_ballot, _)) = &entry.accepted {
                // Seed 001: "minProposal >= acceptedProposal".
                assert!(self.promised_for(slot) >= *accepted_ballot, "slot {slot} accepted above its promise");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::Command;

    fn value(text: &str) -> Value {
        Value::Commands(Arc::from(vec![Command::new(1, 1, text.as_bytes().to_vec())]))
    }

    #[test]
    fn promises_only_a_higher_ballot_and_reports_its_promise() {
        let mut acceptor = Acceptor::default();
        let mut ops = Vec::new();
        assert_eq!(acceptor.on_prepare(Ballot::new(5, 1), PrepareScope::From(1), &mut ops), Ok(vec![]));
        assert_eq!(ops, vec![StorageOp::Promise(Ballot::new(5, 1))]);
        ops.clear();
        assert_eq!(acceptor.on_prepare(Ballot::new(4, 2), PrepareScope::From(1), &mut ops), Err(Ballot::new(5, 1)));
        assert!(ops.is_empty(), "a rejection writes nothing");
        // A retransmitted prepare gets the same promise and writes nothing.
        assert_eq!(acceptor.on_prepare(Ballot::new(5, 1), PrepareScope::From(1), &mut ops), Ok(vec![]));
        assert!(ops.is_empty());
    }

    #[test]
    fn accepts_at_or_above_its_promise_and_persists_before_replying() {
        let mut acceptor = Acceptor::default();
        let mut ops = Vec::new();
        acceptor.on_prepare(Ballot::new(5, 1), PrepareScope::From(1), &mut ops).unwrap();
        ops.clear();
        assert_eq!(acceptor.on_accept(Ballot::new(4, 9), 1, &[value("x")], true, &mut ops), Err(Ballot::new(5, 1)));
        assert!(ops.is_empty());
        assert_eq!(acceptor.on_accept(Ballot::new(5, 1), 1, &[value("y")], true, &mut ops), Ok(()));
        assert_eq!(ops, vec![StorageOp::Accept { slot: 1, ballot: Ballot::new(5, 1), value: value("y") }]);
        ops.clear();
        // A duplicate accept writes nothing new.
        assert_eq!(acceptor.on_accept(Ballot::new(5, 1), 1, &[value("y")], true, &mut ops), Ok(()));
        assert!(ops.is_empty());
        acceptor.check_invariants();
    }

    #[test]
    fn values_given_up_follow_the_same_rule_as_values_lent() {
        // The same history through both entry points: same answers, ops and state.
        let history = [
            (Ballot::new(4, 9), 1, vec![value("x")]),
            (Ballot::new(5, 1), 1, vec![value("y"), value("z")]),
            (Ballot::new(5, 1), 2, vec![value("z"), value("w")]),
            (Ballot::new(6, 2), 1, vec![value("v")]),
        ];
        let (mut lent, mut given) = (Acceptor::default(), Acceptor::default());
        let (mut lent_ops, mut given_ops) = (Vec::new(), Vec::new());
        lent.on_prepare(Ballot::new(5, 1), PrepareScope::From(1), &mut lent_ops).unwrap();
        given.on_prepare(Ballot::new(5, 1), PrepareScope::From(1), &mut given_ops).unwrap();
        for (ballot, first_slot, values) in history {
            let lent_answer = lent.on_accept(ballot, first_slot, &values, true, &mut lent_ops);
            let given_answer = given.on_accept_owned(ballot, first_slot, values, true, &mut given_ops);
            assert_eq!(lent_answer, given_answer, "ballot {ballot}, slot {first_slot}");
        }
        assert_eq!(lent_ops, given_ops);
        for slot in 1..=3 {
            assert_eq!(lent.accepted(slot), given.accepted(slot), "slot {slot}");
        }
        assert_eq!(given.accepted(1), Some(&(Ballot::new(6, 2), value("v"))));
        assert_eq!(given.accepted(3), Some(&(Ballot::new(5, 1), value("w"))));
        given.check_invariants();
    }

    #[test]
    fn promise_reports_accepted_values() {
        let mut acceptor = Acceptor::default();
        let mut ops = Vec::new();
        acceptor.on_accept(Ballot::new(3, 1), 7, &[value("foo")], true, &mut ops).unwrap();
        let promised = acceptor.on_prepare(Ballot::new(5, 2), PrepareScope::From(1), &mut ops).unwrap();
        assert_eq!(promised, vec![AcceptedEntry { slot: 7, ballot: Ballot::new(3, 1), value: value("foo") }]);
    }

    #[test]
    fn single_slot_promises_are_independent() {
        let mut acceptor = Acceptor::default();
        let mut ops = Vec::new();
        acceptor.on_prepare(Ballot::new(9, 1), PrepareScope::Slot(1), &mut ops).unwrap();
        assert_eq!(ops, vec![StorageOp::PromiseSlot { slot: 1, ballot: Ballot::new(9, 1) }]);
        // Slot 2 is unaffected by slot 1's promise.
        assert!(acceptor.on_prepare(Ballot::new(1, 2), PrepareScope::Slot(2), &mut ops).is_ok());
        assert_eq!(acceptor.on_accept(Ballot::new(1, 2), 1, &[value("a")], false, &mut ops), Err(Ballot::new(9, 1)));
        assert_eq!(acceptor.on_accept(Ballot::new(1, 2), 2, &[value("a")], false, &mut ops), Ok(()));
        assert_eq!(acceptor.promised(), Ballot::ZERO);
    }

    #[test]
    fn a_compacted_prefix_is_never_promised_or_accepted() {
        let mut acceptor = Acceptor::default();
        let mut ops = Vec::new();
        acceptor.on_accept(Ballot::new(1, 1), 1, &[value("a"), value("b")], true, &mut ops).unwrap();
        acceptor.discard_below(3);
        assert_eq!(acceptor.on_prepare(Ballot::new(9, 2), PrepareScope::From(2), &mut ops), Err(Ballot::COMPACTED));
        assert_eq!(acceptor.on_prepare(Ballot::new(9, 2), PrepareScope::Slot(1), &mut ops), Err(Ballot::COMPACTED));
        assert_eq!(acceptor.on_accept(Ballot::new(9, 2), 2, &[value("x")], true, &mut ops), Err(Ballot::COMPACTED));
        assert!(acceptor.on_prepare(Ballot::new(9, 2), PrepareScope::From(3), &mut ops).is_ok());
    }

    #[test]
    fn recovers_from_durable_state() {
        let mut acceptor = Acceptor::default();
        let mut ops = Vec::new();
        acceptor.on_prepare(Ballot::new(2, 1), PrepareScope::From(1), &mut ops).unwrap();
        acceptor.on_accept(Ballot::new(2, 1), 1, &[value("a"), value("b")], true, &mut ops).unwrap();
        let mut durable = DurableState::default();
        ops.iter().for_each(|op| durable.apply(op));
        let restarted = Acceptor::from_durable(&durable);
        assert_eq!(restarted.promised(), Ballot::new(2, 1));
        assert_eq!(restarted.accepted(2), Some(&(Ballot::new(2, 1), value("b"))));
    }
}
