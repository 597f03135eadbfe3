//! A map from slot to state for a window of consecutive slots, backed by a ring buffer.
//!
//! Slots in a log are dense, so a ring indexed by `slot - first` beats a tree on
//! every operation the protocol's hot path performs.
//!
//! Every ring position outside the window holds `T::default()`: a slot leaving the
//! window is reset where it lies, so the log growing by one slot writes nothing
//! at all. (Appending a default to a `VecDeque` instead built it on the stack and
//! copied it in, a store-forwarding stall on every accepted slot.)

use std::fmt;

use crate::ballot::Slot;

/// Slot-indexed storage for slots `first..first + len`; absent slots hold `T::default()`.
#[derive(Clone)]
pub struct SlotMap<T> {
    first: Slot,
    /// Ring position of `first`.
    head: usize,
    /// Slots in the window: `first..first + len`.
    len: usize,
    /// A power of two long (or empty); positions outside the window hold defaults.
    ring: Vec<T>,
}

/// The smallest ring allocated, in entries.
const RING_MIN: usize = 16;

impl<T: Default> SlotMap<T> {
    /// An empty map whose lowest slot will be `first`.
    pub fn new(first: Slot) -> SlotMap<T> {
        SlotMap { first, head: 0, len: 0, ring: Vec::new() }
    }

    /// The lowest slot kept.
    pub fn first(&self) -> Slot {
        self.first
    }

    /// One past the highest slot ever touched.
    pub fn end(&self) -> Slot {
        self.first + self.len as u64
    }

    #[inline(always)]
    fn position(&self, offset: usize) -> usize {
        (self.head + offset) & (self.ring.len() - 1)
    }

    /// The entry for `slot`, if it is in the window.
    pub fn get(&self, slot: Slot) -> Option<&T> {
        let offset = slot.checked_sub(self.first)?;
        if offset >= self.len as u64 {
            return None;
        }
        Some(&self.ring[self.position(offset as usize)])
    }

    /// The entry for `slot`, created (with defaults for any gap) if needed.
    /// Returns `None` for slots below the window, which were discarded.
    #[inline(always)]
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut T> {
        let offset = usize::try_from(slot.checked_sub(self.first)?).expect("slot window fits in memory");
        if offset >= self.len {
            if offset >= self.ring.len() {
                self.grow(offset + 1);
            }
            // The positions up to `offset` already hold defaults.
            self.len = offset + 1;
        }
        let position = self.position(offset);
        Some(&mut self.ring[position])
    }

    /// Reallocates the ring to hold at least `len` entries, the window first.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, len: usize) {
        let capacity = len.next_power_of_two().max(RING_MIN).max(self.ring.len() * 2);
        let mut ring = Vec::with_capacity(capacity);
        for offset in 0..self.len {
            let position = self.position(offset);
            ring.push(std::mem::take(&mut self.ring[position]));
        }
        ring.resize_with(capacity, T::default);
        self.ring = ring;
        self.head = 0;
    }

    /// Forgets every slot below `slot`.
    pub fn discard_below(&mut self, slot: Slot) {
        if slot <= self.first {
            return;
        }
        let count = (slot - self.first).min(self.len as u64) as usize;
        for offset in 0..count {
            let position = self.position(offset);
            drop(std::mem::take(&mut self.ring[position]));
        }
        if count > 0 {
            self.head = self.position(count);
        }
        self.len -= count;
        self.first = slot;
    }

    /// `(slot, entry)` pairs from `from` on.
    pub fn iter_from(&self, from: Slot) -> impl Iterator<Item = (Slot, &T)> + '_ {
        let skip = from.saturating_sub(self.first).min(self.len as u64) as usize;
        (skip..self.len).map(move |offset| (self.first + offset as u64, &self.ring[self.position(offset)]))
    }
}

impl<T: Default + fmt::Debug> fmt::Debug for SlotMap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter_from(self.first)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_discards() {
        let mut map: SlotMap<u32> = SlotMap::new(1);
        *map.get_mut(3).unwrap() = 7;
        assert_eq!(map.get(3), Some(&7));
        assert_eq!(map.get(2), Some(&0));
        assert_eq!(map.end(), 4);
        map.discard_below(3);
        assert_eq!(map.get(2), None);
        assert!(map.get_mut(2).is_none());
        assert_eq!(map.iter_from(0).collect::<Vec<_>>(), vec![(3, &7)]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set(u64, u32),
        Discard(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..48, any::<u32>()).prop_map(|(ahead, value)| Op::Set(ahead, value)),
            1 => (0u64..40).prop_map(Op::Discard),
        ]
    }

    proptest::proptest! {
        /// The ring behaves as a plain map with a moving lower bound, across
        /// wrap-arounds and growth while wrapped.
        #[test]
        fn matches_a_plain_map(ops in proptest::collection::vec(op(), 1..200)) {
            let mut map: SlotMap<u32> = SlotMap::new(1);
            let mut first = 1u64;
            let mut end = 1u64;
            let mut model = std::collections::BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(ahead, value) => {
                        // Mostly near the end of the window, sometimes inside it.
                        let slot = end.saturating_sub(8).max(first) + ahead;
                        *map.get_mut(slot).unwrap() = value;
                        model.insert(slot, value);
                        end = end.max(slot + 1);
                    }
                    Op::Discard(count) => {
                        let below = first + count;
                        map.discard_below(below);
                        model.retain(|slot, _| *slot >= below);
                        first = first.max(below);
                        end = end.max(first);
                    }
                }
                proptest::prop_assert_eq!(map.first(), first);
                proptest::prop_assert_eq!(map.end(), end);
                for slot in first.saturating_sub(2)..end + 2 {
                    let expected = if slot < first || slot >= end { None } else { Some(model.get(&slot).copied().unwrap_or(0)) };
                    proptest::prop_assert_eq!(map.get(slot).copied(), expected, "slot {}", slot);
                }
                let listed: Vec<(u64, u32)> = map.iter_from(0).map(|(slot, value)| (slot, *value)).collect();
                let wanted: Vec<(u64, u32)> = (first..end).map(|slot| (slot, model.get(&slot).copied().unwrap_or(0))).collect();
                proptest::prop_assert_eq!(listed, wanted);
            }
        }
    }
}
