//! An MXM plane (docs/isa.md section 4): weight buffer, installed array, accumulator rows, exact numerics.
//!
//! int8/uint8: products and sums are exact integers (64-bit rows, wrapping like the reference).
//! fp16: every finite f16 is `m * 2^(s - 24)` with `|m| < 2^11`, `s` in 0..=29, so a product is an exact integer count
//! of `2^-48`: `(m1 * m2) << (s1 + s2)` (< 2^80). Rows hold that count in an i128, so sums are exact and order-free.
//! `ACC.f32` of an f16 row is `(count as f32) * 2^-48`: Rust's i128 -> f32 cast rounds to nearest even, and the
//! scaling by 2^-48 is exact because the result (|count| >= 1, so >= 2^-48) is never subnormal in f32 and
//! |count| < 2^127 keeps it finite; so the whole thing is one correct rounding of the exact sum.
//! Specials are flags per lane: NaN, +inf, -inf.
//!
//! Speed (functional mode), with the same values: an f16 ABC's product is not computed at issue. Each vector whose
//! activations and the installed weights are finite is checked against a bound: with `x_k = m << s` (counts of
//! 2^-48) divided by their common power of two 2^tx, and the weights likewise by 2^tw, every product and every
//! partial sum of `sum_k x_k w_kn` is an integer of magnitude at most `B = sum_k |x_k| * max_n |w_kn|`. If
//! `B < 2^52` (half of f64's exact-integer range, so the bound's own rounding cannot matter) the dot products are
//! exact in f64 in any order; such vectors wait and are multiplied together, as one GEMM with the weights they
//! met, before the next install (on a helper thread when large, or only over the nonzeros of a sparse weight
//! set). The others (specials, or a larger spread) take the exact i128 path at issue. Row updates are logged at
//! their cycle (TypeMismatch is decided there) and applied in order when a row is read or an integer update
//! comes, so ACC sees exactly the rows the step-by-step definition gives.

use crate::isa::DType;
use crate::numerics::{canon_f32, f16_mant_shift, F32_NAN};
use std::collections::VecDeque;

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
/// Each loaded row is kept raw (for products with specials) and pre-converted for the fast exact paths.
struct Weights {
    ty: Option<DType>,
    rows: usize,
    /// Columns `n >= ncols` are zero in every loaded row.
    ncols: usize,
    raw: Vec<u16>,
    /// f16: `m << s` (< 2^40; 0 for an infinity/NaN), so a product with an activation mantissa fits an i64.
    pre: Vec<i64>,
    /// i8/u8 weights as integers.
    int: Vec<i32>,
    /// f16: does row k hold an infinity or NaN? Such rows go one product at a time.
    special: Vec<bool>,
    /// The exact-GEMM image (f16 only, built on first use): see `FastW`.
    fast: FastW,
}

/// An f16 weight set as f64 for the exact GEMM fast path: `w[k][n] = pre[k][n] >> tz` (exact: `tz` is the
/// smallest trailing-zero count of any nonzero `pre`), rows of `stride` (a multiple of `GEMM_COLS`, zero past
/// `ncols`), and `wmax[k] = max_n |w[k][n]|` for the per-vector exactness bound.
#[derive(Default)]
struct FastW {
    /// 0: not built for this weight set; 1: built; 2: unusable (a weight is infinite or NaN).
    state: u8,
    tz: u32,
    stride: usize,
    /// Shared with GEMM jobs in flight on the worker thread.
    w: std::sync::Arc<Vec<f64>>,
    wmax: Vec<f64>,
    /// A sparse set (selection and permutation matrices: under 1/16 nonzero) also as rows of (column, value):
    /// row k's nonzeros are `sp_col/sp_val[sp_ptr[k]..sp_ptr[k + 1]]`. Empty `sp_ptr`: dense.
    sp_ptr: Vec<u32>,
    sp_col: Vec<u32>,
    sp_val: Vec<f64>,
}

impl Weights {
    fn empty() -> Weights {
        Weights {
            ty: None,
            rows: 0,
            ncols: 0,
            raw: Vec::new(),
            pre: Vec::new(),
            int: Vec::new(),
            special: Vec::new(),
            fast: FastW::default(),
        }
    }

    /// Build the f64 image (once per weight set).
    fn ensure_fast(&mut self, dim: usize) {
        if self.fast.state != 0 {
            return;
        }
        let rows = self.rows;
        if self.special[..rows.min(self.special.len())].iter().any(|&s| s) {
            self.fast.state = 2;
            return;
        }
        let ncols = self.ncols;
        let stride = ncols.div_ceil(GEMM_COLS) * GEMM_COLS;
        let pre = &self.pre;
        // The lowest set bit of the OR of all values is the smallest trailing-zero count of a nonzero value.
        let mut or = 0i64;
        for k in 0..rows {
            or |= or_all(&pre[k * dim..k * dim + ncols]);
        }
        let tz = if or == 0 { 0 } else { or.trailing_zeros() };
        let f = &mut self.fast;
        f.tz = tz;
        f.stride = stride;
        // Reuse the image's memory unless a GEMM job in flight still reads it.
        if std::sync::Arc::get_mut(&mut f.w).is_none() {
            f.w = std::sync::Arc::new(Vec::new());
        }
        let fw = std::sync::Arc::get_mut(&mut f.w).expect("unshared");
        fw.clear();
        fw.resize(rows * stride, 0.0);
        f.wmax.clear();
        f.wmax.resize(rows, 0.0);
        for k in 0..rows {
            let src = &pre[k * dim..k * dim + ncols];
            let dst = &mut fw[k * stride..k * stride + ncols];
            f.wmax[k] = shift_to_f64(src, tz, dst);
        }
        f.sp_ptr.clear();
        f.sp_col.clear();
        f.sp_val.clear();
        let nnz = fw.iter().filter(|&&v| v != 0.0).count();
        if nnz * 16 < rows * stride {
            f.sp_ptr.push(0);
            for k in 0..rows {
                for (n, &v) in fw[k * stride..k * stride + ncols].iter().enumerate() {
                    if v != 0.0 {
                        f.sp_col.push(n as u32);
                        f.sp_val.push(v);
                    }
                }
                f.sp_ptr.push(f.sp_col.len() as u32);
            }
        }
        f.state = 1;
    }
}

/// Vectorised helpers (dispatched on AVX-512 / AVX2 like `decode_f16_row`).
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

#[inline(always)]
fn or_all_generic(v: &[i64]) -> i64 {
    v.iter().fold(0, |a, &x| a | x)
}
dispatch!(or_all, or_all_generic, (v: &[i64]) -> i64);

/// `dst = src >> tz` as f64 (exact: every nonzero value has `tz` trailing zeros, and `|v| < 2^40`); returns the
/// largest magnitude.
#[inline(always)]
fn shift_to_f64_generic(src: &[i64], tz: u32, dst: &mut [f64]) -> f64 {
    let mut m = 0i64;
    for (d, &v) in dst.iter_mut().zip(src) {
        let v = v >> tz;
        *d = v as f64;
        m = m.max(v.abs());
    }
    m as f64
}
dispatch!(shift_to_f64, shift_to_f64_generic, (src: &[i64], tz: u32, dst: &mut [f64]) -> f64);

/// An f16 activation's first `xi.len()` elements (two byte planes) as `m << s` with sign; returns the OR of the
/// magnitudes and whether any element of `hi` (all `dim` of them) is infinite or NaN.
#[inline(always)]
fn decode_x_generic(lo: &[u8], hi: &[u8], xi: &mut [i64]) -> i64 {
    let n = xi.len();
    let (lo, hi8) = (&lo[..n], &hi[..n]);
    let mut nz = 0i64;
    for k in 0..n {
        let xb = lo[k] as u16 | (hi8[k] as u16) << 8;
        let e = ((xb >> 10) & 0x1f) as i64;
        let f = (xb & 0x3ff) as i64;
        let normal = (e != 0) as i64;
        let mag = (f | (normal << 10)) << (e - normal);
        let neg = -((xb >> 15) as i64);
        xi[k] = (mag ^ neg) - neg;
        nz |= mag;
    }
    nz
}
dispatch!(decode_x, decode_x_generic, (lo: &[u8], hi: &[u8], xi: &mut [i64]) -> i64);

#[inline(always)]
fn any_special_generic(hi: &[u8]) -> bool {
    hi.iter().fold(0u8, |a, &h| a | ((h & 0x7c == 0x7c) as u8)) != 0
}
dispatch!(any_special, any_special_generic, (hi: &[u8]) -> bool);

/// `xr = xi >> tz` as f64 (exact); returns `sum_k |xr[k]| * wmax[k]` (summed in 8 partial sums: any order will do,
/// the result is compared with half the exact limit).
#[inline(always)]
fn scale_bound_generic(xi: &[i64], tz: u32, wmax: &[f64], xr: &mut [f64]) -> f64 {
    let mut part = [0f64; 8];
    for ((xc, rc), wc) in xi.chunks(8).zip(xr.chunks_mut(8)).zip(wmax.chunks(8)) {
        for i in 0..xc.len() {
            let v = (xc[i] >> tz) as f64;
            rc[i] = v;
            part[i] += v.abs() * wc[i];
        }
    }
    part.iter().sum()
}
dispatch!(scale_bound, scale_bound_generic, (xi: &[i64], tz: u32, wmax: &[f64], xr: &mut [f64]) -> f64);

/// A GEMM for the worker thread: `y = x w` (see `gemm_f64`); `x` and `y` come back for reuse.
struct Job {
    x: Vec<f64>,
    rows: usize,
    nvec: usize,
    w: std::sync::Arc<Vec<f64>>,
    stride: usize,
    y: Vec<f64>,
}

/// A plane's helper thread: runs its GEMMs in submission order while the cycle loop goes on (the results do not
/// depend on when or where they are computed, so runs stay deterministic).
struct Worker {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    rx: std::sync::mpsc::Receiver<(Vec<f64>, Vec<f64>)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn() -> Option<Worker> {
        let (tx, jobs) = std::sync::mpsc::channel::<Job>();
        let (done, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("lpusim-gemm".into())
            .spawn(move || {
                for mut j in jobs {
                    if j.y.len() < j.nvec * j.stride {
                        j.y.resize(j.nvec * j.stride, 0.0);
                    }
                    gemm_f64(&j.x, j.rows, j.nvec, &j.w, j.stride, j.rows, j.stride, &mut j.y);
                    drop(j.w);
                    if done.send((j.x, j.y)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Worker { tx: Some(tx), rx, handle: Some(handle) })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx = None; // the thread's loop ends
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// GEMMs smaller than this many multiply-adds run inline (a hand-off costs more).
const WORKER_MIN_MACS: usize = 1 << 18;

/// Whether planes may use a helper thread (`LPUSIM_SIM_THREADS=1` turns it off).
fn worker_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::env::var("LPUSIM_SIM_THREADS").map_or(true, |v| v.trim() != "1")
            && std::thread::available_parallelism().map_or(false, |n| n.get() > 1)
    })
}

/// A GEMM in flight: where its rows go.
struct InFlight {
    slots: Vec<(u32, u32)>,
    ncols: usize,
    stride: usize,
}

/// Columns per GEMM micro-kernel block (4 registers of 8 f64).
const GEMM_COLS: usize = 32;
/// Vectors per GEMM micro-kernel block.
const GEMM_ROWS: usize = 4;
/// The bound under which an f64 dot product of integers is exact: every product and partial sum is an integer of
/// magnitude at most `sum_k |x_k| * wmax_k`; below 2^53 all of them are representable. 2^52 leaves room for the
/// rounding of the bound's own f64 evaluation (at most 320 terms, relative error < 2^-44).
const EXACT_BOUND: f64 = 4503599627370496.0; // 2^52

/// `y[j][n] = sum_{k < rows} x[j][k] * w[k][n]` for `j < nvec` (a multiple of GEMM_ROWS) and `n < cols` (a
/// multiple of GEMM_COLS). `x` rows have `xs` elements, `w` and `y` rows `ws`. Every product and partial sum is an
/// integer below 2^53 in magnitude (the caller checked), so the result is exact whatever the order.
fn gemm_f64(x: &[f64], xs: usize, nvec: usize, w: &[f64], ws: usize, rows: usize, cols: usize, y: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features.
            return unsafe { gemm_f64_avx512(x, xs, nvec, w, ws, rows, cols, y) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features.
            return unsafe { gemm_f64_avx2(x, xs, nvec, w, ws, rows, cols, y) };
        }
    }
    gemm_f64_generic(x, xs, nvec, w, ws, rows, cols, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gemm_f64_avx512(x: &[f64], xs: usize, nvec: usize, w: &[f64], ws: usize, rows: usize, cols: usize, y: &mut [f64]) {
    gemm_f64_generic(x, xs, nvec, w, ws, rows, cols, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_f64_avx2(x: &[f64], xs: usize, nvec: usize, w: &[f64], ws: usize, rows: usize, cols: usize, y: &mut [f64]) {
    gemm_f64_generic(x, xs, nvec, w, ws, rows, cols, y)
}

#[inline(always)]
fn gemm_f64_generic(x: &[f64], xs: usize, nvec: usize, w: &[f64], ws: usize, rows: usize, cols: usize, y: &mut [f64]) {
    for n0 in (0..cols).step_by(GEMM_COLS) {
        for j0 in (0..nvec).step_by(GEMM_ROWS) {
            let mut acc = [[0f64; GEMM_COLS]; GEMM_ROWS];
            let xr: [&[f64]; GEMM_ROWS] = std::array::from_fn(|jj| &x[(j0 + jj) * xs..(j0 + jj) * xs + rows]);
            for k in 0..rows {
                let wr: &[f64; GEMM_COLS] = w[k * ws + n0..k * ws + n0 + GEMM_COLS].try_into().unwrap();
                for jj in 0..GEMM_ROWS {
                    let xv = xr[jj][k];
                    for c in 0..GEMM_COLS {
                        // Exact either way (no rounding happens); a fused multiply-add where the target has one.
                        acc[jj][c] = xv.mul_add(wr[c], acc[jj][c]);
                    }
                }
            }
            for jj in 0..GEMM_ROWS {
                y[(j0 + jj) * ws + n0..(j0 + jj) * ws + n0 + GEMM_COLS].copy_from_slice(&acc[jj]);
            }
        }
    }
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
    /// GEMM results per slot (`ystride` f64 each, the first `meta.ncols` meaningful): exact integers, to be
    /// shifted left by `meta.shift` into counts of 2^-48.
    sy: Vec<f64>,
    meta: Vec<SlotMeta>,
    free_slots: Vec<u32>,
    nslots: usize,
    /// Pending vectors, rows of `pend_rows` (the installed weights' row count) f64.
    pend_x: Vec<f64>,
    pend_rows: usize,
    /// Per pending vector: its slot and its shift `tz`.
    pend: Vec<(u32, u32)>,
    pend_y: Vec<f64>,
    /// Row updates that have landed (in order) but whose values are not applied yet: (row, add, slot).
    log: Vec<(u32, bool, u32)>,
    /// Scratch: an activation's two planes side by side (for the i128 path).
    xcat: Vec<u8>,
    worker: Option<Worker>,
    inflight: std::collections::VecDeque<InFlight>,
    /// Buffers back from the worker, for reuse.
    spare_f64: Vec<Vec<f64>>,
}

#[derive(Clone, Copy, Default)]
struct SlotMeta {
    /// The product is in `sy` (GEMM) rather than `ys`/`yflags` (i128 path).
    fast: bool,
    ncols: u32,
    shift: u32,
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

/// Decode one f16 weight row from its two byte planes: raw bits, `m << s` (0 for inf/NaN), whether any element is
/// inf/NaN, and 1 + the last column with a nonzero finite weight (0 if none).
fn decode_f16_row(lo: &[u8], hi: &[u8], raw: &mut [u16], pre: &mut [i64]) -> (bool, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { decode_f16_row_avx2(lo, hi, raw, pre) };
        }
    }
    decode_f16_row_generic(lo, hi, raw, pre)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn decode_f16_row_avx2(lo: &[u8], hi: &[u8], raw: &mut [u16], pre: &mut [i64]) -> (bool, usize) {
    decode_f16_row_generic(lo, hi, raw, pre)
}

/// Branch-free so it vectorises: `m << s` per element as in `numerics::f16_mant_shift`.
#[inline(always)]
fn decode_f16_row_generic(lo: &[u8], hi: &[u8], raw: &mut [u16], pre: &mut [i64]) -> (bool, usize) {
    let n = raw.len();
    let (lo, hi, pre) = (&lo[..n], &hi[..n], &mut pre[..n]);
    let mut special = 0u32;
    for i in 0..n {
        let b = lo[i] as u16 | (hi[i] as u16) << 8;
        raw[i] = b;
        let e = ((b >> 10) & 0x1f) as i64;
        let f = (b & 0x3ff) as i64;
        let normal = (e != 0) as i64;
        let m = f | (normal << 10);
        let s = e - normal; // e - 1 for normals, 0 for subnormals
        let is_special = (e == 31) as i64;
        let mag = (m << s) & (is_special - 1);
        let neg = -((b >> 15) as i64); // 0 or -1
        pre[i] = (mag ^ neg) - neg;
        special |= is_special as u32;
    }
    let last = pre.iter().rposition(|&v| v != 0).map_or(0, |p| p + 1);
    (special != 0, last)
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
            row_kind: vec![RowKind::Int; acc_rows],
            scratch: Vec::new(),
            ys: Vec::new(),
            yflags: Vec::new(),
            sy: Vec::new(),
            meta: Vec::new(),
            free_slots: Vec::new(),
            nslots: 0,
            pend_x: Vec::new(),
            pend_rows: 0,
            pend: Vec::new(),
            pend_y: Vec::new(),
            log: Vec::new(),
            xcat: Vec::new(),
            worker: None,
            inflight: std::collections::VecDeque::new(),
            spare_f64: Vec::new(),
        }
    }

    /// An f16 ABC at issue (functional mode): take a slot for its product `x . Wt`, computed now (the exact i128
    /// path) or later in a batch (the exact f64 GEMM path) with the weights installed now. Returns the slot.
    pub fn abc_f16(&mut self, lo: &[u8], hi: &[u8]) -> u32 {
        let dim = self.dim;
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.nslots += 1;
                self.ys.resize(self.nslots * dim, 0);
                self.yflags.resize(self.nslots * dim, 0);
                self.sy.resize(self.nslots * dim.div_ceil(GEMM_COLS) * GEMM_COLS, 0.0);
                self.meta.push(SlotMeta::default());
                (self.nslots - 1) as u32
            }
        };
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

    /// Queue `x` for the GEMM if its products are provably exact in f64; false if it must take the i128 path
    /// (an infinite or NaN activation or weight, or a bound of 2^52 or more).
    fn try_defer(&mut self, lo: &[u8], hi: &[u8], slot: u32) -> bool {
        let dim = self.dim;
        if dim > 1024 {
            return false;
        }
        // Specials anywhere (also in the zero rows past `rows`, where they make NaN) go the slow way.
        if any_special(&hi[..dim]) {
            return false;
        }
        let w = &mut self.w;
        if w.raw.len() == dim * dim {
            w.ensure_fast(dim);
            if w.fast.state != 1 {
                return false;
            }
        }
        let rows = w.rows;
        let mut xi = [0i64; 1024];
        let xi = &mut xi[..rows];
        let nz = decode_x(lo, hi, xi);
        // The common trailing zeros of the nonzero values: a factor 2^tz taken out of every product.
        let tz = if nz == 0 { 0 } else { nz.trailing_zeros() };
        let base = self.pend.len() * rows;
        if self.pend.is_empty() {
            self.pend_rows = rows;
        }
        debug_assert_eq!(self.pend_rows, rows);
        self.pend_x.resize(base + rows, 0.0);
        let xr = &mut self.pend_x[base..base + rows];
        let bound = scale_bound(xi, tz, &w.fast.wmax[..rows], xr);
        if bound >= EXACT_BOUND {
            self.pend_x.truncate(base);
            return false;
        }
        self.pend.push((slot, tz));
        true
    }

    /// Start the GEMM of every pending vector with the installed weights: on the worker thread for a large one
    /// (collected by `collect`), else now. Either way the products land in their slots before any is applied.
    fn compute_pending(&mut self) {
        if self.pend.is_empty() {
            return;
        }
        let nvec = self.pend.len();
        let padded = nvec.div_ceil(GEMM_ROWS) * GEMM_ROWS;
        let rows = self.pend_rows;
        self.pend_x.resize(padded * rows, 0.0);
        let w = &self.w;
        let ncols = if rows == 0 { 0 } else { w.ncols };
        let (stride, wtz) = (w.fast.stride, w.fast.tz);
        for &(slot, tz) in &self.pend {
            self.meta[slot as usize] = SlotMeta { fast: true, ncols: ncols as u32, shift: tz + wtz };
        }
        if ncols == 0 {
            self.pend.clear();
            self.pend_x.clear();
            return;
        }
        if !w.fast.sp_ptr.is_empty() {
            // Sparse weights: only the nonzero products (exact in any order, like the dense GEMM).
            let f = &w.fast;
            let ystride = self.dim.div_ceil(GEMM_COLS) * GEMM_COLS;
            for (j, &(slot, _)) in self.pend.iter().enumerate() {
                let s = slot as usize;
                let y = &mut self.sy[s * ystride..s * ystride + ncols];
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
            self.pend_x.clear();
            return;
        }
        if padded * rows * stride >= WORKER_MIN_MACS && worker_allowed() {
            if self.worker.is_none() {
                self.worker = Worker::spawn();
            }
            if let Some(wk) = &self.worker {
                let x = std::mem::replace(&mut self.pend_x, self.spare_f64.pop().unwrap_or_default());
                let y = self.spare_f64.pop().unwrap_or_default();
                let job = Job { x, rows, nvec: padded, w: w.fast.w.clone(), stride, y };
                if let Some(tx) = &wk.tx {
                    if tx.send(job).is_ok() {
                        let slots = std::mem::take(&mut self.pend);
                        self.inflight.push_back(InFlight { slots, ncols, stride });
                        self.pend_x.clear();
                        return;
                    }
                }
                panic!("the GEMM worker thread has stopped");
            }
        }
        // Inline (jobs in flight fill other slots).
        if self.pend_y.len() < padded * stride {
            self.pend_y.resize(padded * stride, 0.0);
        }
        gemm_f64(&self.pend_x, rows, padded, &self.w.fast.w, stride, rows, stride, &mut self.pend_y);
        let ystride = self.dim.div_ceil(GEMM_COLS) * GEMM_COLS;
        for (j, &(slot, _)) in self.pend.iter().enumerate() {
            let s = slot as usize;
            self.sy[s * ystride..s * ystride + ncols].copy_from_slice(&self.pend_y[j * stride..j * stride + ncols]);
        }
        self.pend.clear();
        self.pend_x.clear();
    }

    /// Wait for every GEMM in flight and copy its products into their slots.
    fn collect(&mut self) {
        let ystride = self.dim.div_ceil(GEMM_COLS) * GEMM_COLS;
        while let Some(f) = self.inflight.pop_front() {
            let wk = self.worker.as_ref().expect("a worker for jobs in flight");
            let (x, y) = wk.rx.recv().expect("the GEMM worker thread failed");
            for (j, &(slot, _)) in f.slots.iter().enumerate() {
                let s = slot as usize;
                self.sy[s * ystride..s * ystride + f.ncols].copy_from_slice(&y[j * f.stride..j * f.stride + f.ncols]);
            }
            self.spare_f64.push(x);
            self.spare_f64.push(y);
            let mut slots = f.slots;
            slots.clear();
            if self.pend.capacity() == 0 {
                self.pend = slots;
            }
        }
    }

    /// Apply every logged row update (computing pending products first).
    fn flush(&mut self) {
        if self.log.is_empty() {
            return;
        }
        self.compute_pending();
        self.collect();
        let dim = self.dim;
        let log = std::mem::take(&mut self.log);
        let ys = std::mem::take(&mut self.ys);
        let yf = std::mem::take(&mut self.yflags);
        let ystride = dim.div_ceil(GEMM_COLS) * GEMM_COLS;
        let sy = std::mem::take(&mut self.sy);
        for &(row, add, slot) in &log {
            let s = slot as usize;
            let m = self.meta[s];
            if m.fast {
                self.apply_fast(row as usize, add, &sy[s * ystride..s * ystride + m.ncols as usize], m.shift);
            } else {
                self.apply_values(row as usize, add, RowKind::F16, &ys[s * dim..(s + 1) * dim], &yf[s * dim..(s + 1) * dim]);
            }
            self.free_slots.push(slot);
        }
        self.sy = sy;
        self.ys = ys;
        self.yflags = yf;
        self.log = log;
        self.log.clear();
    }

    /// The update effect of an f16 ABC whose product is in `slot`: the kind check now (TypeMismatch is decided
    /// at the update cycle), the values when a reader needs them. Returns false on a kind mismatch for `+`.
    pub fn update_slot(&mut self, row: usize, add: bool, slot: u32) -> bool {
        if add && self.row_kind[row] != RowKind::F16 {
            return false;
        }
        self.row_kind[row] = RowKind::F16;
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
            *b = self.spare.pop().unwrap_or_else(Weights::empty);
            b.raw.resize(dim * dim, 0);
            b.special.resize(dim, false);
            b.ncols = 0;
            b.fast.state = 0;
        }
        b.rows = k + 1;
        let raw = &mut b.raw[k * dim..(k + 1) * dim];
        let mut last = 0usize;
        match t {
            DType::F16 => {
                if b.pre.len() < (k + 1) * dim {
                    b.pre.reserve_exact(dim * dim - b.pre.len());
                    b.pre.resize((k + 1) * dim, 0);
                }
                let pre = &mut b.pre[k * dim..(k + 1) * dim];
                let (special, l) = decode_f16_row(&lo[..dim], &hi[..dim], raw, pre);
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
        // Vectors issued before this install meet the old weights.
        self.compute_pending();
        let old = std::mem::replace(&mut self.w, ws);
        if old.raw.len() == self.dim * self.dim {
            self.spare.push(old);
        }
    }

    /// `y[n] = sum_k x[k] * Wt[k][n]` for an activation group of type `t` (functional mode only).
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
        }
        self.row_slot[row] as usize
    }

    /// row := y or row += y for a GEMM product: `v` (exact integers) shifted left by `shift`, zero past `v.len()`,
    /// no flags.
    fn apply_fast(&mut self, row: usize, add: bool, v: &[f64], shift: u32) {
        let s = self.slot(row);
        let dim = self.dim;
        let c = v.len();
        let rc = self.rcols[s] as usize;
        let r = &mut self.rows[s * dim..(s + 1) * dim];
        if !add {
            for (d, &x) in r[..c].iter_mut().zip(v) {
                *d = ((x as i64) as i128) << shift;
            }
            if rc > c {
                r[c..rc].fill(0);
            }
            self.flags[s * dim..s * dim + rc.max(c)].fill(0);
            self.rcols[s] = c as u32;
        } else {
            for (d, &x) in r[..c].iter_mut().zip(v) {
                *d = d.wrapping_add(((x as i64) as i128) << shift);
            }
            self.rcols[s] = rc.max(c) as u32;
        }
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
        let r = &self.rows[s * dim..(s + 1) * dim];
        let f = &self.flags[s * dim..(s + 1) * dim];
        let f16 = self.row_kind[row] == RowKind::F16;
        let rc = self.rcols[s] as usize;
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
                    let before = fast.pend.len();
                    let slot = fast.abc_f16(&xg[..dim], &xg[dim..]);
                    used_fast += (fast.pend.len() > before) as usize;
                    let mut y = vec![0i128; dim];
                    let mut f = vec![0u8; dim];
                    slow.multiply(DType::F16, &xg, &mut y, &mut f);
                    let ok_fast = fast.update_slot(row, add, slot);
                    let ok_slow = slow.update(row, add, RowKind::F16, &y, &f);
                    assert_eq!(ok_fast, ok_slow);
                }
            }
            for row in 0..8 {
                let (mut a, mut b) = (vec![0u32; dim], vec![0u32; dim]);
                fast.read_row(row, DType::F32, &mut a);
                slow.read_row(row, DType::F32, &mut b);
                assert_eq!(a, b, "case {case} row {row}");
                let (sa, sb) = (fast.row_slot[row], slow.row_slot[row]);
                if sa != NO_SLOT {
                    let (sa, sb) = (sa as usize, sb as usize);
                    assert_eq!(fast.rows[sa * dim..(sa + 1) * dim], slow.rows[sb * dim..(sb + 1) * dim], "case {case} row {row}");
                    assert_eq!(fast.flags[sa * dim..(sa + 1) * dim], slow.flags[sb * dim..(sb + 1) * dim], "case {case} row {row}");
                }
            }
        }
        assert!(used_fast > 200, "the fast path took only {used_fast} vectors");
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
