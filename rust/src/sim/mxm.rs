//! An MXM plane (docs/isa.md section 4): weight buffer, installed array, accumulator rows, exact numerics.
//!
//! int8/uint8: products and sums are exact integers (64-bit rows, wrapping like the reference).
//! fp16: every finite f16 is `m * 2^(s - 24)` with `|m| < 2^11`, `s` in 0..=29, so a product is an exact integer count
//! of `2^-48`: `(m1 * m2) << (s1 + s2)` (< 2^80). Rows hold that count in an i128, so sums are exact and order-free.
//! `ACC.f32` of an f16 row is `(count as f32) * 2^-48`: Rust's i128 -> f32 cast rounds to nearest even, and the
//! scaling by 2^-48 is exact because the result (|count| >= 1, so >= 2^-48) is never subnormal in f32 and
//! |count| < 2^127 keeps it finite; so the whole thing is one correct rounding of the exact sum.
//! Specials are flags per lane: NaN, +inf, -inf.

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

/// A weight set on its way from the buffer to the array (an IW in flight).
struct WeightSet {
    ty: Option<DType>,
    raw: Vec<u16>,
}

pub struct MxmPlane {
    dim: usize,
    timing_only: bool,
    /// Rows loaded into the buffer since the last IW, and their type.
    pub buf_rows: usize,
    pub buf_type: Option<DType>,
    buf: Vec<u16>,
    pending: VecDeque<WeightSet>,
    spare: Vec<Vec<u16>>,
    /// Type of the installed weights (`None`: zeros, accepting any type).
    pub installed_type: Option<DType>,
    w_raw: Vec<u16>,
    w_int: Vec<i32>,
    /// f16 weights pre-shifted: `m << s` (< 2^40), so a product with an activation mantissa fits an i64.
    w_pre: Vec<i64>,
    /// Per weight row k: does it hold an infinity or NaN (f16)? Rows without take the fast path.
    row_special: Vec<bool>,
    /// First cycle an ABC may issue again.
    pub busy_until: u64,
    rows: Vec<i128>,
    flags: Vec<u8>,
    pub row_kind: Vec<RowKind>,
    scratch: Vec<i32>,
    /// f16 partial sums per activation shift (30 x dim): each is a sum of < 2^51 terms, at most 320 of them.
    buckets: Vec<i64>,
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
            buf: Vec::new(),
            pending: VecDeque::new(),
            spare: Vec::new(),
            installed_type: None,
            w_raw: Vec::new(),
            w_int: Vec::new(),
            w_pre: Vec::new(),
            buckets: Vec::new(),
            row_special: Vec::new(),
            busy_until: 0,
            rows: Vec::new(),
            flags: Vec::new(),
            row_kind: vec![RowKind::Int; acc_rows],
            scratch: Vec::new(),
        }
    }

    /// Append one row to the buffer (the caller checked type and overflow). `group` is `width(t)` byte planes.
    pub fn load_row(&mut self, t: DType, group: &[u8]) {
        let k = self.buf_rows;
        self.buf_rows += 1;
        self.buf_type = Some(t);
        if self.timing_only {
            return;
        }
        if self.buf.is_empty() {
            self.buf = self.spare.pop().map(|mut v| {
                v.fill(0);
                v
            }).unwrap_or_else(|| vec![0; self.dim * self.dim]);
        }
        let w = t.width();
        for n in 0..self.dim {
            self.buf[k * self.dim + n] = element(group, self.dim, w, n) as u16;
        }
    }

    /// IW at issue: the buffer goes in flight and the buffer is empty again.
    pub fn start_install(&mut self) {
        let raw = std::mem::take(&mut self.buf);
        self.pending.push_back(WeightSet { ty: if self.buf_rows == 0 { None } else { self.buf_type }, raw });
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
        let old = std::mem::replace(&mut self.w_raw, ws.raw);
        if old.len() == self.dim * self.dim {
            self.spare.push(old);
        }
        let nn = self.dim * self.dim;
        if self.w_raw.is_empty() {
            // Empty buffer: zeros.
            self.w_raw = vec![0; nn];
        }
        self.w_int.resize(nn, 0);
        self.w_pre.resize(nn, 0);
        self.row_special = vec![false; self.dim];
        match ws.ty {
            Some(DType::I8) => {
                for i in 0..nn {
                    self.w_int[i] = self.w_raw[i] as u8 as i8 as i32;
                }
            }
            Some(DType::U8) => {
                for i in 0..nn {
                    self.w_int[i] = (self.w_raw[i] & 0xff) as i32;
                }
            }
            Some(DType::F16) => {
                for i in 0..nn {
                    match f16_mant_shift(self.w_raw[i]) {
                        Some((m, s)) => self.w_pre[i] = (m as i64) << s,
                        None => {
                            self.w_pre[i] = 0;
                            self.row_special[i / self.dim] = true;
                        }
                    }
                }
            }
            _ => {
                self.w_int.fill(0);
                self.w_pre.fill(0);
            }
        }
    }

    /// `y[n] = sum_k x[k] * Wt[k][n]` for an activation group of type `t` (functional mode only).
    /// Integer results go to `y` as plain integers; f16 results as counts of 2^-48 plus `yflags`.
    pub fn multiply(&mut self, t: DType, x: &[u8], y: &mut [i128], yflags: &mut [u8]) {
        let dim = self.dim;
        y[..dim].fill(0);
        yflags[..dim].fill(0);
        if self.w_raw.len() != dim * dim {
            return; // never installed: zero weights
        }
        match t {
            DType::I8 | DType::U8 => {
                let mut acc = std::mem::take(&mut self.scratch);
                acc.clear();
                acc.resize(dim, 0);
                for k in 0..dim {
                    let xv = if t == DType::I8 { x[k] as i8 as i32 } else { x[k] as i32 };
                    if xv == 0 {
                        continue;
                    }
                    let w = &self.w_int[k * dim..(k + 1) * dim];
                    for n in 0..dim {
                        acc[n] += xv * w[n];
                    }
                }
                for n in 0..dim {
                    y[n] = acc[n] as i128;
                }
                self.scratch = acc;
            }
            _ => {
                // Fast path: group products by the activation's shift sx, sum `mx * (wm << ws)` exactly in i64,
                // then add each group into the i128 counts shifted by sx. Rows with specials go one by one.
                let mut buckets = std::mem::take(&mut self.buckets);
                buckets.clear();
                buckets.resize(30 * dim, 0);
                let mut used = 0u32;
                for k in 0..dim {
                    let xb = element(x, dim, 2, k) as u16;
                    match f16_mant_shift(xb) {
                        Some((mx, sx)) if !self.row_special[k] => {
                            if mx == 0 {
                                continue;
                            }
                            used |= 1 << sx;
                            let acc = &mut buckets[sx as usize * dim..(sx as usize + 1) * dim];
                            let w = &self.w_pre[k * dim..(k + 1) * dim];
                            let mx = mx as i64;
                            for n in 0..dim {
                                acc[n] += mx * w[n];
                            }
                        }
                        _ => {
                            let wr = &self.w_raw[k * dim..(k + 1) * dim];
                            for n in 0..dim {
                                Self::product_slow(xb, wr[n], &mut y[n], &mut yflags[n]);
                            }
                        }
                    }
                }
                for sx in 0..30 {
                    if used & (1 << sx) != 0 {
                        let acc = &buckets[sx * dim..(sx + 1) * dim];
                        for n in 0..dim {
                            y[n] += (acc[n] as i128) << sx;
                        }
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

    fn ensure_rows(&mut self) {
        if self.rows.is_empty() {
            self.rows = vec![0; self.row_kind.len() * self.dim];
            self.flags = vec![0; self.row_kind.len() * self.dim];
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
        self.ensure_rows();
        let r = &mut self.rows[row * self.dim..(row + 1) * self.dim];
        let f = &mut self.flags[row * self.dim..(row + 1) * self.dim];
        for n in 0..self.dim {
            if add {
                r[n] = if kind == RowKind::Int {
                    (r[n] as i64).wrapping_add(y[n] as i64) as i128
                } else {
                    r[n].wrapping_add(y[n])
                };
                f[n] |= yflags[n];
            } else {
                r[n] = y[n];
                f[n] = yflags[n];
            }
        }
        true
    }

    /// ACC: row `row` as `t` (i32 or f32) bits per lane.
    pub fn read_row(&self, row: usize, t: DType, out: &mut [u32]) {
        let dim = self.dim;
        if self.rows.is_empty() {
            out[..dim].fill(0);
            return;
        }
        let r = &self.rows[row * dim..(row + 1) * dim];
        let f = &self.flags[row * dim..(row + 1) * dim];
        let f16 = self.row_kind[row] == RowKind::F16;
        for n in 0..dim {
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
                    canon_f32((r[n] as f32) * TWO_POW_M48)
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
                p.load_row(DType::F16, &g);
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
