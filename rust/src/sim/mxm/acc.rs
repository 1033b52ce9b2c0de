//! Accumulator rows: storage allocated on first update, `=` and `+` updates, and ACC reads.

use super::deferred::{pow2, FRow};
use super::{MxmPlane, RowKind, FLAG_NAN, FLAG_NINF, FLAG_PINF, TWO_POW_M48};
use crate::isa::DType;
use crate::numerics::{canon_f32, F32_NAN};
use crate::sim::gemm::GEMM_COLS;

pub(super) const NO_SLOT: u32 = u32::MAX;

impl MxmPlane {
    /// The storage slot of an accumulator row, allocated (zero) on first use.
    pub(super) fn slot(&mut self, row: usize) -> usize {
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
    pub(super) fn to_i128(&mut self, s: usize) {
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

    pub(super) fn apply_values(&mut self, row: usize, add: bool, kind: RowKind, y: &[i128], yflags: &[u8]) {
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
