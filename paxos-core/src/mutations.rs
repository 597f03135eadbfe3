//! Planted bugs, for proving that a checker is not vacuous (feature `mutations`).
//!
//! A mutation is off unless a test turns it on with [`with`], and only on the
//! calling thread, so tests running in parallel never see each other's bugs and
//! builds with the feature on behave exactly as builds without it.

use std::cell::Cell;

/// A known bug the core can be made to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// An acceptor accepts a proposal below the ballot it promised (breaks P1a).
    AcceptorIgnoresPromise,
    /// A proposer keeps its own value instead of adopting the highest-ballot
    /// accepted value its promisers reported (breaks P2c).
    ProposerSkipsAdoption,
    /// A Multi-Paxos leader that hears from a peer that a slot is chosen with a
    /// value other than the one it proposed there (a newer leader chose it) keeps
    /// leading instead of stepping down. Its commit point then covers that slot,
    /// and a follower that accepted the stale value at its ballot applies it:
    /// two values for one slot (breaks agreement).
    LeaderIgnoresOvertaking,
}

thread_local! {
    static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
}

/// Runs `f` with `mutation` planted in this thread's replicas, then removes it
/// (also when `f` panics).
pub fn with<R>(mutation: Mutation, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Mutation>);
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.with(|active| active.set(self.0));
        }
    }
    let _reset = Reset(ACTIVE.with(|active| active.replace(Some(mutation))));
    f()
}

/// Whether `mutation` is planted on this thread.
pub(crate) fn active(mutation: Mutation) -> bool {
    ACTIVE.with(|active| active.get() == Some(mutation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutation_is_planted_only_inside_with() {
        assert!(!active(Mutation::ProposerSkipsAdoption));
        with(Mutation::ProposerSkipsAdoption, || {
            assert!(active(Mutation::ProposerSkipsAdoption));
            assert!(!active(Mutation::AcceptorIgnoresPromise));
        });
        assert!(!active(Mutation::ProposerSkipsAdoption));
    }
}
