//! What a run reports: cycles, issue and busy counts, energy events, `.dump` results, CONFIG masks, deskew
//! stalls, link sends.

use crate::isa::DType;

/// Busy counters per unit kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Busy {
    /// Bank port uses (READ/WRITE 1, GATHER/SCATTER 2).
    pub mem: u64,
    /// ALU issues.
    pub vxm: u64,
    /// Plane busy cycles from ABC (1 per int8 ABC, `mxm_fp16_cycles_per_vector` per f16 ABC).
    pub mxm: u64,
    pub sxm: u64,
    pub c2c: u64,
    /// SYNC, NOTIFY, IFETCH, CONFIG, DESKEW, RUNTIME_DESKEW issues.
    pub icu: u64,
}

/// The events an energy model prices, per chip (docs/isa.md "Energy events" defines each exactly). Every engine
/// (the exact order, the fast timing-only form, a chip of a system run, functional or timing-only) counts them
/// identically: none depends on values, and each is counted at issue, at the emit, or at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// ABC issues of type i8/u8 (one activation vector through a plane each; repetitions count).
    pub mxm_int8_vectors: u64,
    /// ABC issues of type f16.
    pub mxm_fp16_vectors: u64,
    /// Weight vectors written into a plane's weight buffer from the streams: `n * width(T)` per `LW.T S, n` issue
    /// (a row of f16 weights is two byte-plane vectors); IW is a buffer swap and adds none.
    pub mxm_weight_vectors: u64,
    /// READ and GATHER issues (a GATHER reads one vector's worth of cells: a byte per lane).
    pub mem_read_vectors: u64,
    /// WRITE and SCATTER issues (a SCATTER writes at most a byte per lane).
    pub mem_write_vectors: u64,
    /// Stream-register positions travelled, summed over every vector emitted on a stream: each moves until a later
    /// emit on its stream overwrites it or it falls off the chip edge (counted to the edge even after the run).
    pub stream_hops: u64,
    /// VXM ALU issues (one per vector of lanes), `vxm_transcendental_ops` included.
    pub vxm_ops: u64,
    /// ALU issues of the operations timed by `vxm_transcendental_latency` (`vxm::is_transcendental`).
    pub vxm_transcendental_ops: u64,
    /// SXM issues (SHIFT, PERMUTE, DISTRIBUTE, TRANSPOSE).
    pub sxm_ops: u64,
    /// Vectors sent over C2C links (SEND issues: the sum of `link_sends`).
    pub c2c_vectors: u64,
    /// Issued instructions (`Stats::instructions`).
    pub instructions: u64,
}

/// A number printed by `.dump`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    I(i64),
    F(f64),
}

/// The result of one `.dump` directive.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpResult {
    pub slice: String,
    pub addr: u32,
    pub dtype: DType,
    /// `n` vectors of `lanes` values; `None` in timing-only mode.
    pub values: Option<Vec<Vec<Num>>>,
}

/// A `CONFIG m` issue (superlane power mask), reported for energy accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRecord {
    pub cycle: u64,
    pub queue: String,
    pub mask: u32,
}

/// What a run returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Last cycle anything happened + 1 + (superlanes - 1); 0 if nothing happened.
    pub cycles: u64,
    /// Issued instructions (repetitions included; NOP and REPEAT themselves excluded).
    pub instructions: u64,
    pub busy: Busy,
    /// Issues per queue, in queue index order.
    pub per_queue_issues: Vec<u64>,
    pub dumps: Vec<DumpResult>,
    pub configs: Vec<ConfigRecord>,
    /// Cycles queues spent stalled by DESKEW and RUNTIME_DESKEW (after the issue cycle, until the next issue):
    /// the largest total over the queues of this chip.
    pub sync_cycles: u64,
    /// Vectors sent per C2C link.
    pub link_sends: Vec<u64>,
    /// What an energy model counts.
    pub events: Events,
}
