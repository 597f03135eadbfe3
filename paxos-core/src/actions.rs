//! What a replica asks its driver to do after a step: send, persist-then-send, deliver.
//!
//! Replies that depend on durable state (promises, accepts) live inside
//! [`PersistThen`], whose messages can only be taken out by a call that first
//! completes the write (STYLE.md rule 2). The driver cannot send a promise early
//! by mistake: there is no accessor for those messages.

use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::{Command, CommandId, Outgoing, Value};
use crate::storage::{Storage, StorageOp};

/// Storage writes and the messages that may leave only once they are durable.
#[derive(Debug, Default)]
pub struct PersistThen {
    ops: Vec<StorageOp>,
    then_send: Vec<Outgoing>,
}

impl PersistThen {
    /// The writes to make durable.
    pub fn ops(&self) -> &[StorageOp] {
        &self.ops
    }

    /// How many messages wait on these writes.
    pub fn waiting_messages(&self) -> usize {
        self.then_send.len()
    }

    /// True when there is nothing to write and nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.then_send.is_empty()
    }

    /// True when no message waits on these writes and every one is a
    /// [`StorageOp::Chosen`] record. Such a batch need not be durable before
    /// anything else happens: a slot is chosen once a quorum made its accept
    /// durable, so a crash that loses the record loses nothing, and the replica
    /// learns the slot again from its peers. A driver may hold such a batch back
    /// and [`PersistThen::merge`] it in front of the next one, so it costs no sync
    /// of its own.
    pub fn is_deferrable(&self) -> bool {
        self.then_send.is_empty() && self.ops.iter().all(|op| matches!(op, StorageOp::Chosen { .. }))
    }

    /// Appends a later batch. Order is kept: this batch's ops come first, and the
    /// merged messages are released only after both batches are durable.
    pub fn merge(&mut self, later: PersistThen) {
        self.ops.extend(later.ops);
        self.then_send.extend(later.then_send);
    }

    pub(crate) fn ops_mut(&mut self) -> &mut Vec<StorageOp> {
        &mut self.ops
    }

    pub(crate) fn push_op(&mut self, op: StorageOp) {
        self.ops.push(op);
    }

    pub(crate) fn push_message(&mut self, to: NodeId, message: crate::Message) {
        push_in_place(&mut self.then_send, || Outgoing { to, message });
    }

    /// Makes the writes durable in `storage`, then hands back the messages.
    /// On error the messages are dropped: a failed write never yields a reply.
    pub async fn persist<S: Storage + ?Sized>(self, storage: &S) -> Result<Vec<Outgoing>, S::Error> {
        if !self.ops.is_empty() {
            storage.append(&self.ops).await?;
        }
        Ok(self.then_send)
    }

    /// The synchronous form of [`PersistThen::persist`], for simulators and
    /// benchmarks that keep state in memory: `write` must make `ops` durable
    /// (in the simulated sense) before returning `Ok`.
    pub fn persist_with<E>(self, write: impl FnOnce(&[StorageOp]) -> Result<(), E>) -> Result<Vec<Outgoing>, E> {
        if !self.ops.is_empty() {
            write(&self.ops)?;
        }
        Ok(self.then_send)
    }

    /// Like [`PersistThen::persist_with`], but keeps this batch's buffers for
    /// reuse, and lets `write` take the ops themselves (with `Vec::append`, say)
    /// rather than copy them, as storage that keeps ops in memory would. On
    /// success the released messages are moved to the end of `out` and the batch
    /// is left empty. On error nothing is released and the batch keeps the ops
    /// `write` left in the vector.
    pub fn persist_with_into<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<StorageOp>) -> Result<(), E>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), E> {
        if !self.ops.is_empty() {
            write(&mut self.ops)?;
        }
        self.ops.clear();
        if out.is_empty() {
            // Trade buffers rather than copy the messages over.
            std::mem::swap(out, &mut self.then_send);
        } else {
            out.append(&mut self.then_send);
        }
        Ok(())
    }

    /// Drops everything, as a crash before the write completed would.
    pub fn discard(self) {}
}

/// A chosen slot, delivered to the application in slot order.
///
/// Commands that were already applied under the same [`CommandId`] (a client retry)
/// are listed in `duplicates` and must not be applied again; the others are
/// numbered with consecutive log indexes from `first_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The slot.
    pub slot: Slot,
    /// Its chosen value.
    pub value: Value,
    /// Log index of the first fresh command in the value.
    pub first_index: u64,
    /// Positions in `value.commands()` of duplicates. Usually empty.
    pub duplicates: Vec<u32>,
}

impl Decided {
    /// The fresh commands with their log indexes, in order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &Command)> + '_ {
        let mut index = self.first_index;
        let mut duplicates = self.duplicates.iter().peekable();
        self.value.commands().iter().enumerate().filter_map(move |(position, command)| {
            if duplicates.peek().is_some_and(|duplicate| **duplicate as usize == position) {
                duplicates.next();
                return None;
            }
            let entry = (index, command);
            index += 1;
            Some(entry)
        })
    }

    /// How many fresh commands this slot applies.
    pub fn fresh_count(&self) -> u64 {
        (self.value.commands().len() - self.duplicates.len()) as u64
    }
}

/// Something the application may want to react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This replica's view of the leader changed (Multi-Paxos).
    LeaderChanged {
        /// The leader now believed in, if any.
        leader: Option<NodeId>,
        /// Its ballot.
        ballot: Ballot,
    },
    /// This replica was too far behind and installed a peer's snapshot: the
    /// application must replace its state with `snapshot.data`. Applied entries
    /// continue from `snapshot.next_index`. `NodeHandle::subscribe_from` puts it
    /// among the entries, in log order.
    SnapshotInstalled(crate::storage::Snapshot),
    /// Commands this replica held but will not get chosen, for example because it
    /// stopped being leader before giving them a slot. Their clients should retry.
    Dropped {
        /// The commands' ids.
        ids: Vec<CommandId>,
        /// The leader to retry with, if known.
        leader_hint: Option<NodeId>,
    },
}

/// Everything one or more steps asked for, in the order it must happen.
#[derive(Debug, Default)]
pub struct Actions {
    /// Messages that may leave now: they depend on nothing unwritten.
    pub send: Vec<Outgoing>,
    /// Writes, and the messages that wait for them.
    pub persist: PersistThen,
    /// Newly chosen slots, in slot order.
    pub decided: Vec<Decided>,
    /// Events, in order.
    pub events: Vec<Event>,
}

impl Actions {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.persist.is_empty() && self.decided.is_empty() && self.events.is_empty()
    }

    /// Appends `later`'s actions after this one's, keeping every ordering rule.
    pub fn merge(&mut self, later: Actions) {
        self.send.extend(later.send);
        self.persist.merge(later.persist);
        self.decided.extend(later.decided);
        self.events.extend(later.events);
    }

    /// Empties every list, keeping the allocations for reuse.
    pub fn clear(&mut self) {
        self.send.clear();
        self.persist.ops.clear();
        self.persist.then_send.clear();
        self.decided.clear();
        self.events.clear();
    }

    /// Moves everything into `into`, which is empty, and takes its buffers in
    /// exchange. Buffer by buffer, and only those holding something: a step
    /// usually fills one or two of the five.
    pub(crate) fn hand_over(&mut self, into: &mut Actions) {
        fn swap_filled<T>(ours: &mut Vec<T>, theirs: &mut Vec<T>) {
            if !ours.is_empty() {
                std::mem::swap(ours, theirs);
            }
        }
        swap_filled(&mut self.send, &mut into.send);
        swap_filled(&mut self.persist.ops, &mut into.persist.ops);
        swap_filled(&mut self.persist.then_send, &mut into.persist.then_send);
        swap_filled(&mut self.decided, &mut into.decided);
        swap_filled(&mut self.events, &mut into.events);
    }

    pub(crate) fn send(&mut self, to: NodeId, message: crate::Message) {
        push_in_place(&mut self.send, || Outgoing { to, message });
    }
}

/// Appends `make()` to `collection`, building the element after any reallocation.
///
/// `Vec::push` receives its element before checking the capacity, so on the hot
/// path the compiler assembles the element on the stack with narrow stores, then
/// copies it into place with wide loads that each read several of those stores
/// while they are still in flight. The processor cannot forward such a load and
/// waits a dozen cycles or so: perf put these stalls at about a tenth of the
/// protocol's time per command. Built inside `extend`, after the room is made,
/// the element's fields are written straight into the buffer.
#[inline(always)]
pub(crate) fn push_in_place<T, C: Extend<T>>(collection: &mut C, make: impl FnOnce() -> T) {
    collection.extend(std::iter::once_with(make));
}
