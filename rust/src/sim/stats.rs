//! What a run reports: cycles, issue and busy counts, `.dump` results, CONFIG masks, deskew stalls, link sends.

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
}
