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
}

fn exp64(x: f64) -> f64 {
    // SAFETY: a pure C function of one double.
    unsafe { libm_exp(x) }
}

pub fn latency(op: AluOp, c: &ChipConfig) -> u64 {
    match op {
        AluOp::Mul => c.vxm_mul_latency,
        AluOp::Div | AluOp::Exp | AluOp::Tanh | AluOp::Rsqrt | AluOp::Rcp | AluOp::Sigmoid | AluOp::Erf => {
            c.vxm_transcendental_latency
        }
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
        AluOp::Cvt => a,
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
        _ => a, // COPY (other ops do not take i32: rejected at assembly)
    }
}

/// Compute `out[l] = op(a[l], b[l])`. `b` is ignored by unary ops. Types were validated at assembly.
pub fn compute(op: AluOp, t: DType, out_t: DType, a: &[u32], b: &[u32], out: &mut [u32]) {
    let n = out.len();
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
}
