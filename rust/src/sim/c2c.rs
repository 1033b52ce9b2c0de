//! C2C links (docs/isa.md section 4, docs/system.md): where each link's sends go, and its receive buffer.

use std::collections::VecDeque;

/// A vector waiting in a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Arrived {
    /// Byte-pool handle (`calendar::NONE` in timing-only mode).
    pub buf: u32,
    /// The SEND that sent it (queue index, instruction index) and when it arrived: for `LinkUnreceived`.
    /// For a vector from another chip, `queue`/`instr` are those of the SEND on that chip and `origin` indexes
    /// `Chip::origins`; `calendar::NONE` for a local (`.link`) vector.
    pub queue: u32,
    pub instr: u32,
    pub cycle: u64,
    pub origin: u32,
}

/// Where a link's SENDs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A `.link` loopback on this chip: the vector lands in link `to`'s buffer `latency` cycles later.
    Local { to: usize, latency: u64 },
    /// A link of a system (docs/system.md): the vector goes to `link` of `chip`; the `System` delivers it.
    /// `interval_ticks`: the link is busy this long (global time) after a SEND (serialisation at its bandwidth).
    Remote { chip: usize, link: usize, interval_ticks: u128 },
}

/// The sending end of a vector in flight to another chip (kept with the vector for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub chip: u32,
    pub link: u32,
    /// Queue and instruction index of the SEND on the sending chip, and the cycle it issued (sender's clock).
    pub queue: u32,
    pub instr: u32,
    pub cycle: u64,
}

/// A vector sent to another chip during the current window; the `System` collects and delivers it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub link: usize,
    pub cycle: u64,
    pub queue: usize,
    pub instr: usize,
    /// The 320 bytes (empty in timing-only mode).
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct LinkState {
    /// Receiving link and latency, if connected (`.link` or a system configuration).
    pub peer: Option<Peer>,
    pub rx: VecDeque<Arrived>,
    /// Global time (ticks) until which the link is still serialising the previous vector (system links only).
    pub busy_until: u128,
    /// Vectors sent on this link.
    pub sent: u64,
}
