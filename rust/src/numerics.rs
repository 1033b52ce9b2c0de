//! Number formats shared by the assembler and the units: f16 conversions (correctly rounded, never via f32 so no
//! double rounding), canonical NaNs, and integer rounding rules of docs/isa.md (section 4 CVT, section 9).

/// The one f32 NaN instructions produce (docs/isa.md section 9.8).
pub const F32_NAN: u32 = 0x7FC0_0000;
/// The one f16 NaN instructions produce.
pub const F16_NAN: u16 = 0x7E00;

/// Round a binary64 value to binary16, to nearest even; overflow gives infinity; NaN gives `F16_NAN`.
pub fn f64_to_f16(x: f64) -> u16 {
    if x.is_nan() {
        return F16_NAN;
    }
    let sign: u16 = if x.is_sign_negative() { 0x8000 } else { 0 };
    let a = x.abs();
    // 65520 is the midpoint between 65504 (max finite) and 65536: ties go to the even "mantissa" 2048 = infinity.
    if a >= 65520.0 {
        return sign | 0x7C00;
    }
    if a < 6.103515625e-05 {
        // Below 2^-14: subnormal (or the rounding carries into the smallest normal, whose bits are contiguous).
        let m = (a * 16777216.0).round_ties_even() as u16; // a * 2^24 is exact in binary64
        return sign | m;
    }
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023; // a is a normal binary64 here
    let scaled = a * f64::powi(2.0, 10 - e); // in [1024, 2048), exact
    let mut m = scaled.round_ties_even() as u32;
    let mut e = e;
    if m == 2048 {
        m = 1024;
        e += 1;
    }
    if e > 15 {
        return sign | 0x7C00;
    }
    sign | (((e + 15) as u16) << 10) | (m - 1024) as u16
}

/// Exact value of an f16 (every f16 is exactly representable in binary64).
pub fn f16_to_f64(b: u16) -> f64 {
    half::f16::from_bits(b).to_f64()
}

/// f16 -> f32 widening (exact) with the canonical NaN.
pub fn f16_to_f32_bits(b: u16) -> u32 {
    let v = half::f16::from_bits(b).to_f32();
    canon_f32(v)
}

/// Bits of an f32 result, NaN made canonical.
#[inline]
pub fn canon_f32(v: f32) -> u32 {
    if v.is_nan() {
        F32_NAN
    } else {
        v.to_bits()
    }
}

/// NaN -> 0, else round half to even and saturate into `lo..=hi`.
pub fn f64_to_int_sat(v: f64, lo: i64, hi: i64) -> i64 {
    if v.is_nan() {
        return 0;
    }
    let r = v.round_ties_even();
    if r <= lo as f64 {
        lo
    } else if r >= hi as f64 {
        hi
    } else {
        r as i64
    }
}

/// Decode a finite f16 as `m * 2^(shift - 24)` with `|m| < 2^11`, `shift` in `0..=29`.
/// Returns `None` for infinities and NaN.
#[inline]
pub fn f16_mant_shift(b: u16) -> Option<(i32, u32)> {
    let e = ((b >> 10) & 0x1f) as u32;
    let f = (b & 0x3ff) as i32;
    let (m, s) = match e {
        0 => (f, 0),
        31 => return None,
        _ => (f | 0x400, e - 1),
    };
    Some((if b & 0x8000 != 0 { -m } else { m }, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_matches_half_for_f32_inputs() {
        // half's from_f32 is correctly rounded from f32; ours must agree on every f32 input we try.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            let ours = f64_to_f16(v as f64);
            let theirs = half::f16::from_f32(v).to_bits();
            if v.is_nan() {
                assert_eq!(ours, F16_NAN);
            } else {
                assert_eq!(ours, theirs, "input {v:e} bits {x:#x}");
            }
        }
        assert_eq!(f64_to_f16(65504.0), 0x7BFF);
        assert_eq!(f64_to_f16(65519.99), 0x7BFF);
        assert_eq!(f64_to_f16(65520.0), 0x7C00);
        assert_eq!(f64_to_f16(-0.0), 0x8000);
        assert_eq!(f64_to_f16(5.960464477539063e-08), 1); // 2^-24
        assert_eq!(f64_to_f16(2.9802322387695312e-08), 0); // 2^-25: tie to even 0
    }

    #[test]
    fn mant_shift_is_exact() {
        for b in 0..=0xffffu16 {
            if let Some((m, s)) = f16_mant_shift(b) {
                let v = m as f64 * f64::powi(2.0, s as i32 - 24);
                let want = f16_to_f64(b);
                assert_eq!(v, want, "{b:#x}");
            }
        }
    }

    #[test]
    fn int_saturation() {
        assert_eq!(f64_to_int_sat(2.5, -128, 127), 2);
        assert_eq!(f64_to_int_sat(3.5, -128, 127), 4);
        assert_eq!(f64_to_int_sat(-1e9, -128, 127), -128);
        assert_eq!(f64_to_int_sat(f64::NAN, 0, 255), 0);
        assert_eq!(f64_to_int_sat(f64::INFINITY, i32::MIN as i64, i32::MAX as i64), i32::MAX as i64);
    }
}
