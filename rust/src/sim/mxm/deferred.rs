//! The deferred GEMM path (functional mode; the module doc says why it is exact): ABC products go to slots,
//! vectors wait in batches for a GEMM (here or on the helper threads), and row updates are logged and applied in
//! order when a row is read.

use super::decode::{any_special, decode_x_bound};
use super::{MxmPlane, RowKind};
use crate::isa::DType;
use crate::sim::gemm::{finish_job, gemm_f64_raw, Job, OutPtr, Pool, EXACT_BOUND, GEMM_COLS, SUBMIT_VECS, WORKER_MIN_MACS};

#[derive(Clone, Copy, Default)]
pub(super) struct SlotMeta {
    /// The product is in `sy` (GEMM) rather than `ys`/`yflags` (i128 path).
    pub(super) fast: bool,
    /// An int8/uint8 product (plain integers, always on the GEMM path: see int.rs), else f16.
    pub(super) int: bool,
    pub(super) ncols: u32,
    /// Every product is a multiple of 2^shift ...
    pub(super) shift: u32,
    /// ... and at most `bound` (the exactness bound of `try_defer`, relative error < 2^-42) in magnitude.
    pub(super) bound: f64,
}

/// An accumulator row held as f64 counts: every value is an integer multiple of `2^unit` and at most `max` in
/// magnitude (`max` is a sum of rounded bounds, each within a relative 2^-42 of a true bound). The row stays in
/// f64 while a `+` keeps `max` below 2^52 units (so the true maximum is below 2^53 units: every sum is exact);
/// otherwise it goes back to i128 (exact conversion: each value / 2^unit is an integer below 2^53).
#[derive(Clone, Copy, Default)]
pub(super) struct FRow {
    pub(super) on: bool,
    pub(super) unit: u32,
    pub(super) max: f64,
}

/// `2^e` as an f64 (`e` in -1022..=1023).
#[inline]
pub(super) fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// Apply logged updates once this many are waiting (bounds the memory of a program that never reads its rows).
const MAX_LOG: usize = 2048;

impl MxmPlane {
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
    pub(super) fn take_slot(&mut self) -> u32 {
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
    pub(super) fn compute_pending(&mut self, hand_off: bool) {
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
    pub(super) fn flush(&mut self) {
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

    /// A new zero buffer of `sy`; returns its index.
    pub(super) fn new_buf(&mut self) -> u32 {
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
}
