//! VXM arithmetic (docs/isa.md section 4 and 9.8-9.9), lane by lane on 32-bit containers.
//!
//! Inputs and outputs are the bits of the element type, zero-extended into u32. f32 arithmetic is Rust's (IEEE
//! binary32, round to nearest even); transcendental functions are evaluated in binary64 by the C library's libm
//! (the same functions Python's `math` module calls), then rounded once to f32. Every NaN result is canonical.

use crate::config::ChipConfig;
use crate::isa::{AluOp, DType};
use crate::numerics::{canon_f32, f16_to_f64, f64_to_f16, f64_to_int_sat};

extern "C" {
    // The host's libm, called directly so the result does not depend on Rust's own choice of implementation.
    #[link_name = "exp"]
    fn libm_exp(x: f64) -> f64;
    #[link_name = "tanh"]
    fn libm_tanh(x: f64) -> f64;
    #[link_name = "erf"]
    fn libm_erf(x: f64) -> f64;
    #[link_name = "log"]
    fn libm_log(x: f64) -> f64;
    #[link_name = "sin"]
    fn libm_sin(x: f64) -> f64;
    #[link_name = "cos"]
    fn libm_cos(x: f64) -> f64;
}

fn exp64(x: f64) -> f64 {
    // SAFETY: a pure C function of one double.
    unsafe { libm_exp(x) }
}

/// The operations timed by `vxm_transcendental_latency` (iterative or table-based; counted apart as energy
/// events, `Events::vxm_transcendental_ops`).
#[inline]
pub fn is_transcendental(op: AluOp) -> bool {
    matches!(
        op,
        AluOp::Div
            | AluOp::Exp
            | AluOp::Tanh
            | AluOp::Rsqrt
            | AluOp::Rcp
            | AluOp::Sigmoid
            | AluOp::Erf
            | AluOp::Log
            | AluOp::Sqrt
            | AluOp::Sin
            | AluOp::Cos
    )
}

pub fn latency(op: AluOp, c: &ChipConfig) -> u64 {
    match op {
        AluOp::Mul => c.vxm_mul_latency,
        // the one list of transcendental ops (inlined: as cheap as spelling it out here, measured in the commit)
        _ if is_transcendental(op) => c.vxm_transcendental_latency,
        _ => c.vxm_alu_latency,
    }
}

/// The exact value of an element (every element type is exact in binary64).
#[inline]
pub fn to_f64(t: DType, bits: u32) -> f64 {
    match t {
        DType::I8 => bits as u8 as i8 as f64,
        DType::U8 => bits as u8 as f64,
        DType::I32 => bits as i32 as f64,
        DType::F16 => f16_to_f64(bits as u16),
        DType::F32 => f32::from_bits(bits) as f64,
    }
}

/// Round an exact value to type `t` (CVT rules).
#[inline]
pub fn from_f64(t: DType, v: f64) -> u32 {
    match t {
        DType::F32 => canon_f32(v as f32),
        DType::F16 => f64_to_f16(v) as u32,
        DType::I32 => f64_to_int_sat(v, i32::MIN as i64, i32::MAX as i64) as i32 as u32,
        DType::I8 => f64_to_int_sat(v, -128, 127) as i8 as u8 as u32,
        DType::U8 => f64_to_int_sat(v, 0, 255) as u32,
    }
}

/// Result-register image of a result: f16 widened to f32, i8/u8 widened to i32 (exactly).
#[inline]
pub fn widen(t: DType, bits: u32) -> u32 {
    match t {
        DType::F16 => crate::numerics::f16_to_f32_bits(bits as u16),
        DType::I8 => bits as u8 as i8 as i32 as u32,
        DType::U8 => bits & 0xff,
        DType::I32 | DType::F32 => bits,
    }
}

/// The type tag a result register gets from a result of type `t`.
pub fn register_tag(t: DType) -> DType {
    if t.is_float() {
        DType::F32
    } else {
        DType::I32
    }
}

fn fmax(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a > b {
        a
    } else if b > a {
        b
    } else if a.is_sign_negative() {
        b // equal: +0 wins over -0
    } else {
        a
    }
}

fn fmin(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a < b {
        a
    } else if b < a {
        b
    } else if a.is_sign_negative() {
        a // equal: -0 wins over +0
    } else {
        b
    }
}

#[inline]
fn bool_f32(c: bool) -> f32 {
    if c {
        1.0
    } else {
        0.0
    }
}

#[inline]
fn f32_op(op: AluOp, a: f32, b: f32) -> f32 {
    let via64 = |f: fn(f64) -> f64| f(a as f64) as f32;
    match op {
        AluOp::Add => a + b,
        AluOp::Sub => a - b,
        AluOp::Mul => a * b,
        AluOp::Div => a / b,
        AluOp::Max => fmax(a, b),
        AluOp::Min => fmin(a, b),
        AluOp::Relu => {
            if a > 0.0 || a.is_nan() {
                a
            } else {
                0.0
            }
        }
        AluOp::Neg => -a,
        AluOp::Abs => a.abs(),
        AluOp::Copy => a,
        AluOp::Exp => via64(exp64),
        // SAFETY: pure C functions of one double.
        AluOp::Tanh => via64(|x| unsafe { libm_tanh(x) }),
        AluOp::Erf => via64(|x| unsafe { libm_erf(x) }),
        AluOp::Rsqrt => via64(|x| 1.0 / x.sqrt()),
        AluOp::Rcp => via64(|x| 1.0 / x),
        AluOp::Sigmoid => via64(|x| 1.0 / (1.0 + exp64(-x))),
        // libm: log(+-0) = -inf, log(x < 0) = NaN (made canonical by the caller), log(+inf) = +inf.
        // SAFETY: a pure C function of one double.
        AluOp::Log => via64(|x| unsafe { libm_log(x) }),
        // libm: sin/cos(+-inf) = NaN (made canonical by the caller); sin(-0) = -0.
        // SAFETY: pure C functions of one double.
        AluOp::Sin => via64(|x| unsafe { libm_sin(x) }),
        AluOp::Cos => via64(|x| unsafe { libm_cos(x) }),
        AluOp::Sqrt => a.sqrt(), // IEEE: correctly rounded, sqrt(-0) = -0, negative -> NaN
        AluOp::Floor => a.floor(),
        AluOp::Ceil => a.ceil(),
        AluOp::Eq => bool_f32(a == b),
        AluOp::Ne => bool_f32(a != b), // true when either is NaN
        AluOp::Lt => bool_f32(a < b),
        AluOp::Le => bool_f32(a <= b),
        AluOp::Gt => bool_f32(a > b),
        AluOp::Ge => bool_f32(a >= b),
        // i32-only (rejected for f32 at assembly)
        AluOp::Cvt | AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Not => a,
    }
}

#[inline]
fn i32_op(op: AluOp, a: i32, b: i32) -> i32 {
    match op {
        AluOp::Add => a.wrapping_add(b),
        AluOp::Sub => a.wrapping_sub(b),
        AluOp::Mul => a.wrapping_mul(b),
        AluOp::Max => a.max(b),
        AluOp::Min => a.min(b),
        AluOp::Relu => a.max(0),
        AluOp::Neg => a.wrapping_neg(),
        AluOp::Abs => a.wrapping_abs(),
        AluOp::Eq => (a == b) as i32,
        AluOp::Ne => (a != b) as i32,
        AluOp::Lt => (a < b) as i32,
        AluOp::Le => (a <= b) as i32,
        AluOp::Gt => (a > b) as i32,
        AluOp::Ge => (a >= b) as i32,
        AluOp::And => a & b,
        AluOp::Or => a | b,
        AluOp::Xor => a ^ b,
        AluOp::Not => !a,
        _ => a, // COPY (other ops do not take i32: rejected at assembly)
    }
}

/// f32 bits -> f16 bits for a whole vector (IEEE RNE, overflow to infinity, NaN -> `F16_NAN`): the hardware
/// conversion (F16C where the CPU has it) rounds the f32 once, exactly like `f64_to_f16` of the (exact) f64 value.
/// With AVX-512, 16 lanes per instruction straight from and to the u32 lanes; else through `half`'s slices.
fn f32_to_f16_slice(a: &[u32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512_f16c() {
        // SAFETY: the CPU has the features.
        return unsafe { f32_to_f16_avx512(a, out) };
    }
    f32_to_f16_portable(a, out)
}

fn f32_to_f16_portable(a: &[u32], out: &mut [u32]) {
    use half::slice::HalfFloatSliceExt;
    let mut fs = [0f32; 64];
    let mut hs = [half::f16::ZERO; 64];
    for (ac, oc) in a.chunks(64).zip(out.chunks_mut(64)) {
        let m = ac.len();
        for (f, &b) in fs[..m].iter_mut().zip(ac) {
            *f = f32::from_bits(b);
        }
        hs[..m].convert_from_f32_slice(&fs[..m]);
        for ((o, h), &b) in oc.iter_mut().zip(&hs[..m]).zip(ac) {
            let nan = b & 0x7fff_ffff > 0x7f80_0000;
            *o = if nan { crate::numerics::F16_NAN as u32 } else { h.to_bits() as u32 };
        }
    }
}

/// f16 bits -> f32 bits for a whole vector (exact; NaN -> the canonical f32 NaN).
pub fn f16_to_f32_slice(a: &[u32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512_f16c() {
        // SAFETY: the CPU has the features.
        return unsafe { f16_to_f32_avx512(a, out) };
    }
    f16_to_f32_portable(a, out)
}

fn f16_to_f32_portable(a: &[u32], out: &mut [u32]) {
    use half::slice::HalfFloatSliceExt;
    let mut fs = [0f32; 64];
    let mut hs = [half::f16::ZERO; 64];
    for (ac, oc) in a.chunks(64).zip(out.chunks_mut(64)) {
        let m = ac.len();
        for (h, &b) in hs[..m].iter_mut().zip(ac) {
            *h = half::f16::from_bits(b as u16);
        }
        hs[..m].convert_to_f32_slice(&mut fs[..m]);
        for (o, f) in oc.iter_mut().zip(&fs[..m]) {
            *o = canon_f32(*f);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_f16c() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("f16c")
}

/// VCVTPS2PH (round to nearest even: the same instruction `half` uses) 16 lanes at a time; NaN lanes (of the
/// input) made `F16_NAN`. Only the low 16 bits of an f16 lane are set. The tail goes the portable way.
/// SAFETY: AVX-512F and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn f32_to_f16_avx512(a: &[u32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let n = a.len().min(out.len());
    let nan16 = _mm512_set1_epi32(crate::numerics::F16_NAN as i32);
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(a.as_ptr().add(i) as *const f32);
        let h = _mm512_cvtepu16_epi32(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut _, _mm512_mask_blend_epi32(nan, h, nan16));
        i += 16;
    }
    f32_to_f16_portable(&a[i..n], &mut out[i..n]);
}

/// VCVTPH2PS (exact) 16 lanes at a time from the low 16 bits of each lane; NaN made canonical.
/// SAFETY: AVX-512F and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn f16_to_f32_avx512(a: &[u32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let n = a.len().min(out.len());
    let qnan = _mm512_set1_epi32(crate::numerics::F32_NAN as i32);
    let mut i = 0;
    while i + 16 <= n {
        let h = _mm512_cvtepi32_epi16(_mm512_loadu_si512(a.as_ptr().add(i) as *const _));
        let v = _mm512_cvtph_ps(h);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut _, _mm512_mask_blend_epi32(nan, _mm512_castps_si512(v), qnan));
        i += 16;
    }
    f16_to_f32_portable(&a[i..n], &mut out[i..n]);
}

/// `out = widen(t, v)` for a whole vector.
pub fn widen_slice(t: DType, v: &[u32], out: &mut [u32]) {
    match t {
        DType::F16 => f16_to_f32_slice(v, out),
        DType::I32 | DType::F32 => out.copy_from_slice(v),
        _ => {
            for (o, &b) in out.iter_mut().zip(v) {
                *o = widen(t, b);
            }
        }
    }
}

#[inline(always)]
fn map_f32(a: &[u32], b: &[u32], out: &mut [u32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = canon_f32(f(f32::from_bits(x), f32::from_bits(y)));
    }
}

/// Compute `out[l] = op(a[l], b[l])`. `b` is ignored by unary ops. Types were validated at assembly.
pub fn compute(op: AluOp, t: DType, out_t: DType, a: &[u32], b: &[u32], out: &mut [u32]) {
    let n = out.len();
    // Fast paths: the same results lane by lane, in loops the compiler can vectorise.
    match (op, t, out_t) {
        (AluOp::Cvt, DType::F32, DType::F16) => return f32_to_f16_slice(&a[..n], out),
        (AluOp::Cvt, DType::F16, DType::F32) => return f16_to_f32_slice(&a[..n], out),
        (AluOp::Cvt, DType::F32, DType::F32) => return map_f32(a, a, out, |x, _| x),
        (AluOp::Add, DType::F32, _) => return map_f32(a, b, out, |x, y| x + y),
        (AluOp::Sub, DType::F32, _) => return map_f32(a, b, out, |x, y| x - y),
        (AluOp::Mul, DType::F32, _) => return map_f32(a, b, out, |x, y| x * y),
        (AluOp::Div, DType::F32, _) => return map_f32(a, b, out, |x, y| x / y),
        (AluOp::Max, DType::F32, _) => return map_f32(a, b, out, fmax),
        (AluOp::Min, DType::F32, _) => return map_f32(a, b, out, fmin),
        (AluOp::Copy, DType::F32, _) => return map_f32(a, a, out, |x, _| x),
        (AluOp::Relu, DType::F32, _) => {
            return map_f32(a, a, out, |x, _| if x > 0.0 || x.is_nan() { x } else { 0.0 })
        }
        _ => {}
    }
    match (op, t) {
        (AluOp::Cvt, _) => {
            for l in 0..n {
                out[l] = from_f64(out_t, to_f64(t, a[l]));
            }
        }
        (_, DType::F32) => {
            for l in 0..n {
                let r = f32_op(op, f32::from_bits(a[l]), f32::from_bits(b[l]));
                out[l] = canon_f32(r);
            }
        }
        _ => {
            for l in 0..n {
                out[l] = i32_op(op, a[l] as i32, b[l] as i32) as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised conversions (what this CPU runs) against the portable ones: every f16 pattern (with junk in
    /// the upper 16 bits of a lane); f32 patterns on a stride through all 2^32, every pattern near the f16 range's
    /// edges (overflow, subnormals, underflow to zero) and all NaN classes; lengths that leave every tail.
    #[test]
    fn vector_f16_conversions_match_portable() {
        let h: Vec<u32> = (0..=0xffffu32).map(|b| b | (b.wrapping_mul(2654435761) & 0xffff_0000)).collect();
        let f: Vec<u32> = (0..=u32::MAX / 4099)
            .map(|i| i * 4099)
            .chain((0..1u32 << 16).flat_map(|i| [0x4770_0000 + i, 0x3380_0000 + i - (1 << 15), 0x3300_0000 + i]))
            .chain([0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0xffff_ffff, 0x8000_0000, 0])
            .flat_map(|b| [b, b ^ 0x8000_0000])
            .collect();
        for len in [0usize, 1, 15, 16, 17, 320] {
            for (src, to_f32) in [(&h, true), (&f, false)] {
                for chunk in src.chunks(len.max(1)).take(if len == 0 { 1 } else { usize::MAX }) {
                    let c = &chunk[..chunk.len().min(len)];
                    let (mut a, mut b) = (vec![7u32; c.len()], vec![9u32; c.len()]);
                    if to_f32 {
                        f16_to_f32_slice(c, &mut a);
                        f16_to_f32_portable(c, &mut b);
                    } else {
                        f32_to_f16_slice(c, &mut a);
                        f32_to_f16_portable(c, &mut b);
                    }
                    assert_eq!(a, b, "len {len} to_f32 {to_f32}");
                }
            }
        }
    }

    fn one(op: AluOp, t: DType, out_t: DType, a: u32, b: u32) -> u32 {
        let mut o = [0u32; 1];
        compute(op, t, out_t, &[a], &[b], &mut o);
        o[0]
    }

    #[test]
    fn special_cases() {
        let f = |x: f32| x.to_bits();
        assert_eq!(one(AluOp::Max, DType::F32, DType::F32, f(-0.0), f(0.0)), f(0.0));
        assert_eq!(one(AluOp::Max, DType::F32, DType::F32, f(0.0), f(-0.0)), f(0.0));
        assert_eq!(one(AluOp::Min, DType::F32, DType::F32, f(0.0), f(-0.0)), f(-0.0));
        assert_eq!(one(AluOp::Max, DType::F32, DType::F32, f(1.0), f(f32::NAN)), 0x7FC0_0000);
        assert_eq!(one(AluOp::Sub, DType::F32, DType::F32, f(f32::INFINITY), f(f32::INFINITY)), 0x7FC0_0000);
        assert_eq!(one(AluOp::Relu, DType::F32, DType::F32, f(-0.0), 0), f(0.0));
        assert_eq!(one(AluOp::Cvt, DType::F32, DType::I8, f(2.5), 0), 2);
        assert_eq!(one(AluOp::Cvt, DType::F32, DType::I8, f(-300.0), 0), 0x80);
        assert_eq!(one(AluOp::Cvt, DType::F32, DType::U8, f(f32::NAN), 0), 0);
        assert_eq!(one(AluOp::Cvt, DType::I32, DType::F32, 16777217, 0), f(16777216.0));
        assert_eq!(one(AluOp::Cvt, DType::F32, DType::F16, f(1.0), 0), 0x3C00);
        assert_eq!(one(AluOp::Cvt, DType::I32, DType::U8, (-5i32) as u32, 0), 0);
        assert_eq!(one(AluOp::Add, DType::I32, DType::I32, i32::MAX as u32, 1), i32::MIN as u32);
        assert_eq!(one(AluOp::Exp, DType::F32, DType::F32, f(0.0), 0), f(1.0));
        assert_eq!(widen(DType::I8, 0xff), u32::MAX);
        assert_eq!(widen(DType::F16, 0x3C00), f(1.0));
    }

    /// The vector fast paths against the lane-by-lane definitions, on random bits and edge values.
    #[test]
    fn fast_paths_match_lane_by_lane() {
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let edges = [
            0u32, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0xffc1_2345, 0x477f_f000,
            0x477f_efff, 0x477f_e000, 0x3380_0000, 0x3300_0000, 0x3300_0001, 0x0000_0001, 0x387f_f000, 0x3880_0000,
        ];
        for round in 0..400 {
            let a: Vec<u32> = (0..320)
                .map(|l| if round == 0 && l < edges.len() { edges[l] } else if round % 3 == 1 { next() & 0x0000_ffff } else { next() })
                .collect();
            let b: Vec<u32> = (0..320).map(|_| next()).collect();
            let ops: [(AluOp, DType, DType); 13] = [
                (AluOp::Cvt, DType::F32, DType::F16),
                (AluOp::Cvt, DType::F16, DType::F32),
                (AluOp::Cvt, DType::F32, DType::F32),
                (AluOp::Add, DType::F32, DType::F32),
                (AluOp::Sub, DType::F32, DType::F32),
                (AluOp::Mul, DType::F32, DType::F32),
                (AluOp::Div, DType::F32, DType::F32),
                (AluOp::Max, DType::F32, DType::F32),
                (AluOp::Min, DType::F32, DType::F32),
                (AluOp::Copy, DType::F32, DType::F32),
                (AluOp::Relu, DType::F32, DType::F32),
                (AluOp::Max, DType::F32, DType::F32),
                (AluOp::Add, DType::I32, DType::I32),
            ];
            for (op, t, o) in ops {
                let mut fast = vec![0u32; 320];
                compute(op, t, o, &a, &b, &mut fast);
                for l in 0..320 {
                    let want = match (op, t) {
                        (AluOp::Cvt, _) => from_f64(o, to_f64(t, a[l])),
                        (_, DType::F32) => canon_f32(f32_op(op, f32::from_bits(a[l]), f32::from_bits(b[l]))),
                        _ => i32_op(op, a[l] as i32, b[l] as i32) as u32,
                    };
                    assert_eq!(fast[l], want, "{op:?} {t:?}->{o:?} a={:#x} b={:#x}", a[l], b[l]);
                }
            }
            for t in [DType::F16, DType::I8, DType::U8, DType::F32] {
                let mut fast = vec![0u32; 320];
                let v: Vec<u32> = a.iter().map(|&v| if t == DType::F32 { v } else { v & 0xffff }).collect();
                widen_slice(t, &v, &mut fast);
                for l in 0..320 {
                    assert_eq!(fast[l], widen(t, v[l]), "widen {t:?} {:#x}", v[l]);
                }
            }
        }
    }

    #[test]
    fn log_sqrt_floor_ceil() {
        let f = |x: f32| x.to_bits();
        let u = |op: AluOp, x: f32| one(op, DType::F32, DType::F32, f(x), 0);
        const NAN: u32 = 0x7FC0_0000;
        assert_eq!(u(AluOp::Log, 1.0), f(0.0));
        assert_eq!(u(AluOp::Log, 0.0), f(f32::NEG_INFINITY));
        assert_eq!(u(AluOp::Log, -0.0), f(f32::NEG_INFINITY));
        assert_eq!(u(AluOp::Log, -1.0), NAN);
        assert_eq!(u(AluOp::Log, f32::INFINITY), f(f32::INFINITY));
        assert_eq!(u(AluOp::Log, f32::NEG_INFINITY), NAN);
        assert_eq!(one(AluOp::Log, DType::F32, DType::F32, 0xFFC0_0001, 0), NAN);
        for x in [0.5f32, 2.0, 3.0, 1e-30, 1e30, 1.4e-45, 123.456] {
            assert_eq!(u(AluOp::Log, x), f((x as f64).ln() as f32), "log {x}");
        }
        assert_eq!(u(AluOp::Sqrt, 4.0), f(2.0));
        assert_eq!(u(AluOp::Sqrt, 2.0), f(std::f32::consts::SQRT_2));
        assert_eq!(u(AluOp::Sqrt, -0.0), f(-0.0));
        assert_eq!(u(AluOp::Sqrt, 0.0), f(0.0));
        assert_eq!(u(AluOp::Sqrt, -4.0), NAN);
        assert_eq!(u(AluOp::Sqrt, f32::INFINITY), f(f32::INFINITY));
        assert_eq!(u(AluOp::Sqrt, f32::NEG_INFINITY), NAN);
        assert_eq!(u(AluOp::Floor, -0.5), f(-1.0));
        assert_eq!(u(AluOp::Floor, 2.5), f(2.0));
        assert_eq!(u(AluOp::Floor, -0.0), f(-0.0));
        assert_eq!(u(AluOp::Ceil, -0.5), f(-0.0));
        assert_eq!(u(AluOp::Ceil, 2.25), f(3.0));
        assert_eq!(u(AluOp::Ceil, 1.4e-45), f(1.0));
        assert_eq!(u(AluOp::Floor, f32::NEG_INFINITY), f(f32::NEG_INFINITY));
        assert_eq!(u(AluOp::Ceil, 16777215.0), f(16777215.0));
        assert_eq!(u(AluOp::Floor, f32::NAN), NAN);
        assert_eq!(one(AluOp::Ceil, DType::F32, DType::F32, 0x7F80_0001, 0), NAN);
    }

    #[test]
    fn compares_and_bitwise() {
        let f = |x: f32| x.to_bits();
        let one_f = f(1.0);
        let c = |op: AluOp, a: f32, b: f32| one(op, DType::F32, DType::F32, f(a), f(b));
        use AluOp::*;
        let nan = f32::NAN;
        for (op, lt, eq, gt, unordered) in [
            (Eq, 0, 1, 0, 0),
            (Ne, 1, 0, 1, 1),
            (Lt, 1, 0, 0, 0),
            (Le, 1, 1, 0, 0),
            (Gt, 0, 0, 1, 0),
            (Ge, 0, 1, 1, 0),
        ] {
            let b = |v: u32| if v == 1 { one_f } else { 0 };
            assert_eq!(c(op, 1.0, 2.0), b(lt), "{op:?}");
            assert_eq!(c(op, 2.0, 2.0), b(eq), "{op:?}");
            assert_eq!(c(op, -0.0, 0.0), b(eq), "{op:?} -0 +0");
            assert_eq!(c(op, f32::INFINITY, f32::INFINITY), b(eq), "{op:?} inf");
            assert_eq!(c(op, 3.0, -f32::INFINITY), b(gt), "{op:?}");
            assert_eq!(c(op, nan, 1.0), b(unordered), "{op:?} NaN");
            assert_eq!(c(op, 1.0, nan), b(unordered), "{op:?} NaN");
            assert_eq!(c(op, nan, nan), b(unordered), "{op:?} NaN NaN");
            let i = |a: i32, b: i32| one(op, DType::I32, DType::I32, a as u32, b as u32);
            assert_eq!(i(-1, 1), lt, "{op:?} i32");
            assert_eq!(i(i32::MIN, i32::MIN), eq, "{op:?} i32");
            assert_eq!(i(i32::MAX, i32::MIN), gt, "{op:?} i32 (signed)");
        }
        let i = |op: AluOp, a: u32, b: u32| one(op, DType::I32, DType::I32, a, b);
        assert_eq!(i(And, 0xF0F0_1234, 0xFF00_FF00), 0xF000_1200);
        assert_eq!(i(Or, 0xF0F0_1234, 0x0F00_0001), 0xFFF0_1235);
        assert_eq!(i(Xor, 0xFFFF_0000, 0x0F0F_0F0F), 0xF0F0_0F0F);
        assert_eq!(i(Not, 0x7FC0_0000, 0), 0x803F_FFFF); // bits of a NaN are just bits for i32 ops
        assert_eq!(i(And, f(-2.0), 0x7FFF_FFFF), f(2.0));
    }

    #[test]
    fn new_ops_assemble_and_round_trip() {
        use crate::isa::{Instr, Operand};
        use AluOp::*;
        for op in [Log, Sqrt, Floor, Ceil] {
            assert!(op.accepts(DType::F32) && !op.accepts(DType::I32), "{op:?}");
            assert!(!op.is_binary());
        }
        for op in [Eq, Ne, Lt, Le, Gt, Ge] {
            assert!(op.accepts(DType::F32) && op.accepts(DType::I32) && !op.accepts(DType::F16));
            assert!(op.is_binary() && op.is_compare());
        }
        for op in [And, Or, Xor, Not] {
            assert!(op.accepts(DType::I32) && !op.accepts(DType::F32));
            assert_eq!(op.is_binary(), op != Not);
        }
        // old operations keep their positions (binary encoding stability)
        assert_eq!(AluOp::ALL.iter().position(|&o| o == Cvt), Some(16));
        assert_eq!(AluOp::ALL.iter().position(|&o| o == Ceil), Some(30));
        let c = ChipConfig::tsp_v1();
        for op in AluOp::ALL {
            assert_eq!(is_transcendental(op), latency(op, &c) == c.vxm_transcendental_latency, "{op:?}");
        }
        assert_eq!(latency(Log, &c), c.vxm_transcendental_latency);
        assert_eq!(latency(Sqrt, &c), c.vxm_transcendental_latency);
        for op in [Eq, Ne, Lt, Le, Gt, Ge, And, Or, Xor, Not, Floor, Ceil] {
            assert_eq!(latency(op, &c), c.vxm_alu_latency);
        }
        let bad = Instr::Alu {
            op: And,
            t: DType::F32,
            out: DType::F32,
            dst: None,
            a: Operand::Reg(0),
            b: Some(Operand::Reg(1)),
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn sin_cos_binary64_libm_rounded_once() {
        let f = |x: f32| x.to_bits();
        let u = |op: AluOp, x: f32| one(op, DType::F32, DType::F32, f(x), 0);
        const NAN: u32 = 0x7FC0_0000;
        assert_eq!(u(AluOp::Sin, 0.0), f(0.0));
        assert_eq!(u(AluOp::Sin, -0.0), f(-0.0));
        assert_eq!(u(AluOp::Cos, 0.0), f(1.0));
        assert_eq!(u(AluOp::Cos, -0.0), f(1.0));
        for op in [AluOp::Sin, AluOp::Cos] {
            assert_eq!(u(op, f32::INFINITY), NAN, "{op:?} inf");
            assert_eq!(u(op, f32::NEG_INFINITY), NAN, "{op:?} -inf");
            assert_eq!(one(op, DType::F32, DType::F32, 0xFFC0_0001, 0), NAN, "{op:?} NaN");
            assert!(op.accepts(DType::F32) && !op.accepts(DType::I32) && !op.is_binary());
        }
        for x in [0.5f32, 1.0, -2.0, 3.0, 7.0, 100.0, 1e-30, 1e30, 1.4e-45, 123.456, 16383.0] {
            assert_eq!(u(AluOp::Sin, x), f((x as f64).sin() as f32), "sin {x}");
            assert_eq!(u(AluOp::Cos, x), f((x as f64).cos() as f32), "cos {x}");
        }
        let c = ChipConfig::tsp_v1();
        assert_eq!(latency(AluOp::Sin, &c), c.vxm_transcendental_latency);
        assert_eq!(latency(AluOp::Cos, &c), c.vxm_transcendental_latency);
    }

    #[test]
    fn sin_cos_are_appended_and_older_words_keep_their_encoding() {
        use crate::isa::encode::{decode_instr, encode_instr};
        use crate::isa::{Instr, Operand, Stream};
        use AluOp::*;
        assert_eq!(AluOp::ALL.iter().position(|&o| o == Sin), Some(31));
        assert_eq!(AluOp::ALL.iter().position(|&o| o == Cos), Some(32));
        let s = |index: u8| Operand::Stream(Stream { dir: crate::isa::Dir::East, index });
        let instr = |op: AluOp| {
            let t = if op.accepts(DType::F32) { DType::F32 } else { DType::I32 };
            Instr::Alu { op, t, out: t, dst: None, a: s(3), b: op.is_binary().then_some(s(4)) }
        };
        let word = |op| encode_instr(&instr(op));
        for (k, &op) in AluOp::ALL.iter().enumerate() {
            let w = word(op);
            assert_eq!(decode_instr(w).unwrap(), instr(op), "{op:?}");
            assert_eq!((w >> 8) & 0x1f, (k & 0x1f) as u128, "{op:?}: low 5 bits of the code in place");
            assert_eq!(w >> 97, (k >> 5) as u128, "{op:?}: the code's sixth bit after the operands");
        }
        // COS (32): 0 in the 5-bit field, 1 in the appended bit
        assert_eq!(((word(Cos) >> 8) & 0x1f, word(Cos) >> 97), (0, 1));
    }
}
