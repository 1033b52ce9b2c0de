//! The conveyor belt (docs/isa.md section 2) without moving data every cycle.
//!
//! A value emitted eastward at (position p, cycle t) is at position p + (t' - t) at cycle t': it lies on the
//! space-time diagonal k = p - t (westward: k = p + t). Values on diagonals that are congruent modulo a ring length
//! `R >= positions` are never on the chip at the same time (they are R positions apart), so each stream keeps a ring
//! of R slots indexed by `k mod R`. A slot stores the vector and the (position, cycle) stamp of its emit; a read at
//! (q, t') is valid iff the slot holds the same diagonal and was emitted strictly upstream of q. Writes happen at the
//! emit cycle (section 3, step 3), after that cycle's reads, so "as after cycle t-1's emits" holds by construction.
//!
//! Timing-only runs can use an order-free form (`new_order_free`). On a diagonal, an emit upstream of position q
//! happened before the cycle the diagonal passes q, and one at or downstream of q happens at or after it. So a read at
//! (q, t') is valid iff *some* emit on its diagonal, past or future, is strictly upstream of q, and two emits conflict
//! iff they share diagonal and position. Neither depends on when the emit is recorded, so the caller may record
//! emits as soon as it knows them (at issue) and check reads later, in any order. Each stream keeps, per diagonal
//! (a ring of `ring` slots tagged with the diagonal) the bitset of its emit positions. A slot is reused by another diagonal only once the old one is off the chip and no pending check
//! needs it: the caller sizes `ring` above its horizon (how far ahead emits are recorded and checks deferred).
//!
//! Stream hops (`Events::stream_hops`): a vector emitted at position p moves one position a cycle until a later emit
//! on its diagonal overwrites it or it falls off the edge. On one diagonal, later emits are downstream of earlier ones
//! (the diagonal passes a position once), so the vectors of a diagonal together travel from its most upstream emit
//! to the edge: `positions - 1 - p` eastward, `p` westward, whatever the emits downstream. The belt counts that per
//! diagonal: the time-ordered belt when an emit opens a diagonal (its slot held another one), the order-free one
//! when an emit opens a diagonal or lands upstream of every emit recorded on it so far (emits are recorded out of
//! time order there). Both give the same sum, and a value still in flight at the end counts its whole way.

use crate::isa::Dir;

const NO_CYCLE: u64 = u64::MAX;

pub struct StreamBelt {
    streams_per_direction: usize,
    /// Positions (the edge distances of `hops`).
    positions: usize,
    /// Stream hops so far (module doc).
    hops: u64,
    lanes: usize,
    ring: usize,
    mask: u64,
    /// `2 * streams_per_direction * ring * lanes` bytes (empty in timing-only mode).
    data: Vec<u8>,
    stamp_pos: Vec<i64>,
    stamp_cycle: Vec<u64>,
    /// The order-free form, if chosen (then `stamp_*` and `data` are unused).
    free: Option<OrderFree>,
}

/// Per stream and diagonal slot, packed in one run of u32 (16 bytes, a quarter cache line, for up to 96
/// positions): the diagonal it holds and the bitset of its emit positions. The tag is the diagonal as 32 bits with
/// the sign bit flipped, so zeroed memory is an empty slot; the caller keeps every diagonal within +-2^31
/// (`MAX_CYCLE`), so tags of distinct diagonals differ.
struct OrderFree {
    mask: u64,
    ring: usize,
    /// u32 per slot: tag, then the bitset words.
    stride: usize,
    slots: Vec<u32>,
}

/// The order-free form holds for cycles below this (diagonals then fit its 32-bit tags with room to spare).
pub const MAX_CYCLE: u64 = 1 << 30;

impl StreamBelt {
    pub fn new(streams_per_direction: usize, lanes: usize, positions: usize, timing_only: bool) -> StreamBelt {
        let ring = positions.next_power_of_two().max(2);
        let slots = 2 * streams_per_direction * ring;
        StreamBelt {
            streams_per_direction,
            positions,
            hops: 0,
            lanes,
            ring,
            mask: ring as u64 - 1,
            data: if timing_only { Vec::new() } else { vec![0; slots * lanes] },
            stamp_pos: vec![0; slots],
            stamp_cycle: vec![NO_CYCLE; slots],
            free: None,
        }
    }

    /// The order-free form for timing-only runs (module doc). `horizon` bounds how far apart (in diagonals) two
    /// emits or an emit and a check recorded while a slot is in use can be; the ring is larger.
    pub fn new_order_free(streams_per_direction: usize, positions: usize, horizon: usize) -> StreamBelt {
        let ring = (horizon + 1).next_power_of_two();
        let stride = 1 + positions.div_ceil(32).max(1);
        StreamBelt {
            streams_per_direction,
            positions,
            hops: 0,
            lanes: 0,
            ring,
            mask: ring as u64 - 1,
            data: Vec::new(),
            stamp_pos: Vec::new(),
            stamp_cycle: Vec::new(),
            free: Some(OrderFree { mask: ring as u64 - 1, ring, stride, slots: vec![0; 2 * streams_per_direction * ring * stride] }),
        }
    }

    /// Whether this is an order-free belt of that shape (`reset` makes it a fresh `new_order_free` one).
    pub fn is_order_free(&self, streams_per_direction: usize, positions: usize, horizon: usize) -> bool {
        let ring = (horizon + 1).next_power_of_two();
        let stride = 1 + positions.div_ceil(32).max(1);
        self.streams_per_direction == streams_per_direction
            && self.free.as_ref().is_some_and(|f| f.ring == ring && f.stride == stride)
    }

    /// Empty every slot (as new), keeping the memory: a run reusing the belt of an earlier one neither allocates
    /// nor page-faults its memory in again (512 KB on tsp_v1).
    pub fn reset(&mut self) {
        self.hops = 0;
        if let Some(f) = &mut self.free {
            f.slots.fill(0);
        }
        self.stamp_cycle.fill(NO_CYCLE);
        self.stamp_pos.fill(0);
        self.data.fill(0);
    }

    /// Stream hops of the emits so far (module doc).
    pub fn hops(&self) -> u64 {
        self.hops
    }

    /// Positions a vector emitted at `pos` travels to the edge.
    #[inline]
    fn to_edge(&self, dir: Dir, pos: usize) -> u64 {
        match dir {
            Dir::East => (self.positions - 1 - pos) as u64,
            Dir::West => pos as u64,
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
        if let Some(f) = &self.free {
            let s = f.slot(self.streams_per_direction, dir, index, diag);
            let ok = f.slots[s] == OrderFree::tag(diag) && OrderFree::any_upstream(&f.slots[s + 1..s + f.stride], dir, pos);
            return ok.then_some(s);
        }
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
        if let Some(f) = &mut self.free {
            let (ok, hops) = f.emit(self.streams_per_direction, dir, index, diag, pos, self.positions);
            self.hops += hops;
            return ok;
        }
        let s = self.slot(dir, index, diag);
        let c = self.stamp_cycle[s];
        if c == t && self.stamp_pos[s] == pos as i64 {
            return false;
        }
        // Emits land in time order here: the first on a diagonal is its most upstream one (module doc).
        if c == NO_CYCLE || Self::diagonal(dir, self.stamp_pos[s] as usize, c) != diag {
            self.hops += self.to_edge(dir, pos);
        }
        self.stamp_cycle[s] = t;
        self.stamp_pos[s] = pos as i64;
        if !self.data.is_empty() {
            self.data[s * self.lanes..(s + 1) * self.lanes].copy_from_slice(&bytes[..self.lanes]);
        }
        true
    }
}

impl StreamBelt {
    /// Emits at (pos, t0 + j dt) for j < k on one stream (a run of repetitions taken ahead), recorded at once.
    /// Returns the first j that conflicts (after recording the ones before it), as `emit` would find it.
    pub fn emit_run(&mut self, dir: Dir, index: usize, pos: usize, t0: u64, dt: u64, k: u32) -> Option<u32> {
        let Some(f) = &mut self.free else {
            return (0..k).find(|&j| !self.emit(dir, index, pos, t0 + j as u64 * dt, &[]));
        };
        // Along a run the diagonal moves by dt per repetition (down eastward, up westward).
        let step = if dir == Dir::East { (dt as i64).wrapping_neg() } else { dt as i64 };
        let diag = Self::diagonal(dir, pos, t0);
        let (spd, positions) = (self.streams_per_direction, self.positions);
        let mut hops = 0;
        let first = match f.stride {
            // Up to 96 positions (tsp_v1: 95): slots of 4 words, handled as arrays.
            4 => f.emit_run_n::<4>(spd, dir, index, diag, step, pos, k, positions, &mut hops),
            _ => (0..k).find(|&j| {
                let (ok, h) = f.emit(spd, dir, index, diag.wrapping_add(j as i64 * step), pos, positions);
                hops += h;
                !ok
            }),
        };
        self.hops += hops;
        first
    }

    /// Reads at (pos, t0 + j dt) for j < k on one stream: the first j that finds no value (StreamEmpty).
    pub fn find_run(&self, dir: Dir, index: usize, pos: usize, t0: u64, dt: u64, k: u32) -> Option<u32> {
        let Some(f) = &self.free else {
            return (0..k).find(|&j| self.find(dir, index, pos, t0 + j as u64 * dt).is_none());
        };
        let words = f.stride - 1;
        if words > MAX_WORDS {
            return (0..k).find(|&j| self.find(dir, index, pos, t0 + j as u64 * dt).is_none());
        }
        // The bits of the positions strictly upstream of `pos`, once for the run.
        let mut up = [0u32; MAX_WORDS];
        for (i, m) in up[..words].iter_mut().enumerate() {
            let lo = 32 * i;
            *m = match dir {
                Dir::East if pos >= lo + 32 => !0,
                Dir::East if pos > lo => (1u32 << (pos - lo)) - 1,
                Dir::East => 0,
                Dir::West if pos < lo => !0,
                Dir::West if pos < lo + 31 => !0u32 << (pos - lo + 1),
                Dir::West => 0,
            };
        }
        let step = if dir == Dir::East { (dt as i64).wrapping_neg() } else { dt as i64 };
        let mut diag = Self::diagonal(dir, pos, t0);
        if f.stride == 4 {
            let up = [0, up[0], up[1], up[2]];
            return f.find_run_n::<4>(self.streams_per_direction, dir, index, diag, step, up, k);
        }
        for j in 0..k {
            let s = f.slot(self.streams_per_direction, dir, index, diag);
            let slot = &f.slots[s..s + f.stride];
            let hit = slot[1..].iter().zip(&up[..words]).fold(0, |a, (&x, &m)| a | (x & m));
            if slot[0] != OrderFree::tag(diag) || hit == 0 {
                return Some(j);
            }
            diag = diag.wrapping_add(step);
        }
        None
    }
}

/// Bitset words per slot `find_run` handles with precomputed masks (256 positions); more take the slow path.
const MAX_WORDS: usize = 8;

impl OrderFree {
    #[inline]
    fn tag(diag: i64) -> u32 {
        (diag as i32 as u32) ^ 0x8000_0000
    }

    /// Index of the slot's first u32.
    #[inline]
    fn slot(&self, spd: usize, dir: Dir, index: usize, diag: i64) -> usize {
        let sid = if dir == Dir::East { index } else { spd + index };
        (sid * self.ring + (diag as u64 & self.mask) as usize) * self.stride
    }

    /// Whether a bitset of emit positions has one strictly upstream of `pos`.
    #[inline]
    fn any_upstream(bits: &[u32], dir: Dir, pos: usize) -> bool {
        let (w, b) = (pos / 32, pos % 32);
        if dir == Dir::East {
            bits[..w].iter().any(|&x| x != 0) || bits[w] & ((1u32 << b) - 1) != 0
        } else {
            bits[w] & (!1u32 << b) != 0 || bits[w + 1..].iter().any(|&x| x != 0)
        }
    }

    /// The hops an emit at `pos` adds to a diagonal already holding emits at the positions `bits`: none if one of
    /// them is upstream of it (the usual case: emits mostly come in time order, downstream), else how far upstream
    /// of all of them it is (module doc).
    #[inline]
    fn onto_diagonal(bits: &[u32], dir: Dir, pos: usize) -> u64 {
        if Self::any_upstream(bits, dir, pos) {
            0
        } else {
            Self::hops_added(bits, dir, pos)
        }
    }

    /// The hops an emit at `pos` adds to a diagonal whose emit positions so far are `bits` (nonempty): how far
    /// upstream of all of them it is (module doc).
    #[inline]
    fn hops_added(bits: &[u32], dir: Dir, pos: usize) -> u64 {
        let upstream_most = match dir {
            // The lowest set bit eastward, the highest westward.
            Dir::East => bits.iter().position(|&x| x != 0).map(|i| 32 * i + bits[i].trailing_zeros() as usize),
            Dir::West => bits.iter().rposition(|&x| x != 0).map(|i| 32 * i + 31 - bits[i].leading_zeros() as usize),
        };
        match (dir, upstream_most) {
            (Dir::East, Some(u)) => u.saturating_sub(pos) as u64,
            (Dir::West, Some(u)) => pos.saturating_sub(u) as u64,
            (_, None) => 0,
        }
    }

    /// `emit_run` for slots of `N` words (`N == stride`): diagonals `diag + j step`, j < k. Adds their stream hops
    /// to `hops`.
    #[allow(clippy::too_many_arguments)]
    fn emit_run_n<const N: usize>(
        &mut self,
        spd: usize,
        dir: Dir,
        index: usize,
        diag: i64,
        step: i64,
        pos: usize,
        k: u32,
        positions: usize,
        hops: &mut u64,
    ) -> Option<u32> {
        let (w, b) = (1 + pos / 32, 1u32 << (pos % 32));
        // Hops: `to_edge` per emit if each opened its diagonal, else `run_hops` counts them after the loop, from
        // the slots (this loop's registers are the fast form's hottest: only a flag is added). A conflict ends the
        // run with an error, so its hops never matter.
        let mut onto = false;
        let base = self.slot(spd, dir, index, 0);
        let (diag0, mut diag) = (diag, diag);
        for j in 0..k {
            let s = base + (diag as u64 & self.mask) as usize * N;
            let slot: &mut [u32; N] = (&mut self.slots[s..s + N]).try_into().unwrap();
            let tag = Self::tag(diag);
            if slot[0] != tag {
                // As in `emit`: the old diagonal is gone, the slot is reused. (Word by word: an array built on the
                // stack and copied whole stalled on store forwarding.)
                slot[0] = tag;
                for (i, x) in slot.iter_mut().enumerate().skip(1) {
                    *x = if i == w { b } else { 0 };
                }
            } else if slot[w] & b != 0 {
                return Some(j);
            } else {
                onto = true;
                slot[w] |= b;
            }
            diag = diag.wrapping_add(step);
        }
        let to_edge = if dir == Dir::East { (positions - 1 - pos) as u64 } else { pos as u64 };
        *hops += if onto { self.run_hops::<N>(base, diag0, step, pos, dir, k, to_edge) } else { k as u64 * to_edge };
        None
    }

    /// The hops of the `k` emits at `pos` `emit_run_n` just recorded, when some landed on diagonals already holding
    /// emits: read back from the slots. Each diagonal of the run is distinct (`k` steps span less than the ring);
    /// one holding only `pos` was opened by the run, any other held the other positions before.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn run_hops<const N: usize>(&self, base: usize, diag: i64, step: i64, pos: usize, dir: Dir, k: u32, to_edge: u64) -> u64 {
        let (w, b) = (pos / 32, 1u32 << (pos % 32));
        let mut others = [0u32; N];
        let (mut hops, mut diag) = (0, diag);
        for _ in 0..k {
            let s = base + (diag as u64 & self.mask) as usize * N;
            others[..N - 1].copy_from_slice(&self.slots[s + 1..s + N]);
            others[w] &= !b;
            hops += if others.iter().all(|&x| x == 0) { to_edge } else { Self::onto_diagonal(&others[..N - 1], dir, pos) };
            diag = diag.wrapping_add(step);
        }
        hops
    }

    /// `find_run` for slots of `N` words; `up[i]` masks word i (`up[0]`, the tag's place, is 0).
    #[allow(clippy::too_many_arguments)]
    fn find_run_n<const N: usize>(&self, spd: usize, dir: Dir, index: usize, diag: i64, step: i64, up: [u32; N], k: u32) -> Option<u32> {
        let base = self.slot(spd, dir, index, 0);
        let mut diag = diag;
        for j in 0..k {
            let s = base + (diag as u64 & self.mask) as usize * N;
            let slot: &[u32; N] = (&self.slots[s..s + N]).try_into().unwrap();
            let mut hit = 0;
            for i in 1..N {
                hit |= slot[i] & up[i];
            }
            if slot[0] != Self::tag(diag) || hit == 0 {
                return Some(j);
            }
            diag = diag.wrapping_add(step);
        }
        None
    }

    /// Record an emit: (false on a StreamConflict, the stream hops it adds).
    #[inline]
    fn emit(&mut self, spd: usize, dir: Dir, index: usize, diag: i64, pos: usize, positions: usize) -> (bool, u64) {
        let s = self.slot(spd, dir, index, diag);
        let slot = &mut self.slots[s..s + self.stride];
        let (w, b) = (1 + pos / 32, 1u32 << (pos % 32));
        if slot[0] != Self::tag(diag) {
            // The slot's old diagonal is off the chip and checked (the ring exceeds the horizon): reuse it. (Stores
            // only: the usual case, the first emit on a diagonal, reads nothing back.)
            slot[0] = Self::tag(diag);
            for (i, x) in slot[1..].iter_mut().enumerate() {
                *x = if i + 1 == w { b } else { 0 };
            }
            return (true, if dir == Dir::East { (positions - 1 - pos) as u64 } else { pos as u64 });
        }
        if slot[w] & b != 0 {
            return (false, 0);
        }
        let hops = Self::onto_diagonal(&slot[1..], dir, pos);
        slot[w] |= b;
        (true, hops)
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

    #[test]
    fn runs_agree_with_single_emits_and_reads() {
        // emit_run / find_run (masks per bitset word, diagonal steps) against emit / find one at a time, on a chip
        // of 95 positions (words 0..2) with runs at word edges, both directions, strides 1 to 5.
        let mut seed = 99u64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut checked_onto = 0;
        for round in 0..400 {
            let mut one = StreamBelt::new_order_free(2, 95, 600);
            let mut run = StreamBelt::new_order_free(2, 95, 600);
            let mut conflicted = false;
            let mut diagonals: std::collections::HashMap<(bool, usize, i64), u32> = Default::default();
            let pick_pos = |r: u64| [0, 1, 30, 31, 32, 33, 63, 64, 65, 94][r as usize];
            // Odd rounds: six distinct positions, so no conflict (runs meet on diagonals, stream hops always agree).
            let p0 = rnd(10);
            for e in 0..6 {
                let r = if round % 2 == 1 { (p0 + e) % 10 } else { rnd(10) };
                let (dir, i, pos) = (if rnd(2) == 0 { Dir::East } else { Dir::West }, rnd(2) as usize, pick_pos(r));
                let (t0, dt, k) = (100 + rnd(40), 1 + rnd(5), 1 + rnd(30) as u32);
                let a = (0..k).find(|&j| !one.emit(dir, i, pos, t0 + j as u64 * dt, &[]));
                assert_eq!(run.emit_run(dir, i, pos, t0, dt, k), a);
                for j in 0..k {
                    let t = (t0 + j as u64 * dt) as i64;
                    let diag = if dir == Dir::East { pos as i64 - t } else { pos as i64 + t };
                    *diagonals.entry((dir == Dir::East, i, diag)).or_insert(0) += 1;
                }
                // Stream hops agree until a conflict (which ends a simulated run: its hops never matter).
                conflicted |= a.is_some();
                if !conflicted {
                    assert_eq!(run.hops(), one.hops());
                }
            }
            if !conflicted {
                // Runs that met on diagonals (the slow path of `emit_run_n`) were checked.
                checked_onto += diagonals.values().filter(|&&n| n > 1).count();
            }
            for _ in 0..40 {
                let (dir, i, pos) = (if rnd(2) == 0 { Dir::East } else { Dir::West }, rnd(2) as usize, pick_pos(rnd(10)));
                let (t0, dt, k) = (90 + rnd(100), 1 + rnd(5), 1 + rnd(30) as u32);
                let a = (0..k).find(|&j| one.find(dir, i, pos, t0 + j as u64 * dt).is_none());
                assert_eq!(run.find_run(dir, i, pos, t0, dt, k), a, "{dir:?} {i} {pos} {t0} {dt} {k}");
            }
        }
        assert!(checked_onto > 1000, "{checked_onto} diagonals with several emits checked");
    }

    #[test]
    fn order_free_agrees_with_the_belt() {
        // Emits and reads in random order give the answers the time-ordered belt gives in time order.
        let mut seed = 12345u64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut emits = Vec::new();
        for _ in 0..400 {
            emits.push((if rnd(2) == 0 { Dir::East } else { Dir::West }, rnd(3) as usize, rnd(20) as usize, rnd(60)));
        }
        let mut belt = StreamBelt::new(4, 1, 20, true);
        let mut free = StreamBelt::new_order_free(4, 20, 200);
        let mut sorted = emits.clone();
        sorted.sort_by_key(|e| e.3);
        let (mut conflicts, mut free_conflicts) = (0, 0);
        let mut reads = Vec::new();
        let mut k = 0;
        for t in 0..70u64 {
            for dir in [Dir::East, Dir::West] {
                for i in 0..3 {
                    for p in 0..20 {
                        reads.push(((dir, i, p, t), belt.find(dir, i, p, t).is_some()));
                    }
                }
            }
            while k < sorted.len() && sorted[k].3 == t {
                let (d, i, p, t) = sorted[k];
                conflicts += !belt.emit(d, i, p, t, &[]) as u32;
                k += 1;
            }
        }
        for (d, i, p, t) in emits.iter().rev() {
            free_conflicts += !free.emit(*d, *i, *p, *t, &[]) as u32;
        }
        assert_eq!(conflicts, free_conflicts);
        // Stream hops by their definition: per stream diagonal, from its most upstream emit to the edge.
        let mut upstream: std::collections::HashMap<(bool, usize, i64), usize> = Default::default();
        for &(d, i, p, t) in &emits {
            let east = d == Dir::East;
            let diag = if east { p as i64 - t as i64 } else { p as i64 + t as i64 };
            let u = upstream.entry((east, i, diag)).or_insert(p);
            *u = if east { (*u).min(p) } else { (*u).max(p) };
        }
        let want: u64 = upstream.iter().map(|(&(east, _, _), &p)| if east { 19 - p } else { p } as u64).sum();
        assert_eq!((belt.hops(), free.hops()), (want, want));
        for ((d, i, p, t), ok) in reads {
            assert_eq!(free.find(d, i, p, t).is_some(), ok, "read {d:?} {i} {p} {t}");
        }
    }
}
