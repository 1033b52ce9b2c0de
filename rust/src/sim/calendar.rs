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
    Acc { plane: u32, row: u32, add: bool, f16: bool, y: u32, flags: u32 },
    Install { plane: u32 },
    Reg { alu: u32, f32_tag: bool, buf: u32 },
    Arrive { link: u32, buf: u32 },
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

#[derive(Default)]
pub struct Calendar {
    heap: BinaryHeap<Event>,
    seq: u64,
}

impl Calendar {
    pub fn push(&mut self, cycle: u64, kind: u8, queue: usize, instr: usize, payload: Payload) {
        self.seq += 1;
        self.heap.push(Event { cycle, kind, queue: queue as u32, seq: self.seq, instr: instr as u32, payload });
    }
    pub fn next_cycle(&self) -> Option<u64> {
        self.heap.peek().map(|e| e.cycle)
    }
    /// Pop the next event if it is due at `t` with a kind `< below`.
    pub fn pop_due(&mut self, t: u64, below: u8) -> Option<Event> {
        match self.heap.peek() {
            Some(e) if e.cycle == t && e.kind < below => self.heap.pop(),
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
