//! The cycle loop: queue sequencing (NOP, REPEAT, SYNC/NOTIFY, deskew stalls), `Chip::step` and `Chip::run`,
//! the end-of-run checks, and the single-chip flow (`simulate`, `load_program`, `run_loaded`), and runs on a
//! `ChipMemory` kept across runs (`Loaded::run_on`; what persists is in the `mem` module doc).

use super::calendar;
use super::chip::{apply_init, check_images, check_range, load_err, Chip, Loaded, MemInit, Repeat};
use super::mem::ChipMemory;
use super::stats::{DumpResult, Num, Stats};
use super::{streams, vxm};
use crate::config::ChipConfig;
use crate::error::{ErrorKind, SimError};
use crate::isa::{DType, Instr, Program};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Perform every check and count every cycle, but compute no values.
    pub timing_only: bool,
    /// Stop with `CycleLimit` if anything would happen at a cycle `>= max_cycles`.
    pub max_cycles: Option<u64>,
}

impl Chip {
    // ---- queue sequencing (section 3) ----

    /// Skip NOPs and set up a REPEAT at the queue's pc; schedule its next issue if it has one.
    pub(super) fn resolve(&mut self, q: usize) {
        let st = &mut self.qs[q];
        let prog = &self.progs[q];
        while st.pc < prog.len() {
            match prog[st.pc] {
                Instr::Nop(n) => {
                    st.next += n as u64;
                    st.pc += 1;
                }
                Instr::Repeat { n, d, s } => {
                    let c0 = st.last_issue;
                    st.repeat = Some(Repeat { instr: st.pc - 1, at: st.pc, n, d: d as u64, s: s as i64, i: 1, c0 });
                    st.next = c0 + d as u64;
                    break;
                }
                _ => break,
            }
        }
        if st.pc < prog.len() {
            self.ready[q] = st.next;
            self.wheel.push(st.next, q);
        }
    }

    /// After queue `q` issued `ins` at `t`: compute its next issue cycle.
    fn advance(&mut self, q: usize, t: u64, ins: &Instr) {
        let resume = self.resume_at;
        let st = &mut self.qs[q];
        st.last_issue = t;
        if let Some(r) = st.repeat.as_mut() {
            r.i += 1;
            if r.i <= r.n {
                st.next = r.c0 + r.i as u64 * r.d;
                self.ready[q] = st.next;
                self.wheel.push(st.next, q);
                return;
            }
            st.next = r.c0 + r.n as u64 * r.d + 1;
            st.pc = r.at + 1;
            st.repeat = None;
        } else {
            match ins {
                Instr::Sync => {
                    st.parked_at = Some(t);
                    self.parked.push(q);
                    return;
                }
                Instr::Deskew | Instr::RuntimeDeskew(_) => {
                    st.next = resume;
                    st.pc += 1;
                    self.sync_stall[q] += resume - t - 1;
                }
                _ => {
                    st.next = t + 1;
                    st.pc += 1;
                }
            }
        }
        self.resolve(q);
    }

    pub(super) fn activity(&mut self, t: u64) {
        // The exact order sees activity in time order; the fast form also at emit cycles ahead of the loop.
        self.last_activity = Some(self.last_activity.map_or(t, |a| a.max(t)));
    }

    /// The next cycle at which this chip has anything to do (`None`: finished or deadlocked).
    pub fn next_cycle(&self) -> Option<u64> {
        let a = self.cal.next_cycle();
        let b = self.wheel.next_cycle();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run cycle `t` (which must be `next_cycle()`; earlier cycles have nothing to do).
    pub fn step(&mut self, t: u64) -> Result<(), SimError> {
        if t >= self.pending_due {
            self.check_pending(Some(t))?;
        }
        if self.fast && t >= streams::MAX_CYCLE {
            // Past the order-free belt's range: give up, the exact rerun takes over.
            let m = format!("the fast timing-only form stops at cycle {}", streams::MAX_CYCLE);
            return Err(SimError { kind: ErrorKind::CycleLimit, cycle: t, queue: "-".into(), index: 0, instruction: String::new(), message: m });
        }
        // 1. Effects due at t, in kind / queue / issue order.
        while let Some(ev) = self.cal.pop_due(t, calendar::EMIT) {
            self.activity(t);
            self.apply(ev)?;
        }
        // 2. Issue, in queue index order.
        let mut issuing = std::mem::take(&mut self.issuing);
        self.wheel.take(t, &mut issuing);
        for &q in &issuing {
            let q = q as usize;
            debug_assert_eq!(self.ready[q], t);
            self.ready[q] = u64::MAX;
            if let Err(e) = self.issue(q, t) {
                self.issuing = issuing;
                return Err(e);
            }
        }
        self.issuing = issuing;
        if let Some(n) = self.notify.take() {
            self.release_parked(n);
        }
        // 3. Stream emits due at t.
        while let Some(ev) = self.cal.pop_due(t, u8::MAX) {
            self.activity(t);
            self.apply(ev)?;
        }
        Ok(())
    }

    fn release_parked(&mut self, t: u64) {
        let lat = self.cfg.icu_notify_latency;
        let mut still = Vec::new();
        let mut freed = Vec::new();
        for &q in &self.parked {
            match self.qs[q].parked_at {
                Some(p) if p <= t => freed.push(q),
                _ => still.push(q),
            }
        }
        self.parked = still;
        freed.sort_unstable();
        for q in freed {
            let st = &mut self.qs[q];
            st.parked_at = None;
            st.next = t + lat;
            st.pc += 1;
            self.resolve(q);
        }
    }

    fn issue(&mut self, q: usize, t: u64) -> Result<(), SimError> {
        let st = &self.qs[q];
        let (idx, delta) = match &st.repeat {
            Some(r) => (r.instr, r.i as i64 * r.s),
            None => (st.pc, 0),
        };
        let ins = self.progs[q][idx];
        self.activity(t);
        self.stats.instructions += 1;
        self.stats.per_queue_issues[q] += 1;
        self.exec(q, idx, &ins, delta, t)?;
        let last = if self.fast { self.take_ahead(q, t, &ins)? } else { t };
        self.advance(q, last, &ins);
        Ok(())
    }

    /// Run to completion (or the first error).
    pub fn run(&mut self, max_cycles: Option<u64>) -> Result<(), SimError> {
        let limit = max_cycles.unwrap_or(u64::MAX);
        while let Some(t) = self.next_cycle() {
            if t >= limit {
                return Err(SimError {
                    kind: ErrorKind::CycleLimit,
                    cycle: limit,
                    queue: "-".into(),
                    index: 0,
                    instruction: String::new(),
                    message: format!("the program runs past the limit of {limit} cycles"),
                });
            }
            self.step(t)?;
        }
        self.finish()
    }

    /// End-of-run checks (Deadlock, then LinkUnreceived) and the `.dump` results.
    pub fn finish(&mut self) -> Result<(), SimError> {
        self.check_pending(None)?;
        if let Some(&q) = self.parked.iter().min() {
            let st = &self.qs[q];
            return Err(SimError {
                kind: ErrorKind::Deadlock,
                cycle: st.parked_at.unwrap_or(0),
                queue: self.qinfo[q].name.to_string(),
                index: st.pc,
                instruction: self.progs[q][st.pc].to_string(),
                message: "the queue is still parked at SYNC and no queue has work left to NOTIFY it".into(),
            });
        }
        for (i, l) in self.links.iter().enumerate() {
            if let Some(a) = l.rx.front() {
                let q = a.queue as usize;
                if a.origin != calendar::NONE {
                    let m = format!("link {i} still holds {} vector(s) never received", l.rx.len());
                    return Err(self.remote_err(ErrorKind::LinkUnreceived, a.cycle, a.origin, m));
                }
                return Err(SimError {
                    kind: ErrorKind::LinkUnreceived,
                    cycle: a.cycle,
                    queue: self.qinfo[q].name.to_string(),
                    index: a.instr as usize,
                    instruction: self.progs[q][a.instr as usize].to_string(),
                    message: format!("link {i} still holds {} vector(s) never received", l.rx.len()),
                });
            }
        }
        self.stats.sync_cycles = self.sync_stall.iter().copied().max().unwrap_or(0);
        self.stats.link_sends = self.links.iter().map(|l| l.sent).collect();
        // The events that equal a counter kept anyway are copied here rather than counted twice in the loop.
        let e = &mut self.stats.events;
        e.vxm_ops = self.stats.busy.vxm;
        e.sxm_ops = self.stats.busy.sxm;
        e.c2c_vectors = self.stats.link_sends.iter().sum();
        e.instructions = self.stats.instructions;
        e.stream_hops = self.belt.hops();
        self.stats.cycles = match self.last_activity {
            Some(t) => t + self.cfg.superlanes as u64,
            None => 0,
        };
        self.stats.dumps = self.dumps.iter().map(|d| self.dump(d)).collect();
        Ok(())
    }

    fn dump(&self, d: &crate::isa::Dump) -> DumpResult {
        let lanes = self.cfg.lanes;
        let w = d.dtype.width();
        let base = d.slice.mem_global(&self.cfg).unwrap_or(0);
        let values = (!self.timing_only).then(|| {
            let mut plane = vec![0u8; lanes];
            (0..d.n as usize)
                .map(|k| {
                    let mut bits = vec![0u32; lanes];
                    for b in 0..w {
                        self.mem[base + b].read(d.addr as usize + k, &mut plane);
                        for l in 0..lanes {
                            bits[l] |= (plane[l] as u32) << (8 * b);
                        }
                    }
                    bits.iter()
                        .map(|&x| match d.dtype {
                            DType::F16 | DType::F32 => Num::F(vxm::to_f64(d.dtype, x)),
                            t => Num::I(vxm::to_f64(t, x) as i64),
                        })
                        .collect()
                })
                .collect()
        });
        DumpResult { slice: d.slice.to_string(), addr: d.addr, dtype: d.dtype, values }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// What a run returns: its stats and the requested dumps (`None` each in timing-only mode).
type RunOutput = Result<(Stats, Vec<Option<Vec<u8>>>), SimError>;

/// Load, initialise, run, and read back: the whole single-chip flow used by the bindings.
pub fn simulate(
    cfg: &ChipConfig,
    program: &Program,
    mem_init: &[MemInit],
    dumps: &[(usize, usize, usize)],
    opts: &RunOptions,
) -> RunOutput {
    run_loaded(&load_program(cfg, program)?, mem_init, dumps, opts)
}

/// Check and load a program once, for any number of `run_loaded` runs (a timing-only chip: `.init`s are applied
/// by each run's copy).
pub fn load_program(cfg: &ChipConfig, program: &Program) -> Result<Loaded, SimError> {
    let mut chip = Chip::new(cfg, true);
    chip.load(program)?;
    Ok(chip.loaded())
}

/// One run of a loaded program (`load_program`): initialise, run, read back. `loaded` itself is not changed.
/// A timing-only run without a cycle limit reads no memory image and runs the fast form first; only if that fails
/// does the exact run reproduce the error.
pub fn run_loaded(
    loaded: &Loaded,
    mem_init: &[MemInit],
    dumps: &[(usize, usize, usize)],
    opts: &RunOptions,
) -> RunOutput {
    check_images(&loaded.cfg, mem_init, "mem_init")?;
    let mut fast_ok = None;
    if opts.timing_only && opts.max_cycles.is_none() {
        let mut chip = loaded.chip(true, true);
        let ok = chip.run(None).is_ok();
        // The belt is not read after the run (dumps read no values in timing-only mode).
        loaded.keep_belt(&mut chip);
        if ok {
            fast_ok = Some(chip);
        }
    }
    let chip = match fast_ok {
        Some(chip) => chip,
        None => {
            let mut chip = loaded.chip(opts.timing_only, false);
            if !opts.timing_only {
                // The images outlive `chip` (dropped at the end of this function), so the slices may borrow them.
                let mut per_slice: Vec<Vec<(usize, &[u8])>> = vec![Vec::new(); chip.mem.len()];
                for &(slice, addr, data) in mem_init {
                    per_slice[slice].push((addr, data));
                }
                for (s, images) in per_slice.iter().enumerate() {
                    if !images.is_empty() {
                        // SAFETY: `mem_init` is borrowed for the whole call and `chip` does not escape it.
                        unsafe { chip.mem[s].borrow_images(images) };
                    }
                }
            }
            chip.run(opts.max_cycles)?;
            chip
        }
    };
    Ok((chip.stats.clone(), read_dumps(&chip, dumps)?))
}

/// The dump requests read back after a run (`None` each in timing-only mode).
fn read_dumps(chip: &Chip, dumps: &[(usize, usize, usize)]) -> Result<Vec<Option<Vec<u8>>>, SimError> {
    let read = |(k, &(slice, addr, n)): (usize, &(usize, usize, usize))| {
        chip.read_mem(slice, addr, n).map_err(|m| load_err("dumps".into(), k, String::new(), m))
    };
    dumps.iter().enumerate().map(read).collect()
}

/// A chip for one run, on a `ChipMemory`'s slices when it has one (`Loaded::chip_on`; a fresh chip otherwise,
/// `OnMemory::fresh`): it derefs to the `Chip` and hands the slices back when dropped, whatever way the run ends
/// (a panic flags the memory). `run_on` runs one of these; a system run (`crate::system`) one per chip. Never
/// replace the chip itself, nor borrow images into its slices (`Chip::borrow_mem_images`): the memory gets back
/// whatever slices the chip holds at the drop, and it must never hold borrowed images.
pub struct OnMemory<'a> {
    chip: Chip,
    memory: Option<&'a mut ChipMemory>,
}

impl std::ops::Deref for OnMemory<'_> {
    type Target = Chip;
    fn deref(&self) -> &Chip {
        &self.chip
    }
}

impl std::ops::DerefMut for OnMemory<'_> {
    fn deref_mut(&mut self) -> &mut Chip {
        &mut self.chip
    }
}

impl<'a> OnMemory<'a> {
    /// A chip on its own fresh slices (nothing to hand back).
    pub fn fresh(chip: Chip) -> OnMemory<'a> {
        OnMemory { chip, memory: None }
    }

    /// Whether the chip runs on a `ChipMemory`.
    pub fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Record that the run on this memory faulted (`ChipMemory::fault`; runs on it are refused until
    /// `clear_fault`). The first fault recorded stays. Nothing happens for a fresh chip.
    pub fn flag(&mut self, e: SimError) {
        if let Some(m) = self.memory.as_deref_mut() {
            if m.fault.is_none() {
                m.fault = Some(e);
            }
        }
    }
}

impl Drop for OnMemory<'_> {
    fn drop(&mut self) {
        let Some(memory) = self.memory.as_deref_mut() else { return };
        std::mem::swap(&mut self.chip.mem, &mut memory.slices);
        if std::thread::panicking() && memory.fault.is_none() {
            // A bug of the simulator, not of the program: the contents are what the run left, so flag them.
            let m = "the simulator panicked during a run on this memory".to_string();
            memory.fault = Some(load_err("memory".into(), 0, String::new(), m));
        }
    }
}

impl Loaded {
    /// The checks of a functional run of this program on `memory` with inputs `mem_init` (`chip_on`): a memory of
    /// this configuration, holding no fault, and images that fit. Nothing is changed.
    pub fn check_on(&self, memory: &ChipMemory, mem_init: &[MemInit]) -> Result<(), SimError> {
        self.check_memory(memory)?;
        check_images(&self.cfg, mem_init, "mem_init")
    }

    /// A functional chip of this program, started at cycle 0, whose MEM slices are `memory`'s (moved in, not
    /// copied; handed back when the result is dropped): the hook of runs on a kept memory (`run_on`, and each
    /// chip of a system run). If `inits`, the program's `.init`s are written into the memory first (a run on a
    /// memory normally has them from `install_static`); then `mem_init` (later images win). The checks are
    /// `check_on`'s; on an error nothing is written.
    pub fn chip_on<'a>(&self, memory: &'a mut ChipMemory, mem_init: &[MemInit], inits: bool) -> Result<OnMemory<'a>, SimError> {
        self.check_on(memory, mem_init)?;
        let mut chip = self.chip_with(false, false, false);
        std::mem::swap(&mut chip.mem, &mut memory.slices);
        let mut lent = OnMemory { chip, memory: Some(memory) };
        let chip = &mut lent.chip;
        for s in chip.mem.iter_mut() {
            // Port uses of the previous run are at its cycles, not this one's.
            s.reset_ports();
        }
        if inits {
            for init in &self.inits {
                apply_init(&self.cfg, &mut chip.mem, init);
            }
        }
        for &(slice, addr, data) in mem_init {
            chip.mem[slice].write_many(addr, data);
        }
        Ok(lent)
    }

    /// One run on `memory` instead of a fresh chip: the same results and errors as `run_loaded` when the memory
    /// holds what a fresh run would start from (this program's constant image, `install_static`). The run starts
    /// at cycle 0 on a quiescent chip whose MEM contents are the memory's; `mem_init` is written into the memory
    /// before cycle 0 (no `.init` is applied: they are part of the constant image), and the memory keeps whatever
    /// the run leaves. The slices are moved into the run and back, never copied.
    ///
    /// A timing-only run neither reads nor writes the memory (the `mem` module doc). A run that faults leaves the
    /// memory as it stood at the fault and flags it (`ChipMemory::fault`). Errors before the run starts (a memory
    /// of another configuration or already faulted, a bad `mem_init` or dump request) change nothing.
    pub fn run_on(&self, memory: &mut ChipMemory, mem_init: &[MemInit], dumps: &[(usize, usize, usize)], opts: &RunOptions) -> RunOutput {
        self.check_on(memory, mem_init)?;
        for (k, &(slice, addr, n)) in dumps.iter().enumerate() {
            // before the run: a bad request must leave the memory untouched
            check_range(&self.cfg, slice, addr, n).map_err(|m| load_err("dumps".into(), k, String::new(), m))?;
        }
        if opts.timing_only {
            // Cycles and errors never depend on values (docs/isa.md 9.4): a fresh timing-only run is this run.
            return run_loaded(self, &[], dumps, opts);
        }
        let mut chip = self.chip_on(memory, mem_init, false)?;
        if let Err(e) = chip.run(opts.max_cycles) {
            chip.flag(e.clone());
            return Err(e);
        }
        Ok((chip.stats.clone(), read_dumps(&chip, dumps)?))
    }
}
