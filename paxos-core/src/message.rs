//! The protocol's values and messages: what replicas say to each other.
//!
//! These are plain serde types. [`crate::wire`] turns them into bytes, once, for
//! every transport.

use std::num::NonZeroU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ballot::{Ballot, NodeId, Slot};

/// Identifies a client command, so a retried command is applied at most once.
///
/// A client picks a `client` id unique in the cluster and numbers its commands
/// with an increasing `sequence`. Replicas drop a chosen command whose id they
/// have already applied (see [`crate::Config::dedup_window`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// The issuing client.
    pub client: u64,
    /// The client's sequence number for this command.
    pub sequence: u64,
}

/// One application command: an opaque payload with its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// Deduplication key.
    pub id: CommandId,
    /// Application bytes; the core never looks inside.
    pub payload: Vec<u8>,
}

impl Command {
    /// Creates a command.
    pub fn new(client: u64, sequence: u64, payload: impl Into<Vec<u8>>) -> Command {
        Command { id: CommandId { client, sequence }, payload: payload.into() }
    }
}

/// What a slot holds once chosen: a batch of commands, or a no-op that fills a hole.
///
/// Batches sit behind an `Arc`, so passing a value to several peers or keeping it
/// in both the acceptor and the learner never copies the commands, and comparing
/// two handles on the same batch does not read the commands either.
#[derive(Clone, Debug, Eq, Serialize, Deserialize)]
pub enum Value {
    /// Fills a hole left by a failed leader (seed 004: "(17, EMPTY)").
    Noop,
    /// One or more client commands, chosen together.
    Commands(Arc<[Command]>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Noop, Value::Noop) => true,
            (Value::Commands(ours), Value::Commands(theirs)) => Arc::ptr_eq(ours, theirs) || ours == theirs,
            _ => false,
        }
    }
}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        self.commands().hash(state);
    }
}

impl Value {
    /// The commands this value carries; empty for a no-op.
    pub fn commands(&self) -> &[Command] {
        match self {
            Value::Noop => &[],
            Value::Commands(commands) => commands,
        }
    }

    /// Bytes of payload carried, for batching limits.
    pub fn payload_bytes(&self) -> usize {
        self.commands().iter().map(|command| command.payload.len()).sum()
    }

    /// At least the bytes this value takes in an encoded message: its variant and
    /// length (at most 16), then each command's [`Command::encoded_bytes_bound`].
    pub fn encoded_bytes_bound(&self) -> usize {
        16 + self.commands().iter().map(Command::encoded_bytes_bound).sum::<usize>()
    }
}

impl Command {
    /// At least the bytes this command takes in an encoded message: its payload,
    /// and at most 30 for the id's two varints and the payload's length.
    pub fn encoded_bytes_bound(&self) -> usize {
        30 + self.payload.len()
    }
}

/// How many of `items`, from the first, go in one message: at most `count_max`
/// (at least 1), and no more than `bytes_max` by `bytes`, unless the first alone is
/// larger (it then goes alone). Zero only for no items.
#[inline]
pub(crate) fn message_prefix<T>(items: &[T], count_max: usize, bytes_max: usize, bytes: impl Fn(&T) -> usize) -> usize {
    let limit = items.len().min(count_max.max(1));
    if limit <= 1 {
        return limit;
    }
    let mut total = 0;
    for (count, item) in items[..limit].iter().enumerate() {
        total += bytes(item);
        if count > 0 && total > bytes_max {
            return count;
        }
    }
    limit
}

/// A slot's accepted proposal as reported in a promise: `(slot, ballot, value)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedEntry {
    /// The slot.
    pub slot: Slot,
    /// The ballot it was accepted at (the paper's acceptedProposal).
    pub ballot: Ballot,
    /// The accepted value (the paper's acceptedValue).
    pub value: Value,
}

impl AcceptedEntry {
    /// At least the bytes this entry takes encoded: its value, and at most 32 for
    /// the slot and the ballot.
    pub fn encoded_bytes_bound(&self) -> usize {
        32 + self.value.encoded_bytes_bound()
    }
}

/// Which slots a prepare asks acceptors to promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrepareScope {
    /// Basic Paxos: one single-decree instance.
    Slot(Slot),
    /// Multi-Paxos: every slot from this one on; one phase 1 for the whole log.
    From(Slot),
}

/// A message between replicas. `from` is carried by the transport, not here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1a: "promise not to accept anything below `ballot`".
    Prepare {
        /// The proposer's ballot.
        ballot: Ballot,
        /// Slots covered.
        scope: PrepareScope,
    },
    /// Phase 1b: the promise, with every accepted proposal in scope.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// Slots covered; equal to the prepare's.
        scope: PrepareScope,
        /// Accepted proposals in scope, in slot order. (A boxed slice, and a
        /// non-zero slot below, keep every message within 64 bytes.)
        accepted: Box<[AcceptedEntry]>,
        /// The highest slot below which the promiser knows every slot chosen.
        chosen_through: Slot,
        /// `Some(slot)`: the report stops short of `slot`, to keep the message
        /// within `message_bytes_max`; the promise holds all the same, and a
        /// prepare at the same ballot from `slot` gets the rest. `None`: complete.
        continues_at: Option<NonZeroU64>,
    },
    /// Phase 2a: "accept these values at consecutive slots starting at `first_slot`".
    Accept {
        /// The proposer's ballot.
        ballot: Ballot,
        /// Slot of `values[0]`.
        first_slot: Slot,
        /// One value per slot.
        values: Vec<Value>,
        /// The leader's commit point: every slot `<= chosen_through` is chosen.
        chosen_through: Slot,
    },
    /// Phase 2b: the acceptor accepted `count` slots from `first_slot` at `ballot`.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// First slot accepted.
        first_slot: Slot,
        /// Number of consecutive slots accepted.
        count: u64,
    },
    /// A rejection. Always says the highest ballot promised, so the proposer can
    /// retry above it (seed 000: "the highest I've seen is #48").
    Nack {
        /// The ballot that was refused.
        ballot: Ballot,
        /// The slot it concerned, for Basic Paxos; `0` for the whole log.
        slot: Slot,
        /// The acceptor's promise, which is higher than `ballot`.
        promised: Ballot,
    },
    /// Leader heartbeat carrying the commit point.
    Commit {
        /// The leader's ballot.
        ballot: Ballot,
        /// Every slot `<= chosen_through` is chosen.
        chosen_through: Slot,
    },
    /// A learner announcement: `slot` is chosen with `value` (Basic Paxos).
    Chosen {
        /// The slot.
        slot: Slot,
        /// Its chosen value.
        value: Value,
    },
    /// "Send me the chosen values from `from_slot` on."
    CatchUpRequest {
        /// First slot wanted.
        from_slot: Slot,
    },
    /// Chosen values for consecutive slots, answering a catch-up request.
    CatchUp {
        /// Slot of `values[0]`.
        first_slot: Slot,
        /// Chosen values.
        values: Vec<Value>,
    },
    /// The sender compacted the slots a catch-up asked for: here is part of its
    /// snapshot instead, `bytes` of its postcard encoding from `offset` on. A
    /// snapshot goes in parts of at most [`crate::Config::message_bytes_max`],
    /// each asked for with a [`Message::SnapshotPartRequest`]; the receiver
    /// installs it once it holds all `total` bytes, then asks for the slots after it.
    SnapshotPart {
        /// Which encoding of which snapshot this is part of.
        id: crate::snapshot_transfer::SnapshotId,
        /// Where `bytes` start in the encoding.
        offset: u64,
        /// Bytes of the whole encoding.
        total: u64,
        /// The part.
        bytes: Vec<u8>,
    },
    /// "Send me the part of snapshot encoding `id` that starts at `offset`."
    SnapshotPartRequest {
        /// The encoding the parts so far came from.
        id: crate::snapshot_transfer::SnapshotId,
        /// Bytes of it received so far.
        offset: u64,
    },
    /// A follower passes client commands on to the leader it knows.
    Forward {
        /// The commands.
        commands: Vec<Command>,
    },
}

impl Message {
    /// At least the bytes the values, commands or snapshot this message carries
    /// take encoded, plus 64 for the rest: what bounded queues count.
    pub fn encoded_bytes_bound(&self) -> usize {
        let carried = match self {
            Message::Promise { accepted, .. } => accepted.iter().map(AcceptedEntry::encoded_bytes_bound).sum(),
            Message::Accept { values, .. } | Message::CatchUp { values, .. } => {
                values.iter().map(Value::encoded_bytes_bound).sum()
            }
            Message::Chosen { value, .. } => value.encoded_bytes_bound(),
            Message::Forward { commands } => commands.iter().map(Command::encoded_bytes_bound).sum(),
            Message::SnapshotPart { bytes, .. } => bytes.len(),
            Message::Prepare { .. }
            | Message::SnapshotPartRequest { .. }
            | Message::Accepted { .. }
            | Message::Nack { .. }
            | Message::Commit { .. }
            | Message::CatchUpRequest { .. } => 0,
        };
        64 + carried
    }

    /// A short name for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Nack { .. } => "nack",
            Message::Commit { .. } => "commit",
            Message::Chosen { .. } => "chosen",
            Message::CatchUpRequest { .. } => "catch-up-request",
            Message::CatchUp { .. } => "catch-up",
            Message::SnapshotPart { .. } => "snapshot-part",
            Message::SnapshotPartRequest { .. } => "snapshot-part-request",
            Message::Forward { .. } => "forward",
        }
    }
}

/// A message addressed to one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination; may be the sending replica itself.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_fits_64_bytes() {
        assert!(std::mem::size_of::<Message>() <= 64, "{} bytes", std::mem::size_of::<Message>());
    }

    #[test]
    fn encoded_bytes_bounds_are_upper_bounds() {
        let extreme = Command::new(u64::MAX, u64::MAX, vec![7; 300]);
        let small = Command::new(1, 1, vec![]);
        for command in [&extreme, &small] {
            let encoded = postcard::to_stdvec(command).unwrap().len();
            assert!(encoded <= command.encoded_bytes_bound(), "{encoded} > {}", command.encoded_bytes_bound());
        }
        let values = [Value::Noop, Value::Commands(Arc::from(vec![extreme.clone(), small, extreme]))];
        for value in &values {
            let encoded = postcard::to_stdvec(value).unwrap().len();
            assert!(encoded <= value.encoded_bytes_bound(), "{encoded} > {}", value.encoded_bytes_bound());
        }
    }

    #[test]
    fn a_message_encodes_within_its_bound() {
        use crate::storage::{AppliedSequences, ClientDedup, Snapshot};
        let big = Command::new(u64::MAX, u64::MAX, vec![3; 200]);
        let value = Value::Commands(Arc::from(vec![big.clone(), Command::new(1, 2, vec![])]));
        let ballot = Ballot::new(u64::MAX, u64::MAX);
        let client = |applied| ClientDedup { client: u64::MAX, highest: u64::MAX, applied };
        let snapshot = Snapshot {
            through_slot: u64::MAX,
            next_index: u64::MAX,
            clients: vec![
                client(AppliedSequences::Run { older: u32::MAX }),
                client(AppliedSequences::Ring(vec![u64::MAX; 4])),
            ],
            dedup_window: 256,
            dedup_through: u64::MAX,
            duplicates: vec![(u64::MAX, vec![u32::MAX; 3])],
            data: vec![1; 100],
        };
        let entry = AcceptedEntry { slot: u64::MAX, ballot, value: value.clone() };
        let messages = [
            Message::Prepare { ballot, scope: PrepareScope::From(u64::MAX) },
            Message::Promise {
                ballot,
                scope: PrepareScope::Slot(u64::MAX),
                accepted: vec![entry.clone(), entry].into(),
                chosen_through: u64::MAX,
                continues_at: NonZeroU64::new(u64::MAX),
            },
            Message::Accept {
                ballot,
                first_slot: u64::MAX,
                values: vec![value.clone(), Value::Noop],
                chosen_through: 1,
            },
            Message::Accepted { ballot, first_slot: u64::MAX, count: u64::MAX },
            Message::Nack { ballot, slot: u64::MAX, promised: ballot },
            Message::Commit { ballot, chosen_through: u64::MAX },
            Message::Chosen { slot: u64::MAX, value: value.clone() },
            Message::CatchUpRequest { from_slot: u64::MAX },
            Message::CatchUp { first_slot: u64::MAX, values: vec![value.clone(), value] },
            Message::SnapshotPart {
                id: crate::snapshot_transfer::SnapshotId { through_slot: u64::MAX, digest: u64::MAX },
                offset: u64::MAX,
                total: u64::MAX,
                bytes: postcard::to_allocvec(&snapshot).unwrap(),
            },
            Message::SnapshotPartRequest {
                id: crate::snapshot_transfer::SnapshotId { through_slot: u64::MAX, digest: u64::MAX },
                offset: u64::MAX,
            },
            Message::Forward { commands: vec![big.clone(), big] },
        ];
        for message in &messages {
            let encoded = crate::wire::encode(u64::MAX, message).len();
            assert!(
                encoded <= message.encoded_bytes_bound(),
                "{}: {encoded} > {}",
                message.kind(),
                message.encoded_bytes_bound()
            );
        }
    }

    #[test]
    fn message_prefix_keeps_to_both_bounds_and_always_takes_one() {
        let sizes = [40, 40, 40, 40];
        let by_size = |size: &usize| *size;
        assert_eq!(message_prefix(&sizes, 10, 100, by_size), 2);
        assert_eq!(message_prefix(&sizes, 10, 160, by_size), 4);
        assert_eq!(message_prefix(&sizes, 3, 1000, by_size), 3);
        assert_eq!(message_prefix(&[500, 1], 10, 100, by_size), 1, "a large first item goes alone");
        assert_eq!(message_prefix(&sizes, 0, 0, by_size), 1);
        assert_eq!(message_prefix::<usize>(&[], 10, 100, by_size), 0);
    }
}
