//! Tests of the MXM plane: the deferred GEMM and int8 paths against the exact i128 path, the decoding kernels
//! against plain references, exactness and rounding of f16 rows, GEMM jobs in flight.

use super::acc::NO_SLOT;
use super::decode::{decode_f16_row, decode_x_bound};
use super::exact::is_f16_special;
use super::*;
use crate::numerics::f16_mant_shift;
use crate::sim::gemm::SUBMIT_VECS;

impl MxmPlane {
    /// Row `row` as exact i128 counts and flags (moved out of f64 if it is there), for comparisons.
    fn row_counts(&mut self, row: usize) -> Option<(Vec<i128>, Vec<u8>)> {
        self.flush();
        let s = *self.row_slot.get(row).filter(|&&s| s != NO_SLOT)? as usize;
        self.to_i128(s);
        let dim = self.dim;
        Some((self.rows[s * dim..(s + 1) * dim].to_vec(), self.flags[s * dim..(s + 1) * dim].to_vec()))
    }
}

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
            p.load_row(DType::F16, &g[..dim], &g[dim..]);
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

/// The batched f64 GEMM path against the exact i128 path, one vector at a time, on random data: narrow and
/// full exponent ranges, subnormals, zeros, infinities and NaN in weights and activations, partial row counts,
/// `=` and `+` updates, weights changing between batches.
#[test]
fn deferred_gemm_matches_exact_path() {
    let dim = 320;
    let mut seed = 12345u64;
    // A random f16 of a given class.
    let gen = |seed: &mut u64, class: u64| -> u16 {
        let r = rng(seed);
        let sign = ((r >> 40) as u16 & 1) << 15;
        match class {
            // typical: exponents near 1 (|x| in ~[2^-6, 2^3])
            0 => sign | ((((r % 10) + 9) as u16) << 10) | (r >> 20) as u16 & 0x3ff,
            // full finite range, subnormals included
            1 => loop {
                let b = rng(seed) as u16;
                if b & 0x7c00 != 0x7c00 {
                    return b;
                }
            },
            // huge values (exponent 25..30)
            2 => sign | ((((r % 6) + 25) as u16) << 10) | (r >> 20) as u16 & 0x3ff,
            // tiny: subnormals and the smallest normals
            3 => sign | ((((r % 2)) as u16) << 10) | (r >> 20) as u16 & 0x3ff,
            // zero (both signs)
            4 => sign,
            // specials
            _ => [0x7c00u16, 0xfc00, 0x7e00, 0x7c01][(r % 4) as usize],
        }
    };
    let pick = |seed: &mut u64, mix: &[(u64, u64)]| -> u64 {
        let total: u64 = mix.iter().map(|m| m.1).sum();
        let mut r = rng(seed) % total;
        for &(c, w) in mix {
            if r < w {
                return c;
            }
            r -= w;
        }
        0
    };
    let mixes: [&[(u64, u64)]; 7] = [
        &[(0, 100)],
        &[(0, 90), (3, 5), (4, 5)],
        &[(1, 100)],
        &[(0, 50), (2, 50)],
        &[(0, 98), (4, 1), (5, 1)],
        &[(3, 60), (2, 40)],
        // sparse (selection-like) weights
        &[(4, 99), (0, 1)],
    ];
    let mut used_fast = 0usize;
    for case in 0..28 {
        let wmix = mixes[case % 7];
        let rows = [320usize, 1, 17, 300][case % 4];
        let mut fast = MxmPlane::new(dim, 64, false);
        let mut slow = MxmPlane::new(dim, 64, false);
        for set in 0..3 {
            let cols = [320usize, 5, 64, 319][(case / 4 + set) % 4];
            for _k in 0..rows {
                let mut g = vec![0u8; 2 * dim];
                for n in 0..cols {
                    let c = pick(&mut seed, wmix);
                    let b = gen(&mut seed, c);
                    g[n] = b as u8;
                    g[dim + n] = (b >> 8) as u8;
                }
                fast.load_row(DType::F16, &g[..dim], &g[dim..]);
                slow.load_row(DType::F16, &g[..dim], &g[dim..]);
            }
            for p in [&mut fast, &mut slow] {
                p.start_install();
                p.finish_install();
            }
            for v in 0..40 {
                let xmix = mixes[(case + v) % 7];
                let mut xg = vec![0u8; 2 * dim];
                for k in 0..dim {
                    let c = pick(&mut seed, xmix);
                    let b = gen(&mut seed, c);
                    xg[k] = b as u8;
                    xg[dim + k] = (b >> 8) as u8;
                }
                let row = (rng(&mut seed) % 8) as usize;
                let add = rng(&mut seed) % 3 != 0;
                let slot = fast.abc_f16(&xg[..dim], &xg[dim..]);
                used_fast += fast.meta[slot as usize].fast as usize;
                let mut y = vec![0i128; dim];
                let mut f = vec![0u8; dim];
                slow.multiply(DType::F16, &xg, &mut y, &mut f);
                let ok_fast = fast.update_slot(row, add, slot);
                let ok_slow = slow.update(row, add, RowKind::F16, &y, &f);
                assert_eq!(ok_fast, ok_slow);
                // Now and then: a read mid-stream (a flush with a partial batch and jobs in flight), or an
                // integer update (a row leaves f64 storage).
                match rng(&mut seed) % 16 {
                    0 | 1 => {
                        let r = (rng(&mut seed) % 8) as usize;
                        compare_rows(&mut fast, &mut slow, r, case);
                    }
                    2 => {
                        let r = (rng(&mut seed) % 8) as usize;
                        let yi: Vec<i128> = (0..dim).map(|_| rng(&mut seed) as i32 as i128).collect();
                        let add = rng(&mut seed) % 2 == 0;
                        let f0 = vec![0u8; dim];
                        assert_eq!(fast.update(r, add, RowKind::Int, &yi, &f0), slow.update(r, add, RowKind::Int, &yi, &f0));
                    }
                    _ => {}
                }
            }
        }
        for row in 0..8 {
            compare_rows(&mut fast, &mut slow, row, case);
        }
    }
    assert!(used_fast > 200, "the fast path took only {used_fast} vectors");
}

/// int8/uint8 ABCs on the deferred GEMM (`abc_int`) against the i32 loop (`multiply` + `update`), with weight
/// sets of every int type and density interleaved with f16 sets on the same rows (TypeMismatch on `+` onto the
/// other kind), and rows read mid-stream as i32 and as f32.
#[test]
fn deferred_int_matches_exact_path() {
    let dim = 320;
    let mut seed = 777u64;
    let mut fast = MxmPlane::new(dim, 16, false);
    let mut slow = MxmPlane::new(dim, 16, false);
    let read = |fast: &mut MxmPlane, slow: &mut MxmPlane, row: usize, t: DType| {
        let (mut a, mut b) = (vec![0u32; dim], vec![0u32; dim]);
        fast.read_row(row, t, &mut a);
        slow.read_row(row, t, &mut b);
        assert_eq!(a, b, "row {row} as {t:?}");
    };
    let mut mismatches = 0;
    for set in 0..24 {
        let wt = [DType::I8, DType::U8, DType::F16, DType::I8][set % 4];
        let rows = [320usize, 1, 200, 0, 319][set % 5];
        let cols = [320usize, 7, 160][set % 3];
        let sparse = set % 6 == 5;
        for _k in 0..rows {
            let mut g = vec![0u8; 2 * dim];
            for n in 0..cols {
                let r = rng(&mut seed);
                if wt == DType::F16 {
                    g[n] = r as u8;
                    g[dim + n] = 0x38 | (r >> 8) as u8 & 0x83;
                } else if !sparse || r % 40 == 0 {
                    g[n] = (r >> 8) as u8;
                }
            }
            fast.load_row(wt, &g[..dim], &g[dim..]);
            slow.load_row(wt, &g[..dim], &g[dim..]);
        }
        for p in [&mut fast, &mut slow] {
            p.start_install();
            p.finish_install();
        }
        let xt = if wt == DType::F16 { DType::F16 } else { [DType::I8, DType::U8][set % 2] };
        for v in 0..3 * SUBMIT_VECS / 2 {
            let xg: Vec<u8> = (0..2 * dim)
                .map(|i| {
                    let r = rng(&mut seed);
                    if i >= dim { 0x38 | (r as u8 & 0x83) } else if v % 5 == 0 { [0u8, 127, 128, 255][(r % 4) as usize] } else { r as u8 }
                })
                .collect();
            let row = (rng(&mut seed) % 12) as usize;
            let add = rng(&mut seed) % 4 != 0;
            let slot = if xt == DType::F16 { fast.abc_f16(&xg[..dim], &xg[dim..]) } else { fast.abc_int(xt, &xg[..dim]) };
            let (mut y, mut f) = (vec![0i128; dim], vec![0u8; dim]);
            slow.multiply(xt, &xg, &mut y, &mut f);
            let kind = if xt == DType::F16 { RowKind::F16 } else { RowKind::Int };
            let ok = fast.update_slot(row, add, slot);
            assert_eq!(ok, slow.update(row, add, kind, &y, &f));
            mismatches += !ok as usize;
            if !ok {
                // As a run stopped by the error would not, keep going: the slot is never applied.
                fast.free_slots.push(slot);
            }
            if rng(&mut seed) % 24 == 0 {
                let r = (rng(&mut seed) % 12) as usize;
                read(&mut fast, &mut slow, r, if rng(&mut seed) % 2 == 0 { DType::I32 } else { DType::F32 });
            }
        }
    }
    for row in 0..12 {
        read(&mut fast, &mut slow, row, DType::F32);
        read(&mut fast, &mut slow, row, DType::I32);
        assert_eq!(fast.row_counts(row), slow.row_counts(row), "row {row}");
    }
    assert!(mismatches > 0);
}

/// Jobs write their products straight into the plane's slot buffers: a plane dropped with jobs queued or
/// running (a run stopped early) cancels or waits for them, and slots allocated while jobs are in flight (the
/// slot storage grows, after collecting them) keep every product.
#[test]
fn jobs_in_flight_survive_growth_and_drop() {
    let dim = 320;
    let mut seed = 4242u64;
    for rounds in [0usize, 1] {
        let mut fast = MxmPlane::new(dim, 64, false);
        let mut slow = MxmPlane::new(dim, 64, false);
        for _k in 0..dim {
            let g: Vec<u8> = (0..2 * dim).map(|i| if i < dim { rng(&mut seed) as u8 } else { 0x38 | (rng(&mut seed) as u8 & 0x83) }).collect();
            fast.load_row(DType::F16, &g[..dim], &g[dim..]);
            slow.load_row(DType::F16, &g[..dim], &g[dim..]);
        }
        for p in [&mut fast, &mut slow] {
            p.start_install();
            p.finish_install();
        }
        for v in 0..8 * SUBMIT_VECS {
            let xg: Vec<u8> = (0..2 * dim).map(|i| if i < dim { rng(&mut seed) as u8 } else { 0x3c | (rng(&mut seed) as u8 & 0x81) }).collect();
            let slot = fast.abc_f16(&xg[..dim], &xg[dim..]);
            assert!(fast.meta[slot as usize].fast);
            let (mut y, mut f) = (vec![0i128; dim], vec![0u8; dim]);
            slow.multiply(DType::F16, &xg, &mut y, &mut f);
            let row = v % 48;
            assert!(fast.update_slot(row, v >= 48, slot));
            assert!(slow.update(row, v >= 48, RowKind::F16, &y, &f));
        }
        if rounds == 1 {
            for row in 0..48 {
                compare_rows(&mut fast, &mut slow, row, 0);
            }
        }
        drop(fast); // with jobs in flight when rounds == 0
    }
}

/// The 32-bit-lane weight-row decode against plain i64 arithmetic, over every f16 bit pattern (in rows, some
/// with every element zero or special) and through the vectorised dispatch.
#[test]
fn decode_f16_row_matches_reference() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut rows: Vec<Vec<u16>> = all.chunks(320).map(|c| c.to_vec()).collect();
    rows.push(vec![0x8000; 37]);
    rows.push(vec![0x7c00, 0, 0x0001, 0x8400]);
    rows.push(vec![0x0400, 0x0200, 0x0000, 0x3c00, 0]);
    for r in &rows {
        let n = r.len();
        let lo: Vec<u8> = r.iter().map(|&b| b as u8).collect();
        let hi: Vec<u8> = r.iter().map(|&b| (b >> 8) as u8).collect();
        let (mut raw, mut fw) = (vec![0u16; n], vec![f32::NAN; n]);
        let (special, last, lowbit, max, nnz) = decode_f16_row(&lo, &hi, &mut raw, &mut fw);
        assert_eq!(raw, *r);
        let (mut w_or, mut w_max, mut w_nnz, mut w_last, mut w_special) = (0i64, 0i64, 0usize, 0usize, false);
        for (i, &b) in r.iter().enumerate() {
            let mag = match f16_mant_shift(b) {
                Some((m, sh)) if !is_f16_special(b) => (m.unsigned_abs() as i64) << sh,
                _ => 0,
            };
            w_special |= is_f16_special(b);
            let want = if b & 0x8000 != 0 { -(mag as f32) } else { mag as f32 };
            assert_eq!(fw[i].to_bits(), want.to_bits(), "bits {b:#06x}");
            w_or |= mag;
            w_max = w_max.max(mag);
            w_nnz += (mag != 0) as usize;
            if mag != 0 {
                w_last = i + 1;
            }
        }
        assert_eq!((special, last, max, nnz), (w_special, w_last, w_max as f64, w_nnz));
        if w_or != 0 {
            assert_eq!(lowbit, ((1u64 << w_or.trailing_zeros()) as f32).to_bits());
        } else {
            assert_eq!(lowbit, u32::MAX);
        }
    }
}

/// The activation decode against plain i64 arithmetic, over every finite f16 bit pattern (in rows, one all
/// zero), with the bound summed in the same order.
#[test]
fn decode_x_bound_matches_reference() {
    let finite: Vec<u16> = (0..=u16::MAX).filter(|&b| !is_f16_special(b)).collect();
    let mut rows: Vec<Vec<u16>> = finite.chunks(320).map(|c| c.to_vec()).collect();
    rows.push(vec![0x8000, 0, 0x8000]);
    let mut seed = 5u64;
    for r in &rows {
        let n = r.len();
        let lo: Vec<u8> = r.iter().map(|&b| b as u8).collect();
        let hi: Vec<u8> = r.iter().map(|&b| (b >> 8) as u8).collect();
        let wmax: Vec<f64> = (0..n).map(|_| (rng(&mut seed) % 4096) as f64).collect();
        let mut xr = vec![f64::NAN; n];
        let (lowbit, bound) = decode_x_bound(&lo, &hi, &wmax, &mut xr);
        let (mut or, mut part) = (0i64, [0f64; 8]);
        for (k, &b) in r.iter().enumerate() {
            let (m, sh) = f16_mant_shift(b).unwrap();
            let v = ((m as i64) << sh) as f64;
            let want = if b & 0x8000 != 0 && m == 0 { -0.0 } else { v };
            assert_eq!(xr[k].to_bits(), want.to_bits(), "bits {b:#06x}");
            or |= (m.unsigned_abs() as i64) << sh;
            part[k % 8] += v.abs() * wmax[k];
        }
        assert_eq!(bound.to_bits(), part.iter().sum::<f64>().to_bits());
        let want_low = if or == 0 { u32::MAX } else { ((1u64 << or.trailing_zeros()) as f32).to_bits() };
        assert_eq!(lowbit, want_low);
    }
}

/// Row `row` of both planes: equal as read by ACC (in the row's kind) and as exact counts.
fn compare_rows(fast: &mut MxmPlane, slow: &mut MxmPlane, row: usize, case: usize) {
    let dim = fast.dim;
    let t = if slow.row_kind[row] == RowKind::Int { DType::I32 } else { DType::F32 };
    let (mut a, mut b) = (vec![0u32; dim], vec![0u32; dim]);
    fast.read_row(row, t, &mut a);
    slow.read_row(row, t, &mut b);
    assert_eq!(a, b, "case {case} row {row}");
    assert_eq!(fast.row_counts(row), slow.row_counts(row), "case {case} row {row}");
}

/// `+` onto an f64 row until the sum of bounds passes 2^52 units: the row moves to i128 and stays exact.
#[test]
fn f64_rows_fall_back_to_i128() {
    let dim = 320;
    let mut fast = MxmPlane::new(dim, 4, false);
    let mut slow = MxmPlane::new(dim, 4, false);
    // All weights 1.0 (dense): 2^24 counts.
    let one = [0x00u8; 320].iter().chain([0x3cu8; 320].iter()).copied().collect::<Vec<u8>>();
    for p in [&mut fast, &mut slow] {
        for _ in 0..dim {
            p.load_row(DType::F16, &one[..dim], &one[dim..]);
        }
        p.start_install();
        p.finish_install();
    }
    // 319 x 65504 (2047 << 29 counts) and one 2^-24 (1 count): a bound of about 2^48.3 units of 2^24 each,
    // so one vector is exact in f64 but 16 summed in a row are not (by the bound).
    let mut x = vec![0u8; 2 * dim];
    for k in 0..dim {
        let b: u16 = if k == 0 { 0x0001 } else if k % 2 == 0 { 0x7bff } else { 0xfbff };
        x[k] = b as u8;
        x[dim + k] = (b >> 8) as u8;
    }
    for i in 0..24 {
        let slot = fast.abc_f16(&x[..dim], &x[dim..]);
        assert!(fast.meta[slot as usize].fast, "vector {i} takes the GEMM");
        let mut y = vec![0i128; dim];
        let mut f = vec![0u8; dim];
        slow.multiply(DType::F16, &x, &mut y, &mut f);
        assert!(fast.update_slot(0, i > 0, slot));
        assert!(slow.update(0, i > 0, RowKind::F16, &y, &f));
        if i == 3 {
            fast.flush();
            assert!(fast.fst[fast.row_slot[0] as usize].on, "a few vectors stay in f64");
        }
    }
    fast.flush();
    assert!(!fast.fst[fast.row_slot[0] as usize].on, "24 vectors went to i128");
    compare_rows(&mut fast, &mut slow, 0, 0);
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
