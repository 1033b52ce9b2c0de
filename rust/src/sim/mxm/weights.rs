//! Weight sets: the buffer LW appends rows to, the sets IW puts in flight, the installed array, and each set's
//! exact GEMM image (built row by row at load).

use super::decode::decode_f16_row;
use super::{int, MxmPlane};
use crate::isa::DType;
use crate::numerics::f16_mant_shift;
use crate::sim::gemm::GEMM_COLS;

/// A weight set: the buffer being loaded, an IW in flight, or the installed array. Rows `k >= rows` are zero.
/// Each loaded row is kept raw (for products with specials) and, for f16, converted at load time into the
/// image of the exact GEMM fast path (one pass over the row; the i128 path's integers are derived only if needed).
pub(super) struct Weights {
    pub(super) ty: Option<DType>,
    pub(super) rows: usize,
    /// Columns `n >= ncols` are zero in every loaded row.
    pub(super) ncols: usize,
    pub(super) raw: Vec<u16>,
    /// f16: `m << s` (< 2^40; 0 for an infinity/NaN), so a product with an activation mantissa fits an i64. Built
    /// from `raw` on the first product that takes the exact i128 path; rows `< pre_rows` are valid.
    pub(super) pre: Vec<i64>,
    pub(super) pre_rows: usize,
    /// i8/u8 weights as integers.
    pub(super) int: Vec<i32>,
    /// f16: does row k hold an infinity or NaN? Such rows go one product at a time.
    pub(super) special: Vec<bool>,
    /// The exact-GEMM image (f16 only, filled row by row at load): see `FastW`.
    pub(super) fast: FastW,
}

/// An f16 weight set for the exact GEMM fast path: `w[k][n] = m << s` of weight (k, n) as an f32 (exact: at most
/// 11 significant bits, below 2^40; the kernels widen it to f64, also exactly, and half the bytes of an f64 image
/// make loading and the GEMM's weight traffic cheaper), rows of `stride` (`dim` rounded up to `GEMM_COLS`, zero past `dim`), `wmax[k] = max_n |w[k][n]|`
/// for the per-vector exactness bound, and `tz`, the smallest trailing-zero count of any nonzero weight: every
/// weight is a multiple of 2^tz, which the bound uses.
#[derive(Default)]
pub(super) struct FastW {
    /// 0: loaded, not yet checked; 1: usable; 2: unusable (a weight is infinite or NaN).
    pub(super) state: u8,
    /// The f32 bits of the smallest power of two dividing a nonzero `|m << s|` loaded (`u32::MAX` if none: its
    /// exponent gives `tz`), and the count of nonzero weights.
    pub(super) lowbit: u32,
    pub(super) nnz: usize,
    pub(super) tz: u32,
    pub(super) stride: usize,
    /// Shared with GEMM jobs in flight on the helper threads.
    pub(super) w: std::sync::Arc<Vec<f32>>,
    pub(super) wmax: Vec<f64>,
    /// A sparse set (selection and permutation matrices: under 1/16 nonzero) also as rows of (column, value):
    /// row k's nonzeros are `sp_col/sp_val[sp_ptr[k]..sp_ptr[k + 1]]`. Empty `sp_ptr`: dense.
    pub(super) sp_ptr: Vec<u32>,
    pub(super) sp_col: Vec<u32>,
    pub(super) sp_val: Vec<f64>,
}

impl FastW {
    /// Row `k` (`stride` floats) of the GEMM image, growing the image to hold it (room for `dim` rows reserved
    /// at the first growth); the image must not be shared with a GEMM job in flight.
    pub(super) fn image_row(&mut self, k: usize, dim: usize) -> &mut [f32] {
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
    pub(super) fn empty() -> Weights {
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
    pub(super) fn ensure_fast(&mut self) {
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
    pub(super) fn ensure_pre(&mut self, dim: usize) {
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

impl MxmPlane {
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
}
