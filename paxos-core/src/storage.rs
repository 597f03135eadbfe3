//! The `Storage` trait: where an acceptor's promises and accepts become durable.
//!
//! The core never calls storage itself. It emits [`StorageOp`]s inside a
//! [`crate::PersistThen`]; the driver hands them to a `Storage`, and only once
//! `append` has returned `Ok` can the replies that depend on them be sent.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ballot::{Ballot, Slot};
use crate::message::Value;

/// One durable change to a replica's state. A log of these, replayed in order
/// with [`DurableState::apply`], rebuilds everything a replica must not forget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageOp {
    /// The acceptor promised `ballot` for every slot (seed 001: minProposal).
    Promise(Ballot),
    /// The acceptor promised `ballot` for one slot (Basic Paxos instances).
    PromiseSlot {
        /// The slot.
        slot: Slot,
        /// The promised ballot.
        ballot: Ballot,
    },
    /// The acceptor accepted `value` at `ballot` for `slot`
    /// (seed 001: acceptedProposal and acceptedValue).
    Accept {
        /// The slot.
        slot: Slot,
        /// The accepted ballot.
        ballot: Ballot,
        /// The accepted value.
        value: Value,
    },
    /// This node, as a proposer, may use rounds up to and including this one.
    /// Written before a ballot with that round leaves the node.
    Round(u64),
    /// Slots up to `through_slot` are replaced by a snapshot; their state may be
    /// discarded. Storage backends use this to keep disk use bounded.
    Compact(Box<Snapshot>),
    /// The learner knows `slot` is chosen. `value` is `None` when the chosen value
    /// is the one this node accepted for `slot` (the common case, which saves
    /// writing the value twice), and `Some` when it was learned from a peer.
    Chosen {
        /// The slot.
        slot: Slot,
        /// The chosen value, unless it equals this node's accepted value.
        value: Option<Value>,
    },
}

/// The application's state through a slot, standing in for the chosen prefix of
/// the log once that prefix is compacted away.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every slot up to and including this one is covered by `data`.
    pub through_slot: Slot,
    /// The log index the first command after the snapshot gets.
    pub next_index: u64,
    /// Per client, which recent command sequences were applied, exactly as the
    /// replica that took the snapshot knew it at slot `dedup_through`, so every
    /// replica goes on deduplicating (and numbering) commands identically.
    pub clients: Vec<ClientDedup>,
    /// The deduplication window, in sequences, of the replica that took the
    /// snapshot (its [`crate::Config::dedup_window`] rounded up, a power of two):
    /// what each [`AppliedSequences::Run`] is read against. A replica with another
    /// window rebuilds each run as a ring of this size, so deduplication goes on
    /// exactly as the sender's would. 0 when unknown: the reader's own.
    pub dedup_window: u64,
    /// The slot the client windows were taken at (at least `through_slot`).
    pub dedup_through: Slot,
    /// For slots after `through_slot` up to `dedup_through`, the positions of
    /// commands that were duplicates there (slots without any are omitted).
    pub duplicates: Vec<(Slot, Vec<u32>)>,
    /// Opaque application state, produced by the application.
    pub data: Vec<u8>,
}

impl Snapshot {
    /// At least the bytes this snapshot takes encoded: its data, and at most 40
    /// a client (three varints and a run) plus its ring's words, and 10 a
    /// duplicate position.
    pub fn encoded_bytes_bound(&self) -> usize {
        let clients: usize = self
            .clients
            .iter()
            .map(|client| {
                40 + match &client.applied {
                    AppliedSequences::Run { .. } => 0,
                    AppliedSequences::Ring(words) => 10 * words.len(),
                }
            })
            .sum();
        let duplicates: usize = self.duplicates.iter().map(|(_, positions)| 20 + 10 * positions.len()).sum();
        64 + self.data.len() + clients + duplicates
    }
}

/// One client's deduplication window in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDedup {
    /// The client id.
    pub client: u64,
    /// The highest sequence applied.
    pub highest: u64,
    /// Which of the sequences the window covers, up to `highest`, were applied.
    pub applied: AppliedSequences,
}

/// Which recent sequences of one client were applied, in a [`ClientDedup`].
///
/// The window covers the last `dedup_window` sequences up to the highest one
/// (rounded up to a power of two of at least 64, as [`crate::Config::dedup_window`]
/// says); members of one cluster share that setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppliedSequences {
    /// The highest sequence and the `older` ones right below it, and no other:
    /// a client whose commands were applied in order, as nearly every client's
    /// are. It takes no allocation, and a few bytes on disk and on the wire,
    /// where a ring takes a bit per sequence of the window.
    Run {
        /// How many sequences right below the highest one were applied too.
        older: u32,
    },
    /// A ring of bits, one per recent sequence (`sequence % (64 * len)`), set if
    /// applied; `len` is a power of two.
    Ring(Vec<u64>),
}

/// Per-slot durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// Promise for this slot alone (Basic Paxos); `Ballot::ZERO` if none.
    pub promised: Ballot,
    /// The accepted proposal, if any.
    pub accepted: Option<(Ballot, Value)>,
    /// The chosen value, once learned.
    pub chosen: Option<Value>,
}

/// Everything a replica recovers on restart. Whatever is not here is volatile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// The acceptor's log-wide promise (minProposal).
    pub promised: Ballot,
    /// The highest proposer round this node has reserved.
    pub round: u64,
    /// Slot states, by slot. Slots covered by `snapshot` are absent.
    pub slots: BTreeMap<Slot, SlotState>,
    /// The latest snapshot, if the log was ever compacted.
    pub snapshot: Option<Snapshot>,
}

impl DurableState {
    /// Applies one operation. Replaying a log of ops in order yields the state the
    /// node had when the last of them became durable. Applying is idempotent for
    /// promises and rounds (they only grow), so replaying a duplicated tail is safe.
    pub fn apply(&mut self, op: &StorageOp) {
        match op {
            StorageOp::Promise(ballot) => self.promised = self.promised.max(*ballot),
            StorageOp::PromiseSlot { slot, ballot } => {
                let state = self.slots.entry(*slot).or_default();
                state.promised = state.promised.max(*ballot);
            }
            StorageOp::Accept { slot, ballot, value } => {
                let state = self.slots.entry(*slot).or_default();
                // Accepting at a ballot is also a promise of it, for this slot.
                state.promised = state.promised.max(*ballot);
                state.accepted = Some((*ballot, value.clone()));
            }
            StorageOp::Round(round) => self.round = self.round.max(*round),
            StorageOp::Compact(snapshot) => {
                let newer = self.snapshot.as_ref().is_none_or(|held| held.through_slot < snapshot.through_slot);
                if newer {
                    self.slots.retain(|slot, _| *slot > snapshot.through_slot);
                    self.snapshot = Some(Snapshot::clone(snapshot));
                }
            }
            StorageOp::Chosen { slot, value } => {
                let state = self.slots.entry(*slot).or_default();
                let chosen = value.clone().or_else(|| state.accepted.as_ref().map(|(_, value)| value.clone()));
                if chosen.is_some() {
                    state.chosen = chosen;
                }
            }
        }
    }
}

/// Durable storage for one replica.
///
/// Implement two methods and the node is crash-safe. Run
/// [`crate::conformance::storage_suite`] on a new backend to check the contract.
///
/// Both `S: Storage` and `Box<dyn Storage<Error = E>>` work: the trait has no
/// generic methods.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Why an operation failed. A failed `append` stops the node: it never
    /// replies as if the write had succeeded.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes `ops` durable, in order, after every op of every earlier call.
    ///
    /// # Correctness
    /// Returns `Ok` only once every op in `ops` would survive a crash (for a disk:
    /// after fdatasync). After a crash, the recovered state reflects every op of
    /// every call that returned `Ok`, plus possibly a prefix of the ops of a call
    /// that was in progress, and nothing else. Promises and accepts are what Paxos
    /// safety rests on (seed 001): an acceptor that forgets a promise can let two
    /// values be chosen.
    async fn append(&self, ops: &[StorageOp]) -> Result<(), Self::Error>;

    /// Returns the state made durable by earlier `append` calls (empty for a new store).
    ///
    /// # Correctness
    /// Equal to replaying, with [`DurableState::apply`], every op of every `append`
    /// that returned `Ok` (and possibly a prefix of an interrupted one). Called once,
    /// before the node starts.
    async fn load(&self) -> Result<DurableState, Self::Error>;
}

#[async_trait]
impl<S: Storage + ?Sized> Storage for Box<S> {
    type Error = S::Error;

    async fn append(&self, ops: &[StorageOp]) -> Result<(), Self::Error> {
        (**self).append(ops).await
    }

    async fn load(&self) -> Result<DurableState, Self::Error> {
        (**self).load().await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    type Error = S::Error;

    async fn append(&self, ops: &[StorageOp]) -> Result<(), Self::Error> {
        (**self).append(ops).await
    }

    async fn load(&self) -> Result<DurableState, Self::Error> {
        (**self).load().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_applied_in_order_takes_a_few_bytes_in_a_snapshot() {
        let run = ClientDedup { client: 10_000, highest: 1_000_000, applied: AppliedSequences::Run { older: 255 } };
        let ring =
            ClientDedup { client: 10_000, highest: 1_000_000, applied: AppliedSequences::Ring(vec![u64::MAX; 4]) };
        let run_bytes = postcard::to_allocvec(&run).expect("encode").len();
        let ring_bytes = postcard::to_allocvec(&ring).expect("encode").len();
        assert!(run_bytes <= 10, "a run took {run_bytes} bytes");
        assert!(ring_bytes >= 4 * run_bytes, "the 256-sequence ring took {ring_bytes} bytes, the run {run_bytes}");
    }
}
