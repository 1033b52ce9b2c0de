//! C2C links (docs/isa.md section 4, docs/system.md): where each link's sends go, its receive buffer, and how the
//! `System` hands a chip the vectors other chips sent it.

use super::calendar::{self, Payload};
use super::Chip;
use crate::error::{ErrorKind, SimError};
use crate::isa::QueueName;
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
    /// `interval_ticks`: as for `Remote`; a loopback is a cable between two of the chip's own ports, so it has the
    /// rate of a system link (`SystemConfig::send_interval_ticks` with the default, published, flit and rate).
    Local { to: usize, latency: u64, interval_ticks: u128 },
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
    /// Global time (ticks) until which the link is still serialising the previous vector.
    pub busy_until: u128,
    /// Vectors sent on this link.
    pub sent: u64,
}

/// Links to other chips: the `System` calls these between windows.
impl Chip {
    /// A vector from another chip lands in link `link`'s receive buffer at `cycle` (this chip's clock).
    pub fn deliver(&mut self, cycle: u64, link: usize, data: &[u8], origin: Origin) {
        let buf = if self.timing_only {
            calendar::NONE
        } else {
            let h = self.bytes.alloc(self.cfg.lanes);
            self.bytes.get_mut(h).copy_from_slice(&data[..self.cfg.lanes]);
            h
        };
        let o = match self.origin_free.pop() {
            Some(o) => {
                self.origins[o as usize] = origin;
                o
            }
            None => {
                self.origins.push(origin);
                (self.origins.len() - 1) as u32
            }
        };
        let q = QueueName::C2c(link as u16).index(&self.cfg).unwrap_or(0);
        self.schedule(cycle, calendar::ARRIVE, q, 0, Payload::Arrive { link: link as u32, buf, origin: o });
    }

    pub(super) fn free_origin(&mut self, o: u32) {
        if o != calendar::NONE {
            self.origin_free.push(o);
        }
    }

    /// An error about a vector from another chip: names the SEND (queue and index on the sending chip; the
    /// `System` fills in its text) and records the sending end in `fault_origin`.
    pub(super) fn remote_err(&mut self, kind: ErrorKind, t: u64, origin: u32, message: String) -> SimError {
        let o = self.origins[origin as usize];
        self.fault_origin = Some(o);
        let queue = QueueName::all(&self.cfg).get(o.queue as usize).map(|n| n.to_string()).unwrap_or_default();
        SimError { kind, cycle: t, queue, index: o.instr as usize, instruction: String::new(), message }
    }

    /// The text of instruction `index` of queue `queue` (for naming a SEND in another chip's error).
    pub fn instruction_text(&self, queue: usize, index: usize) -> String {
        self.progs.get(queue).and_then(|p| p.get(index)).map(|i| i.to_string()).unwrap_or_default()
    }

    /// The name of queue `q`.
    pub fn queue_name(&self, q: usize) -> String {
        self.qinfo.get(q).map(|i| i.name.to_string()).unwrap_or_default()
    }

    /// Connect link `link` to `link` of chip `chip` (a system link; replaces any `.link`).
    pub fn connect_remote(&mut self, link: usize, chip: usize, peer_link: usize, interval_ticks: u128) {
        self.links[link].peer = Some(Peer::Remote { chip, link: peer_link, interval_ticks });
    }
}

/// Lookahead for a system run (`crate::system`, docs/system.md section 5): when can a chip send next?
impl Chip {
    /// The queues holding a SEND, each with the index of its last one (for `next_send`).
    pub fn send_queues(&self) -> Vec<(usize, usize)> {
        let last = |p: &Vec<crate::isa::Instr>| p.iter().rposition(|i| matches!(i, crate::isa::Instr::Send { .. }));
        self.progs.iter().enumerate().filter_map(|(q, p)| last(p).map(|l| (q, l))).collect()
    }

    /// Between cycles: no SEND of this chip issues before this cycle (`None`: it sends nothing more), given its
    /// `send_queues()`. A queue issues in program order, so none of its SENDs comes before its next issue; a queue
    /// past its last SEND (and that SEND's REPEAT) sends no more; a queue parked at SYNC waits for a NOTIFY of this
    /// chip, which issues at `next_cycle()` at the earliest.
    pub fn next_send(&self, queues: &[(usize, usize)]) -> Option<u64> {
        let mut best: Option<u64> = None;
        for &(q, last) in queues {
            let st = &self.qs[q];
            if st.pc > last + 1 || st.pc >= self.progs[q].len() {
                continue;
            }
            let c = match self.ready[q] {
                u64::MAX => self.next_cycle()?,
                r => r,
            };
            best = Some(best.map_or(c, |b| b.min(c)));
        }
        best
    }
}
