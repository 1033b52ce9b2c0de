//! An MXM plane (docs/isa.md section 4): weight buffer, installed array, accumulator rows, exact numerics.
//!
//! int8/uint8: products and sums are exact integers (64-bit rows, wrapping like the reference). In functional mode
//! they take the deferred GEMM path below like f16 (exact: every dot product is below 2^24; see mxm_int.rs).
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
//! kernels and the helper-thread pool are in gemm.rs.

use crate::isa::DType;
use crate::numerics::{canon_f32, f16_mant_shift, F32_NAN};
use std::collections::VecDeque;

use super::gemm::{
    finish_job, gemm_f64_raw, wait_job, Job, JobCell, OutPtr, Pool, EXACT_BOUND, GEMM_COLS, JOB_QUEUED, JOB_TAKEN, SUBMIT_VECS,
    WORKER_MIN_MACS,
};

#[path = "mxm_int.rs"]
mod int;

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

/// A weight set: the buffer being loaded, an IW in flight, or the installed array. Rows `k >= rows` are zero.
/// Each loaded row is kept raw (for products with specials) and, for f16, converted at load time into the
/// image of the exact GEMM fast path (one pass over the row; the i128 path's integers are derived only if needed).
struct Weights {
    ty: Option<DType>,
    rows: usize,
    /// Columns `n >= ncols` are zero in every loaded row.
    ncols: usize,
    raw: Vec<u16>,
    /// f16: `m << s` (< 2^40; 0 for an infinity/NaN), so a product with an activation mantissa fits an i64. Built
    /// from `raw` on the first product that takes the exact i128 path; rows `< pre_rows` are valid.
    pre: Vec<i64>,
    pre_rows: usize,
    /// i8/u8 weights as integers.
    int: Vec<i32>,
    /// f16: does row k hold an infinity or NaN? Such rows go one product at a time.
    special: Vec<bool>,
    /// The exact-GEMM image (f16 only, filled row by row at load): see `FastW`.
    fast: FastW,
}

/// An f16 weight set for the exact GEMM fast path: `w[k][n] = m << s` of weight (k, n) as an f32 (exact: at most
/// 11 significant bits, below 2^40; the kernels widen it to f64, also exactly, and half the bytes of an f64 image
/// make loading and the GEMM's weight traffic cheaper), rows of `stride` (`dim` rounded up to `GEMM_COLS`, zero past `dim`), `wmax[k] = max_n |w[k][n]|`
/// for the per-vector exactness bound, and `tz`, the smallest trailing-zero count of any nonzero weight: every
/// weight is a multiple of 2^tz, which the bound uses.
#[derive(Default)]
struct FastW {
    /// 0: loaded, not yet checked; 1: usable; 2: unusable (a weight is infinite or NaN).
    state: u8,
    /// The f32 bits of the smallest power of two dividing a nonzero `|m << s|` loaded (`u32::MAX` if none: its
    /// exponent gives `tz`), and the count of nonzero weights.
    lowbit: u32,
    nnz: usize,
    tz: u32,
    stride: usize,
    /// Shared with GEMM jobs in flight on the helper threads.
    w: std::sync::Arc<Vec<f32>>,
    wmax: Vec<f64>,
    /// A sparse set (selection and permutation matrices: under 1/16 nonzero) also as rows of (column, value):
    /// row k's nonzeros are `sp_col/sp_val[sp_ptr[k]..sp_ptr[k + 1]]`. Empty `sp_ptr`: dense.
    sp_ptr: Vec<u32>,
    sp_col: Vec<u32>,
    sp_val: Vec<f64>,
}

impl FastW {
    /// Row `k` (`stride` floats) of the GEMM image, growing the image to hold it (room for `dim` rows reserved
    /// at the first growth); the image must not be shared with a GEMM job in flight.
    fn image_row(&mut self, k: usize, dim: usize) -> &mut [f32] {
        let stride = self.stride;
        let fw = std::sync::Arc::get_mut(&mut self.w).expect("the buffer's image is not shared");
        if fw.len() < (k + 1) * stride {
            fw.reserve_exact(dim * stride - fw.len());
            fw.resize((k + 1) * stride, 0.0);
        }
        &mut fw[k * stride..(k + 1) * stride]
    }
}

impl Weights {
    fn empty() -> Weights {
        Weights {
            ty: None,
            rows: 0,
            ncols: 0,
            raw: Vec::new(),
            pre: Vec::new(),
            pre_rows: 0,
            int: Vec::new(),
            special: Vec::new(),
            fast: FastW::default(),
        }
    }

    /// Finish the f64 image (once per weight set, at its first f16 product): usable or not, `tz`, sparsity.
    fn ensure_fast(&mut self) {
        if self.fast.state != 0 {
            return;
        }
        let rows = self.rows;
        if self.special[..rows.min(self.special.len())].iter().any(|&s| s) {
            self.fast.state = 2;
            return;
        }
        let f = &mut self.fast;
        // The smallest power of two dividing a nonzero value is 2^tz.
        f.tz = if f.nnz == 0 { 0 } else { (f.lowbit >> 23) - 127 };
        f.sp_ptr.clear();
        f.sp_col.clear();
        f.sp_val.clear();
        let stride = f.stride;
        if f.nnz * 16 < rows * stride {
            f.sp_ptr.push(0);
            for k in 0..rows {
                for (n, &v) in f.w[k * stride..k * stride + self.ncols].iter().enumerate() {
                    if v != 0.0 {
                        f.sp_col.push(n as u32);
                        f.sp_val.push(v as f64);
                    }
                }
                f.sp_ptr.push(f.sp_col.len() as u32);
            }
        }
        f.state = 1;
    }

    /// Derive `pre` (the i128 path's integers) from `raw` for every loaded f16 row.
    fn ensure_pre(&mut self, dim: usize) {
        let rows = self.rows;
        if self.pre_rows >= rows {
            return;
        }
        if self.pre.len() < rows * dim {
            self.pre.resize(rows * dim, 0);
        }
        for k in self.pre_rows..rows {
            for n in 0..dim {
                let b = self.raw[k * dim + n];
                self.pre[k * dim + n] = match f16_mant_shift(b) {
                    Some((m, sh)) => (m as i64) << sh,
                    None => 0,
                };
            }
        }
        self.pre_rows = rows;
    }
}

/// Vectorised helpers: the same code compiled for AVX-512 and for AVX2, picked at run time.
macro_rules! dispatch {
    ($name:ident, $generic:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        #[inline]
        fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
                unsafe fn v512($($a: $t),*) -> $r {
                    $generic($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn v256($($a: $t),*) -> $r {
                    $generic($($a),*)
                }
                if std::is_x86_feature_detected!("avx512dq") && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU has the features.
                    return unsafe { v512($($a),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the features.
                    return unsafe { v256($($a),*) };
                }
            }
            $generic($($a),*)
        }
    };
}

/// An f16 activation's first `xr.len()` elements (two byte planes, no infinity or NaN: the caller checked) as
/// `m << s` with sign, in f64 (exact: below 2^40); returns the f32 bits of the smallest power of two dividing a
/// nonzero magnitude (`u32::MAX` if none; its exponent is their common trailing zeros) and the exactness bound
/// `sum_k |xr[k]| * wmax[k]` (summed in 8 partial sums: any order will do, it is compared with half the exact
/// limit). One pass, branch-free, the decoding in 32-bit lanes as for weight rows (`m as f32 * 2^s` is exact).
#[inline(always)]
fn decode_x_bound_generic(lo: &[u8], hi: &[u8], wmax: &[f64], xr: &mut [f64]) -> (u32, f64) {
    let n = xr.len();
    let (lo, hi8, wmax) = (&lo[..n], &hi[..n], &wmax[..n]);
    let mut lowbit = u32::MAX;
    let mut part = [0f64; 8];
    let mut k0 = 0;
    while k0 < n {
        let m = (n - k0).min(8);
        for i in 0..m {
            let k = k0 + i;
            let xb = lo[k] as u32 | (hi8[k] as u32) << 8;
            let e = (xb >> 10) & 0x1f;
            let normal = (e != 0) as u32;
            let mx = (xb & 0x3ff) | (normal << 10);
            let s = e - normal;
            let mag = mx as f32 * f32::from_bits((127 + s) << 23);
            let low = ((mx & mx.wrapping_neg()) as f32).to_bits() + (s << 23);
            lowbit = lowbit.min(if mx != 0 { low } else { u32::MAX });
            let v = mag as f64;
            xr[k] = f64::from_bits(v.to_bits() | ((xb >> 15) as u64) << 63);
            part[i] += v * wmax[k];
        }
        k0 += 8;
    }
    (lowbit, part.iter().sum())
}
dispatch!(decode_x_bound, decode_x_bound_generic, (lo: &[u8], hi: &[u8], wmax: &[f64], xr: &mut [f64]) -> (u32, f64));

#[inline(always)]
fn any_special_generic(hi: &[u8]) -> bool {
    hi.iter().fold(0u8, |a, &h| a | ((h & 0x7c == 0x7c) as u8)) != 0
}
dispatch!(any_special, any_special_generic, (hi: &[u8]) -> bool);

/// One f16 weight row from its two byte planes: raw bits to `raw`, `m << s` as f32 to `fw` (exact: 11 significant
/// bits; 0 for an infinity or NaN, the set is then unusable for the GEMM anyway). Returns whether any element is
/// infinite or NaN, 1 + the last column with a nonzero finite weight (0 if none), the f32 bits of the smallest
/// power of two dividing a nonzero magnitude (`u32::MAX` if none), the largest magnitude, and the count of nonzero
/// weights. All in 32-bit lanes (`m << s` reaches 2^40, but `m as f32 * 2^s` is exact) and branch-free, so it
/// vectorises 16 to an AVX-512 register.
#[inline(always)]
fn decode_f16_row_generic(lo: &[u8], hi: &[u8], raw: &mut [u16], fw: &mut [f32]) -> (bool, usize, u32, f64, usize) {
    let n = raw.len();
    let (lo, hi, fw) = (&lo[..n], &hi[..n], &mut fw[..n]);
    let mut special = 0u32;
    let mut lowbit = u32::MAX;
    let mut max = 0u32;
    let mut nnz = 0u32;
    let mut last = 0u32;
    for i in 0..n {
        let b = lo[i] as u32 | (hi[i] as u32) << 8;
        raw[i] = b as u16;
        let e = (b >> 10) & 0x1f;
        let normal = (e != 0) as u32;
        let is_special = (e == 31) as u32;
        let m = ((b & 0x3ff) | (normal << 10)) & is_special.wrapping_sub(1);
        let s = e - normal; // e - 1 for normals, 0 for subnormals: 0..=30 (30 only for specials, whose m is 0)
        let scale = f32::from_bits((127 + s) << 23);
        let mag = (m as f32 * scale).to_bits(); // exact: m < 2^11, a power-of-two scale
        fw[i] = f32::from_bits(mag | (b >> 15) << 31);
        // m & -m is m's lowest set bit, 2^t; as an f32, adding s to its exponent makes 2^(t + s).
        let low = ((m & m.wrapping_neg()) as f32).to_bits() + (s << 23);
        let nz = m != 0;
        lowbit = lowbit.min(if nz { low } else { u32::MAX });
        special |= is_special;
        max = max.max(mag); // non-negative f32 bits order like the values
        nnz += nz as u32;
        last = last.max(if nz { i as u32 + 1 } else { 0 });
    }
    (special != 0, last as usize, lowbit, f32::from_bits(max) as f64, nnz as usize)
}
dispatch!(decode_f16_row, decode_f16_row_generic,
    (lo: &[u8], hi: &[u8], raw: &mut [u16], fw: &mut [f32]) -> (bool, usize, u32, f64, usize));

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

#[derive(Clone, Copy, Default)]
struct SlotMeta {
    /// The product is in `sy` (GEMM) rather than `ys`/`yflags` (i128 path).
    fast: bool,
    /// An int8/uint8 product (plain integers, always on the GEMM path: see int.rs), else f16.
    int: bool,
    ncols: u32,
    /// Every product is a multiple of 2^shift ...
    shift: u32,
    /// ... and at most `bound` (the exactness bound of `try_defer`, relative error < 2^-42) in magnitude.
    bound: f64,
}

/// An accumulator row held as f64 counts: every value is an integer multiple of `2^unit` and at most `max` in
/// magnitude (`max` is a sum of rounded bounds, each within a relative 2^-42 of a true bound). The row stays in
/// f64 while a `+` keeps `max` below 2^52 units (so the true maximum is below 2^53 units: every sum is exact);
/// otherwise it goes back to i128 (exact conversion: each value / 2^unit is an integer below 2^53).
#[derive(Clone, Copy, Default)]
struct FRow {
    on: bool,
    unit: u32,
    max: f64,
}

/// `2^e` as an f64 (`e` in -1022..=1023).
#[inline]
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// Apply logged updates once this many are waiting (bounds the memory of a program that never reads its rows).
const MAX_LOG: usize = 2048;

const NO_SLOT: u32 = u32::MAX;

/// Element `l` of a group of `w` byte planes (little endian across planes).
#[inline]
pub fn element(group: &[u8], lanes: usize, w: usize, l: usize) -> u32 {
    let mut v = 0u32;
    for b in 0..w {
        v |= (group[b * lanes + l] as u32) << (8 * b);
    }
    v
}

/// `acc[n] += x * w[n]` (exact: the caller keeps every sum below 2^63).
#[inline]
fn mac_i64(acc: &mut [i64], x: i64, w: &[i64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512dq") && std::is_x86_feature_detected!("avx512vl") {
            // SAFETY: the CPU has the features.
            return unsafe { mac_i64_avx512(acc, x, w) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { mac_i64_avx2(acc, x, w) };
        }
    }
    mac_i64_generic(acc, x, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
unsafe fn mac_i64_avx512(acc: &mut [i64], x: i64, w: &[i64]) {
    mac_i64_generic(acc, x, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mac_i64_avx2(acc: &mut [i64], x: i64, w: &[i64]) {
    mac_i64_generic(acc, x, w)
}

#[inline(always)]
fn mac_i64_generic(acc: &mut [i64], x: i64, w: &[i64]) {
    for (a, &wv) in acc.iter_mut().zip(w) {
        *a += x * wv;
    }
}

#[inline]
fn is_f16_special(b: u16) -> bool {
    b & 0x7c00 == 0x7c00
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

    /// An f16 ABC at issue (functional mode): take a slot for its product `x . Wt`, computed now (the exact i128
    /// path) or later in a batch (the exact f64 GEMM path) with the weights installed now. Returns the slot.
    pub fn abc_f16(&mut self, lo: &[u8], hi: &[u8]) -> u32 {
        let dim = self.dim;
        let slot = self.take_slot();
        self.meta[slot as usize].int = false;
        if !self.try_defer(lo, hi, slot) {
            self.meta[slot as usize].fast = false;
            let s = slot as usize;
            let mut x = std::mem::take(&mut self.xcat);
            x.clear();
            x.extend_from_slice(&lo[..dim]);
            x.extend_from_slice(&hi[..dim]);
            let mut y = std::mem::take(&mut self.ys);
            let mut f = std::mem::take(&mut self.yflags);
            self.multiply(DType::F16, &x, &mut y[s * dim..(s + 1) * dim], &mut f[s * dim..(s + 1) * dim]);
            self.ys = y;
            self.yflags = f;
            self.xcat = x;
        }
        slot
    }

    /// A free product slot (a new one if none is free).
    fn take_slot(&mut self) -> u32 {
        let dim = self.dim;
        match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.nslots += 1;
                self.ys.resize(self.nslots * dim, 0);
                self.yflags.resize(self.nslots * dim, 0);
                let b = self.new_buf();
                self.slot_buf.push(b);
                self.meta.push(SlotMeta::default());
                (self.nslots - 1) as u32
            }
        }
    }

    /// Queue `x` for the GEMM if its products are provably exact in f64; false if it must take the i128 path
    /// (an infinite or NaN activation or weight, or a bound of 2^52 or more).
    fn try_defer(&mut self, lo: &[u8], hi: &[u8], slot: u32) -> bool {
        let dim = self.dim;
        // Specials anywhere (also in the zero rows past `rows`, where they make NaN) go the slow way.
        if any_special(&hi[..dim]) {
            return false;
        }
        let w = &mut self.w;
        if w.raw.len() == dim * dim {
            w.ensure_fast();
            if w.fast.state != 1 {
                return false;
            }
        }
        let rows = w.rows;
        let base = self.reserve_pending_row(rows);
        let w = &self.w;
        let xr = &mut self.pend_x[base..base + rows];
        let (lowbit, bound) = decode_x_bound(lo, hi, &w.fast.wmax[..rows], xr);
        // The common trailing zeros of the nonzero activations: every product is a multiple of 2^(tz + w.tz).
        let tz = if lowbit == u32::MAX { 0 } else { (lowbit >> 23) - 127 };
        // Exact if the bound, in units of 2^(tz + w.tz), is below 2^52 (both powers of two: an exact scaling).
        let limit = EXACT_BOUND * f64::from_bits(((1023 + tz + w.fast.tz) as u64) << 52);
        if !(bound < limit) {
            return false;
        }
        let m = &mut self.meta[slot as usize];
        (m.fast, m.bound) = (true, bound);
        self.queue_pending(slot, tz);
        true
    }

    /// Room in `pend_x` for one more pending vector of `rows` activations; returns where it starts.
    pub(super) fn reserve_pending_row(&mut self, rows: usize) -> usize {
        let base = self.pend.len() * rows;
        if self.pend.is_empty() {
            self.pend_rows = rows;
        }
        debug_assert_eq!(self.pend_rows, rows);
        // `pend_x`'s tail is stale, never read: it grows (and is cleared) only when too short, then by room for
        // two hand-off batches at once (a batch handed off takes the buffer and leaves a spare, maybe short).
        if self.pend_x.len() < base + rows {
            self.pend_x.resize((base + rows).max(2 * SUBMIT_VECS * rows), 0.0);
        }
        base
    }

    /// Queue the vector just written at the end of `pend_x` (its product goes to `slot`, scaled by 2^tz) and hand
    /// a full batch to the helpers now, so it is done by the time a read needs it.
    pub(super) fn queue_pending(&mut self, slot: u32, tz: u32) {
        self.pend.push((slot, tz));
        if self.pend.len() >= SUBMIT_VECS {
            self.compute_pending(true);
        }
    }

    /// Start the GEMM of every pending vector with the installed weights: handed to the helper threads if
    /// `hand_off` and it is large enough (collected by `collect`), else now. Either way the products land in their
    /// slots before any is applied.
    fn compute_pending(&mut self, hand_off: bool) {
        if self.pend.is_empty() {
            return;
        }
        let nvec = self.pend.len();
        let rows = self.pend_rows;
        let w = &self.w;
        let ncols = if rows == 0 { 0 } else { w.ncols };
        // Only the column panels that hold a nonzero weight.
        let cols = ncols.div_ceil(GEMM_COLS) * GEMM_COLS;
        let (stride, wtz) = (w.fast.stride, w.fast.tz);
        for &(slot, tz) in &self.pend {
            let m = &mut self.meta[slot as usize];
            (m.fast, m.ncols, m.shift) = (true, ncols as u32, tz + wtz);
        }
        if ncols == 0 {
            self.pend.clear();
            return;
        }
        let ystride = self.dim.div_ceil(GEMM_COLS) * GEMM_COLS;
        if !w.fast.sp_ptr.is_empty() {
            // Sparse weights: only the nonzero products (exact in any order, like the dense GEMM).
            let f = &w.fast;
            for (j, &(slot, _)) in self.pend.iter().enumerate() {
                let s = slot as usize;
                let b = self.slot_buf[s] as usize;
                assert!((b + 1) * ystride <= self.sy.len());
                // SAFETY: in range; this slot's buffer is no job's (jobs in flight write only their own slots').
                let y = unsafe { std::slice::from_raw_parts_mut(self.sy.as_mut_ptr().add(b * ystride), ncols) };
                y.fill(0.0);
                let x = &self.pend_x[j * rows..(j + 1) * rows];
                for k in 0..rows {
                    let xv = x[k];
                    if xv == 0.0 {
                        continue;
                    }
                    let (a, b) = (f.sp_ptr[k] as usize, f.sp_ptr[k + 1] as usize);
                    for (&c, &v) in f.sp_col[a..b].iter().zip(&f.sp_val[a..b]) {
                        y[c as usize] += xv * v; // exact: no rounding happens
                    }
                }
            }
            self.pend.clear();
            return;
        }
        let pool = if hand_off && nvec * rows * cols >= WORKER_MIN_MACS { Pool::get() } else { None };
        // Either way straight into the slots' buffers (jobs in flight fill other slots).
        let mut yoff = match pool {
            Some(_) => self.spare_off.pop().unwrap_or_default(),
            None => std::mem::take(&mut self.yoff),
        };
        yoff.clear();
        yoff.extend(self.pend.iter().map(|&(slot, _)| self.slot_buf[slot as usize] as usize * ystride));
        let y = OutPtr { base: self.sy.as_mut_ptr(), len: self.sy.len() };
        if let Some(pool) = pool {
            let x = std::mem::replace(&mut self.pend_x, self.spare_f64.pop().unwrap_or_default());
            let slots = std::mem::take(&mut self.pend);
            let job = Job { x, rows, w: w.fast.w.clone(), stride, cols, y, yoff, slots };
            self.inflight.push_back(pool.submit(job));
            return;
        }
        // SAFETY: see `sy`: these slots' buffers are no job's.
        unsafe { gemm_f64_raw(&self.pend_x, rows, rows, &self.w.fast.w, stride, cols, y.base, y.len, &yoff) };
        self.yoff = yoff;
        self.pend.clear();
    }

    /// Finish every GEMM in flight (waiting for the helpers, or running a job no helper has started): its
    /// products are then in their slots.
    fn collect(&mut self) {
        while let Some(cell) = self.inflight.pop_front() {
            let j = finish_job(&cell);
            self.spare_f64.push(j.x);
            self.spare_off.push(j.yoff);
            if self.pend.capacity() == 0 {
                let mut slots = j.slots;
                slots.clear();
                self.pend = slots;
            }
        }
    }

    /// Apply every logged row update (computing pending products first).
    fn flush(&mut self) {
        if self.log.is_empty() {
            return;
        }
        // Vectors still waiting are computed here while the helpers finish theirs.
        self.compute_pending(false);
        self.collect();
        let dim = self.dim;
        let log = std::mem::take(&mut self.log);
        let ys = std::mem::take(&mut self.ys);
        let yf = std::mem::take(&mut self.yflags);
        for &(row, add, slot) in &log {
            let s = slot as usize;
            if self.meta[s].fast {
                self.apply_fast(row as usize, add, s);
            } else {
                self.apply_values(row as usize, add, RowKind::F16, &ys[s * dim..(s + 1) * dim], &yf[s * dim..(s + 1) * dim]);
            }
            self.free_slots.push(slot);
        }
        self.ys = ys;
        self.yflags = yf;
        self.log = log;
        self.log.clear();
    }

    /// The update effect of an f16 ABC whose product is in `slot`: the kind check now (TypeMismatch is decided
    /// at the update cycle), the values when a reader needs them. Returns false on a kind mismatch for `+`.
    pub fn update_slot(&mut self, row: usize, add: bool, slot: u32) -> bool {
        let kind = if self.meta[slot as usize].int { RowKind::Int } else { RowKind::F16 };
        if add && self.row_kind[row] != kind {
            return false;
        }
        self.row_kind[row] = kind;
        self.log.push((row as u32, add, slot));
        if self.log.len() >= MAX_LOG {
            self.flush();
        }
        true
    }

    /// Append one row to the buffer (the caller checked type and overflow). `group` is `width(t)` byte planes.
    pub fn load_row(&mut self, t: DType, lo: &[u8], hi: &[u8]) {
        let k = self.buf_rows;
        self.buf_rows += 1;
        self.buf_type = Some(t);
        if self.timing_only {
            return;
        }
        let dim = self.dim;
        let b = &mut self.buf;
        if b.raw.len() != dim * dim {
            // A spare set whose image no job still reads, if there is one (else a fresh image is allocated).
            let free = self.spare.iter().rposition(|w| std::sync::Arc::strong_count(&w.fast.w) == 1);
            *b = free.map_or_else(Weights::empty, |i| self.spare.swap_remove(i));
            b.raw.resize(dim * dim, 0);
            b.special.resize(dim, false);
            b.ncols = 0;
            b.pre_rows = 0;
            let f = &mut b.fast;
            f.state = 0;
            f.lowbit = u32::MAX;
            f.nnz = 0;
            f.stride = dim.div_ceil(GEMM_COLS) * GEMM_COLS;
            f.wmax.clear();
            // Reuse the image's memory unless a GEMM job in flight still reads it. Every loaded row is written
            // whole (padding included) and rows past `rows` are never read, so no clearing is needed.
            if std::sync::Arc::get_mut(&mut f.w).is_none() {
                f.w = std::sync::Arc::new(Vec::new());
            }
        }
        b.rows = k + 1;
        let raw = &mut b.raw[k * dim..(k + 1) * dim];
        let mut last = 0usize;
        match t {
            DType::F16 => {
                let f = &mut b.fast;
                let row = f.image_row(k, dim);
                let (special, l, lowbit, max, nnz) = decode_f16_row(&lo[..dim], &hi[..dim], raw, &mut row[..dim]);
                row[dim..].fill(0.0);
                f.lowbit = f.lowbit.min(lowbit);
                f.nnz += nnz;
                f.wmax.push(max);
                last = l;
                b.special[k] = special;
            }
            _ => {
                if b.int.len() < (k + 1) * dim {
                    b.int.reserve_exact(dim * dim - b.int.len());
                    b.int.resize((k + 1) * dim, 0);
                }
                let int = &mut b.int[k * dim..(k + 1) * dim];
                for n in 0..dim {
                    raw[n] = lo[n] as u16;
                    let v = if t == DType::I8 { lo[n] as i8 as i32 } else { lo[n] as i32 };
                    int[n] = v;
                    if v != 0 {
                        last = n + 1;
                    }
                }
                b.special[k] = false;
                int::load_image(&mut b.fast, k, dim, int);
            }
        }
        b.ncols = b.ncols.max(last);
    }

    /// IW at issue: the buffer goes in flight and the buffer is empty again.
    pub fn start_install(&mut self) {
        let mut ws = std::mem::replace(&mut self.buf, Weights::empty());
        ws.ty = if self.buf_rows == 0 { None } else { self.buf_type };
        ws.rows = if self.timing_only { 0 } else { self.buf_rows };
        self.pending.push_back(ws);
        self.buf_rows = 0;
        self.buf_type = None;
    }

    /// The install effect: the oldest IW in flight becomes the array.
    pub fn finish_install(&mut self) {
        let Some(ws) = self.pending.pop_front() else { return };
        self.installed_type = ws.ty;
        if self.timing_only {
            return;
        }
        // Vectors issued before this install meet the old weights (a job keeps them alive).
        self.compute_pending(true);
        let old = std::mem::replace(&mut self.w, ws);
        if old.raw.len() == self.dim * self.dim && self.spare.len() < 4 {
            self.spare.push(old);
        }
    }

    /// `y[n] = sum_k x[k] * Wt[k][n]` for an activation group of type `t` (functional mode only): the f16 i128 path,
    /// and for int8/uint8 the reference the tests hold `abc_int` to.
    /// Integer results go to `y` as plain integers; f16 results as counts of 2^-48 plus `yflags`.
    /// Rows `k >= rows` of the array are zero (so is a never-installed array): they add nothing, except that an
    /// f16 activation that is infinite or NaN times a zero weight makes NaN.
    pub fn multiply(&mut self, t: DType, x: &[u8], y: &mut [i128], yflags: &mut [u8]) {
        let dim = self.dim;
        y[..dim].fill(0);
        yflags[..dim].fill(0);
        let rows = self.w.rows;
        let ncols = self.w.ncols;
        match t {
            DType::I8 | DType::U8 => {
                let mut acc = std::mem::take(&mut self.scratch);
                acc.clear();
                acc.resize(dim, 0);
                for k in 0..rows {
                    let xv = if t == DType::I8 { x[k] as i8 as i32 } else { x[k] as i32 };
                    if xv == 0 {
                        continue;
                    }
                    let w = &self.w.int[k * dim..k * dim + ncols];
                    for (a, &wv) in acc[..ncols].iter_mut().zip(w) {
                        *a += xv * wv;
                    }
                }
                for n in 0..ncols {
                    y[n] = acc[n] as i128;
                }
                self.scratch = acc;
            }
            _ => {
                self.w.ensure_pre(dim);
                // Fast path: group products by the activation's shift sx, sum `mx * (wm << ws)` exactly in i64,
                // then add each group into the i128 counts shifted by sx. Rows with specials go one by one.
                let mut buckets = std::mem::take(&mut self.buckets);
                buckets.resize(30 * dim, 0);
                let mut used = 0u32;
                let mut zero_row_nan = false;
                for k in 0..dim {
                    let xb = x[k] as u16 | (x[dim + k] as u16) << 8;
                    if k >= rows {
                        zero_row_nan |= is_f16_special(xb);
                        continue;
                    }
                    match f16_mant_shift(xb) {
                        Some((mx, sx)) if !self.w.special[k] => {
                            if mx == 0 {
                                continue;
                            }
                            let acc = &mut buckets[sx as usize * dim..sx as usize * dim + ncols];
                            if used & (1 << sx) == 0 {
                                used |= 1 << sx;
                                acc.fill(0);
                            }
                            let w = &self.w.pre[k * dim..k * dim + ncols];
                            mac_i64(acc, mx as i64, w);
                        }
                        _ => {
                            let wr = &self.w.raw[k * dim..(k + 1) * dim];
                            for n in 0..dim {
                                Self::product_slow(xb, wr[n], &mut y[n], &mut yflags[n]);
                            }
                        }
                    }
                }
                for sx in 0..30 {
                    if used & (1 << sx) != 0 {
                        let acc = &buckets[sx * dim..sx * dim + ncols];
                        for n in 0..ncols {
                            y[n] += (acc[n] as i128) << sx;
                        }
                    }
                }
                if zero_row_nan {
                    for f in yflags[..dim].iter_mut() {
                        *f |= FLAG_NAN;
                    }
                }
                self.buckets = buckets;
            }
        }
    }

    /// One f16 product with specials: NaN input or inf*0 -> NaN; otherwise an infinite product -> that infinity.
    fn product_slow(xb: u16, wb: u16, y: &mut i128, f: &mut u8) {
        let is_nan = |b: u16| b & 0x7c00 == 0x7c00 && b & 0x3ff != 0;
        let is_inf = |b: u16| b & 0x7fff == 0x7c00;
        let is_zero = |b: u16| b & 0x7fff == 0;
        if is_nan(xb) || is_nan(wb) {
            *f |= FLAG_NAN;
        } else if is_inf(xb) || is_inf(wb) {
            if is_zero(xb) || is_zero(wb) {
                *f |= FLAG_NAN;
            } else if (xb ^ wb) & 0x8000 != 0 {
                *f |= FLAG_NINF;
            } else {
                *f |= FLAG_PINF;
            }
        } else if let (Some((mx, sx)), Some((mw, sw))) = (f16_mant_shift(xb), f16_mant_shift(wb)) {
            *y += ((mx * mw) as i128) << (sx + sw);
        }
    }

    /// The storage slot of an accumulator row, allocated (zero) on first use.
    fn slot(&mut self, row: usize) -> usize {
        if self.row_slot.is_empty() {
            self.row_slot = vec![NO_SLOT; self.row_kind.len()];
        }
        if self.row_slot[row] == NO_SLOT {
            self.row_slot[row] = (self.rows.len() / self.dim) as u32;
            self.rows.resize(self.rows.len() + self.dim, 0);
            self.flags.resize(self.flags.len() + self.dim, 0);
            self.rcols.push(0);
            let b = self.new_buf();
            self.row_buf.push(b);
            self.fst.push(FRow::default());
        }
        self.row_slot[row] as usize
    }

    /// Move storage slot `s` from f64 to i128 counts (exact: see `FRow`); columns past `rcols` are zero.
    fn to_i128(&mut self, s: usize) {
        let f = self.fst[s];
        if !f.on {
            return;
        }
        let (dim, ystride) = (self.dim, self.dim.div_ceil(GEMM_COLS) * GEMM_COLS);
        let rc = self.rcols[s] as usize;
        let scale = pow2(-(f.unit as i32));
        let r = &mut self.rows[s * dim..(s + 1) * dim];
        let b = self.row_buf[s] as usize;
        for (d, &x) in r[..rc].iter_mut().zip(&self.sy[b * ystride..b * ystride + rc]) {
            *d = ((x * scale) as i64 as i128) << f.unit;
        }
        r[rc..].fill(0);
        self.fst[s].on = false;
    }

    /// A new zero buffer of `sy`; returns its index.
    fn new_buf(&mut self) -> u32 {
        // Growing may move `sy`: no job may be writing into it (see `sy`).
        self.collect();
        let ystride = self.dim.div_ceil(GEMM_COLS) * GEMM_COLS;
        let b = self.sy.len() / ystride;
        self.sy.resize(self.sy.len() + ystride, 0.0);
        b as u32
    }

    /// row := y or row += y for the GEMM product of `slot`: exact integers, multiples of 2^shift, at most `bound`
    /// in magnitude (see `SlotMeta`), zero past `ncols`, no flags.
    fn apply_fast(&mut self, row: usize, add: bool, slot: usize) {
        let SlotMeta { ncols, shift, bound, .. } = self.meta[slot];
        let s = self.slot(row);
        let (dim, ystride) = (self.dim, self.dim.div_ceil(GEMM_COLS) * GEMM_COLS);
        let c = ncols as usize;
        let rc = self.rcols[s] as usize;
        let f = self.fst[s];
        if !add {
            // The product becomes the row: swap buffers (the row's old one goes back with the slot). Columns past
            // `rcols` are never read, so nothing needs clearing.
            std::mem::swap(&mut self.slot_buf[slot], &mut self.row_buf[s]);
            if !f.on {
                // The f64 row has no flags: clear the i128 row's (they would come back on a later `to_i128`).
                self.flags[s * dim..s * dim + rc.max(c)].fill(0);
            }
            self.fst[s] = FRow { on: true, unit: shift, max: bound };
            self.rcols[s] = c as u32;
            return;
        }
        let (rb, sb) = (self.row_buf[s] as usize, self.slot_buf[slot] as usize);
        if f.on {
            let unit = f.unit.min(shift);
            let max = f.max + bound;
            if max < EXACT_BOUND * pow2(unit as i32) {
                // Two distinct buffers of `sy`.
                let (fr, v) = if rb < sb {
                    let (a, b) = self.sy.split_at_mut(sb * ystride);
                    (&mut a[rb * ystride..(rb + 1) * ystride], &b[..c])
                } else {
                    let (a, b) = self.sy.split_at_mut(rb * ystride);
                    (&mut b[..ystride], &a[sb * ystride..sb * ystride + c])
                };
                if c > rc {
                    fr[rc..c].fill(0.0);
                }
                for (d, &x) in fr[..c].iter_mut().zip(v) {
                    *d += x; // exact: both are multiples of 2^unit and every sum is below 2^53 units
                }
                self.fst[s] = FRow { on: true, unit, max };
                self.rcols[s] = rc.max(c) as u32;
                return;
            }
            self.to_i128(s);
        }
        // v / 2^shift is an exact integer below 2^53: exact in i64, then shifted back in i128.
        let scale = pow2(-(shift as i32));
        let r = &mut self.rows[s * dim..(s + 1) * dim];
        for (d, &x) in r[..c].iter_mut().zip(&self.sy[sb * ystride..sb * ystride + c]) {
            *d = d.wrapping_add(((x * scale) as i64 as i128) << shift);
        }
        self.rcols[s] = rc.max(c) as u32;
    }

    /// The ABC effect: row := y or row += y. Returns false on a kind mismatch for `+` (TypeMismatch).
    pub fn update(&mut self, row: usize, add: bool, kind: RowKind, y: &[i128], yflags: &[u8]) -> bool {
        if add && self.row_kind[row] != kind {
            return false;
        }
        self.row_kind[row] = kind;
        if self.timing_only {
            return true;
        }
        // Logged f16 updates come first (an integer update may overwrite one of their rows).
        self.flush();
        self.apply_values(row, add, kind, y, yflags);
        true
    }

    fn apply_values(&mut self, row: usize, add: bool, kind: RowKind, y: &[i128], yflags: &[u8]) {
        let s = self.slot(row);
        if add {
            self.to_i128(s);
        }
        self.fst[s].on = false;
        self.rcols[s] = self.dim as u32;
        let dim = self.dim;
        let r = &mut self.rows[s * dim..(s + 1) * dim];
        let f = &mut self.flags[s * dim..(s + 1) * dim];
        if !add {
            r.copy_from_slice(&y[..dim]);
            f.copy_from_slice(&yflags[..dim]);
        } else if kind == RowKind::Int {
            for n in 0..dim {
                r[n] = (r[n] as i64).wrapping_add(y[n] as i64) as i128;
                f[n] |= yflags[n];
            }
        } else {
            for n in 0..dim {
                r[n] = r[n].wrapping_add(y[n]);
                f[n] |= yflags[n];
            }
        }
    }

    /// ACC: row `row` as `t` (i32 or f32) bits per lane.
    pub fn read_row(&mut self, row: usize, t: DType, out: &mut [u32]) {
        self.flush();
        let dim = self.dim;
        let s = self.row_slot.get(row).copied().unwrap_or(NO_SLOT);
        if s == NO_SLOT {
            out[..dim].fill(0);
            return;
        }
        let s = s as usize;
        let rc = self.rcols[s] as usize;
        if self.fst[s].on {
            if t == DType::I32 || self.row_kind[row] == RowKind::Int {
                self.to_i128(s);
            } else {
                // Exact f64 counts, no flags: one rounding to f32 (to nearest even), then an exact scaling (the
                // result is never subnormal: a nonzero count is at least 1). `+ 0.0` makes a zero +0.
                let ystride = dim.div_ceil(GEMM_COLS) * GEMM_COLS;
                let b = self.row_buf[s] as usize;
                let fr = &self.sy[b * ystride..b * ystride + rc];
                for (o, &x) in out[..rc].iter_mut().zip(fr) {
                    *o = (((x + 0.0) as f32) * TWO_POW_M48).to_bits();
                }
                out[rc..dim].fill(0);
                return;
            }
        }
        let r = &self.rows[s * dim..(s + 1) * dim];
        let f = &self.flags[s * dim..(s + 1) * dim];
        let f16 = self.row_kind[row] == RowKind::F16;
        out[rc..dim].fill(0); // zero counts, no flags: +0 (f32) or 0 (i32)
        for n in 0..rc {
            out[n] = if t == DType::I32 {
                r[n] as i64 as i32 as u32
            } else if f16 {
                let fl = f[n];
                if fl & FLAG_NAN != 0 || fl & (FLAG_PINF | FLAG_NINF) == FLAG_PINF | FLAG_NINF {
                    F32_NAN
                } else if fl & FLAG_PINF != 0 {
                    f32::INFINITY.to_bits()
                } else if fl & FLAG_NINF != 0 {
                    f32::NEG_INFINITY.to_bits()
                } else {
                    // One rounding either way: i64 -> f32 and i128 -> f32 both round to nearest even.
                    let v = r[n];
                    let lo = v as i64;
                    // (black_box keeps LLVM from folding the i64 branch back into the slow i128 conversion.)
                    let f = if lo as i128 == v { std::hint::black_box(lo) as f32 } else { v as f32 };
                    canon_f32(f * TWO_POW_M48)
                }
            } else {
                canon_f32(r[n] as i64 as f32)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl MxmPlane {
        /// Row `row` as exact i128 counts and flags (moved out of f64 if it is there), for comparisons.
        fn row_counts(&mut self, row: usize) -> Option<(Vec<i128>, Vec<u8>)> {
            self.flush();
            let s = *self.row_slot.get(row).filter(|&&s| s != NO_SLOT)? as usize;
            self.to_i128(s);
            let dim = self.dim;
            Some((self.rows[s * dim..(s + 1) * dim].to_vec(), self.flags[s * dim..(s + 1) * dim].to_vec()))
        }
    }

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Full-range finite f16 (subnormals to 65504), 320 x 320, against an independent exact sum.
    #[test]
    fn full_plane_f16_is_exact_and_order_free() {
        let dim = 320;
        let mut seed = 77u64;
        let f16 = |seed: &mut u64| loop {
            let b = rng(seed) as u16;
            if b & 0x7c00 != 0x7c00 {
                return b;
            }
        };
        let w: Vec<Vec<u16>> = (0..dim).map(|_| (0..dim).map(|_| f16(&mut seed)).collect()).collect();
        let x: Vec<u16> = (0..dim).map(|_| f16(&mut seed)).collect();
        let run = |w: &Vec<Vec<u16>>, x: &Vec<u16>| -> (Vec<i128>, Vec<u32>) {
            let mut p = MxmPlane::new(dim, 4, false);
            for row in w {
                let mut g = vec![0u8; 2 * dim];
                for n in 0..dim {
                    g[n] = row[n] as u8;
                    g[dim + n] = (row[n] >> 8) as u8;
                }
                p.load_row(DType::F16, &g[..dim], &g[dim..]);
            }
            p.start_install();
            p.finish_install();
            let mut xg = vec![0u8; 2 * dim];
            for k in 0..dim {
                xg[k] = x[k] as u8;
                xg[dim + k] = (x[k] >> 8) as u8;
            }
            let mut y = vec![0i128; dim];
            let mut f = vec![0u8; dim];
            p.multiply(DType::F16, &xg, &mut y, &mut f);
            assert!(f.iter().all(|&v| v == 0));
            p.update(0, false, RowKind::F16, &y, &f);
            let mut out = vec![0u32; dim];
            p.read_row(0, DType::F32, &mut out);
            (y, out)
        };
        let (y, out) = run(&w, &x);
        // Independent: each f16 times 2^24 is an exact integer; products are counts of 2^-48.
        let int24 = |b: u16| (crate::numerics::f16_to_f64(b) * 16777216.0) as i128;
        for n in 0..dim {
            let want: i128 = (0..dim).map(|k| int24(x[k]) * int24(w[k][n])).sum();
            assert_eq!(y[n], want, "lane {n}");
            assert_eq!(f32::from_bits(out[n]), (want as f32) * TWO_POW_M48);
        }
        // Reverse K: identical bits.
        let wr: Vec<Vec<u16>> = w.iter().rev().cloned().collect();
        let xr: Vec<u16> = x.iter().rev().cloned().collect();
        assert_eq!(run(&wr, &xr).1, out);
    }

    /// The batched f64 GEMM path against the exact i128 path, one vector at a time, on random data: narrow and
    /// full exponent ranges, subnormals, zeros, infinities and NaN in weights and activations, partial row counts,
    /// `=` and `+` updates, weights changing between batches.
    #[test]
    fn deferred_gemm_matches_exact_path() {
        let dim = 320;
        let mut seed = 12345u64;
        // A random f16 of a given class.
        let gen = |seed: &mut u64, class: u64| -> u16 {
            let r = rng(seed);
            let sign = ((r >> 40) as u16 & 1) << 15;
            match class {
                // typical: exponents near 1 (|x| in ~[2^-6, 2^3])
                0 => sign | ((((r % 10) + 9) as u16) << 10) | (r >> 20) as u16 & 0x3ff,
                // full finite range, subnormals included
                1 => loop {
                    let b = rng(seed) as u16;
                    if b & 0x7c00 != 0x7c00 {
                        return b;
                    }
                },
                // huge values (exponent 25..30)
                2 => sign | ((((r % 6) + 25) as u16) << 10) | (r >> 20) as u16 & 0x3ff,
                // tiny: subnormals and the smallest normals
                3 => sign | ((((r % 2)) as u16) << 10) | (r >> 20) as u16 & 0x3ff,
                // zero (both signs)
                4 => sign,
                // specials
                _ => [0x7c00u16, 0xfc00, 0x7e00, 0x7c01][(r % 4) as usize],
            }
        };
        let pick = |seed: &mut u64, mix: &[(u64, u64)]| -> u64 {
            let total: u64 = mix.iter().map(|m| m.1).sum();
            let mut r = rng(seed) % total;
            for &(c, w) in mix {
                if r < w {
                    return c;
                }
                r -= w;
            }
            0
        };
        let mixes: [&[(u64, u64)]; 7] = [
            &[(0, 100)],
            &[(0, 90), (3, 5), (4, 5)],
            &[(1, 100)],
            &[(0, 50), (2, 50)],
            &[(0, 98), (4, 1), (5, 1)],
            &[(3, 60), (2, 40)],
            // sparse (selection-like) weights
            &[(4, 99), (0, 1)],
        ];
        let mut used_fast = 0usize;
        for case in 0..28 {
            let wmix = mixes[case % 7];
            let rows = [320usize, 1, 17, 300][case % 4];
            let mut fast = MxmPlane::new(dim, 64, false);
            let mut slow = MxmPlane::new(dim, 64, false);
            for set in 0..3 {
                let cols = [320usize, 5, 64, 319][(case / 4 + set) % 4];
                for _k in 0..rows {
                    let mut g = vec![0u8; 2 * dim];
                    for n in 0..cols {
                        let c = pick(&mut seed, wmix);
                        let b = gen(&mut seed, c);
                        g[n] = b as u8;
                        g[dim + n] = (b >> 8) as u8;
                    }
                    fast.load_row(DType::F16, &g[..dim], &g[dim..]);
                    slow.load_row(DType::F16, &g[..dim], &g[dim..]);
                }
                for p in [&mut fast, &mut slow] {
                    p.start_install();
                    p.finish_install();
                }
                for v in 0..40 {
                    let xmix = mixes[(case + v) % 7];
                    let mut xg = vec![0u8; 2 * dim];
                    for k in 0..dim {
                        let c = pick(&mut seed, xmix);
                        let b = gen(&mut seed, c);
                        xg[k] = b as u8;
                        xg[dim + k] = (b >> 8) as u8;
                    }
                    let row = (rng(&mut seed) % 8) as usize;
                    let add = rng(&mut seed) % 3 != 0;
                    let slot = fast.abc_f16(&xg[..dim], &xg[dim..]);
                    used_fast += fast.meta[slot as usize].fast as usize;
                    let mut y = vec![0i128; dim];
                    let mut f = vec![0u8; dim];
                    slow.multiply(DType::F16, &xg, &mut y, &mut f);
                    let ok_fast = fast.update_slot(row, add, slot);
                    let ok_slow = slow.update(row, add, RowKind::F16, &y, &f);
                    assert_eq!(ok_fast, ok_slow);
                    // Now and then: a read mid-stream (a flush with a partial batch and jobs in flight), or an
                    // integer update (a row leaves f64 storage).
                    match rng(&mut seed) % 16 {
                        0 | 1 => {
                            let r = (rng(&mut seed) % 8) as usize;
                            compare_rows(&mut fast, &mut slow, r, case);
                        }
                        2 => {
                            let r = (rng(&mut seed) % 8) as usize;
                            let yi: Vec<i128> = (0..dim).map(|_| rng(&mut seed) as i32 as i128).collect();
                            let add = rng(&mut seed) % 2 == 0;
                            let f0 = vec![0u8; dim];
                            assert_eq!(fast.update(r, add, RowKind::Int, &yi, &f0), slow.update(r, add, RowKind::Int, &yi, &f0));
                        }
                        _ => {}
                    }
                }
            }
            for row in 0..8 {
                compare_rows(&mut fast, &mut slow, row, case);
            }
        }
        assert!(used_fast > 200, "the fast path took only {used_fast} vectors");
    }

    /// int8/uint8 ABCs on the deferred GEMM (`abc_int`) against the i32 loop (`multiply` + `update`), with weight
    /// sets of every int type and density interleaved with f16 sets on the same rows (TypeMismatch on `+` onto the
    /// other kind), and rows read mid-stream as i32 and as f32.
    #[test]
    fn deferred_int_matches_exact_path() {
        let dim = 320;
        let mut seed = 777u64;
        let mut fast = MxmPlane::new(dim, 16, false);
        let mut slow = MxmPlane::new(dim, 16, false);
        let read = |fast: &mut MxmPlane, slow: &mut MxmPlane, row: usize, t: DType| {
            let (mut a, mut b) = (vec![0u32; dim], vec![0u32; dim]);
            fast.read_row(row, t, &mut a);
            slow.read_row(row, t, &mut b);
            assert_eq!(a, b, "row {row} as {t:?}");
        };
        let mut mismatches = 0;
        for set in 0..24 {
            let wt = [DType::I8, DType::U8, DType::F16, DType::I8][set % 4];
            let rows = [320usize, 1, 200, 0, 319][set % 5];
            let cols = [320usize, 7, 160][set % 3];
            let sparse = set % 6 == 5;
            for _k in 0..rows {
                let mut g = vec![0u8; 2 * dim];
                for n in 0..cols {
                    let r = rng(&mut seed);
                    if wt == DType::F16 {
                        g[n] = r as u8;
                        g[dim + n] = 0x38 | (r >> 8) as u8 & 0x83;
                    } else if !sparse || r % 40 == 0 {
                        g[n] = (r >> 8) as u8;
                    }
                }
                fast.load_row(wt, &g[..dim], &g[dim..]);
                slow.load_row(wt, &g[..dim], &g[dim..]);
            }
            for p in [&mut fast, &mut slow] {
                p.start_install();
                p.finish_install();
            }
            let xt = if wt == DType::F16 { DType::F16 } else { [DType::I8, DType::U8][set % 2] };
            for v in 0..3 * SUBMIT_VECS / 2 {
                let xg: Vec<u8> = (0..2 * dim)
                    .map(|i| {
                        let r = rng(&mut seed);
                        if i >= dim { 0x38 | (r as u8 & 0x83) } else if v % 5 == 0 { [0u8, 127, 128, 255][(r % 4) as usize] } else { r as u8 }
                    })
                    .collect();
                let row = (rng(&mut seed) % 12) as usize;
                let add = rng(&mut seed) % 4 != 0;
                let slot = if xt == DType::F16 { fast.abc_f16(&xg[..dim], &xg[dim..]) } else { fast.abc_int(xt, &xg[..dim]) };
                let (mut y, mut f) = (vec![0i128; dim], vec![0u8; dim]);
                slow.multiply(xt, &xg, &mut y, &mut f);
                let kind = if xt == DType::F16 { RowKind::F16 } else { RowKind::Int };
                let ok = fast.update_slot(row, add, slot);
                assert_eq!(ok, slow.update(row, add, kind, &y, &f));
                mismatches += !ok as usize;
                if !ok {
                    // As a run stopped by the error would not, keep going: the slot is never applied.
                    fast.free_slots.push(slot);
                }
                if rng(&mut seed) % 24 == 0 {
                    let r = (rng(&mut seed) % 12) as usize;
                    read(&mut fast, &mut slow, r, if rng(&mut seed) % 2 == 0 { DType::I32 } else { DType::F32 });
                }
            }
        }
        for row in 0..12 {
            read(&mut fast, &mut slow, row, DType::F32);
            read(&mut fast, &mut slow, row, DType::I32);
            assert_eq!(fast.row_counts(row), slow.row_counts(row), "row {row}");
        }
        assert!(mismatches > 0);
    }

    /// Jobs write their products straight into the plane's slot buffers: a plane dropped with jobs queued or
    /// running (a run stopped early) cancels or waits for them, and slots allocated while jobs are in flight (the
    /// slot storage grows, after collecting them) keep every product.
    #[test]
    fn jobs_in_flight_survive_growth_and_drop() {
        let dim = 320;
        let mut seed = 4242u64;
        for rounds in [0usize, 1] {
            let mut fast = MxmPlane::new(dim, 64, false);
            let mut slow = MxmPlane::new(dim, 64, false);
            for _k in 0..dim {
                let g: Vec<u8> = (0..2 * dim).map(|i| if i < dim { rng(&mut seed) as u8 } else { 0x38 | (rng(&mut seed) as u8 & 0x83) }).collect();
                fast.load_row(DType::F16, &g[..dim], &g[dim..]);
                slow.load_row(DType::F16, &g[..dim], &g[dim..]);
            }
            for p in [&mut fast, &mut slow] {
                p.start_install();
                p.finish_install();
            }
            for v in 0..8 * SUBMIT_VECS {
                let xg: Vec<u8> = (0..2 * dim).map(|i| if i < dim { rng(&mut seed) as u8 } else { 0x3c | (rng(&mut seed) as u8 & 0x81) }).collect();
                let slot = fast.abc_f16(&xg[..dim], &xg[dim..]);
                assert!(fast.meta[slot as usize].fast);
                let (mut y, mut f) = (vec![0i128; dim], vec![0u8; dim]);
                slow.multiply(DType::F16, &xg, &mut y, &mut f);
                let row = v % 48;
                assert!(fast.update_slot(row, v >= 48, slot));
                assert!(slow.update(row, v >= 48, RowKind::F16, &y, &f));
            }
            if rounds == 1 {
                for row in 0..48 {
                    compare_rows(&mut fast, &mut slow, row, 0);
                }
            }
            drop(fast); // with jobs in flight when rounds == 0
        }
    }

    /// The 32-bit-lane weight-row decode against plain i64 arithmetic, over every f16 bit pattern (in rows, some
    /// with every element zero or special) and through the vectorised dispatch.
    #[test]
    fn decode_f16_row_matches_reference() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut rows: Vec<Vec<u16>> = all.chunks(320).map(|c| c.to_vec()).collect();
        rows.push(vec![0x8000; 37]);
        rows.push(vec![0x7c00, 0, 0x0001, 0x8400]);
        rows.push(vec![0x0400, 0x0200, 0x0000, 0x3c00, 0]);
        for r in &rows {
            let n = r.len();
            let lo: Vec<u8> = r.iter().map(|&b| b as u8).collect();
            let hi: Vec<u8> = r.iter().map(|&b| (b >> 8) as u8).collect();
            let (mut raw, mut fw) = (vec![0u16; n], vec![f32::NAN; n]);
            let (special, last, lowbit, max, nnz) = decode_f16_row(&lo, &hi, &mut raw, &mut fw);
            assert_eq!(raw, *r);
            let (mut w_or, mut w_max, mut w_nnz, mut w_last, mut w_special) = (0i64, 0i64, 0usize, 0usize, false);
            for (i, &b) in r.iter().enumerate() {
                let mag = match f16_mant_shift(b) {
                    Some((m, sh)) if !is_f16_special(b) => (m.unsigned_abs() as i64) << sh,
                    _ => 0,
                };
                w_special |= is_f16_special(b);
                let want = if b & 0x8000 != 0 { -(mag as f32) } else { mag as f32 };
                assert_eq!(fw[i].to_bits(), want.to_bits(), "bits {b:#06x}");
                w_or |= mag;
                w_max = w_max.max(mag);
                w_nnz += (mag != 0) as usize;
                if mag != 0 {
                    w_last = i + 1;
                }
            }
            assert_eq!((special, last, max, nnz), (w_special, w_last, w_max as f64, w_nnz));
            if w_or != 0 {
                assert_eq!(lowbit, ((1u64 << w_or.trailing_zeros()) as f32).to_bits());
            } else {
                assert_eq!(lowbit, u32::MAX);
            }
        }
    }

    /// The activation decode against plain i64 arithmetic, over every finite f16 bit pattern (in rows, one all
    /// zero), with the bound summed in the same order.
    #[test]
    fn decode_x_bound_matches_reference() {
        let finite: Vec<u16> = (0..=u16::MAX).filter(|&b| !is_f16_special(b)).collect();
        let mut rows: Vec<Vec<u16>> = finite.chunks(320).map(|c| c.to_vec()).collect();
        rows.push(vec![0x8000, 0, 0x8000]);
        let mut seed = 5u64;
        for r in &rows {
            let n = r.len();
            let lo: Vec<u8> = r.iter().map(|&b| b as u8).collect();
            let hi: Vec<u8> = r.iter().map(|&b| (b >> 8) as u8).collect();
            let wmax: Vec<f64> = (0..n).map(|_| (rng(&mut seed) % 4096) as f64).collect();
            let mut xr = vec![f64::NAN; n];
            let (lowbit, bound) = decode_x_bound(&lo, &hi, &wmax, &mut xr);
            let (mut or, mut part) = (0i64, [0f64; 8]);
            for (k, &b) in r.iter().enumerate() {
                let (m, sh) = f16_mant_shift(b).unwrap();
                let v = ((m as i64) << sh) as f64;
                let want = if b & 0x8000 != 0 && m == 0 { -0.0 } else { v };
                assert_eq!(xr[k].to_bits(), want.to_bits(), "bits {b:#06x}");
                or |= (m.unsigned_abs() as i64) << sh;
                part[k % 8] += v.abs() * wmax[k];
            }
            assert_eq!(bound.to_bits(), part.iter().sum::<f64>().to_bits());
            let want_low = if or == 0 { u32::MAX } else { ((1u64 << or.trailing_zeros()) as f32).to_bits() };
            assert_eq!(lowbit, want_low);
        }
    }

    /// Row `row` of both planes: equal as read by ACC (in the row's kind) and as exact counts.
    fn compare_rows(fast: &mut MxmPlane, slow: &mut MxmPlane, row: usize, case: usize) {
        let dim = fast.dim;
        let t = if slow.row_kind[row] == RowKind::Int { DType::I32 } else { DType::F32 };
        let (mut a, mut b) = (vec![0u32; dim], vec![0u32; dim]);
        fast.read_row(row, t, &mut a);
        slow.read_row(row, t, &mut b);
        assert_eq!(a, b, "case {case} row {row}");
        assert_eq!(fast.row_counts(row), slow.row_counts(row), "case {case} row {row}");
    }

    /// `+` onto an f64 row until the sum of bounds passes 2^52 units: the row moves to i128 and stays exact.
    #[test]
    fn f64_rows_fall_back_to_i128() {
        let dim = 320;
        let mut fast = MxmPlane::new(dim, 4, false);
        let mut slow = MxmPlane::new(dim, 4, false);
        // All weights 1.0 (dense): 2^24 counts.
        let one = [0x00u8; 320].iter().chain([0x3cu8; 320].iter()).copied().collect::<Vec<u8>>();
        for p in [&mut fast, &mut slow] {
            for _ in 0..dim {
                p.load_row(DType::F16, &one[..dim], &one[dim..]);
            }
            p.start_install();
            p.finish_install();
        }
        // 319 x 65504 (2047 << 29 counts) and one 2^-24 (1 count): a bound of about 2^48.3 units of 2^24 each,
        // so one vector is exact in f64 but 16 summed in a row are not (by the bound).
        let mut x = vec![0u8; 2 * dim];
        for k in 0..dim {
            let b: u16 = if k == 0 { 0x0001 } else if k % 2 == 0 { 0x7bff } else { 0xfbff };
            x[k] = b as u8;
            x[dim + k] = (b >> 8) as u8;
        }
        for i in 0..24 {
            let slot = fast.abc_f16(&x[..dim], &x[dim..]);
            assert!(fast.meta[slot as usize].fast, "vector {i} takes the GEMM");
            let mut y = vec![0i128; dim];
            let mut f = vec![0u8; dim];
            slow.multiply(DType::F16, &x, &mut y, &mut f);
            assert!(fast.update_slot(0, i > 0, slot));
            assert!(slow.update(0, i > 0, RowKind::F16, &y, &f));
            if i == 3 {
                fast.flush();
                assert!(fast.fst[fast.row_slot[0] as usize].on, "a few vectors stay in f64");
            }
        }
        fast.flush();
        assert!(!fast.fst[fast.row_slot[0] as usize].on, "24 vectors went to i128");
        compare_rows(&mut fast, &mut slow, 0, 0);
    }

    #[test]
    fn i128_to_f32_rounds_to_nearest_even() {
        // 2^24 + 1 is a tie between 2^24 and 2^24 + 2: even mantissa wins (2^24).
        assert_eq!((16_777_217i128) as f32, 16_777_216.0);
        // 2^24 + 3 is a tie between 2^24 + 2 and 2^24 + 4: 2^24 + 4 is even.
        assert_eq!((16_777_219i128) as f32, 16_777_220.0);
        // Just above the tie rounds up (sticky bits far below).
        let big: i128 = (1i128 << 100) + (1i128 << 76) + 1;
        assert_eq!(big as f32, ((1u128 << 100) + (1u128 << 77)) as f32);
        assert_eq!((big as f32) as f64, 2f64.powi(100) + 2f64.powi(77));
        // Scaling by 2^-48 is exact.
        assert_eq!(((3i128 as f32) * TWO_POW_M48) as f64, 3.0 * 2f64.powi(-48));
    }
}
