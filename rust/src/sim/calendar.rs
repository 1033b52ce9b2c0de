//! Effects scheduled for future cycles, and the buffer pools their data lives in.
//!
//! The calendar is a min-heap keyed by (cycle, kind, queue index, issue sequence): exactly the order of
//! docs/isa.md section 3 (effects by kind, then queue index, then issue order; stream emits last). The run loop
//! jumps straight to the next cycle that has an effect or an issue, so idle cycles cost nothing.

use crate::isa::Dir;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// "No buffer" (timing-only mode carries no data).
pub const NONE: u32 = u32::MAX;

/// Effect kinds in their within-cycle order. Step 1 kinds come first; `EMIT` is step 3.
pub const MEM_COMMIT: u8 = 0;
pub const ACC_UPDATE: u8 = 1;
pub const INSTALL: u8 = 2;
pub const REG_UPDATE: u8 = 3;
pub const ARRIVE: u8 = 4;
pub const EMIT: u8 = 5;

#[derive(Debug, Clone, Copy)]
pub enum Payload {
    MemWrite { slice: u32, addr: u32, buf: u32 },
    /// `buf`: lanes data bytes, then 2*lanes map bytes (u16 little endian per lane).
    MemScatter { slice: u32, buf: u32 },
    /// `y`: the product's slot in the plane (NONE without data); the plane frees it when it applies it.
    Acc { plane: u32, row: u32, add: bool, f16: bool, y: u32 },
    Install { plane: u32 },
    Reg { alu: u32, f32_tag: bool, buf: u32 },
    /// `origin`: index into `Chip::origins` for a vector from another chip, `NONE` for a local one.
    Arrive { link: u32, buf: u32, origin: u32 },
    /// A READ's emit of one stream, copied from memory at the emit (no commit to the slice can land before it).
    EmitMem { dir: Dir, stream: u16, pos: u32, slice: u32, addr: u32 },
    /// `width` consecutive streams from `start`; `buf` holds `width` planes of lanes bytes.
    Emit { dir: Dir, start: u16, width: u16, pos: u32, buf: u32 },
}

#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub cycle: u64,
    pub kind: u8,
    pub queue: u32,
    pub seq: u64,
    /// Index of the instruction that scheduled it (for error messages).
    pub instr: u32,
    pub payload: Payload,
}

impl Event {
    fn key(&self) -> (u64, u8, u32, u64) {
        (self.cycle, self.kind, self.queue, self.seq)
    }
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap, we want the earliest key on top.
    fn cmp(&self, o: &Self) -> Ordering {
        o.key().cmp(&self.key())
    }
}

/// Cycles covered by the wheel; later effects wait in a heap.
const WHEEL: usize = 256;
const WORDS: usize = WHEEL / 64;

/// Which wheel slots are non-empty, one bit each, so finding the next busy cycle costs a few word scans, not one
/// probe per idle cycle (queues taken ahead by the fast form leave the wheels sparse).
#[derive(Default, Clone, Copy)]
struct Occupied([u64; WORDS]);

impl Occupied {
    fn set(&mut self, slot: usize) {
        self.0[slot / 64] |= 1 << (slot % 64);
    }
    fn clear(&mut self, slot: usize) {
        self.0[slot / 64] &= !(1 << (slot % 64));
    }
    /// The smallest `d < WHEEL` with slot `(start + d) % WHEEL` set.
    fn next(&self, start: usize) -> Option<usize> {
        let (w0, b0) = (start / 64, start % 64);
        for i in 0..=WORDS {
            let w = (w0 + i) % WORDS;
            let mut bits = self.0[w];
            if i == 0 {
                bits &= !0u64 << b0;
            } else if i == WORDS {
                bits &= !(!0u64 << b0);
            }
            if bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as usize;
                return Some((slot + WHEEL - start) % WHEEL);
            }
        }
        None
    }
}

/// A timing wheel of effects: one bucket per cycle for the next `WHEEL` cycles, a heap beyond. The effects due
/// at the current cycle are sorted by key when first needed (and again if more arrive for that cycle), so they
/// come out in exactly the heap's order.
pub struct Calendar {
    slots: Vec<Vec<Event>>,
    occupied: Occupied,
    in_wheel: usize,
    far: BinaryHeap<Event>,
    /// The cycle `cur` belongs to; `cur[head..]` are its events not yet popped, earliest key first.
    cur_t: u64,
    cur: Vec<Event>,
    head: usize,
    /// Events for `cur_t` pushed into its slot since `cur` was sorted.
    dirty: bool,
    seq: u64,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            slots: (0..WHEEL).map(|_| Vec::new()).collect(),
            occupied: Occupied::default(),
            in_wheel: 0,
            far: BinaryHeap::new(),
            cur_t: 0,
            cur: Vec::new(),
            head: 0,
            dirty: false,
            seq: 0,
        }
    }
}

impl Calendar {
    pub fn push(&mut self, cycle: u64, kind: u8, queue: usize, instr: usize, payload: Payload) {
        self.seq += 1;
        let e = Event { cycle, kind, queue: queue as u32, seq: self.seq, instr: instr as u32, payload };
        if cycle >= self.cur_t && cycle - self.cur_t < WHEEL as u64 {
            self.slots[cycle as usize % WHEEL].push(e);
            self.occupied.set(cycle as usize % WHEEL);
            self.in_wheel += 1;
            if cycle == self.cur_t {
                self.dirty = true;
            }
        } else {
            self.far.push(e);
        }
    }

    pub fn next_cycle(&self) -> Option<u64> {
        let mut best = self.far.peek().map(|e| e.cycle);
        if self.head < self.cur.len() {
            return Some(self.cur_t);
        }
        if let Some(d) = self.occupied.next(self.cur_t as usize % WHEEL) {
            let c = self.cur_t + d as u64;
            if best.is_none_or(|b| c < b) {
                best = Some(c);
            }
        }
        best
    }

    /// Make `cur` hold every event due at `t` (t >= every cycle popped so far), sorted.
    fn load(&mut self, t: u64) {
        if t != self.cur_t {
            debug_assert!(self.head == self.cur.len() && t > self.cur_t);
            // Slots of the cycles in between are empty (they were the next cycles with work or had none).
            self.cur.clear();
            self.head = 0;
            self.cur_t = t;
            self.dirty = true;
        }
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if self.head > 0 {
            self.cur.drain(..self.head);
            self.head = 0;
        }
        let slot = &mut self.slots[t as usize % WHEEL];
        self.in_wheel -= slot.len();
        self.cur.append(slot);
        self.occupied.clear(t as usize % WHEEL);
        while self.far.peek().is_some_and(|e| e.cycle == t) {
            self.cur.push(self.far.pop().unwrap());
        }
        // Earliest key first (events mostly arrive in key order, which insertion sort handles in one pass).
        self.cur.sort_unstable_by_key(|e| e.key());
    }

    /// Pop the next event if it is due at `t` with a kind `< below`.
    pub fn pop_due(&mut self, t: u64, below: u8) -> Option<Event> {
        if t < self.cur_t {
            return None;
        }
        self.load(t);
        match self.cur.get(self.head) {
            Some(e) if e.kind < below => {
                self.head += 1;
                Some(*e)
            }
            _ => None,
        }
    }
}

/// Reusable buffers addressed by u32 handles, so scheduling an effect does not allocate in steady state.
pub struct Pool<T: Copy + Default> {
    bufs: Vec<Vec<T>>,
    free: Vec<u32>,
}

impl<T: Copy + Default> Default for Pool<T> {
    fn default() -> Self {
        Pool { bufs: Vec::new(), free: Vec::new() }
    }
}

impl<T: Copy + Default> Pool<T> {
    /// A buffer of exactly `len` elements (contents unspecified).
    pub fn alloc(&mut self, len: usize) -> u32 {
        let h = match self.free.pop() {
            Some(h) => h,
            None => {
                self.bufs.push(Vec::new());
                (self.bufs.len() - 1) as u32
            }
        };
        self.bufs[h as usize].resize(len, T::default());
        h
    }
    pub fn get(&self, h: u32) -> &[T] {
        &self.bufs[h as usize]
    }
    pub fn get_mut(&mut self, h: u32) -> &mut [T] {
        &mut self.bufs[h as usize]
    }
    pub fn release(&mut self, h: u32) {
        if h != NONE {
            self.free.push(h);
        }
    }
}

/// Which queues issue at which cycle: a wheel of per-cycle lists for the next `WHEEL` cycles and a heap beyond,
/// so a cycle costs work in proportion to the queues that issue in it, not to the number of queues. A queue is in
/// here at most once (its next issue cycle; it is put back after it issues).
pub struct ReadyWheel {
    slots: Vec<Vec<u16>>,
    occupied: Occupied,
    in_wheel: usize,
    far: BinaryHeap<std::cmp::Reverse<(u64, u16)>>,
    /// No entry is earlier than `cur` (the cycle being run or the last one run).
    cur: u64,
}

impl Default for ReadyWheel {
    fn default() -> Self {
        ReadyWheel {
            slots: (0..WHEEL).map(|_| Vec::new()).collect(),
            occupied: Occupied::default(),
            in_wheel: 0,
            far: BinaryHeap::new(),
            cur: 0,
        }
    }
}

impl ReadyWheel {
    /// Queue `q` issues next at `cycle` (>= the current cycle).
    pub fn push(&mut self, cycle: u64, q: usize) {
        debug_assert!(cycle >= self.cur);
        if cycle - self.cur < WHEEL as u64 {
            self.slots[cycle as usize % WHEEL].push(q as u16);
            self.occupied.set(cycle as usize % WHEEL);
            self.in_wheel += 1;
        } else {
            self.far.push(std::cmp::Reverse((cycle, q as u16)));
        }
    }

    /// The earliest cycle a queue issues at.
    pub fn next_cycle(&self) -> Option<u64> {
        let far = self.far.peek().map(|r| r.0 .0);
        match self.occupied.next(self.cur as usize % WHEEL) {
            Some(d) if far.is_none_or(|f| self.cur + (d as u64) < f) => Some(self.cur + d as u64),
            _ => far,
        }
    }

    /// Move to cycle `t` (no entry is earlier) and put the queues issuing at `t` into `out`, in queue order.
    pub fn take(&mut self, t: u64, out: &mut Vec<u16>) {
        debug_assert!(t >= self.cur);
        self.cur = t;
        out.clear();
        let slot = &mut self.slots[t as usize % WHEEL];
        self.in_wheel -= slot.len();
        out.append(slot);
        self.occupied.clear(t as usize % WHEEL);
        while self.far.peek().is_some_and(|r| r.0 .0 == t) {
            out.push(self.far.pop().unwrap().0 .1);
        }
        out.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupied_finds_the_next_slot_cyclically() {
        let mut o = Occupied::default();
        assert_eq!(o.next(5), None);
        o.set(3);
        o.set(130);
        assert_eq!(o.next(0), Some(3));
        assert_eq!(o.next(3), Some(0));
        assert_eq!(o.next(4), Some(126));
        assert_eq!(o.next(131), Some(WHEEL - 131 + 3));
        o.clear(3);
        assert_eq!(o.next(131), Some(WHEEL - 1));
        assert_eq!(o.next(64), Some(66));
    }
}
