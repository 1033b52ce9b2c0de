//! C2C links (docs/isa.md section 4): where each link's sends go, and its receive buffer.

use std::collections::VecDeque;

/// A vector waiting in a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Arrived {
    /// Byte-pool handle (`calendar::NONE` in timing-only mode).
    pub buf: u32,
    /// The SEND that sent it (queue index, instruction index) and when it arrived: for `LinkUnreceived`.
    pub queue: u32,
    pub instr: u32,
    pub cycle: u64,
}

#[derive(Debug, Default)]
pub struct LinkState {
    /// Receiving link and latency, if connected (`.link`).
    pub peer: Option<(usize, u64)>,
    pub rx: VecDeque<Arrived>,
}
