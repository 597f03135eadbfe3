//! Chosen values a replica keeps in memory after compacting them away, so a peer
//! that lags by a little catches up slot by slot instead of taking a snapshot.
//!
//! Without it, every slot below a replica's compaction point exists only inside
//! the snapshot: a follower one slot short of it would be sent the whole state,
//! and one that takes longer to install a snapshot than the leader takes to
//! compact again would install snapshot after snapshot, each already behind.
//! What is kept here is not durable (the storage dropped it with the
//! compaction) and is only ever read to answer catch-up requests, so it plays no
//! part in what an acceptor promised or accepted.

use std::collections::VecDeque;

use crate::ballot::Slot;
use crate::message::Value;

/// The newest compacted slots, contiguous, bounded in slots and bytes.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeptLog {
    /// The slot of `values[0]`.
    first_slot: Slot,
    /// Each value with its [`Value::encoded_bytes_bound`].
    values: VecDeque<(Value, usize)>,
    /// Sum of the values' [`Value::encoded_bytes_bound`].
    bytes: usize,
}

impl KeptLog {
    /// One past the last slot kept (`first_slot` when empty).
    pub fn end(&self) -> Slot {
        self.first_slot + self.values.len() as u64
    }

    /// How many slots are kept.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Bytes kept, as [`Value::encoded_bytes_bound`] counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `slot` is kept.
    pub fn holds(&self, slot: Slot) -> bool {
        (self.first_slot..self.end()).contains(&slot)
    }

    /// Forgets everything (a snapshot from a peer was installed: what is kept
    /// no longer runs up to the compaction point).
    pub fn clear(&mut self) {
        self.values.clear();
        self.bytes = 0;
        self.first_slot = 0;
    }

    /// Starts keeping more slots from `first_slot`, the first slot just
    /// compacted that is to be kept. What is kept already stays only if it runs
    /// up to `first_slot`: the kept slots never have a gap.
    pub fn continue_at(&mut self, first_slot: Slot) {
        if self.values.is_empty() || self.end() != first_slot {
            self.clear();
            self.first_slot = first_slot;
        }
    }

    /// Keeps the chosen value of the next slot ([`KeptLog::end`]).
    pub fn push(&mut self, value: Value) {
        let bytes = value.encoded_bytes_bound();
        self.bytes += bytes;
        self.values.push_back((value, bytes));
    }

    /// Drops the oldest slots until at most `slots_max` slots and `bytes_max`
    /// bytes are kept.
    pub fn trim(&mut self, slots_max: u64, bytes_max: usize) {
        while self.values.len() as u64 > slots_max || self.bytes > bytes_max {
            let (_, bytes) = self.values.pop_front().expect("over a bound, so not empty");
            self.bytes -= bytes;
            self.first_slot += 1;
        }
    }

    /// Up to `count` kept values from `from` on (none unless `from` is kept).
    pub fn run(&self, from: Slot, count: usize) -> impl Iterator<Item = &Value> + '_ {
        let skip = if self.holds(from) { (from - self.first_slot) as usize } else { self.values.len() };
        self.values.range(skip..).take(count).map(|(value, _)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Command;

    fn value(sequence: u64, payload_bytes: usize) -> Value {
        Value::Commands(vec![Command::new(1, sequence, vec![7; payload_bytes])].into())
    }

    /// Keeps `values` from `first_slot` on, as a compaction would.
    fn keep(kept: &mut KeptLog, first_slot: Slot, values: &[Value], slots_max: u64, bytes_max: usize) {
        kept.continue_at(first_slot);
        for value in values {
            kept.push(value.clone());
        }
        kept.trim(slots_max, bytes_max);
    }

    fn kept_sequences(kept: &KeptLog) -> Vec<u64> {
        kept.run(kept.first_slot, usize::MAX).map(|value| value.commands()[0].id.sequence).collect()
    }

    #[test]
    fn keeps_the_newest_slots_within_the_slot_bound() {
        let mut kept = KeptLog::default();
        let values: Vec<Value> = (1..=10).map(|sequence| value(sequence, 8)).collect();
        keep(&mut kept, 1, &values[..6], 4, usize::MAX);
        assert_eq!((kept.first_slot, kept.end()), (3, 7));
        // The next compaction follows on: the oldest kept slots make room.
        keep(&mut kept, 7, &values[6..], 4, usize::MAX);
        assert_eq!((kept.first_slot, kept.end()), (7, 11));
        assert_eq!(kept_sequences(&kept), vec![7, 8, 9, 10]);
        assert!(kept.holds(7) && kept.holds(10) && !kept.holds(6) && !kept.holds(11));
    }

    #[test]
    fn keeps_within_the_byte_bound_and_counts_bytes_exactly() {
        let mut kept = KeptLog::default();
        let values: Vec<Value> = (1..=8).map(|sequence| value(sequence, 100)).collect();
        let each = values[0].encoded_bytes_bound();
        keep(&mut kept, 1, &values[..4], 100, 3 * each);
        assert_eq!(kept_sequences(&kept), vec![2, 3, 4]);
        assert_eq!(kept.bytes(), 3 * each);
        keep(&mut kept, 5, &values[4..5], 100, 3 * each);
        assert_eq!(kept_sequences(&kept), vec![3, 4, 5]);
        assert_eq!(kept.bytes(), 3 * each);
        // A value larger than the whole bound is not kept, and nothing older
        // than it stays: the kept slots would have a gap.
        keep(&mut kept, 6, &[value(6, 10_000)], 100, 3 * each);
        assert_eq!(kept.len(), 0);
        assert_eq!(kept.bytes(), 0);
    }

    #[test]
    fn a_gap_replaces_what_was_kept() {
        let mut kept = KeptLog::default();
        let values: Vec<Value> = (1..=20).map(|sequence| value(sequence, 8)).collect();
        keep(&mut kept, 1, &values[..3], 8, usize::MAX);
        keep(&mut kept, 11, &values[10..12], 8, usize::MAX);
        assert_eq!(kept_sequences(&kept), vec![11, 12]);
        assert_eq!(kept.first_slot, 11);
    }

    #[test]
    fn reads_a_run_from_any_kept_slot_and_nothing_outside() {
        let mut kept = KeptLog::default();
        let values: Vec<Value> = (1..=6).map(|sequence| value(sequence, 8)).collect();
        keep(&mut kept, 1, &values, 16, usize::MAX);
        let run: Vec<u64> = kept.run(3, 2).map(|value| value.commands()[0].id.sequence).collect();
        assert_eq!(run, vec![3, 4]);
        assert_eq!(kept.run(7, 4).count(), 0);
        assert_eq!(kept.run(0, 4).count(), 0);
    }
}
