//! A map from slot to state for a window of consecutive slots, backed by a ring buffer.
//!
//! Slots in a log are dense, so a `VecDeque` indexed by `slot - first` beats a tree
//! on every operation the protocol's hot path performs.

use std::collections::VecDeque;

use crate::actions::push_in_place;
use crate::ballot::Slot;

/// Slot-indexed storage for slots `first..first + len`; absent slots hold `T::default()`.
#[derive(Clone, Debug)]
pub struct SlotMap<T> {
    first: Slot,
    entries: VecDeque<T>,
}

impl<T: Default> SlotMap<T> {
    /// An empty map whose lowest slot will be `first`.
    pub fn new(first: Slot) -> SlotMap<T> {
        SlotMap { first, entries: VecDeque::new() }
    }

    /// The lowest slot kept.
    pub fn first(&self) -> Slot {
        self.first
    }

    /// One past the highest slot ever touched.
    pub fn end(&self) -> Slot {
        self.first + self.entries.len() as u64
    }

    /// The entry for `slot`, if it is in the window.
    pub fn get(&self, slot: Slot) -> Option<&T> {
        if slot < self.first {
            return None;
        }
        self.entries.get((slot - self.first) as usize)
    }

    /// The entry for `slot`, created (with defaults for any gap) if needed.
    /// Returns `None` for slots below the window, which were discarded.
    #[inline(always)]
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut T> {
        if slot < self.first {
            return None;
        }
        let position = (slot - self.first) as usize;
        if position == self.entries.len() {
            // The common case on the hot path: the log grows by one slot.
            push_in_place(&mut self.entries, T::default);
        } else if position > self.entries.len() {
            self.fill_to(position);
        }
        self.entries.get_mut(position)
    }

    /// Adds empty entries up to and including `position`, past the end.
    #[cold]
    #[inline(never)]
    fn fill_to(&mut self, position: usize) {
        self.entries.resize_with(position + 1, T::default);
    }

    /// Forgets every slot below `slot`.
    pub fn discard_below(&mut self, slot: Slot) {
        if slot <= self.first {
            return;
        }
        let count = ((slot - self.first) as usize).min(self.entries.len());
        if count == 1 {
            // The hot path: the commit point moved by one slot.
            self.entries.pop_front();
        } else {
            self.entries.drain(..count);
        }
        self.first = slot;
    }

    /// `(slot, entry)` pairs from `from` on.
    pub fn iter_from(&self, from: Slot) -> impl Iterator<Item = (Slot, &T)> + '_ {
        let skip = from.saturating_sub(self.first) as usize;
        let first = self.first;
        self.entries.iter().enumerate().skip(skip).map(move |(position, entry)| (first + position as u64, entry))
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
}
