//! An MXM plane (docs/isa.md section 4): weight buffer, installed array, accumulator rows, exact numerics.
//!
//! int8/uint8: products and sums are exact integers (64-bit rows, wrapping like the reference). In functional mode
//! they take the deferred GEMM path (`deferred.rs`) like f16 (exact: every dot product is below 2^24; see int.rs).
//! fp16: every finite f16 is `m * 2^(s - 24)` with `|m| < 2^11`, `s` in 0..=29, so a product is an exact integer count
//! of `2^-48`: `(m1 * m2) << (s1 + s2)` (< 2^80). Rows hold that count in an i128, so sums are exact and order-free.
//! `ACC.f32` of an f16 row is `(count as f32) * 2^-48`: Rust's i128 -> f32 cast rounds to nearest even, and the
//! scaling by 2^-48 is exact because the result (|count| >= 1, so >= 2^-48) is never subnormal in f32 and
//! |count| < 2^127 keeps it finite; so the whole thing is one correct rounding of the exact sum.
//! Specials are flags per lane: NaN, +inf, -inf.
//!
//! Speed (functional mode), with the same values: an f16 ABC's product is not computed at issue. Each vector whose
//! activations and the installed weights are finite is checked against a bound: with `x_k = m << s` (counts of
//! 2^-48), every product and every partial sum of `sum_k x_k w_kn` is an integer multiple of `2^(tx + tw)` (the
//! common powers of two of the activations and of the weights) of magnitude at most `B = sum_k |x_k| * max_n |w_kn|`.
//! If `B < 2^52` units (half of f64's exact-integer range, so the bound's own rounding cannot matter) the dot
//! products are exact in f64 in any order and with or without fused multiply-adds; such vectors are multiplied
//! together, as GEMMs with the weights they met (an f32 image built at load, exact), in batches handed to helper
//! threads as they are issued, at the next install, or when a row is read (or only over the nonzeros of a sparse
//! weight set). The others (specials, or a larger spread) take the exact i128 path at issue. Row updates are
//! logged at their cycle (TypeMismatch is decided there) and applied in order when a row is read or an integer
//! update comes, so ACC sees exactly the rows the step-by-step definition gives. A row written only by GEMM
//! products stays in f64 while a bound on its sums keeps them exact (`FRow`), else it goes to i128. The GEMM
//! kernels and the helper-thread pool are in `sim/gemm.rs`.
//!
//! The files: `weights.rs` holds the weight sets (LW rows, IWs in flight, the installed array) and their f32 GEMM
//! images; `decode.rs` the vectorised f16 decoding kernels; `deferred.rs` the deferred GEMM path (product slots,
//! pending batches, the update log, `FRow`s); `exact.rs` the exact i128 path; `acc.rs` the accumulator rows and
//! ACC reads; `int.rs` int8/uint8 ABCs on the deferred path.

use crate::isa::DType;
use std::collections::VecDeque;

use super::gemm::{wait_job, JobCell, JOB_QUEUED, JOB_TAKEN};

mod acc;
mod decode;
mod deferred;
mod exact;
mod int;
#[cfg(test)]
mod tests;
mod weights;

use deferred::{FRow, SlotMeta};
use weights::Weights;

/// 2^-48 exactly (biased exponent 127 - 48).
const TWO_POW_M48: f32 = f32::from_bits((127 - 48) << 23);

pub const FLAG_NAN: u8 = 1;
pub const FLAG_PINF: u8 = 2;
pub const FLAG_NINF: u8 = 4;

/// What an accumulator row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Int,
    F16,
}

pub struct MxmPlane {
    dim: usize,
    timing_only: bool,
    /// Rows loaded into the buffer since the last IW, and their type.
    pub buf_rows: usize,
    pub buf_type: Option<DType>,
    buf: Weights,
    pending: VecDeque<Weights>,
    spare: Vec<Weights>,
    /// Type of the installed weights (`None`: zeros, accepting any type).
    pub installed_type: Option<DType>,
    w: Weights,
    /// First cycle an ABC may issue again.
    pub busy_until: u64,
    /// Accumulator rows, allocated on first update: `row_slot[row]` indexes `rows`/`flags` (in units of dim).
    row_slot: Vec<u32>,
    rows: Vec<i128>,
    flags: Vec<u8>,
    /// Per storage slot: columns `>= rcols` of the row are zero with no flags.
    rcols: Vec<u32>,
    /// Per storage slot: while `fst.on`, the row as exact f64 counts in buffer `row_buf` of `sy`; `rows`/`flags`
    /// are then stale. Rows written only by GEMM products live there (no i128 conversion on update or read).
    row_buf: Vec<u32>,
    fst: Vec<FRow>,
    pub row_kind: Vec<RowKind>,
    scratch: Vec<i32>,
    /// f16 partial sums per activation shift (30 x dim): each is a sum of < 2^51 terms, at most 320 of them.
    buckets: Vec<i64>,
    /// Deferred f16 products (functional mode): each f16 ABC gets a slot `j` of `ys`/`yflags` (dim each). Vectors
    /// that pass the exactness bound wait in `pend_x` (rows of dim f64, `x >> tz`) and are computed together, as a
    /// GEMM with the weights installed at their issue, before the next install or when a row update needs them;
    /// the others are computed at issue by the exact i128 path.
    ys: Vec<i128>,
    yflags: Vec<u8>,
    /// Buffers of `ystride` f64: each slot's GEMM product (buffer `slot_buf`; the first `meta.ncols` meaningful,
    /// exact counts of 2^-48) and each f64 row (`row_buf`). An `=` update swaps the two buffers instead of copying.
    /// GEMM jobs in flight write their slots' buffers in place (see `gemm::OutPtr`): `sy` grows only with no job
    /// in flight, and while one is, other buffers are written only through `sy.as_mut_ptr()` (no reference to
    /// the whole vector).
    sy: Vec<f64>,
    slot_buf: Vec<u32>,
    meta: Vec<SlotMeta>,
    free_slots: Vec<u32>,
    nslots: usize,
    /// Pending vectors, rows of `pend_rows` (the installed weights' row count) f64.
    pend_x: Vec<f64>,
    pend_rows: usize,
    /// Per pending vector: its slot and its shift `tz`.
    pend: Vec<(u32, u32)>,
    /// Scratch: where each vector of an inline GEMM writes its product (offsets into `sy`).
    yoff: Vec<usize>,
    /// Row updates that have landed (in order) but whose values are not applied yet: (row, add, slot).
    log: Vec<(u32, bool, u32)>,
    /// Scratch: an activation's two planes side by side (for the i128 path).
    xcat: Vec<u8>,
    /// GEMMs handed to the helper threads, oldest first.
    inflight: VecDeque<std::sync::Arc<JobCell>>,
    /// Buffers back from jobs, for reuse.
    spare_f64: Vec<Vec<f64>>,
    spare_off: Vec<Vec<usize>>,
}

impl Drop for MxmPlane {
    fn drop(&mut self) {
        // Jobs no helper has started are dropped rather than run (a run that stops early, e.g. on an error); one
        // a helper runs is waited for, since it writes into `sy`.
        for c in &self.inflight {
            let cancelled = c
                .state
                .compare_exchange(JOB_QUEUED, JOB_TAKEN, std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire)
                .is_ok();
            if !cancelled {
                wait_job(c);
            }
        }
    }
}

/// Element `l` of a group of `w` byte planes (little endian across planes).
#[inline]
pub fn element(group: &[u8], lanes: usize, w: usize, l: usize) -> u32 {
    let mut v = 0u32;
    for b in 0..w {
        v |= (group[b * lanes + l] as u32) << (8 * b);
    }
    v
}

impl MxmPlane {
    pub fn new(dim: usize, acc_rows: usize, timing_only: bool) -> MxmPlane {
        MxmPlane {
            dim,
            timing_only,
            buf_rows: 0,
            buf_type: None,
            buf: Weights::empty(),
            pending: VecDeque::new(),
            spare: Vec::new(),
            installed_type: None,
            w: Weights::empty(),
            buckets: Vec::new(),
            busy_until: 0,
            row_slot: Vec::new(),
            rows: Vec::new(),
            flags: Vec::new(),
            rcols: Vec::new(),
            row_buf: Vec::new(),
            fst: Vec::new(),
            row_kind: vec![RowKind::Int; acc_rows],
            scratch: Vec::new(),
            ys: Vec::new(),
            yflags: Vec::new(),
            sy: Vec::new(),
            slot_buf: Vec::new(),
            meta: Vec::new(),
            free_slots: Vec::new(),
            nslots: 0,
            pend_x: Vec::new(),
            pend_rows: 0,
            pend: Vec::new(),
            yoff: Vec::new(),
            log: Vec::new(),
            xcat: Vec::new(),
            inflight: VecDeque::new(),
            spare_f64: Vec::new(),
            spare_off: Vec::new(),
        }
    }
}
