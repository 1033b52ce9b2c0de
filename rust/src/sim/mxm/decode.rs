//! Vectorised f16 decoding kernels: weight rows into the GEMM image at load, activations with their exactness
//! bound at issue, and the check for infinities and NaNs.

/// Vectorised helpers: the same code compiled for AVX-512 and for AVX2, picked at run time.
macro_rules! dispatch {
    ($name:ident, $generic:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        #[inline]
        pub(super) fn $name($($a: $t),*) -> $r {
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
