//! The exact i128 path: f16 products as integer counts of 2^-48 (and the int8/uint8 reference), one vector at a
//! time, with specials as flags.

use super::{MxmPlane, FLAG_NAN, FLAG_NINF, FLAG_PINF};
use crate::isa::DType;
use crate::numerics::f16_mant_shift;

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
pub(super) fn is_f16_special(b: u16) -> bool {
    b & 0x7c00 == 0x7c00
}

impl MxmPlane {
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
}
