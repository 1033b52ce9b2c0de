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
}

impl Weights {
    fn empty() -> Weights {
        Weights { ty: None, rows: 0, ncols: 0, raw: Vec::new(), pre: Vec::new(), int: Vec::new(), special: Vec::new() }
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
    pub row_kind: Vec<RowKind>,
    scratch: Vec<i32>,
    /// f16 partial sums per activation shift (30 x dim): each is a sum of < 2^51 terms, at most 320 of them.
    buckets: Vec<i64>,
}

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
        let dim = self.dim;
        let b = &mut self.buf;
        if b.raw.len() != dim * dim {
            *b = self.spare.pop().unwrap_or_else(Weights::empty);
            b.raw.resize(dim * dim, 0);
            b.special.resize(dim, false);
            b.ncols = 0;
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
                let (special, l) = decode_f16_row(&group[..dim], &group[dim..2 * dim], raw, pre);
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
                    raw[n] = group[n] as u16;
                    let v = if t == DType::I8 { group[n] as i8 as i32 } else { group[n] as i32 };
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
        }
        self.row_slot[row] as usize
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
        let s = self.slot(row);
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
        true
    }

    /// ACC: row `row` as `t` (i32 or f32) bits per lane.
    pub fn read_row(&self, row: usize, t: DType, out: &mut [u32]) {
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
