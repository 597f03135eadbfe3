//! The learner: counts accepts, records chosen values, and applies them in slot order.
//!
//! A value is chosen once a majority of acceptors accepted it at the same ballot
//! (Paxos Made Simple §2.3). Applying is where client retries are deduplicated and
//! where each fresh command gets its log index.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;

use crate::acceptor::Acceptor;
use crate::actions::{push_in_place, Decided};
use crate::ballot::{Ballot, Slot};
use crate::message::{Command, Value};
use crate::slots::SlotMap;
use crate::storage::{AppliedSequences, ClientDedup};

/// Phase 2b votes per slot, for the ballot being counted.
#[derive(Clone, Debug)]
pub struct AcceptTally {
    votes: SlotMap<(Ballot, u64)>,
}

impl AcceptTally {
    /// An empty tally whose lowest slot is `first`.
    pub fn new(first: Slot) -> AcceptTally {
        AcceptTally { votes: SlotMap::new(first) }
    }

    /// Records that member `voter` accepted `slot` at `ballot` and returns how many
    /// distinct members accepted that slot at that ballot. Votes for a lower ballot
    /// than one already counted are ignored; a higher ballot restarts the count.
    pub fn record(&mut self, slot: Slot, ballot: Ballot, voter: u64) -> usize {
        let Some((counted, voters)) = self.votes.get_mut(slot) else { return 0 };
        if ballot > *counted {
            *counted = ballot;
            *voters = 0;
        }
        if ballot == *counted {
            *voters |= voter;
        }
        if ballot == *counted {
            voters.count_ones() as usize
        } else {
            0
        }
    }

    /// The members that accepted `slot` at `ballot`, as a bitmask.
    pub fn voters(&self, slot: Slot, ballot: Ballot) -> u64 {
        match self.votes.get(slot) {
            Some((counted, voters)) if *counted == ballot => *voters,
            _ => 0,
        }
    }

    /// Forgets slots below `slot`.
    pub fn discard_below(&mut self, slot: Slot) {
        self.votes.discard_below(slot);
    }
}

/// Which recent sequence numbers of one client were applied, as a ring of bits.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ring {
    highest: u64,
    bits: Vec<u64>,
}

impl Ring {
    /// A ring remembering `words * 64` sequences, none of them applied.
    fn empty(words: usize) -> Ring {
        Ring { highest: 0, bits: vec![0; words] }
    }

    fn window(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn bit(&self, sequence: u64) -> (usize, u64) {
        let position = sequence & (self.window() - 1);
        ((position >> 6) as usize, 1u64 << (position & 63))
    }

    fn is_set(&self, sequence: u64) -> bool {
        let (word, mask) = self.bit(sequence);
        self.bits[word] & mask != 0
    }

    /// Sets the bits of the `count` sequences from `first` on (`count` at most
    /// the window), a word at a time.
    fn set_run(&mut self, first: u64, count: u64) {
        let window = self.window();
        debug_assert!(count <= window);
        let mut position = first & (window - 1);
        let mut left = count;
        while left > 0 {
            let offset = position & 63;
            let take = left.min(64 - offset);
            let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << offset };
            self.bits[(position >> 6) as usize] |= mask;
            position = (position + take) & (window - 1);
            left -= take;
        }
    }

    /// Marks `sequence` applied; false if it already was, or is too old to tell.
    fn first_application(&mut self, sequence: u64) -> bool {
        let window = self.window();
        if sequence > self.highest {
            if sequence - self.highest >= window {
                self.bits.iter_mut().for_each(|word| *word = 0);
            } else {
                for cleared in self.highest + 1..sequence {
                    let (word, mask) = self.bit(cleared);
                    self.bits[word] &= !mask;
                }
            }
            self.highest = sequence;
            let (word, mask) = self.bit(sequence);
            self.bits[word] |= mask;
            return true;
        }
        if self.highest - sequence >= window {
            // Older than anything remembered: assume it was applied. A client that
            // lets a command wait this long must give it a new id.
            return false;
        }
        let (word, mask) = self.bit(sequence);
        let fresh = self.bits[word] & mask == 0;
        self.bits[word] |= mask;
        fresh
    }
}

/// Which recent sequence numbers of one client were applied.
///
/// Means exactly what a [`Ring`] of `words * 64` bits would (the learner's
/// window; [`ClientWindow::to_ring`] gives that ring), but a client whose
/// commands are applied in sequence order, as nearly every client's are, is two
/// numbers held in the client map itself: no ring to allocate, copy or read from
/// another cache line on every command. The first command out of order turns it
/// into the ring for good.
///
/// It takes 16 bytes, so an entry of the client map takes 24: with thousands of
/// clients the map is read at random once per command on every replica, and the
/// smaller it is, the more of it stays in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientWindow {
    /// Nothing applied yet.
    Empty,
    /// Of the sequences the window covers (the last `words * 64` up to
    /// `highest`), exactly `highest - older ..= highest` were applied. `older`
    /// is below the window's size, which [`MAX_DEDUP_WINDOW`] bounds.
    ///
    /// [`MAX_DEDUP_WINDOW`]: crate::config::MAX_DEDUP_WINDOW
    Run { highest: u64, older: u32 },
    /// Any other pattern.
    Ring(Box<Ring>),
}

// The figure the doc comment above gives: keep it true.
const _: () = assert!(std::mem::size_of::<ClientWindow>() == 16);

impl ClientWindow {
    /// The run of `count` sequences ending at `highest`, at most a window of
    /// `window` (which must fit in `u32`) long.
    fn run(highest: u64, count: u64, window: u64) -> ClientWindow {
        let older = count.min(window).saturating_sub(1);
        ClientWindow::Run { highest, older: u32::try_from(older).expect("the dedup window is bounded") }
    }

    /// Marks `sequence` applied; false if it already was, or is too old to tell
    /// (see [`Ring::first_application`]). `words` is the learner's ring size.
    #[inline]
    fn first_application(&mut self, sequence: u64, words: usize) -> bool {
        let window = words as u64 * 64;
        match self {
            ClientWindow::Run { highest, older } => {
                if sequence > *highest {
                    let gap = sequence - *highest;
                    if gap == 1 {
                        *highest = sequence;
                        // Past the window's size, older sequences are not remembered anyway.
                        if u64::from(*older) + 1 < window {
                            *older += 1;
                        }
                        return true;
                    }
                    if gap >= window {
                        // Everything remembered falls out of the window.
                        *self = ClientWindow::Run { highest: sequence, older: 0 };
                        return true;
                    }
                } else if *highest - sequence >= window || *highest - sequence <= u64::from(*older) {
                    return false;
                }
                // Out of order and fresh: only a ring can tell what follows.
                let mut ring = self.to_ring(words);
                let fresh = ring.first_application(sequence);
                debug_assert!(fresh, "sequences out of the run are fresh");
                *self = ClientWindow::Ring(Box::new(ring));
                fresh
            }
            ClientWindow::Empty => {
                *self = ClientWindow::Run { highest: sequence, older: 0 };
                true
            }
            ClientWindow::Ring(ring) => ring.first_application(sequence),
        }
    }

    /// The ring of `words * 64` bits this window stands for.
    fn to_ring(&self, words: usize) -> Ring {
        match self {
            ClientWindow::Empty => Ring::empty(words),
            ClientWindow::Run { highest, older } => {
                let mut ring = Ring { highest: *highest, bits: vec![0; words] };
                ring.set_run(highest - u64::from(*older), u64::from(*older) + 1);
                ring
            }
            ClientWindow::Ring(ring) => (**ring).clone(),
        }
    }

    /// This window as a snapshot records it: `(highest, applied)`. A run stays
    /// a run, so a snapshot of clients applied in order allocates nothing per client.
    fn to_snapshot(&self, words: usize) -> (u64, AppliedSequences) {
        match self {
            ClientWindow::Run { highest, older } => (*highest, AppliedSequences::Run { older: *older }),
            ClientWindow::Empty | ClientWindow::Ring(_) => {
                let Ring { highest, bits } = self.to_ring(words);
                (highest, AppliedSequences::Ring(bits))
            }
        }
    }

    /// The window a snapshot's record stands for (see [`ClientWindow::to_snapshot`]):
    /// `sender_words` is the ring size of the replica that took the snapshot,
    /// `words` this learner's. A run of another size becomes a ring of the
    /// sender's size, as a ring record does, so it means what it meant there.
    /// The record may come from a peer: a run longer than its highest sequence
    /// allows, or than the window, is cut to fit, and a ring whose size is not a
    /// power of two is read as an empty one.
    fn from_snapshot(highest: u64, applied: &AppliedSequences, sender_words: usize, words: usize) -> ClientWindow {
        match applied {
            AppliedSequences::Run { older } => {
                let window = sender_words as u64 * 64;
                let count = (u64::from(*older) + 1).min(highest.saturating_add(1)).min(window);
                if sender_words == words {
                    return ClientWindow::run(highest, count, window);
                }
                let mut ring = Ring { highest, bits: vec![0; sender_words] };
                ring.set_run(highest - (count - 1), count);
                ClientWindow::from_ring(ring, words)
            }
            AppliedSequences::Ring(bits) => {
                let bits = if bits.len().is_power_of_two() { bits.clone() } else { vec![0; words] };
                ClientWindow::from_ring(Ring { highest, bits }, words)
            }
        }
    }

    /// The window a snapshot's ring stands for: a run if its set bits are one run
    /// ending at `highest` and it has this learner's size, else the ring as is.
    fn from_ring(ring: Ring, words: usize) -> ClientWindow {
        if ring.bits.len() != words {
            return ClientWindow::Ring(Box::new(ring));
        }
        let set: u64 = ring.bits.iter().map(|word| u64::from(word.count_ones())).sum();
        if set == 0 && ring.highest == 0 {
            return ClientWindow::Empty;
        }
        // The run of set bits ending at `highest`, at most the whole window long.
        let run = (0..set.min(ring.highest.saturating_add(1)))
            .take_while(|back| ring.is_set(ring.highest - back))
            .count() as u64;
        if run == 0 || run != set {
            return ClientWindow::Ring(Box::new(ring));
        }
        ClientWindow::run(ring.highest, run, ring.window())
    }
}

/// One applied slot holding at least one fresh command.
#[derive(Clone, Debug)]
struct AppliedRun {
    first_index: u64,
    slot: Slot,
}

/// What the learner knows of one slot.
#[derive(Clone, Debug, Default)]
enum Chosen {
    /// Not known chosen.
    #[default]
    Unknown,
    /// Chosen with the value this replica's acceptor accepted at the ballot the
    /// slot was chosen at. The learner keeps no copy of its own: that is one
    /// reference-count update less per slot on the hot path. The acceptor may
    /// later accept the slot again, but only at a higher ballot and so only with
    /// this same value (Paxos P2b). An equal value accepted at a lower ballot is
    /// not enough: a ballot in between may still bring a different one.
    Accepted,
    /// Chosen with this value, held here: learned from a peer or recovered from
    /// storage, even when the acceptor holds an equal value from some ballot.
    Value(Value),
}

/// Chosen values, the applied prefix, log indexes, and client deduplication.
///
/// A slot known chosen at the very ballot this replica's acceptor accepted it at
/// is recorded as such, without a copy, so reading a chosen value takes the
/// replica's [`Acceptor`] too.
#[derive(Clone, Debug)]
pub struct Learner {
    chosen: SlotMap<Chosen>,
    /// Every slot `<= applied_through` is chosen and applied.
    applied_through: Slot,
    next_index: u64,
    /// Words in a client's ring: the window asked for rounded up to a power of two of
    /// at least 64 bits, so ring positions are masks, not divisions.
    window_words: usize,
    /// Looked up once per run of same-client commands on every replica: a fast
    /// non-cryptographic hash, since client ids are not attacker-chosen keys here
    /// (they come from chosen values, which only members propose).
    clients: FxHashMap<u64, ClientWindow>,
    runs: VecDeque<AppliedRun>,
    duplicates: HashMap<Slot, Vec<u32>>,
    /// Slots up to this one take their duplicate positions from `preset`, not
    /// from the client windows (which already include them): see [`Learner::install`].
    preset_through: Slot,
    preset: HashMap<Slot, Vec<u32>>,
}

impl Learner {
    /// An empty learner remembering `dedup_window` sequence numbers per client.
    ///
    /// Panics unless `dedup_window` is between 1 and [`crate::config::MAX_DEDUP_WINDOW`]
    /// ([`Config::validate`](crate::Config::validate) checks it for a replica).
    pub fn new(dedup_window: u64) -> Learner {
        assert!(
            (1..=crate::config::MAX_DEDUP_WINDOW).contains(&dedup_window),
            "the dedup window must be between 1 and MAX_DEDUP_WINDOW"
        );
        Learner {
            chosen: SlotMap::new(1),
            applied_through: 0,
            next_index: 0,
            window_words: (dedup_window.max(64).next_power_of_two() / 64) as usize,
            clients: FxHashMap::default(),
            runs: VecDeque::new(),
            duplicates: HashMap::new(),
            preset_through: 0,
            preset: HashMap::new(),
        }
    }

    /// Records that `slot` is chosen with `value`. Returns false if it was known.
    ///
    /// Panics if `slot` was already chosen with a different value: that is a
    /// violation of Paxos' agreement property and the node must stop.
    /// A slot already recorded as chosen with the acceptor's value is not compared
    /// here (the learner does not hold it); the caller compares first.
    pub fn learn(&mut self, slot: Slot, value: Value) -> bool {
        assert!(slot >= 1, "slot 0 is never used");
        let Some(entry) = self.chosen.get_mut(slot) else {
            return false;
        };
        match entry {
            Chosen::Unknown => {
                *entry = Chosen::Value(value);
                true
            }
            Chosen::Value(known) => {
                assert_eq!(*known, value, "agreement violated: slot {slot} chosen with two values");
                false
            }
            Chosen::Accepted => false,
        }
    }

    /// Records that `slot` is chosen with the value the replica's acceptor holds
    /// for it; the caller checked that the acceptor took it at the ballot the slot
    /// was chosen at. Returns false if it was known.
    pub fn learn_accepted(&mut self, slot: Slot) -> bool {
        assert!(slot >= 1, "slot 0 is never used");
        match self.chosen.get_mut(slot) {
            Some(entry @ Chosen::Unknown) => {
                *entry = Chosen::Accepted;
                true
            }
            _ => false,
        }
    }

    /// Whether `slot` is known chosen (and not yet discarded).
    pub fn is_chosen(&self, slot: Slot) -> bool {
        matches!(self.chosen.get(slot), Some(Chosen::Accepted | Chosen::Value(_)))
    }

    /// The chosen value of `slot`, if known and not yet discarded. `acceptor` is
    /// the same replica's.
    pub fn chosen<'a>(&'a self, slot: Slot, acceptor: &'a Acceptor) -> Option<&'a Value> {
        match self.chosen.get(slot)? {
            Chosen::Unknown => None,
            Chosen::Value(value) => Some(value),
            Chosen::Accepted => {
                let (_, value) = acceptor.accepted(slot).expect("a slot chosen as accepted keeps its accepted value");
                Some(value)
            }
        }
    }

    /// Every slot up to and including this one is chosen and applied.
    pub fn applied_through(&self) -> Slot {
        self.applied_through
    }

    /// One past the highest slot known chosen (a gap may lie below it).
    pub fn chosen_end(&self) -> Slot {
        self.chosen.end()
    }

    /// The log index the next fresh command will get.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Applies every chosen slot that directly follows the applied prefix.
    /// `acceptor` is the same replica's.
    pub fn apply_ready(&mut self, acceptor: &Acceptor, decided: &mut Vec<Decided>) {
        loop {
            let slot = self.applied_through + 1;
            let Some(value) = self.chosen(slot, acceptor) else { break };
            let value = value.clone();
            let mut duplicates = Vec::new();
            let commands = value.commands();
            let mut start = 0;
            if slot <= self.preset_through {
                // Decided by the replica whose snapshot we installed.
                duplicates = self.preset.remove(&slot).unwrap_or_default();
                start = commands.len();
            }
            // One map lookup per run of commands from the same client: batches
            // usually hold long runs, and this loop is on every replica's hot path.
            while start < commands.len() {
                let client = commands[start].id.client;
                let words = self.window_words;
                let client_window = self.clients.entry(client).or_insert(ClientWindow::Empty);
                let mut position = start;
                while position < commands.len() && commands[position].id.client == client {
                    if !client_window.first_application(commands[position].id.sequence, words) {
                        duplicates.push(position as u32);
                    }
                    position += 1;
                }
                start = position;
            }
            let first_index = self.next_index;
            let fresh = (value.commands().len() - duplicates.len()) as u64;
            if fresh > 0 {
                self.runs.push_back(AppliedRun { first_index, slot });
            }
            if !duplicates.is_empty() {
                self.duplicates.insert(slot, duplicates.clone());
            }
            self.next_index += fresh;
            self.applied_through = slot;
            push_in_place(decided, || Decided { slot, value, first_index, duplicates });
        }
    }

    /// The fresh command at log `index`, if applied and not discarded. `acceptor`
    /// is the same replica's ([`crate::Replica::log_entry`] passes it).
    pub fn get<'a>(&'a self, index: u64, acceptor: &'a Acceptor) -> Option<&'a Command> {
        self.entry(index, acceptor).map(|(_, command)| command)
    }

    /// [`Learner::get`], with the slot whose value carried the command.
    pub fn entry<'a>(&'a self, index: u64, acceptor: &'a Acceptor) -> Option<(Slot, &'a Command)> {
        let run_position = self.runs.partition_point(|run| run.first_index <= index).checked_sub(1)?;
        let run = &self.runs[run_position];
        let value = self.chosen(run.slot, acceptor)?;
        let duplicates = self.duplicates.get(&run.slot).map(Vec::as_slice).unwrap_or(&[]);
        let mut wanted = index - run.first_index;
        for (position, command) in value.commands().iter().enumerate() {
            if duplicates.contains(&(position as u32)) {
                continue;
            }
            if wanted == 0 {
                return Some((run.slot, command));
            }
            wanted -= 1;
        }
        None
    }

    /// The fresh commands from log `index` on, in order, as `(index, slot,
    /// command, last fresh command of its slot)`: a walk of the applied runs,
    /// each slot's commands read once. `acceptor` is the same replica's.
    pub fn entries_from<'a>(
        &'a self,
        index: u64,
        acceptor: &'a Acceptor,
    ) -> impl Iterator<Item = (u64, Slot, &'a Command, bool)> + 'a {
        let start = self.runs.partition_point(|run| run.first_index <= index).saturating_sub(1);
        self.runs
            .range(start..)
            .flat_map(move |run| {
                let duplicates = self.duplicates.get(&run.slot).map(Vec::as_slice).unwrap_or(&[]);
                let commands = self.chosen(run.slot, acceptor).map(Value::commands).unwrap_or(&[]);
                let fresh = commands.len() - duplicates.len();
                commands
                    .iter()
                    .enumerate()
                    .filter(move |(position, _)| !duplicates.contains(&(*position as u32)))
                    .enumerate()
                    .map(move |(nth, (_, command))| (run.first_index + nth as u64, run.slot, command, nth + 1 == fresh))
            })
            .skip_while(move |(at, ..)| *at < index)
    }

    /// `(slot, value)` for chosen slots from `from` on, up to `count` of them,
    /// stopping at the first slot not known chosen.
    pub fn chosen_run(&self, from: Slot, count: usize, acceptor: &Acceptor) -> Vec<Value> {
        (from..self.chosen.end()).map_while(|slot| self.chosen(slot, acceptor).cloned()).take(count).collect()
    }

    /// The lowest slot still held.
    pub fn first_held(&self) -> Slot {
        self.chosen.first()
    }

    /// The log index of the first fresh command in a slot after `slot`, i.e. how
    /// many fresh commands slots up to `slot` applied. `slot` must be applied.
    pub fn next_index_after(&self, slot: Slot) -> u64 {
        assert!(slot <= self.applied_through);
        let after = self.runs.partition_point(|run| run.slot <= slot);
        self.runs.get(after).map_or(self.next_index, |run| run.first_index)
    }

    /// The sequences each client's window covers: `dedup_window` rounded up to a
    /// power of two of at least 64.
    pub fn dedup_window(&self) -> u64 {
        self.window_words as u64 * 64
    }

    /// Every client's deduplication window as of the applied point, for a snapshot.
    pub fn client_windows(&self) -> Vec<ClientDedup> {
        let mut clients: Vec<ClientDedup> = self
            .clients
            .iter()
            .map(|(client, window)| {
                let (highest, applied) = window.to_snapshot(self.window_words);
                ClientDedup { client: *client, highest, applied }
            })
            .collect();
        clients.sort_unstable_by_key(|dedup| dedup.client);
        clients
    }

    /// The duplicate positions of applied slots after `slot`, for a snapshot
    /// through `slot` whose client windows were taken at the applied point.
    pub fn duplicates_after(&self, slot: Slot) -> Vec<(Slot, Vec<u32>)> {
        let mut duplicates: Vec<(Slot, Vec<u32>)> = self
            .duplicates
            .iter()
            .filter(|(duplicate_slot, _)| **duplicate_slot > slot)
            .map(|(duplicate_slot, positions)| (*duplicate_slot, positions.clone()))
            .collect();
        duplicates.sort_unstable();
        duplicates
    }

    /// Moves out the chosen value of an applied `slot` about to be discarded, if
    /// this learner holds its own copy; `None` if it is the value the acceptor
    /// accepted (see [`Learner::chosen`]), which stays there. A slot whose value
    /// was moved out reads as not chosen afterwards, so only a compaction may call
    /// this, just before [`Learner::discard_through`].
    pub(crate) fn take_chosen(&mut self, slot: Slot) -> Option<Value> {
        assert!(slot <= self.applied_through, "only applied slots are compacted");
        let chosen = self.chosen.get_mut(slot).expect("an applied slot not yet discarded");
        match std::mem::take(chosen) {
            Chosen::Value(value) => Some(value),
            Chosen::Accepted => {
                *chosen = Chosen::Accepted;
                None
            }
            Chosen::Unknown => unreachable!("slot {slot} was applied, so chosen"),
        }
    }

    /// Forgets chosen values and index runs for slots up to `through`, which a
    /// snapshot now stands for.
    pub fn discard_through(&mut self, through: Slot) {
        assert!(through <= self.applied_through, "only applied slots are compacted");
        self.chosen.discard_below(through + 1);
        let keep_from = self.runs.partition_point(|run| run.slot <= through);
        self.runs.drain(..keep_from);
        self.duplicates.retain(|slot, _| *slot > through);
    }

    /// Jumps to the state a snapshot describes: everything through its slot is
    /// applied. Returns false (and changes nothing) if this learner is already there.
    pub fn install(&mut self, snapshot: &crate::storage::Snapshot) -> bool {
        if snapshot.through_slot <= self.applied_through {
            return false;
        }
        self.applied_through = snapshot.through_slot;
        self.next_index = snapshot.next_index;
        self.chosen.discard_below(snapshot.through_slot + 1);
        self.runs.clear();
        self.duplicates.clear();
        // Take the snapshot's windows exactly: deduplication decides log indexes,
        // so it must continue identically on every replica. The windows were taken
        // at `dedup_through`, which may lie past `through_slot`; the slots in
        // between reuse the duplicate decisions the snapshot records for them.
        self.preset_through = snapshot.dedup_through;
        self.preset = snapshot.duplicates.iter().cloned().collect();
        self.clients.clear();
        // The sender's window, if the snapshot names a valid one.
        let named = snapshot.dedup_window;
        let sender_words = if named.is_power_of_two() && (64..=crate::config::MAX_DEDUP_WINDOW).contains(&named) {
            (named / 64) as usize
        } else {
            self.window_words
        };
        for dedup in &snapshot.clients {
            let window = ClientWindow::from_snapshot(dedup.highest, &dedup.applied, sender_words, self.window_words);
            self.clients.insert(dedup.client, window);
        }
        true
    }

    /// Safety assertions. `acceptor` is the same replica's.
    pub fn check_invariants(&self, acceptor: &Acceptor) {
        for slot in self.chosen.first().max(1)..=self.applied_through {
            assert!(self.chosen(slot, acceptor).is_some(), "slot {slot} applied but not chosen");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn commands(ids: &[(u64, u64)]) -> Value {
        Value::Commands(Arc::from(
            ids.iter()
                .map(|(client, sequence)| Command::new(*client, *sequence, vec![*sequence as u8]))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn tally_needs_the_same_ballot_from_a_majority() {
        let mut tally = AcceptTally::new(1);
        assert_eq!(tally.record(3, Ballot::new(1, 1), 0b001), 1);
        assert_eq!(tally.record(3, Ballot::new(1, 1), 0b001), 1, "a duplicate counts once");
        assert_eq!(tally.record(3, Ballot::new(2, 2), 0b010), 1, "a higher ballot restarts the count");
        assert_eq!(tally.record(3, Ballot::new(1, 1), 0b100), 0, "a lower ballot is ignored");
        assert_eq!(tally.record(3, Ballot::new(2, 2), 0b100), 2);
    }

    #[test]
    fn applies_in_slot_order_only() {
        let mut learner = Learner::new(64);
        let acceptor = Acceptor::default();
        let mut decided = Vec::new();
        assert!(learner.learn(2, commands(&[(1, 2)])));
        learner.apply_ready(&acceptor, &mut decided);
        assert!(decided.is_empty(), "slot 1 is a hole");
        assert!(learner.learn(1, Value::Noop));
        learner.apply_ready(&acceptor, &mut decided);
        assert_eq!(decided.iter().map(|d| d.slot).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(learner.applied_through(), 2);
        assert_eq!(learner.get(0, &acceptor).map(|command| command.id.sequence), Some(2));
        assert_eq!(learner.get(1, &acceptor), None);
    }

    #[test]
    fn a_retried_command_is_applied_once() {
        let mut learner = Learner::new(64);
        let acceptor = Acceptor::default();
        let mut decided = Vec::new();
        learner.learn(1, commands(&[(7, 1), (7, 2)]));
        learner.learn(2, commands(&[(7, 2), (7, 3)]));
        learner.apply_ready(&acceptor, &mut decided);
        assert_eq!(decided[1].duplicates, vec![0]);
        let indexes: Vec<(u64, u64)> =
            decided.iter().flat_map(|d| d.entries().map(|(index, command)| (index, command.id.sequence))).collect();
        assert_eq!(indexes, vec![(0, 1), (1, 2), (2, 3)]);
        assert_eq!(learner.get(2, &acceptor).map(|command| command.id.sequence), Some(3));
    }

    #[test]
    fn a_slot_chosen_as_accepted_reads_the_acceptors_value() {
        let mut acceptor = Acceptor::default();
        let mut ops = Vec::new();
        let value = commands(&[(4, 1)]);
        acceptor.on_accept(Ballot::new(1, 1), 1, std::slice::from_ref(&value), true, &mut ops).unwrap();
        let mut learner = Learner::new(64);
        assert!(!learner.is_chosen(1));
        assert!(learner.learn_accepted(1));
        assert!(!learner.learn_accepted(1), "already known");
        assert!(!learner.learn(1, value.clone()), "already known, as the acceptor's value");
        assert!(learner.is_chosen(1));
        assert_eq!(learner.chosen(1, &acceptor), Some(&value));
        assert!(learner.learn(2, Value::Noop));
        assert_eq!(learner.chosen_run(1, 10, &acceptor), vec![value.clone(), Value::Noop]);
        let mut decided = Vec::new();
        learner.apply_ready(&acceptor, &mut decided);
        assert_eq!(
            decided.iter().map(|d| (d.slot, d.value.clone())).collect::<Vec<_>>(),
            vec![(1, value), (2, Value::Noop)]
        );
        assert_eq!(learner.get(0, &acceptor).map(|command| command.id.client), Some(4));
        learner.check_invariants(&acceptor);
    }

    #[test]
    #[should_panic(expected = "agreement violated")]
    fn two_values_for_one_slot_stop_the_node() {
        let mut learner = Learner::new(64);
        learner.learn(1, commands(&[(1, 1)]));
        learner.learn(1, commands(&[(1, 2)]));
    }

    #[test]
    fn dedup_window_forgets_old_sequences_conservatively() {
        let mut window = ClientWindow::Empty;
        assert!(window.first_application(5, 1));
        assert!(!window.first_application(5, 1));
        assert!(window.first_application(3, 1));
        assert!(window.first_application(200, 1));
        assert!(!window.first_application(3, 1), "too old to tell: treated as applied");
        assert!(window.first_application(199, 1));
    }

    #[test]
    fn a_client_applied_in_order_keeps_a_run_and_the_first_gap_makes_a_ring() {
        let mut window = ClientWindow::Empty;
        for sequence in 1..=1000 {
            assert!(window.first_application(sequence, 1));
        }
        assert!(!window.first_application(990, 1));
        assert_eq!(window, ClientWindow::Run { highest: 1000, older: 63 }, "a window of 64 remembers 63 older");
        assert!(window.first_application(1002, 1));
        assert!(matches!(window, ClientWindow::Ring(_)));
        assert!(window.first_application(1001, 1));
        assert!(!window.first_application(1001, 1));
    }

    #[test]
    fn a_snapshot_record_from_a_peer_is_cut_to_fit() {
        // A run longer than the sequences below its highest one, or than the window.
        let window = ClientWindow::from_snapshot(5, &AppliedSequences::Run { older: u32::MAX }, 1, 1);
        assert_eq!(window, ClientWindow::Run { highest: 5, older: 5 });
        let window = ClientWindow::from_snapshot(1000, &AppliedSequences::Run { older: u32::MAX }, 1, 1);
        assert_eq!(window, ClientWindow::Run { highest: 1000, older: 63 });
        let window = ClientWindow::from_snapshot(u64::MAX, &AppliedSequences::Run { older: 3 }, 1, 1);
        assert_eq!(window, ClientWindow::Run { highest: u64::MAX, older: 3 });
        // A ring whose size is not a power of two is read as nothing applied.
        let mut window = ClientWindow::from_snapshot(9, &AppliedSequences::Ring(vec![u64::MAX; 3]), 1, 1);
        assert!(window.first_application(9, 1), "nothing applied");
        let mut window = ClientWindow::from_snapshot(9, &AppliedSequences::Ring(Vec::new()), 1, 1);
        assert!(window.first_application(8, 1), "nothing applied");
    }

    /// A run from a replica with a smaller window keeps that window's meaning: a
    /// sequence older than the sender remembered counts as applied, as it would
    /// have there, where this learner's own window would call it fresh.
    #[test]
    fn a_run_from_a_smaller_window_is_read_at_its_sender_s_size() {
        let mut sender = Learner::new(64);
        let mut slot = 0;
        for sequence in 0..1000u64 {
            slot += 1;
            sender.learn(slot, commands(&[(1, sequence)]));
        }
        let acceptor = Acceptor::default();
        let mut decided = Vec::new();
        sender.apply_ready(&acceptor, &mut decided);
        let snapshot = crate::storage::Snapshot {
            through_slot: slot,
            next_index: sender.next_index(),
            clients: sender.client_windows(),
            dedup_window: sender.dedup_window(),
            dedup_through: slot,
            ..crate::storage::Snapshot::default()
        };
        assert_eq!(snapshot.clients[0].applied, AppliedSequences::Run { older: 63 });
        let mut receiver = Learner::new(256);
        assert!(receiver.install(&snapshot));
        receiver.learn(slot + 1, commands(&[(1, 900), (1, 950), (1, 1000)]));
        decided.clear();
        receiver.apply_ready(&acceptor, &mut decided);
        assert_eq!(decided[0].duplicates, vec![0, 1], "900 is past the sender's window, 950 inside its run");
    }

    /// One step of a client's sequence numbers, relative to the last one.
    fn step() -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::prelude::*;
        prop_oneof![
            6 => Just(1i64),
            2 => -70i64..70,
            1 => 60i64..300,
            1 => -300i64..-60,
        ]
    }

    proptest::proptest! {
        /// Whatever order sequences come in, a window answers and snapshots as the
        /// plain ring of bits does, and so does one rebuilt from its snapshot.
        #[test]
        fn a_window_matches_the_ring_it_stands_for(
            start in proptest::prop_oneof![0u64..3, (u64::MAX - 400)..=u64::MAX],
            steps in proptest::collection::vec(step(), 1..300),
            words in proptest::sample::select(vec![1usize, 2, 4]),
            reload_at in 0usize..300,
        ) {
            let mut ring = Ring::empty(words);
            let mut window = ClientWindow::Empty;
            let mut sequence = start;
            for (position, step) in steps.into_iter().enumerate() {
                sequence = sequence.saturating_add_signed(step);
                proptest::prop_assert_eq!(
                    window.first_application(sequence, words),
                    ring.first_application(sequence),
                    "sequence {}", sequence
                );
                proptest::prop_assert_eq!(&window.to_ring(words), &ring);
                let (highest, applied) = window.to_snapshot(words);
                let reloaded = ClientWindow::from_snapshot(highest, &applied, words, words);
                proptest::prop_assert_eq!(&reloaded.to_ring(words), &ring);
                // A learner with a window 4 times as large reads the record as this ring.
                let wider = ClientWindow::from_snapshot(highest, &applied, words, words * 4);
                proptest::prop_assert_eq!(&wider.to_ring(words * 4), &ring);
                if position == reload_at {
                    window = ClientWindow::from_ring(window.to_ring(words), words);
                    proptest::prop_assert_eq!(&window.to_ring(words), &ring);
                }
            }
        }
    }
}
