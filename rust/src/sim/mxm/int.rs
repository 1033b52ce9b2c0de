//! int8/uint8 ABCs on the deferred GEMM path (`deferred.rs`; functional mode). A product of an int8/uint8 activation
//! and an int8 weight is at most 2^15 in magnitude, so a dot product of at most 320 of them is below 2^24: exact
//! in f64 in any order. Weights get an exact f32 image at load (integers, `tz` 0), activations are queued as
//! small integers, and the products (exact integers, shift 0) go through the same slots, pending batches, update
//! log and `FRow`s as f16 ones, so rows see the same integer values at the same points as the i32 loop gave.

use super::weights::FastW;
use super::MxmPlane;
use crate::isa::DType;

/// Row `k` of an int8/uint8 weight set (as integers) into the GEMM image and its bound data.
pub(super) fn load_image(f: &mut FastW, k: usize, dim: usize, int: &[i32]) {
    let row = f.image_row(k, dim);
    let (mut max, mut nnz) = (0i32, 0usize);
    for (d, &v) in row[..dim].iter_mut().zip(&int[..dim]) {
        *d = v as f32; // exact
        max = max.max(v.abs());
        nnz += (v != 0) as usize;
    }
    row[dim..].fill(0.0);
    if nnz != 0 {
        // Every weight is a multiple of 2^0.
        f.lowbit = f.lowbit.min(1f32.to_bits());
    }
    f.nnz += nnz;
    f.wmax.push(max as f64);
}

impl MxmPlane {
    /// An int8/uint8 ABC at issue (functional mode): take a slot for its product `x . Wt` and queue `x` for the
    /// GEMM with the weights installed now (always exact: see above). Returns the slot.
    pub fn abc_int(&mut self, t: DType, x: &[u8]) -> u32 {
        let dim = self.dim;
        let slot = self.take_slot();
        let w = &mut self.w;
        if w.raw.len() == dim * dim {
            w.ensure_fast();
            debug_assert_eq!(w.fast.state, 1);
        }
        let rows = w.rows;
        let base = self.reserve_pending_row(rows);
        let xr = &mut self.pend_x[base..base + rows];
        let wmax = &self.w.fast.wmax[..rows];
        let mut bound = 0f64;
        for k in 0..rows {
            let v = if t == DType::I8 { x[k] as i8 as f64 } else { x[k] as f64 };
            xr[k] = v;
            bound += v.abs() * wmax[k]; // exact: integers below 2^24
        }
        let m = &mut self.meta[slot as usize];
        (m.fast, m.int, m.bound) = (true, true, bound);
        self.queue_pending(slot, 0);
        slot
    }
}
