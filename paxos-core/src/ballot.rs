//! Ballots: the totally ordered proposal numbers every Paxos decision is keyed by.

use serde::{Deserialize, Serialize};

/// Identifies one replica in a cluster. Chosen by the operator; unique within a cluster.
pub type NodeId = u64;

/// A position in the replicated log. Slot 0 is never used; the first slot is 1.
pub type Slot = u64;

/// A proposal number `(round, node)`, the paper's `<seq_id, server_id>` (seed 001).
///
/// Ballots are ordered by `round` first and by `node` second. The node id is the
/// tie-breaker: two proposers that pick the same round still get distinct, ordered
/// ballots, so no ballot is ever used by two nodes. `Eq`, `Ord` and `Hash` are all
/// derived from exactly these two fields, in this order, so they always agree.
///
/// A proposer persists the highest round it has used before the ballot leaves the
/// node (see [`crate::StorageOp::Round`]), so a restarted node never reuses a ballot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Monotonic per-node counter; compared first.
    pub round: u64,
    /// The proposing node; breaks ties between equal rounds.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every real one: "nothing promised" or "nothing accepted".
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    /// Not a real ballot: an acceptor's answer for a slot it has compacted away
    /// (long chosen). A proposer told this catches up instead of retrying.
    pub const COMPACTED: Ballot = Ballot { round: u64::MAX, node: u64::MAX };

    /// Creates a ballot.
    pub const fn new(round: u64, node: NodeId) -> Ballot {
        Ballot { round, node }
    }

    /// The smallest ballot owned by `node` that is strictly greater than `self`.
    pub fn next_for(self, node: NodeId) -> Ballot {
        if node > self.node {
            Ballot::new(self.round.max(1), node)
        } else {
            Ballot::new(self.round + 1, node)
        }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_is_compared_before_node() {
        assert!(Ballot::new(2, 1) > Ballot::new(1, 9));
        assert!(Ballot::new(1, 2) > Ballot::new(1, 1));
        assert!(Ballot::ZERO < Ballot::new(1, 0));
        assert_eq!(Ballot::new(3, 4), Ballot::new(3, 4));
    }

    #[test]
    fn next_for_is_strictly_greater_and_owned() {
        for (ballot, node) in
            [(Ballot::ZERO, 1), (Ballot::new(4, 3), 2), (Ballot::new(4, 3), 5), (Ballot::new(4, 3), 3)]
        {
            let next = ballot.next_for(node);
            assert!(next > ballot);
            assert_eq!(next.node, node);
            assert!(next.round >= 1);
        }
    }
}
