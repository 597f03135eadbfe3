//! A snapshot sent to a lagging replica in parts, and taken in.
//!
//! The sender encodes its snapshot once and serves parts of that encoding, each
//! asked for in turn ([`Message::SnapshotPartRequest`]), so no message is larger
//! than [`crate::Config::message_bytes_max`]. Parts name their encoding by a
//! [`SnapshotId`] (the slot it runs through and a digest of its bytes): a sender
//! that compacts again keeps serving the encoding a transfer started with, and a
//! receiver never joins parts of two encodings, even of the same slot (a sender
//! that crashed before its compaction was durable may compact that slot again,
//! with other client windows). The receiver takes one sender's parts at a time,
//! keeps up to [`PARTS_IN_FLIGHT`] asked for at once (so a transfer is not one
//! round trip per part), joins them in order, checks the digest of the whole,
//! and gives up on a sender that has gone silent, so the next catch-up request
//! starts over with whoever answers.

use std::collections::BTreeMap;
use std::hash::Hasher;

use serde::{Deserialize, Serialize};

use crate::ballot::{NodeId, Slot};
use crate::message::Message;
use crate::storage::Snapshot;

/// Which encoding of which snapshot a part belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotId {
    /// The last slot the snapshot covers.
    pub through_slot: Slot,
    /// A digest of the whole encoding (FxHash, 64 bits): tells two encodings of
    /// one slot apart, and catches a whole that was put together wrong.
    pub digest: u64,
}

/// The digest a [`SnapshotId`] carries.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(bytes);
    hasher.write_usize(bytes.len());
    hasher.finish()
}

/// Bytes a part carries besides its own: the message tag, the id, the offset,
/// the total and the length of the bytes, each at most a 10-byte varint.
pub const PART_OVERHEAD_BYTES: usize = 64;

/// Parts a receiver asks for before the first of them arrives. A part ahead of
/// the one awaited is held until that one comes, so a transfer holds at most
/// this many parts besides what it has joined.
pub const PARTS_IN_FLIGHT: u64 = 4;

/// Encodings a sender keeps serving: the newest, and the one before it, which a
/// transfer that started before the last compaction is still taking.
const ENCODINGS_KEPT: usize = 2;

/// An encoding being served.
#[derive(Debug)]
struct Encoding {
    id: SnapshotId,
    bytes: Vec<u8>,
    /// When a part of it was last sent.
    served_at: u64,
}

/// The sending side: the encodings this replica serves parts of.
#[derive(Debug, Default)]
pub struct Sender {
    encodings: Vec<Encoding>,
}

impl Sender {
    /// The part of `snapshot` (this replica's newest) from `offset`, encoding it
    /// first if no transfer has asked for it yet. `None` past its end.
    pub fn part_of_newest(&mut self, snapshot: &Snapshot, offset: u64, part_max: usize, ticks: u64) -> Option<Message> {
        let through_slot = snapshot.through_slot;
        if !self.encodings.iter().any(|encoding| encoding.id.through_slot == through_slot) {
            let bytes = match postcard::to_allocvec(snapshot) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(through_slot, %error, "could not encode the snapshot");
                    return None;
                }
            };
            if self.encodings.len() >= ENCODINGS_KEPT {
                // The one served longest ago goes.
                let oldest = self.encodings.iter().enumerate().min_by_key(|(_, encoding)| encoding.served_at);
                let position = oldest.map(|(position, _)| position).expect("at least one encoding");
                self.encodings.swap_remove(position);
            }
            let id = SnapshotId { through_slot, digest: digest(&bytes) };
            self.encodings.push(Encoding { id, bytes, served_at: ticks });
        }
        let encoding = self.encodings.iter_mut().find(|encoding| encoding.id.through_slot == through_slot)?;
        Self::part(encoding, offset, part_max, ticks)
    }

    /// The part of encoding `id` from `offset`, if it is still served.
    pub fn part_of(&mut self, id: SnapshotId, offset: u64, part_max: usize, ticks: u64) -> Option<Message> {
        let encoding = self.encodings.iter_mut().find(|encoding| encoding.id == id)?;
        Self::part(encoding, offset, part_max, ticks)
    }

    fn part(encoding: &mut Encoding, offset: u64, part_max: usize, ticks: u64) -> Option<Message> {
        let total = encoding.bytes.len();
        let start = usize::try_from(offset).ok().filter(|start| *start < total)?;
        let end = start.saturating_add(part_max.max(1)).min(total);
        encoding.served_at = ticks;
        let bytes = encoding.bytes[start..end].to_vec();
        Some(Message::SnapshotPart { id: encoding.id, offset, total: total as u64, bytes })
    }

    /// Drops the encodings no part was asked of since `idle_after` ticks: a
    /// transfer that still wants one asks at least every retransmission.
    pub fn forget_idle(&mut self, ticks: u64, idle_after: u64) {
        if !self.encodings.is_empty() {
            self.encodings.retain(|encoding| ticks < encoding.served_at + idle_after);
        }
    }

    /// Bytes of encodings held.
    pub fn bytes_held(&self) -> usize {
        self.encodings.iter().map(|encoding| encoding.bytes.len()).sum()
    }
}

/// A snapshot arriving, as far as its parts have come.
#[derive(Debug)]
struct Incoming {
    from: NodeId,
    id: SnapshotId,
    total: u64,
    /// The parts joined so far, from the start.
    bytes: Vec<u8>,
    /// The length of the sender's parts, as the last part joined had it: parts
    /// are asked for at multiples of it from `grid_from`.
    part_bytes: u64,
    /// Where the multiples start: 0, or where the parts last changed length.
    grid_from: u64,
    /// Parts are asked for up to this offset (a multiple).
    asked_to: u64,
    /// Parts that came ahead of the one awaited, by offset.
    early: BTreeMap<u64, Vec<u8>>,
    /// When the last part came.
    heard_at: u64,
}

/// What became of a part.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// A copy of a part already taken, a part of another transfer, or one that
    /// does not fit: nothing changed.
    Ignored,
    /// Taken; ask the sender for more parts with these requests (none when
    /// enough are asked for already).
    Next(Vec<Message>),
    /// The last part: here is the whole snapshot.
    Whole(Box<Snapshot>),
    /// The last part, but the whole does not match its digest or does not
    /// decode; dropped, and the reason.
    Refused(String),
}

/// Most bytes reserved at the start of a transfer: a snapshot larger than this
/// grows its buffer as parts come, rather than trusting a peer's total.
const RESERVE_BYTES_MAX: u64 = 64 << 20;

/// The receiving side: at most one snapshot arriving.
#[derive(Debug)]
pub struct Receiver {
    incoming: Option<Incoming>,
    /// Ticks without a part after which a sender is given up on.
    stale_after: u64,
}

impl Receiver {
    /// A receiver that gives up on a sender silent for `stale_after` ticks.
    pub fn new(stale_after: u64) -> Receiver {
        Receiver { incoming: None, stale_after }
    }

    /// Takes a part from `from`. A first part starts a transfer when none is
    /// under way, when it is of a newer snapshot, when it comes from the current
    /// sender with another encoding (the sender's is all that it can serve), or
    /// when the current sender has been silent for `stale_after` ticks. A part
    /// ahead of the one awaited is held, if it was asked for and fewer than
    /// [`PARTS_IN_FLIGHT`] are held.
    pub fn take(&mut self, from: NodeId, id: SnapshotId, offset: u64, total: u64, bytes: &[u8], ticks: u64) -> Taken {
        let stale_after = self.stale_after;
        let continues = self.incoming.as_ref().is_some_and(|incoming| incoming.from == from && incoming.id == id);
        if !continues {
            let starts = offset == 0
                && !bytes.is_empty()
                && self.incoming.as_ref().is_none_or(|incoming| {
                    id.through_slot > incoming.id.through_slot
                        || incoming.from == from
                        || ticks >= incoming.heard_at + stale_after
                });
            if !starts {
                return Taken::Ignored;
            }
            let reserve = total.min(RESERVE_BYTES_MAX) as usize;
            self.incoming = Some(Incoming {
                from,
                id,
                total,
                bytes: Vec::with_capacity(reserve),
                part_bytes: bytes.len() as u64,
                grid_from: 0,
                asked_to: 0,
                early: BTreeMap::new(),
                heard_at: ticks,
            });
        }
        let Some(incoming) = self.incoming.as_mut() else { unreachable!("set above") };
        let received = incoming.bytes.len() as u64;
        if total != incoming.total || bytes.is_empty() || offset.saturating_add(bytes.len() as u64) > total {
            return Taken::Ignored;
        }
        if offset == received {
            incoming.bytes.extend_from_slice(bytes);
            let mut last_bytes = bytes.len() as u64;
            // Join the parts held that now follow on; drop any the join overlapped.
            loop {
                let joined = incoming.bytes.len() as u64;
                while incoming.early.first_key_value().is_some_and(|(early, _)| *early < joined) {
                    incoming.early.pop_first();
                }
                let Some(next) = incoming.early.remove(&joined) else { break };
                last_bytes = next.len() as u64;
                incoming.bytes.extend_from_slice(&next);
            }
            let joined = incoming.bytes.len() as u64;
            if joined < total && last_bytes != incoming.part_bytes {
                // The sender's parts changed length (it restarted with another
                // message budget, say): ask at multiples of the new length from
                // here, or the parts asked for would never join up.
                incoming.part_bytes = last_bytes;
                incoming.grid_from = joined;
                incoming.asked_to = joined;
                incoming.early.retain(|offset, _| (offset - joined).is_multiple_of(last_bytes));
            }
        } else if offset > received
            && offset < incoming.asked_to
            && (offset - incoming.grid_from).is_multiple_of(incoming.part_bytes)
            && (incoming.early.len() as u64) < PARTS_IN_FLIGHT
            && !incoming.early.contains_key(&offset)
        {
            incoming.early.insert(offset, bytes.to_vec());
        } else {
            return Taken::Ignored;
        }
        incoming.heard_at = ticks;
        let received = incoming.bytes.len() as u64;
        if received < total {
            // Keep PARTS_IN_FLIGHT parts asked for past what is joined.
            let window_end = received.saturating_add(PARTS_IN_FLIGHT * incoming.part_bytes).min(total);
            incoming.asked_to = incoming.asked_to.max(received);
            let mut requests = Vec::new();
            while incoming.asked_to < window_end {
                if !incoming.early.contains_key(&incoming.asked_to) {
                    requests.push(Message::SnapshotPartRequest { id, offset: incoming.asked_to });
                }
                incoming.asked_to += incoming.part_bytes;
            }
            return Taken::Next(requests);
        }
        let Some(incoming) = self.incoming.take() else { unreachable!("set above") };
        if digest(&incoming.bytes) != id.digest {
            return Taken::Refused("its bytes do not match their digest".to_string());
        }
        match postcard::take_from_bytes::<Snapshot>(&incoming.bytes) {
            Ok((snapshot, [])) if snapshot.through_slot == id.through_slot => Taken::Whole(Box::new(snapshot)),
            Ok((snapshot, rest)) => Taken::Refused(format!(
                "it covers slots through {} where its parts said {}, with {} bytes after it",
                snapshot.through_slot,
                id.through_slot,
                rest.len()
            )),
            Err(error) => Taken::Refused(format!("it does not decode: {error}")),
        }
    }

    /// The requests to send `peer` again if a transfer from it is under way and
    /// not stale: every part asked for and not yet here, the awaited one first
    /// (at most [`PARTS_IN_FLIGHT`]). None if there is no such transfer; forgets
    /// a transfer that is stale or that `applied_through` has passed (the log
    /// caught up by other means).
    pub fn resume(&mut self, peer: NodeId, applied_through: Slot, ticks: u64) -> Vec<Message> {
        let Some(incoming) = self.incoming.as_ref() else { return Vec::new() };
        if incoming.id.through_slot <= applied_through || ticks >= incoming.heard_at + self.stale_after {
            self.incoming = None;
            return Vec::new();
        }
        if incoming.from != peer {
            return Vec::new();
        }
        let received = incoming.bytes.len() as u64;
        let end = incoming.asked_to.max(received + 1).min(incoming.total);
        let mut requests = Vec::new();
        let mut offset = received;
        while offset < end {
            if !incoming.early.contains_key(&offset) {
                requests.push(Message::SnapshotPartRequest { id: incoming.id, offset });
            }
            offset += incoming.part_bytes;
        }
        requests
    }

    /// Forgets a transfer that `applied_through` has passed.
    pub fn forget_outrun(&mut self, applied_through: Slot) {
        if self.incoming.as_ref().is_some_and(|incoming| incoming.id.through_slot <= applied_through) {
            self.incoming = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(through_slot: Slot, data_bytes: usize, fill: u8) -> Snapshot {
        Snapshot { through_slot, data: vec![fill; data_bytes], ..Snapshot::default() }
    }

    /// A transfer of `newest` in parts of 1000 bytes, its first part taken:
    /// the two sides, the encoding's id and length, and the requests made.
    fn started(newest: &Snapshot) -> (Sender, Receiver, SnapshotId, u64, Vec<Message>) {
        let (mut sender, mut receiver) = (Sender::default(), Receiver::new(10));
        let Some(Message::SnapshotPart { id, offset, total, bytes }) = sender.part_of_newest(newest, 0, 1000, 0) else {
            panic!()
        };
        let Taken::Next(requests) = receiver.take(1, id, offset, total, &bytes, 0) else { panic!() };
        (sender, receiver, id, total, requests)
    }

    /// Runs a transfer from `first` on: the parts the receiver asks for, in the
    /// order asked, until it ends or asks for nothing more. Returns how it ended
    /// and the most requests outstanding at once.
    fn transfer_from(
        sender: &mut Sender,
        receiver: &mut Receiver,
        first: Option<Message>,
        part_max: usize,
    ) -> (Taken, usize) {
        let mut parts: std::collections::VecDeque<Message> = first.into_iter().collect();
        let mut outstanding_max = 0;
        for _ in 0..10_000 {
            let Some(Message::SnapshotPart { id, offset, total, bytes }) = parts.pop_front() else {
                // Nothing more asked for: the parts asked for earlier are elsewhere.
                return (Taken::Next(Vec::new()), outstanding_max);
            };
            match receiver.take(1, id, offset, total, &bytes, 0) {
                Taken::Next(requests) => {
                    for request in requests {
                        let Message::SnapshotPartRequest { id, offset } = request else { panic!("{request:?}") };
                        parts.push_back(sender.part_of(id, offset, part_max, 0).expect("a part asked for exists"));
                    }
                    outstanding_max = outstanding_max.max(parts.len());
                }
                other => return (other, outstanding_max),
            }
        }
        panic!("no end to the transfer")
    }

    /// Runs a transfer of `newest` to the end.
    fn transfer(sender: &mut Sender, receiver: &mut Receiver, newest: &Snapshot, part_max: usize) -> Taken {
        let first = sender.part_of_newest(newest, 0, part_max, 0);
        transfer_from(sender, receiver, first, part_max).0
    }

    #[test]
    fn a_snapshot_arrives_whole_in_parts_of_at_most_the_budget() {
        let newest = snapshot(40, 10_000, 7);
        let (mut sender, mut receiver) = (Sender::default(), Receiver::new(10));
        let part = sender.part_of_newest(&newest, 0, 1000, 0).unwrap();
        assert!(matches!(&part, Message::SnapshotPart { bytes, .. } if bytes.len() == 1000));
        let (taken, outstanding_max) = transfer_from(&mut sender, &mut receiver, Some(part), 1000);
        assert_eq!(taken, Taken::Whole(Box::new(newest)));
        assert_eq!(outstanding_max as u64, PARTS_IN_FLIGHT, "parts are asked for ahead, never more than the window");
    }

    /// The sender's parts change length mid-transfer (it restarted with another
    /// message budget): the receiver asks at multiples of the new length from
    /// where it changed, and the transfer goes on without waiting for a resend,
    /// fetching few bytes twice.
    #[test]
    fn a_change_of_part_length_mid_transfer_is_followed() {
        for (first_max, later_max) in [(1000, 100), (1000, 999), (100, 1000), (1000, 1000)] {
            let newest = snapshot(40, 10_000, 3);
            let (mut sender, mut receiver) = (Sender::default(), Receiver::new(10));
            let mut parts: std::collections::VecDeque<Message> =
                sender.part_of_newest(&newest, 0, first_max, 0).into_iter().collect();
            let (mut served, mut whole) = (1u64, None);
            while let Some(Message::SnapshotPart { id, offset, total, bytes }) = parts.pop_front() {
                match receiver.take(1, id, offset, total, &bytes, 0) {
                    Taken::Next(requests) => {
                        for request in requests {
                            let Message::SnapshotPartRequest { id, offset } = request else { panic!() };
                            parts.push_back(sender.part_of(id, offset, later_max, 0).unwrap());
                            served += 1;
                        }
                    }
                    Taken::Whole(snapshot) => whole = Some(snapshot),
                    // A part asked for on the old grid, overlapped or off the new one.
                    Taken::Ignored => {}
                    other => panic!("{first_max} -> {later_max}: {other:?}"),
                }
            }
            assert_eq!(whole, Some(Box::new(newest.clone())), "{first_max} -> {later_max}: stalled");
            // The parts of the new length, plus at most a window of the old grid's.
            let total = postcard::to_allocvec(&newest).unwrap().len() as u64;
            assert!(
                served <= total.div_ceil(later_max as u64) + 2 * PARTS_IN_FLIGHT,
                "{first_max} -> {later_max}: {served}"
            );
        }
    }

    /// On a resend, every part asked for and not yet here is asked for again
    /// (lost parts are not left to one resend each); a part off the grid of
    /// asked offsets is not held.
    #[test]
    fn a_resend_asks_again_for_every_missing_part() {
        let newest = snapshot(40, 10_000, 5);
        let (mut sender, mut receiver, id, total, requests) = started(&newest);
        assert_eq!(requests.len() as u64, PARTS_IN_FLIGHT);
        let part = |offset: u64, sender: &mut Sender| match sender.part_of(id, offset, 1000, 0) {
            Some(Message::SnapshotPart { bytes, .. }) => bytes,
            other => panic!("{other:?}"),
        };
        // 1000 and 3000 are lost; 2000 and 4000 come and are held.
        for offset in [2000, 4000] {
            let bytes = part(offset, &mut sender);
            assert_eq!(receiver.take(1, id, offset, total, &bytes, 1), Taken::Next(Vec::new()));
        }
        let off_grid = part(1500, &mut sender);
        assert_eq!(receiver.take(1, id, 1500, total, &off_grid, 1), Taken::Ignored, "not an offset asked for");
        let again: Vec<u64> = receiver
            .resume(1, 0, 3)
            .into_iter()
            .map(|request| match request {
                Message::SnapshotPartRequest { offset, .. } => offset,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(again, vec![1000, 3000]);
    }

    /// Transfers over a network that loses, copies, delays and reorders
    /// requests and parts, with the sender's part length changing at random:
    /// what is joined is always a prefix of the encoding, what is held lies
    /// beyond it and is right, at most [`PARTS_IN_FLIGHT`] parts are held, and
    /// every transfer ends whole, resending on a timer as a replica does and
    /// starting over when the transfer goes stale. 400 seeds, bounded in ticks.
    #[test]
    fn random_faults_never_join_wrong_bytes_and_every_transfer_ends() {
        use crate::rng::Rng;
        const RETRANSMIT_TICKS: u64 = 8;
        enum InFlight {
            Request(SnapshotId, u64),
            Part(Message),
        }
        for seed in 0..400u64 {
            let mut rng = Rng::new(seed);
            let data_bytes = [0, 10, 500, 3000, 20_000][rng.range_inclusive(0, 4) as usize];
            let newest = Snapshot {
                through_slot: 40,
                data: (0..data_bytes).map(|_| rng.next_u64() as u8).collect(),
                ..Snapshot::default()
            };
            let encoded = postcard::to_allocvec(&newest).unwrap();
            let part_lengths = [7, 64, 333, 1000, 4096];
            let mut part_max = part_lengths[rng.range_inclusive(0, 4) as usize];
            let changes_length = rng.chance(1, 3);
            let lost_percent = [0, 5, 20][rng.range_inclusive(0, 2) as usize];
            let (mut sender, mut receiver) = (Sender::default(), Receiver::new(4 * RETRANSMIT_TICKS));
            let mut network: Vec<(u64, InFlight)> =
                vec![(1, InFlight::Part(sender.part_of_newest(&newest, 0, part_max, 0).unwrap()))];
            let mut whole = None;
            'ticks: for ticks in 1..200_000u64 {
                if changes_length && rng.chance(1, 50) {
                    part_max = part_lengths[rng.range_inclusive(0, 4) as usize];
                }
                if ticks.is_multiple_of(RETRANSMIT_TICKS) {
                    let again = receiver.resume(1, 0, ticks);
                    if again.is_empty() {
                        // Stale, or never started: ask for the newest from the start.
                        let first = sender.part_of_newest(&newest, 0, part_max, ticks).unwrap();
                        network.push((ticks + 1, InFlight::Part(first)));
                    }
                    for request in again {
                        let Message::SnapshotPartRequest { id, offset } = request else { panic!() };
                        network.push((ticks + 1, InFlight::Request(id, offset)));
                    }
                }
                let mut due = Vec::new();
                let mut position = 0;
                while position < network.len() {
                    if network[position].0 <= ticks {
                        due.push(network.swap_remove(position).1);
                    } else {
                        position += 1;
                    }
                }
                for item in due {
                    if rng.chance(lost_percent, 100) {
                        continue;
                    }
                    let delay = rng.range_inclusive(1, 3);
                    match item {
                        InFlight::Request(id, offset) => {
                            let copies = if rng.chance(1, 10) { 2 } else { 1 };
                            for _ in 0..copies {
                                if let Some(part) = sender.part_of(id, offset, part_max, ticks) {
                                    network.push((ticks + delay, InFlight::Part(part)));
                                }
                            }
                        }
                        InFlight::Part(Message::SnapshotPart { id, offset, total, bytes }) => {
                            let taken = receiver.take(1, id, offset, total, &bytes, ticks);
                            if let Some(incoming) = &receiver.incoming {
                                let joined = incoming.bytes.len();
                                assert_eq!(incoming.bytes[..], encoded[..joined], "seed {seed}: wrong bytes joined");
                                assert!(incoming.early.len() as u64 <= PARTS_IN_FLIGHT, "seed {seed}");
                                for (offset, held) in &incoming.early {
                                    let offset = *offset as usize;
                                    assert!(offset > joined, "seed {seed}: a held part lies in what is joined");
                                    assert_eq!(held[..], encoded[offset..offset + held.len()], "seed {seed}");
                                }
                            }
                            match taken {
                                Taken::Ignored => {}
                                Taken::Next(requests) => {
                                    for request in requests {
                                        let Message::SnapshotPartRequest { id, offset } = request else { panic!() };
                                        network.push((ticks + delay, InFlight::Request(id, offset)));
                                    }
                                }
                                Taken::Whole(snapshot) => {
                                    whole = Some(snapshot);
                                    break 'ticks;
                                }
                                Taken::Refused(reason) => panic!("seed {seed}: refused: {reason}"),
                            }
                        }
                        InFlight::Part(other) => panic!("{other:?}"),
                    }
                }
            }
            assert_eq!(whole, Some(Box::new(newest)), "seed {seed}: the transfer never ended");
        }
    }

    /// Parts that come out of order (the window's, in reverse) are held and
    /// joined in order; a copy or a part not asked for is ignored.
    #[test]
    fn parts_out_of_order_are_held_and_joined_in_order() {
        let newest = snapshot(40, 10_000, 9);
        let (mut sender, mut receiver, id, total, requests) = started(&newest);
        let offsets: Vec<u64> = requests
            .iter()
            .map(|request| match request {
                Message::SnapshotPartRequest { offset, .. } => *offset,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(offsets.len() as u64, PARTS_IN_FLIGHT);
        let part = |offset: u64, sender: &mut Sender| match sender.part_of(id, offset, 1000, 0) {
            Some(Message::SnapshotPart { bytes, .. }) => bytes,
            other => panic!("{other:?}"),
        };
        let beyond = offsets.last().unwrap() + 1000;
        let not_asked = part(beyond, &mut sender);
        assert_eq!(receiver.take(1, id, beyond, total, &not_asked, 0), Taken::Ignored, "not asked for");
        // The last asked for first: held, nothing more asked.
        let mut reversed = offsets.clone();
        reversed.reverse();
        for (position, offset) in reversed.iter().enumerate() {
            let bytes = part(*offset, &mut sender);
            let taken = receiver.take(1, id, *offset, total, &bytes, 0);
            if position + 1 < reversed.len() {
                assert_eq!(taken, Taken::Next(Vec::new()), "held until the awaited part comes");
                assert_eq!(receiver.take(1, id, *offset, total, &bytes, 0), Taken::Ignored, "a copy");
            } else {
                // The awaited part joins all the held ones; the window moves on.
                let Taken::Next(requests) = taken else { panic!("{taken:?}") };
                assert_eq!(requests.len() as u64, PARTS_IN_FLIGHT);
                let Some(Message::SnapshotPartRequest { offset, .. }) = requests.first() else { panic!() };
                assert_eq!(*offset, beyond);
                let mut parts: Vec<Message> = requests
                    .into_iter()
                    .map(|request| match request {
                        Message::SnapshotPartRequest { id, offset } => sender.part_of(id, offset, 1000, 0).unwrap(),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                let mut whole = None;
                while let Some(Message::SnapshotPart { id, offset, total, bytes }) = parts.pop() {
                    match receiver.take(1, id, offset, total, &bytes, 0) {
                        Taken::Next(requests) => {
                            for request in requests {
                                let Message::SnapshotPartRequest { id, offset } = request else { panic!() };
                                parts.insert(0, sender.part_of(id, offset, 1000, 0).unwrap());
                            }
                        }
                        Taken::Whole(snapshot) => whole = Some(snapshot),
                        other => panic!("{other:?}"),
                    }
                }
                assert_eq!(whole, Some(Box::new(newest.clone())));
            }
        }
    }

    /// The sender compacts again mid-transfer: the transfer goes on with the
    /// encoding it started with, and the next starts with the newest.
    #[test]
    fn a_transfer_survives_a_compaction_at_the_sender() {
        let older = snapshot(40, 5000, 1);
        let newer = snapshot(80, 5000, 2);
        let (mut sender, mut receiver) = (Sender::default(), Receiver::new(10));
        let Some(Message::SnapshotPart { id, offset, total, bytes }) = sender.part_of_newest(&older, 0, 1000, 0) else {
            panic!()
        };
        let Taken::Next(requests) = receiver.take(1, id, offset, total, &bytes, 0) else { panic!() };
        // The sender compacts and serves its newest to someone else meanwhile.
        assert!(sender.part_of_newest(&newer, 0, 1000, 0).is_some());
        // The next requests come in now, and are served from the older encoding.
        let mut whole = None;
        for request in requests {
            let Message::SnapshotPartRequest { id, offset } = request else { panic!() };
            let part = sender.part_of(id, offset, 1000, 0);
            let (taken, _) = transfer_from(&mut sender, &mut receiver, part, 1000);
            if taken != Taken::Next(Vec::new()) {
                whole = Some(taken);
            }
        }
        assert_eq!(whole, Some(Taken::Whole(Box::new(older))));
        assert_eq!(sender.encodings.len(), 2);
    }

    /// Two encodings of one slot are never joined: a part of the other one is
    /// ignored mid-transfer, and its first part from the same sender starts over.
    #[test]
    fn parts_of_two_encodings_of_one_slot_are_never_joined() {
        let first = snapshot(40, 3000, 1);
        let second = snapshot(40, 3000, 2);
        let (mut first_sender, mut second_sender) = (Sender::default(), Sender::default());
        let mut receiver = Receiver::new(10);
        let Some(Message::SnapshotPart { id, offset, total, bytes }) = first_sender.part_of_newest(&first, 0, 1000, 0)
        else {
            panic!()
        };
        assert!(matches!(receiver.take(1, id, offset, total, &bytes, 0), Taken::Next(_)));
        let Some(Message::SnapshotPart { id: second_id, total, .. }) =
            second_sender.part_of_newest(&second, 0, 1000, 0)
        else {
            panic!()
        };
        assert_ne!(id, second_id, "one slot, two encodings, two ids");
        let Some(Message::SnapshotPart { bytes, .. }) = second_sender.part_of(second_id, 1000, 1000, 0) else {
            panic!()
        };
        assert_eq!(receiver.take(1, second_id, 1000, total, &bytes, 0), Taken::Ignored);
        assert_eq!(transfer(&mut second_sender, &mut receiver, &second, 1000), Taken::Whole(Box::new(second)));
    }

    /// A silent sender is given up on: `resume` stops asking it, and another
    /// sender's first part starts over, while before that it is ignored.
    #[test]
    fn a_silent_sender_is_given_up_on() {
        let newest = snapshot(40, 3000, 1);
        let mut sender = Sender::default();
        let mut receiver = Receiver::new(10);
        let Some(Message::SnapshotPart { id, offset, total, bytes }) = sender.part_of_newest(&newest, 0, 1000, 0)
        else {
            panic!()
        };
        assert!(matches!(receiver.take(1, id, offset, total, &bytes, 0), Taken::Next(_)));
        let again = receiver.resume(1, 0, 5);
        assert!(matches!(again.first(), Some(Message::SnapshotPartRequest { offset: 1000, .. })), "{again:?}");
        assert_eq!(receiver.resume(2, 0, 5), Vec::new(), "only the sender is asked for its parts");
        assert_eq!(receiver.take(2, id, 0, total, &bytes, 5), Taken::Ignored, "not stale yet");
        assert_eq!(receiver.resume(1, 0, 10), Vec::new(), "stale: given up");
        assert!(matches!(receiver.take(2, id, 0, total, &bytes, 11), Taken::Next(_)));
    }

    #[test]
    fn a_whole_that_does_not_match_its_digest_is_refused() {
        let newest = snapshot(40, 100, 1);
        let bytes = postcard::to_allocvec(&newest).unwrap();
        let id = SnapshotId { through_slot: 40, digest: digest(&bytes) ^ 1 };
        let mut receiver = Receiver::new(10);
        let taken = receiver.take(1, id, 0, bytes.len() as u64, &bytes, 0);
        assert!(matches!(taken, Taken::Refused(reason) if reason.contains("digest")));
    }

    #[test]
    fn idle_encodings_are_forgotten() {
        let mut sender = Sender::default();
        sender.part_of_newest(&snapshot(40, 100, 1), 0, 1000, 0).unwrap();
        sender.forget_idle(5, 10);
        assert!(sender.bytes_held() > 0);
        sender.forget_idle(10, 10);
        assert_eq!(sender.bytes_held(), 0);
    }
}
