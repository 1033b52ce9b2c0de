//! The MXM's batched f16 products (see mxm/mod.rs for why they are exact in f64 in any order): GEMM kernels (AVX-512,
//! AVX2 and a portable one, chosen at run time) and the pool of helper threads that runs them on the other cores.

use std::collections::VecDeque;

/// A GEMM handed to the helper threads: `y = x w` (see `gemm_f64_raw`) for the vectors of `slots`, written straight
/// into their plane's slot buffers (vector j's product at `y + yoff[j]`: no copy when the plane collects it);
/// `x`, `yoff` and `slots` come back for reuse.
pub(super) struct Job {
    pub(super) x: Vec<f64>,
    pub(super) rows: usize,
    pub(super) w: std::sync::Arc<Vec<f32>>,
    pub(super) stride: usize,
    pub(super) cols: usize,
    pub(super) y: OutPtr,
    pub(super) yoff: Vec<usize>,
    pub(super) slots: Vec<(u32, u32)>,
}

/// The plane's slot storage (`MxmPlane::sy`) as seen by a job: its base and length. The plane neither grows,
/// frees nor touches the buffers a job writes (its vectors' slots) until the job is collected, and waits for a
/// running job before it is dropped; its other accesses while jobs are in flight go through raw pointers too,
/// to other buffers, so no reference ever overlaps a job's writes.
pub(super) struct OutPtr {
    pub(super) base: *mut f64,
    pub(super) len: usize,
}

// SAFETY: see `OutPtr`: the buffers a job writes are exclusively its own until it is done.
unsafe impl Send for OutPtr {}

impl Job {
    pub(super) fn run(&mut self) {
        // SAFETY: see `OutPtr`.
        unsafe {
            gemm_f64_raw(&self.x, self.rows, self.rows, &self.w, self.stride, self.cols, self.y.base, self.y.len, &self.yoff)
        }
    }
}

/// A job's place in the pool: queued, taken (by a helper, or back by its plane), or done.
pub(super) struct JobCell {
    pub(super) state: std::sync::atomic::AtomicU8,
    pub(super) job: std::sync::Mutex<Option<Job>>,
}

pub(super) const JOB_QUEUED: u8 = 0;
pub(super) const JOB_TAKEN: u8 = 1;
pub(super) const JOB_DONE: u8 = 2;

/// The helper threads shared by every plane of the process (one fewer than the cores, at most 4): they run GEMMs
/// while the cycle loop goes on. A plane that needs a product waits for its job, or runs it itself if no helper
/// has started it (so a busy machine or a multi-chip run with every core taken never stalls on a helper). Where
/// a product is computed does not change it, so runs stay deterministic.
pub(super) struct Pool {
    pub(super) queue: std::sync::Mutex<VecDeque<std::sync::Arc<JobCell>>>,
    pub(super) wake: std::sync::Condvar,
    /// Jobs in `queue` (read without the lock by spinning helpers).
    pub(super) queued: std::sync::atomic::AtomicUsize,
    /// Helpers parked on `wake`.
    pub(super) sleeping: std::sync::atomic::AtomicUsize,
}

/// How long an idle helper keeps polling for work before it parks (jobs come every few microseconds while a
/// model runs; waking a parked thread costs about as much as a small job).
pub(super) const HELPER_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

impl Pool {
    /// The process's pool, or None when helpers are off (`LPUSIM_SIM_THREADS=1`, or a single core).
    pub(super) fn get() -> Option<&'static Pool> {
        static POOL: std::sync::OnceLock<Option<&'static Pool>> = std::sync::OnceLock::new();
        *POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let helpers = match std::env::var("LPUSIM_SIM_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
                Some(n) => n.saturating_sub(1),
                None => cores.saturating_sub(1).min(4),
            };
            if helpers == 0 {
                return None;
            }
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                queue: std::sync::Mutex::new(VecDeque::new()),
                wake: std::sync::Condvar::new(),
                queued: std::sync::atomic::AtomicUsize::new(0),
                sleeping: std::sync::atomic::AtomicUsize::new(0),
            }));
            let mut started = 0;
            for i in 0..helpers {
                let ok = std::thread::Builder::new().name(format!("lpusim-gemm-{i}")).spawn(move || pool.helper()).is_ok();
                started += ok as usize;
            }
            (started > 0).then_some(pool)
        })
    }

    pub(super) fn submit(&self, job: Job) -> std::sync::Arc<JobCell> {
        let cell = std::sync::Arc::new(JobCell {
            state: std::sync::atomic::AtomicU8::new(JOB_QUEUED),
            job: std::sync::Mutex::new(Some(job)),
        });
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(cell.clone());
        self.queued.store(q.len(), std::sync::atomic::Ordering::Release);
        drop(q);
        if self.sleeping.load(std::sync::atomic::Ordering::Acquire) > 0 {
            self.wake.notify_one();
        }
        cell
    }

    pub(super) fn helper(&self) {
        use std::sync::atomic::Ordering::*;
        loop {
            let cell = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let c = q.pop_front();
                self.queued.store(q.len(), Release);
                c
            };
            if let Some(cell) = cell {
                if cell.state.compare_exchange(JOB_QUEUED, JOB_TAKEN, AcqRel, Acquire).is_ok() {
                    let mut g = cell.job.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(j) = g.as_mut() {
                        j.run();
                    }
                    drop(g);
                    cell.state.store(JOB_DONE, Release);
                }
                continue;
            }
            // Idle: poll a while, then park.
            let start = std::time::Instant::now();
            while self.queued.load(Acquire) == 0 && start.elapsed() < HELPER_SPIN {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
            }
            if self.queued.load(Acquire) == 0 {
                let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                self.sleeping.fetch_add(1, AcqRel);
                // Re-checked under the lock, so a job pushed after the check above is not missed.
                let q = self.wake.wait_while(q, |q| q.is_empty()).unwrap_or_else(|e| e.into_inner());
                self.sleeping.fetch_sub(1, AcqRel);
                drop(q);
            }
        }
    }
}

/// Wait for a job a helper has taken to be done (a plane being dropped must not free the buffers it writes).
pub(super) fn wait_job(cell: &JobCell) {
    use std::sync::atomic::Ordering::*;
    while cell.state.load(Acquire) != JOB_DONE {
        std::thread::yield_now();
    }
}

/// Wait for a job to be done, running it here if no helper has taken it; returns it.
pub(super) fn finish_job(cell: &JobCell) -> Job {
    use std::sync::atomic::Ordering::*;
    if cell.state.compare_exchange(JOB_QUEUED, JOB_TAKEN, AcqRel, Acquire).is_ok() {
        let mut j = cell.job.lock().unwrap_or_else(|e| e.into_inner()).take().expect("a queued job");
        j.run();
        return j;
    }
    // A helper is on it (a job is tens of microseconds): poll, yielding the core if it takes long (a busy host).
    let start = std::time::Instant::now();
    while cell.state.load(Acquire) != JOB_DONE {
        if start.elapsed() < std::time::Duration::from_micros(500) {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
    cell.job.lock().unwrap_or_else(|e| e.into_inner()).take().expect("a finished job")
}

/// A batch goes to the helpers once this many vectors wait (a few micro-kernel blocks: large enough to amortise
/// the hand-off, small enough that the helpers start early) ...
pub(super) const SUBMIT_VECS: usize = 8;
/// ... and only if it has this many multiply-adds (smaller GEMMs run inline: a hand-off costs more).
pub(super) const WORKER_MIN_MACS: usize = 1 << 16;

/// The image's rows are padded with zeros to a multiple of this many columns (the widest micro-kernel panel).
pub(super) const GEMM_COLS: usize = 32;
/// The bound under which an f64 dot product of integers is exact: every product and partial sum is an integer
/// multiple of the unit `2^(tz_x + tz_w)` of magnitude at most `sum_k |x_k| * wmax_k`; below 2^53 units all of
/// them are representable, so no operation rounds, whatever the order of the sum and with or without fused
/// multiply-adds. 2^52 leaves room for the rounding of the bound's own f64 evaluation (at most 1024 terms,
/// relative error < 2^-42). Values are integers below 2^40 (products below 2^80 in magnitude, far from overflow),
/// so the test is scale-free: the bound is compared with `2^52` units.
pub(super) const EXACT_BOUND: f64 = 4503599627370496.0; // 2^52

/// `y[yoff[j] + n] = sum_{k < rows} x[j * xs + k] * w[k * ws + n]` for `j < yoff.len()` and `n < cols` (a
/// multiple of GEMM_COLS). Every product and partial sum is exact (the caller checked the bound), so the result
/// is the exact dot product whatever the kernel's order, blocking or use of fused multiply-adds.
/// ... into `ylen` f64 at `y`, of which only `y[yoff[j]..yoff[j] + cols]` are written (checked in range).
/// SAFETY: those ranges are valid for writes and nothing else reads or writes them during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_f64_raw(x: &[f64], xs: usize, rows: usize, w: &[f32], ws: usize, cols: usize, y: *mut f64, ylen: usize, yoff: &[usize]) {
    gemm_f64_with(gemm_kernel(), x, xs, rows, w, ws, cols, y, ylen, yoff)
}

/// The micro-kernels this CPU can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GemmKernel {
    /// 4 vectors x 32 columns: 16 zmm accumulators.
    Avx512,
    /// 6 vectors x 8 columns: 12 ymm accumulators, 2 for the weights, 1 for a broadcast (of 16 registers: LLVM's
    /// own vectorisation of wider blocks spills).
    Avx2,
    Generic,
}

pub(super) fn gemm_kernel() -> GemmKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return GemmKernel::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return GemmKernel::Avx2;
        }
    }
    GemmKernel::Generic
}

#[allow(clippy::too_many_arguments)]
/// SAFETY: as `gemm_f64_raw`.
pub(super) unsafe fn gemm_f64_with(k: GemmKernel, x: &[f64], xs: usize, rows: usize, w: &[f32], ws: usize, cols: usize, y: *mut f64, ylen: usize, yoff: &[usize]) {
    assert!(cols % GEMM_COLS == 0 && ws >= cols && (rows == 0 || w.len() >= (rows - 1) * ws + cols));
    assert!(x.len() >= yoff.len() * xs && xs >= rows);
    assert!(yoff.iter().all(|&o| o + cols <= ylen));
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: gemm_kernel() saw the features (tests pick only kernels it allows).
        GemmKernel::Avx512 => unsafe { gemm_avx512(x, xs, rows, w, ws, cols, y, yoff) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        GemmKernel::Avx2 => unsafe { gemm_avx2(x, xs, rows, w, ws, cols, y, yoff) },
        _ => gemm_blocked::<4, 8>(x, xs, rows, w, ws, cols, y, yoff),
    }
}

/// Column panels of 32 outside, blocks of 4 vectors inside (a narrower last block rather than zero padding).
/// SAFETY: AVX-512F and FMA; the bounds `gemm_f64_with` asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512(x: &[f64], xs: usize, rows: usize, w: &[f32], ws: usize, cols: usize, y: *mut f64, yoff: &[usize]) {
    let nvec = yoff.len();
    for n0 in (0..cols).step_by(32) {
        let mut j0 = 0;
        while j0 < nvec {
            let r = (nvec - j0).min(4);
            let (xp, wp, yp) = (x.as_ptr().add(j0 * xs), w.as_ptr().add(n0), y.add(n0));
            let yo = &yoff[j0..j0 + r];
            match r {
                4 => block512::<4>(xp, xs, rows, wp, ws, yp, yo),
                3 => block512::<3>(xp, xs, rows, wp, ws, yp, yo),
                2 => block512::<2>(xp, xs, rows, wp, ws, yp, yo),
                _ => block512::<1>(xp, xs, rows, wp, ws, yp, yo),
            }
            j0 += r;
        }
    }
}

/// `R` vectors times 32 columns over all `rows`, accumulators in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn block512<const R: usize>(x: *const f64, xs: usize, rows: usize, w: *const f32, ws: usize, y: *mut f64, yoff: &[usize]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_pd(); 4]; R];
    let mut wp = w;
    for k in 0..rows {
        // f32 weights widened on the fly (exact): half the memory traffic of an f64 image.
        let wv = [
            _mm512_cvtps_pd(_mm256_loadu_ps(wp)),
            _mm512_cvtps_pd(_mm256_loadu_ps(wp.add(8))),
            _mm512_cvtps_pd(_mm256_loadu_ps(wp.add(16))),
            _mm512_cvtps_pd(_mm256_loadu_ps(wp.add(24))),
        ];
        for (r, a) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_pd(*x.add(r * xs + k));
            for c in 0..4 {
                a[c] = _mm512_fmadd_pd(b, wv[c], a[c]);
            }
        }
        wp = wp.add(ws);
    }
    for (r, a) in acc.iter().enumerate() {
        let o = y.add(yoff[r]);
        for c in 0..4 {
            _mm512_storeu_pd(o.add(8 * c), a[c]);
        }
    }
}

/// Column panels of 8 outside, blocks of 6 vectors inside (a narrower last block rather than zero padding).
/// SAFETY: AVX2 and FMA; the bounds `gemm_f64_with` asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2(x: &[f64], xs: usize, rows: usize, w: &[f32], ws: usize, cols: usize, y: *mut f64, yoff: &[usize]) {
    let nvec = yoff.len();
    for n0 in (0..cols).step_by(8) {
        let mut j0 = 0;
        while j0 < nvec {
            let r = (nvec - j0).min(6);
            let (xp, wp, yp) = (x.as_ptr().add(j0 * xs), w.as_ptr().add(n0), y.add(n0));
            let yo = &yoff[j0..j0 + r];
            match r {
                6 => block256::<6>(xp, xs, rows, wp, ws, yp, yo),
                5 => block256::<5>(xp, xs, rows, wp, ws, yp, yo),
                4 => block256::<4>(xp, xs, rows, wp, ws, yp, yo),
                3 => block256::<3>(xp, xs, rows, wp, ws, yp, yo),
                2 => block256::<2>(xp, xs, rows, wp, ws, yp, yo),
                _ => block256::<1>(xp, xs, rows, wp, ws, yp, yo),
            }
            j0 += r;
        }
    }
}

/// `R` vectors times 8 columns over all `rows`, accumulators in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block256<const R: usize>(x: *const f64, xs: usize, rows: usize, w: *const f32, ws: usize, y: *mut f64, yoff: &[usize]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_pd(); 2]; R];
    let mut wp = w;
    for k in 0..rows {
        let wv = [_mm256_cvtps_pd(_mm_loadu_ps(wp)), _mm256_cvtps_pd(_mm_loadu_ps(wp.add(4)))];
        for (r, a) in acc.iter_mut().enumerate() {
            let b = _mm256_broadcast_sd(&*x.add(r * xs + k));
            a[0] = _mm256_fmadd_pd(b, wv[0], a[0]);
            a[1] = _mm256_fmadd_pd(b, wv[1], a[1]);
        }
        wp = wp.add(ws);
    }
    for (r, a) in acc.iter().enumerate() {
        let o = y.add(yoff[r]);
        _mm256_storeu_pd(o, a[0]);
        _mm256_storeu_pd(o.add(4), a[1]);
    }
}

/// The portable kernel: column panels of `C` outside, blocks of `R` vectors inside (the last block narrower
/// rather than padded with zero vectors: batches are small, so padding would waste up to a fifth of the work).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
/// SAFETY: as `gemm_f64_raw`, bounds checked by `gemm_f64_with`.
pub(super) unsafe fn gemm_blocked<const R: usize, const C: usize>(
    x: &[f64], xs: usize, rows: usize, w: &[f32], ws: usize, cols: usize, y: *mut f64, yoff: &[usize],
) {
    let nvec = yoff.len();
    for n0 in (0..cols).step_by(C) {
        let mut j0 = 0;
        while j0 + R <= nvec {
            gemm_block::<R, C>(x, xs, j0, rows, w, ws, n0, y, yoff);
            j0 += R;
        }
        match nvec - j0 {
            0 => {}
            1 => gemm_block::<1, C>(x, xs, j0, rows, w, ws, n0, y, yoff),
            2 => gemm_block::<2, C>(x, xs, j0, rows, w, ws, n0, y, yoff),
            3 => gemm_block::<3, C>(x, xs, j0, rows, w, ws, n0, y, yoff),
            _ => unreachable!("blocks are at most 4 vectors"),
        }
    }
}

/// One block: `R` vectors times `C` columns, accumulated over all `rows` (fixed-size loops LLVM unrolls).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
/// SAFETY: as `gemm_blocked`.
pub(super) unsafe fn gemm_block<const R: usize, const C: usize>(
    x: &[f64], xs: usize, j0: usize, rows: usize, w: &[f32], ws: usize, n0: usize, y: *mut f64, yoff: &[usize],
) {
    let mut acc = [[0f64; C]; R];
    let xr: [&[f64]; R] = std::array::from_fn(|jj| &x[(j0 + jj) * xs..(j0 + jj) * xs + rows]);
    for k in 0..rows {
        let wr: &[f32; C] = w[k * ws + n0..k * ws + n0 + C].try_into().unwrap();
        for jj in 0..R {
            let xv = xr[jj][k];
            for c in 0..C {
                // Exact (no rounding happens), so an unfused multiply-add gives the same as the kernels' FMAs.
                acc[jj][c] = xv * wr[c] as f64 + acc[jj][c];
            }
        }
    }
    for jj in 0..R {
        std::ptr::copy_nonoverlapping(acc[jj].as_ptr(), y.add(yoff[j0 + jj] + n0), C);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Every micro-kernel this CPU has against a plain triple loop, on exact integer data: batch sizes that leave
    /// each possible tail block, row counts from 0, scattered outputs.
    fn gemm_f64_with_checked(k: GemmKernel, x: &[f64], xs: usize, rows: usize, w: &[f32], ws: usize, cols: usize, y: &mut [f64], yoff: &[usize]) {
        // SAFETY: `y` is ours; the callers pick only kernels this CPU has.
        unsafe { gemm_f64_with(k, x, xs, rows, w, ws, cols, y.as_mut_ptr(), y.len(), yoff) }
    }

    #[test]
    fn gemm_kernels_match_reference() {
        let mut seed = 99u64;
        let kernels = [gemm_kernel(), GemmKernel::Generic];
        #[cfg(target_arch = "x86_64")]
        let kernels: Vec<GemmKernel> = if gemm_kernel() == GemmKernel::Avx512 && std::is_x86_feature_detected!("avx2") {
            vec![GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Generic]
        } else {
            kernels.to_vec()
        };
        for &rows in &[0usize, 1, 7, 207, 320] {
            for &cols in &[32usize, 96, 320] {
                let ws = 320;
                let xs = rows + 3;
                let w: Vec<f32> = (0..rows * ws).map(|_| (rng(&mut seed) % 2001) as f32 - 1000.0).collect();
                for nvec in 0..10usize {
                    let x: Vec<f64> = (0..nvec * xs).map(|_| (rng(&mut seed) % 2001) as f64 - 1000.0).collect();
                    let ys = 352;
                    let yoff: Vec<usize> = (0..nvec).map(|j| (nvec - 1 - j) * ys).collect(); // reversed
                    let mut want = vec![f64::NAN; nvec.max(1) * ys];
                    for j in 0..nvec {
                        for n in 0..cols {
                            want[yoff[j] + n] = (0..rows).map(|k| x[j * xs + k] * w[k * ws + n] as f64).sum();
                        }
                    }
                    for &kern in &kernels {
                        let mut y = vec![f64::NAN; nvec.max(1) * ys];
                        gemm_f64_with_checked(kern, &x, xs, rows, &w, ws, cols, &mut y, &yoff);
                        for j in 0..nvec {
                            assert_eq!(y[yoff[j]..yoff[j] + cols], want[yoff[j]..yoff[j] + cols], "{kern:?} rows {rows} cols {cols} nvec {nvec}");
                        }
                    }
                }
            }
        }
    }
}
