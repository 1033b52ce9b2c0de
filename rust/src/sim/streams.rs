//! The conveyor belt (docs/isa.md section 2) without moving data every cycle.
//!
//! A value emitted eastward at (position p, cycle t) is at position p + (t' - t) at cycle t': it lies on the
//! space-time diagonal k = p - t (westward: k = p + t). Values on diagonals that are congruent modulo a ring length
//! `R >= positions` are never on the chip at the same time (they are R positions apart), so each stream keeps a ring
//! of R slots indexed by `k mod R`. A slot stores the vector and the (position, cycle) stamp of its emit; a read at
//! (q, t') is valid iff the slot holds the same diagonal and was emitted strictly upstream of q. Writes happen at the
//! emit cycle (section 3, step 3), after that cycle's reads, so "as after cycle t-1's emits" holds by construction.

use crate::isa::Dir;

const NO_CYCLE: u64 = u64::MAX;

pub struct StreamBelt {
    streams_per_direction: usize,
    lanes: usize,
    ring: usize,
    mask: u64,
    /// `2 * streams_per_direction * ring * lanes` bytes (empty in timing-only mode).
    data: Vec<u8>,
    stamp_pos: Vec<i64>,
    stamp_cycle: Vec<u64>,
}

impl StreamBelt {
    pub fn new(streams_per_direction: usize, lanes: usize, positions: usize, timing_only: bool) -> StreamBelt {
        let ring = positions.next_power_of_two().max(2);
        let slots = 2 * streams_per_direction * ring;
        StreamBelt {
            streams_per_direction,
            lanes,
            ring,
            mask: ring as u64 - 1,
            data: if timing_only { Vec::new() } else { vec![0; slots * lanes] },
            stamp_pos: vec![0; slots],
            stamp_cycle: vec![NO_CYCLE; slots],
        }
    }

    #[inline]
    fn diagonal(dir: Dir, pos: usize, t: u64) -> i64 {
        match dir {
            Dir::East => pos as i64 - t as i64,
            Dir::West => pos as i64 + t as i64,
        }
    }

    #[inline]
    fn slot(&self, dir: Dir, index: usize, diag: i64) -> usize {
        let sid = if dir == Dir::East { index } else { self.streams_per_direction + index };
        sid * self.ring + (diag as u64 & self.mask) as usize
    }

    /// The slot holding the value passing position `pos` at cycle `t` on this stream, or `None` (StreamEmpty).
    #[inline]
    pub fn find(&self, dir: Dir, index: usize, pos: usize, t: u64) -> Option<usize> {
        let diag = Self::diagonal(dir, pos, t);
        let s = self.slot(dir, index, diag);
        let c = self.stamp_cycle[s];
        if c == NO_CYCLE {
            return None;
        }
        let p = self.stamp_pos[s];
        let same_diag = Self::diagonal(dir, p as usize, c) == diag;
        let upstream = match dir {
            Dir::East => p < pos as i64,
            Dir::West => p > pos as i64,
        };
        (same_diag && upstream).then_some(s)
    }

    /// The 320 bytes of a slot found by `find` (empty slice in timing-only mode).
    #[inline]
    pub fn bytes(&self, slot: usize) -> &[u8] {
        if self.data.is_empty() {
            &[]
        } else {
            &self.data[slot * self.lanes..(slot + 1) * self.lanes]
        }
    }

    /// Emit at (pos, t). Returns false on a StreamConflict (a second emit with the same stream, position, cycle).
    /// `bytes` is ignored in timing-only mode.
    #[inline]
    pub fn emit(&mut self, dir: Dir, index: usize, pos: usize, t: u64, bytes: &[u8]) -> bool {
        let diag = Self::diagonal(dir, pos, t);
        let s = self.slot(dir, index, diag);
        if self.stamp_cycle[s] == t && self.stamp_pos[s] == pos as i64 {
            return false;
        }
        self.stamp_cycle[s] = t;
        self.stamp_pos[s] = pos as i64;
        if !self.data.is_empty() {
            self.data[s * self.lanes..(s + 1) * self.lanes].copy_from_slice(&bytes[..self.lanes]);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belt_moves_one_position_per_cycle() {
        let mut b = StreamBelt::new(32, 4, 95, false);
        assert!(b.emit(Dir::East, 3, 10, 5, &[1, 2, 3, 4]));
        assert!(b.find(Dir::East, 3, 10, 5).is_none()); // never at the emitter
        assert!(b.find(Dir::East, 3, 11, 5).is_none()); // not yet
        let s = b.find(Dir::East, 3, 11, 6).unwrap();
        assert_eq!(b.bytes(s), &[1, 2, 3, 4]);
        assert!(b.find(Dir::East, 3, 94, 89).is_some());
        assert!(b.find(Dir::East, 3, 9, 4).is_none()); // upstream of the emitter
        assert!(b.find(Dir::West, 3, 11, 6).is_none());
        assert!(!b.emit(Dir::East, 3, 10, 5, &[0; 4])); // conflict
        // A later emit on the same diagonal overwrites downstream only.
        assert!(b.emit(Dir::East, 3, 20, 15, &[9; 4]));
        assert_eq!(b.bytes(b.find(Dir::East, 3, 21, 16).unwrap()), &[9; 4]);
        // West.
        assert!(b.emit(Dir::West, 0, 50, 0, &[7; 4]));
        assert!(b.find(Dir::West, 0, 40, 10).is_some());
        assert!(b.find(Dir::West, 0, 40, 11).is_none());
        // Ring aliasing: a diagonal 128 away must not be mistaken.
        assert!(b.find(Dir::West, 0, 40, 138).is_none());
    }
}
