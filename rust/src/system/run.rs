//! Running a system (docs/system.md section 4): conservative windows of global time, chips in parallel.
//!
//! No cross-chip effect arrives sooner than the shortest link latency `L` after its SEND. So from the earliest
//! pending cycle start `T` (over all chips), every chip can run every cycle that starts before `T + L` without
//! hearing from another chip: the vectors sent in that window all land at or after `T + L`. After the window the
//! vectors are delivered in (sending chip, send order) order, and the next window starts. Which thread runs which
//! chip changes nothing, so outputs and cycle counts are identical for any thread count.
//!
//! A timing-only run without a cycle limit first runs every chip in the fast timing-only form (`sim` module doc,
//! `sim/fast.rs`), as a lone chip's `run_loaded` does. The form makes every check of the exact order, just not in
//! its order, and the only cross-chip input, a vector's arrival, lands in a receive buffer that only RECV reads
//! (never taken ahead), so each chip fails iff it fails in the exact order and otherwise ends with the same
//! statistics and sends. If any chip fails, the whole system runs again in the exact order, which reports the very
//! error. Its windows look further ahead: a vector comes only from a SEND, so a window ends at the earliest time
//! any chip could still issue one (`Chip::next_send`) plus that chip's shortest link latency; a stretch in which
//! no chip sends is one window. Only `windows` differs (fewer).
//!
//! Kept memories (docs/system.md section 7): a `LoadedSystem` (every chip's program loaded once) runs its chips on
//! fresh SRAM or on `ChipMemory`s kept from one run to the next (`run_on`), each memory moved into its chip for the
//! run and back (`sim::OnMemory`), as a single chip's `Loaded::run_on` does.

use super::align::{align, Alignment};
use super::config::{End, LinkKind, Resolved, SystemConfig};
use super::SystemError;
use crate::error::{ErrorKind, SimError};
use crate::isa::Program;
use crate::sim::c2c::Origin;
use crate::sim::clock::TICKS_PER_CYCLE;
use crate::config::ChipConfig;
use crate::sim::{load_program, Chip, ChipMemory, Loaded, MemInit, OnMemory, Stats};
use std::sync::{Barrier, Mutex, MutexGuard};

/// How to run a system.
#[derive(Debug, Clone, Default)]
pub struct SystemOptions {
    pub timing_only: bool,
    /// Per chip: stop with `CycleLimit` if anything would happen at a cycle `>= max_cycles` of its clock.
    pub max_cycles: Option<u64>,
    /// Host threads (0: all cores). Results do not depend on it.
    pub threads: usize,
}

/// One chip's results.
#[derive(Debug, Clone, PartialEq)]
pub struct ChipResult {
    pub stats: Stats,
    /// The requested dumps (`None` in timing-only mode).
    pub dumps: Vec<Option<Vec<u8>>>,
    pub drift_ppm: f64,
    /// Cycle length in ticks (`TICKS_PER_CYCLE` per nominal cycle).
    pub period_ticks: u128,
    /// HAC at cycle 0 after the alignment, and its error against the root (cycles).
    pub hac_offset: u64,
    pub hac_error: i64,
    pub tree_parent: Option<usize>,
    pub tree_depth: Option<usize>,
    /// The link latency the alignment exchange measured toward the parent (cycles).
    pub measured_latency: u64,
    /// End of this chip's run in seconds of global time.
    pub seconds: f64,
}

/// Traffic of one direction of one link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkTraffic {
    pub from_chip: usize,
    pub from_link: usize,
    pub to_chip: usize,
    pub to_link: usize,
    pub kind: LinkKind,
    pub latency_cycles: f64,
    pub vectors: u64,
    /// On the wire (flit bytes per vector).
    pub bytes: u64,
    /// Time spent serialising flits over the run's length.
    pub busy_fraction: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SystemResult {
    pub chips: Vec<ChipResult>,
    /// Both directions of every link, in link order (a->b, then b->a).
    pub links: Vec<LinkTraffic>,
    /// The run's length in nominal cycles (the latest chip's end, rounded up) and seconds.
    pub cycles: u64,
    pub seconds: f64,
    /// The largest `sync_cycles` of any chip.
    pub sync_cycles: u64,
    pub tree_height: usize,
    pub min_send_interval_cycles: u64,
    /// Synchronisation windows run (a timing-only run may need fewer: the fast form, module doc).
    pub windows: u64,
    /// Threads used.
    pub threads: usize,
}

struct Slot<'m> {
    /// The chip, on its own fresh slices or on a `ChipMemory`'s (handed back when the slot is dropped).
    chip: OnMemory<'m>,
    /// The first error of this chip: global time, error.
    err: Option<(u128, SimError)>,
}

fn lock<'a, 'm>(m: &'a Mutex<Slot<'m>>) -> MutexGuard<'a, Slot<'m>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run every cycle of this chip that starts before `w_end`.
fn run_window(slot: &mut Slot<'_>, w_end: u128, limit: u64) {
    if slot.err.is_some() {
        return;
    }
    let chip = &mut slot.chip;
    while let Some(k) = chip.next_cycle() {
        let t = chip.clock.time(k);
        if t >= w_end {
            break;
        }
        if k >= limit {
            let e = SimError {
                kind: ErrorKind::CycleLimit,
                cycle: limit,
                queue: "-".into(),
                index: 0,
                instruction: String::new(),
                message: format!("the program runs past the limit of {limit} cycles"),
            };
            slot.err = Some((t, e));
            return;
        }
        if let Err(e) = chip.step(k) {
            slot.err = Some((t, e));
            return;
        }
    }
}

/// `run_window` on one slot; a panic (a simulator bug) becomes this chip's error instead of hanging the other
/// threads at the barrier.
fn run_slot(m: &Mutex<Slot<'_>>, w_end: u128, limit: u64) {
    let mut g = lock(m);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_window(&mut g, w_end, limit)));
    if r.is_err() {
        g.err = Some((0, SimError {
            kind: ErrorKind::InvalidInstruction,
            cycle: 0,
            queue: "-".into(),
            index: 0,
            instruction: String::new(),
            message: "internal error: the simulator panicked on this chip (please report it)".into(),
        }));
    }
}

/// Per chip, per link: the other end and the latency.
type PeerTable = Vec<Vec<Option<(End, u128)>>>;

fn peer_table(r: &Resolved) -> PeerTable {
    let mut t = vec![vec![None; r.chip.c2c_links]; r.chips];
    for l in &r.links {
        t[l.a.chip][l.a.link] = Some((l.b, l.latency_ticks));
        t[l.b.chip][l.b.link] = Some((l.a, l.latency_ticks));
    }
    t
}

/// Attach the link ends and the peer's clock to a chip's error.
fn system_error(chip: usize, e: SimError, origin: Option<Origin>, chips: &[&Chip], peers: &PeerTable) -> SystemError {
    let at = chips[chip].clock.time(e.cycle);
    let mut out = SystemError::on_chip(chip, e);
    if let Some(o) = origin {
        let (sc, sl) = (o.chip as usize, o.link as usize);
        out.instruction = chips[sc].instruction_text(o.queue as usize, o.instr as usize);
        out.link = peers[sc][sl].map(|(end, _)| end.link);
        out.peer_chip = Some(sc);
        out.peer_link = Some(sl);
        out.peer_cycle = Some(chips[sc].clock.cycle_at(at));
        out.message += &format!(" (the vector was sent by {} #{} on chip {sc} at its cycle {})", out.queue, out.index, o.cycle);
        return out;
    }
    let link_kind = matches!(out.kind, ErrorKind::LinkEmpty | ErrorKind::LinkBusy | ErrorKind::LinkUnconnected);
    if let (true, Some(l)) = (link_kind, out.queue.strip_prefix("C2C.").and_then(|x| x.parse::<usize>().ok())) {
        out.link = Some(l);
        if let Some(Some((end, _))) = peers[chip].get(l) {
            out.peer_chip = Some(end.chip);
            out.peer_link = Some(end.link);
            out.peer_cycle = Some(chips[end.chip].clock.cycle_at(at));
        }
    }
    out
}

/// Load every chip, align the HACs, run on fresh chips, and read back.
///
/// `programs[i]` runs on chip `i` (chips past the end of the list get an empty program); `mem_inits[i]` and
/// `dumps[i]` likewise (global MEM slice, address, data / count). `LoadedSystem::load` then `run`.
pub fn simulate_system(
    cfg: &SystemConfig,
    programs: &[Program],
    mem_inits: &[Vec<MemInit>],
    dumps: &[Vec<(usize, usize, usize)>],
    opts: &SystemOptions,
) -> Result<SystemResult, SystemError> {
    LoadedSystem::load(cfg, programs)?.run(mem_inits, dumps, opts)
}

/// `simulate_system` with kept memories: `memories[i]` (one entry per chip, `None`: a fresh chip) as for
/// `LoadedSystem::run_on`, except that a chip on a memory also gets its program's `.init`s written into the memory
/// before `mem_inits[i]`, every run: this call has no constant image installed apart from the run
/// (`LoadedSystem::install_static` is the install-once form).
pub fn simulate_system_on(
    cfg: &SystemConfig,
    programs: &[Program],
    mem_inits: &[Vec<MemInit>],
    dumps: &[Vec<(usize, usize, usize)>],
    memories: &mut [Option<&mut ChipMemory>],
    opts: &SystemOptions,
) -> Result<SystemResult, SystemError> {
    LoadedSystem::load(cfg, programs)?.run_inner(mem_inits, dumps, Some(memories), true, opts)
}

/// A system with one program per chip loaded once (decoded, checked), its configuration resolved and its HACs
/// aligned, for any number of runs: on fresh chips (`run`), or on `ChipMemory`s kept from one run to the next
/// (`run_on`), with each chip's constant image written into its memory once (`install_static`), as a single
/// chip's `Loaded` does (`Loaded::run_on`, `Loaded::install_static`).
#[derive(Clone)]
pub struct LoadedSystem {
    resolved: Resolved,
    alignment: Alignment,
    peers: PeerTable,
    programs: Vec<Loaded>,
}

impl LoadedSystem {
    /// Resolve the configuration, align the HACs and load `programs[i]` on chip `i` (chips past the end of the
    /// list get an empty program). Errors as `simulate_system`'s before its first cycle.
    pub fn load(cfg: &SystemConfig, programs: &[Program]) -> Result<LoadedSystem, SystemError> {
        let r = cfg.resolve().map_err(|e| SystemError::general(ErrorKind::InvalidInstruction, e.to_string()))?;
        let n = r.chips;
        if programs.len() > n {
            let m = format!("{} programs for a system of {n} chips", programs.len());
            return Err(SystemError::general(ErrorKind::InvalidInstruction, m));
        }
        let al: Alignment = align(&r)?;
        let peers = peer_table(&r);
        let empty = Program::default();
        let mut loaded = Vec::with_capacity(n);
        for i in 0..n {
            let p = programs.get(i).unwrap_or(&empty);
            if let Some(l) = p.links.first() {
                let m = format!(".link {} {} {}: links come from the system configuration, not the program", l.from, l.to, l.latency);
                return Err(SystemError::config(ErrorKind::InvalidInstruction, i, None, m));
            }
            loaded.push(load_program(&r.chip, p).map_err(|e| SystemError::on_chip(i, e))?);
        }
        Ok(LoadedSystem { resolved: r, alignment: al, peers, programs: loaded })
    }

    /// The number of chips.
    pub fn chips(&self) -> usize {
        self.resolved.chips
    }

    /// The configuration of every chip (a `ChipMemory` for this system is made for it).
    pub fn chip_config(&self) -> &ChipConfig {
        &self.resolved.chip
    }

    /// Chip `i`'s program.
    pub fn program(&self, chip: usize) -> Option<&Loaded> {
        self.programs.get(chip)
    }

    /// One run on fresh chips: each starts from zeroed SRAM with its program's `.init`s, then `mem_inits[i]`
    /// (borrowed, not copied; later images win), and `dumps[i]` are read after the run.
    pub fn run(&self, mem_inits: &[Vec<MemInit>], dumps: &[Vec<(usize, usize, usize)>], opts: &SystemOptions) -> Result<SystemResult, SystemError> {
        self.run_inner(mem_inits, dumps, None, false, opts)
    }

    /// One run with kept memories: `memories` has one entry per chip (another count is an error, before
    /// anything runs). Chip `i` with `None` runs as in `run`. Chip `i` with a memory runs on its contents: no
    /// `.init` is written (they are the constant image, `install_static`), `mem_inits[i]` is written into the
    /// memory before cycle 0 (the run's inputs; they stay), the memory keeps whatever the run leaves, and
    /// `dumps[i]` are read from it. The memories move into the run and back, never copied.
    ///
    /// Errors before the first cycle (a memory count other than the chip count, a memory of another chip
    /// configuration or holding a fault, a bad image or dump request) change no memory. A functional run that
    /// faults flags every memory of the run (`ChipMemory::fault`; later runs on them are refused until
    /// `clear_fault` or `clear`): the faulting chip's memory holds every MEM commit before its fault, none after,
    /// and records the system error (kind, cycle, queue, instruction); every other chip stopped with the run (it
    /// ran every cycle of its own that started before the end of the synchronisation window in which the fault
    /// occurred, the same for any thread count, or to its end) and its memory holds what it wrote by then,
    /// flagged with an error naming the faulting chip (queue `system`, cycle: the first of its own cycles that
    /// never ran, 0 if it had run to its end). A timing-only run reads and writes no memory (they are
    /// only checked) and flags none.
    pub fn run_on(
        &self,
        mem_inits: &[Vec<MemInit>],
        dumps: &[Vec<(usize, usize, usize)>],
        memories: &mut [Option<&mut ChipMemory>],
        opts: &SystemOptions,
    ) -> Result<SystemResult, SystemError> {
        self.run_inner(mem_inits, dumps, Some(memories), false, opts)
    }

    /// Write chip `chip`'s constant image into `memory`: its program's `.init`s, then `images` (later ones win),
    /// copied once, so that `run_on` with this memory at position `chip` starts from it without writing it again.
    /// Installing again rewrites it. Errors (nothing written): a chip outside the system, a memory of another
    /// configuration or holding a fault, a bad image (`Loaded::install_static`).
    pub fn install_static(&self, chip: usize, memory: &mut ChipMemory, images: &[MemInit]) -> Result<(), SystemError> {
        let p = self.programs.get(chip).ok_or_else(|| self.no_chip(chip))?;
        p.install_static(memory, images).map_err(|e| SystemError::on_chip(chip, e))
    }

    /// Whether `install_static(chip, ..)` of this system (or a clone of it) wrote into `memory` since the
    /// memory's last `clear` (false for a chip outside the system). It says nothing of what runs wrote over it.
    pub fn installed_in(&self, chip: usize, memory: &ChipMemory) -> bool {
        self.programs.get(chip).is_some_and(|p| p.installed_in(memory))
    }

    fn no_chip(&self, chip: usize) -> SystemError {
        SystemError::general(ErrorKind::InvalidInstruction, format!("chip {chip}: the system has {} chips", self.chips()))
    }

    /// A run; `memories` `None`: fresh chips only. `inits_on_memory`: write `.init`s into memories too.
    fn run_inner(
        &self,
        mem_inits: &[Vec<MemInit>],
        dumps: &[Vec<(usize, usize, usize)>],
        memories: Option<&mut [Option<&mut ChipMemory>]>,
        inits_on_memory: bool,
        opts: &SystemOptions,
    ) -> Result<SystemResult, SystemError> {
        let r = &self.resolved;
        let n = r.chips;
        for (what, len) in [("mem_inits", mem_inits.len()), ("dumps", dumps.len())] {
            if len > n {
                return Err(SystemError::general(ErrorKind::InvalidInstruction, format!("{len} {what} for a system of {n} chips")));
            }
        }
        let memories: &mut [Option<&mut ChipMemory>] = match memories {
            Some(m) if m.len() != n => {
                let msg = format!("{} memories for a system of {n} chips: give one ChipMemory (or None) per chip", m.len());
                return Err(SystemError::general(ErrorKind::InvalidInstruction, msg));
            }
            Some(m) => m,
            None => &mut [],
        };
        // Every check before any memory is touched: an error here changes nothing.
        for i in 0..n {
            let images = mem_inits.get(i).map(|v| v.as_slice()).unwrap_or(&[]);
            for (k, &(slice, addr, data)) in images.iter().enumerate() {
                check_image(&r.chip, slice, addr, data)
                    .map_err(|m| SystemError::config(ErrorKind::InvalidInstruction, i, None, format!("mem_init[{k}]: {m}")))?;
            }
            for (k, &(slice, addr, cnt)) in dumps.get(i).map(|v| v.as_slice()).unwrap_or(&[]).iter().enumerate() {
                check_range(&r.chip, slice, addr, cnt)
                    .map_err(|m| SystemError::config(ErrorKind::InvalidInstruction, i, None, format!("dumps[{k}]: {m}")))?;
            }
            if let Some(Some(m)) = memories.get(i) {
                self.programs[i].check_on(m, images).map_err(|e| SystemError::on_chip(i, e))?;
            }
        }
        if opts.timing_only && opts.max_cycles.is_none() {
            // The fast timing-only form on every chip (module doc): it fails iff the exact run fails (or, rarely,
            // spuriously); then the exact run below reports the very error.
            if let Ok(r) = self.execute(mem_inits, dumps, &mut [], false, opts, true) {
                return Ok(r);
            }
        }
        self.execute(mem_inits, dumps, memories, inits_on_memory, opts, false)
    }

    /// The run itself, after `run_inner`'s checks. `fast`: every chip in the fast timing-only form (only for a
    /// timing-only run without a cycle limit; `memories` are then unused, as in any timing-only run).
    fn execute(
        &self,
        mem_inits: &[Vec<MemInit>],
        dumps: &[Vec<(usize, usize, usize)>],
        memories: &mut [Option<&mut ChipMemory>],
        inits_on_memory: bool,
        opts: &SystemOptions,
        fast: bool,
    ) -> Result<SystemResult, SystemError> {
        let (r, al, peers) = (&self.resolved, &self.alignment, &self.peers);
        let n = r.chips;
        let mut chips = Vec::with_capacity(n);
        let mut lent = memories.iter_mut();
        for i in 0..n {
            let images = mem_inits.get(i).map(|v| v.as_slice()).unwrap_or(&[]);
            let memory = lent.next().and_then(|m| m.as_deref_mut()).filter(|_| !opts.timing_only);
            let mut chip = match memory {
                Some(m) => self.programs[i].chip_on(m, images, inits_on_memory).map_err(|e| SystemError::on_chip(i, e))?,
                None => {
                    let mut chip = self.programs[i].chip(opts.timing_only, fast);
                    // SAFETY: `mem_inits` is borrowed for the whole call and no chip outlives it (they are
                    // dropped before this function returns).
                    unsafe { chip.borrow_mem_images(images) }.map_err(|(k, m)| {
                        SystemError::config(ErrorKind::InvalidInstruction, i, None, format!("mem_init[{k}]: {m}"))
                    })?;
                    OnMemory::fresh(chip)
                }
            };
            chip.clock = al.clocks[i];
            for (l, p) in peers[i].iter().enumerate() {
                if let Some((end, _)) = p {
                    chip.connect_remote(l, end.chip, end.link, r.send_interval_ticks);
                }
            }
            chips.push(chip);
        }
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map(|x| x.get()).unwrap_or(1),
            t => t,
        }
        .clamp(1, n);
        let lmin = r.links.iter().map(|l| l.latency_ticks).min().unwrap_or(u128::MAX / 4);
        let limit = opts.max_cycles.unwrap_or(u64::MAX);
        // Fast form, lookahead (module doc): per chip, its queues holding a SEND and its shortest link latency.
        let sends: Vec<(Vec<(usize, usize)>, u128)> = match fast {
            true => (0..n)
                .map(|i| (chips[i].send_queues(), peers[i].iter().flatten().map(|&(_, lat)| lat).min().unwrap_or(lmin)))
                .collect(),
            false => Vec::new(),
        };
        let slots: Vec<Mutex<Slot>> = chips.into_iter().map(|chip| Mutex::new(Slot { chip, err: None })).collect();
        let window: Mutex<Option<u128>> = Mutex::new(None);
        let barrier = Barrier::new(threads);
        let mut windows = 0u64;
        let failed: Option<(usize, SimError, Option<Origin>)> = std::thread::scope(|s| {
            for tid in 1..threads {
                let (slots, window, barrier) = (&slots, &window, &barrier);
                s.spawn(move || loop {
                    barrier.wait();
                    let w = *window.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(w) = w else { break };
                    for i in (tid..n).step_by(threads) {
                        run_slot(&slots[i], w, limit);
                    }
                    barrier.wait();
                });
            }
            let failed = loop {
                // The first error in global time (then chip index) stops the run.
                let mut first: Option<(u128, usize)> = None;
                let mut start: Option<u128> = None;
                // Fast form: no vector sent from here on lands before `reach` (no chip sends before its next SEND
                // can issue).
                let mut reach = u128::MAX;
                for (i, m) in slots.iter().enumerate() {
                    let sl = lock(m);
                    if let Some((t, _)) = &sl.err {
                        if first.is_none_or(|(ft, _)| *t < ft) {
                            first = Some((*t, i));
                        }
                    }
                    if let Some(k) = sl.chip.next_cycle() {
                        let t = sl.chip.clock.time(k);
                        start = Some(start.map_or(t, |s: u128| s.min(t)));
                    }
                    if let Some((queues, lat)) = sends.get(i) {
                        if let Some(k) = sl.chip.next_send(queues) {
                            reach = reach.min(sl.chip.clock.time(k).saturating_add(*lat));
                        }
                    }
                }
                if let Some((_, i)) = first {
                    let mut sl = lock(&slots[i]);
                    let origin = sl.chip.fault_origin.take();
                    break sl.err.take().map(|(_, e)| (i, e, origin));
                }
                let Some(start) = start else { break None };
                windows += 1;
                let w_end = if fast { reach } else { start.saturating_add(lmin) };
                *window.lock().unwrap_or_else(|e| e.into_inner()) = Some(w_end);
                if threads > 1 {
                    barrier.wait();
                }
                for i in (0..n).step_by(threads) {
                    run_slot(&slots[i], w_end, limit);
                }
                if threads > 1 {
                    barrier.wait();
                }
                // Deliver in (sending chip, send order) order.
                for i in 0..n {
                    let (out, clock) = {
                        let mut sl = lock(&slots[i]);
                        (std::mem::take(&mut sl.chip.outbox), sl.chip.clock)
                    };
                    for o in out {
                        let Some((end, lat)) = peers[i][o.link] else { continue };
                        let mut dst = lock(&slots[end.chip]);
                        let arrive = dst.chip.clock.first_cycle_at_or_after(clock.time(o.cycle) + lat);
                        let origin = Origin { chip: i as u32, link: o.link as u32, queue: o.queue as u32, instr: o.instr as u32, cycle: o.cycle };
                        dst.chip.deliver(arrive, end.link, &o.data, origin);
                    }
                }
            };
            *window.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if threads > 1 {
                barrier.wait();
            }
            failed
        });
        // Dropping `slots` hands every memory back, whatever way this function ends.
        let mut slots: Vec<Slot> = slots.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())).collect();
        let mut failed = failed;
        if failed.is_none() {
            for (i, sl) in slots.iter_mut().enumerate() {
                if let Err(e) = sl.chip.finish() {
                    failed = Some((i, e, sl.chip.fault_origin.take()));
                    break;
                }
            }
        }
        if fast {
            // Order-free belts back to their programs, for later runs of this system (`Loaded::keep_belt`).
            for (i, sl) in slots.iter_mut().enumerate() {
                self.programs[i].keep_belt(&mut sl.chip);
            }
        }
        if let Some((i, e, origin)) = failed {
            if fast {
                // Not reported: the exact run finds (and names) the error.
                return Err(SystemError::on_chip(i, e));
            }
            let err = system_error(i, e, origin, &slots.iter().map(|s| &*s.chip).collect::<Vec<_>>(), peers);
            flag_memories(&mut slots, i, &err);
            return Err(err);
        }
        results(r, al, &slots.iter().map(|s| &*s.chip).collect::<Vec<_>>(), dumps, threads, windows)
    }
}

/// After a functional run faulted on chip `failed`: flag every memory of the run (`LoadedSystem::run_on`).
fn flag_memories(slots: &mut [Slot<'_>], failed: usize, err: &SystemError) {
    for (i, sl) in slots.iter_mut().enumerate() {
        if !sl.chip.has_memory() {
            continue;
        }
        let e = if i == failed {
            let mut m = format!("{} [chip {i} of a system run", err.message);
            if let (Some(l), Some(pc), Some(pl)) = (err.link, err.peer_chip, err.peer_link) {
                m += &format!("; link {l} <-> link {pl} of chip {pc}");
            }
            SimError { kind: err.kind, cycle: err.cycle, queue: err.queue.clone(), index: err.index, instruction: err.instruction.clone(), message: m + "]" }
        } else {
            let next = sl.chip.next_cycle();
            let at = match next {
                Some(k) => format!("its cycles from {k} on never ran"),
                None => "it had run to its end".into(),
            };
            let m = format!("the system run stopped when chip {failed} faulted ({err}); this memory holds what chip {i} wrote before that ({at})");
            SimError { kind: err.kind, cycle: next.unwrap_or(0), queue: "system".into(), index: 0, instruction: String::new(), message: m }
        };
        sl.chip.flag(e);
    }
}

/// An image `(slice, addr, data)` that fits the chip (the checks of `Chip::write_mem`).
fn check_image(cfg: &ChipConfig, slice: usize, addr: usize, data: &[u8]) -> Result<(), String> {
    if !data.len().is_multiple_of(cfg.lanes) {
        return Err(format!("{} bytes are not whole vectors of {} lanes", data.len(), cfg.lanes));
    }
    check_range(cfg, slice, addr, data.len() / cfg.lanes)
}

/// `n` vectors of slice `slice` from `addr` exist.
fn check_range(cfg: &ChipConfig, slice: usize, addr: usize, n: usize) -> Result<(), String> {
    if slice >= cfg.mem_slices {
        return Err(format!("slice {slice} is outside 0..{}", cfg.mem_slices - 1));
    }
    if addr + n > cfg.mem_words {
        return Err(format!("{n} vectors at address {addr} do not fit in {} words", cfg.mem_words));
    }
    Ok(())
}

fn results(
    r: &Resolved,
    al: &Alignment,
    chips: &[&Chip],
    dumps: &[Vec<(usize, usize, usize)>],
    threads: usize,
    windows: u64,
) -> Result<SystemResult, SystemError> {
    let hz = r.chip.clock_hz;
    let secs = |ticks: u128| ticks as f64 / TICKS_PER_CYCLE as f64 / hz;
    let end = chips.iter().map(|c| c.clock.time(c.stats().cycles)).max().unwrap_or(0);
    let mut out = Vec::with_capacity(chips.len());
    for (i, c) in chips.iter().enumerate() {
        let mut ds = Vec::new();
        for (k, &(slice, addr, cnt)) in dumps.get(i).map(|v| v.as_slice()).unwrap_or(&[]).iter().enumerate() {
            let d = c
                .read_mem(slice, addr, cnt)
                .map_err(|m| SystemError::config(ErrorKind::InvalidInstruction, i, None, format!("dumps[{k}]: {m}")))?;
            ds.push(d);
        }
        out.push(ChipResult {
            stats: c.stats().clone(),
            dumps: ds,
            drift_ppm: r.drift_ppm[i],
            period_ticks: c.clock.period,
            hac_offset: c.clock.hac_offset,
            hac_error: al.hac_error[i],
            tree_parent: al.parent[i].map(|p| p.0),
            tree_depth: al.depth[i],
            measured_latency: al.measured_latency[i],
            seconds: secs(c.clock.time(c.stats().cycles)),
        });
    }
    let mut links = Vec::with_capacity(2 * r.links.len());
    for l in &r.links {
        for (from, to) in [(l.a, l.b), (l.b, l.a)] {
            let vectors = out[from.chip].stats.link_sends.get(from.link).copied().unwrap_or(0);
            let busy = if end == 0 { 0.0 } else { (vectors as u128 * r.send_interval_ticks) as f64 / end as f64 };
            links.push(LinkTraffic {
                from_chip: from.chip,
                from_link: from.link,
                to_chip: to.chip,
                to_link: to.link,
                kind: l.kind,
                latency_cycles: l.latency_ticks as f64 / TICKS_PER_CYCLE as f64,
                vectors,
                bytes: vectors * r.flit_bytes,
                busy_fraction: busy.min(1.0),
            });
        }
    }
    Ok(SystemResult {
        sync_cycles: out.iter().map(|c| c.stats.sync_cycles).max().unwrap_or(0),
        chips: out,
        links,
        cycles: end.div_ceil(TICKS_PER_CYCLE) as u64,
        seconds: secs(end),
        tree_height: al.height,
        min_send_interval_cycles: r.min_send_interval_cycles(),
        windows,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::text;

    /// The fast form itself (no fallback to the exact order) agrees with the exact order: here chip 0's link queue
    /// is parked at SYNC for 3000 cycles before its SEND (`ChipMemory`-free, timing-only), so the windows' lookahead
    /// must count a parked queue as able to send at the chip's next cycle; a lookahead past the SEND would deliver
    /// it late and chip 1's RECV would fail (LinkEmpty) in the fast form.
    #[test]
    fn the_fast_form_runs_without_falling_back() {
        let a = ".init MEM.W0 0 u8 4 5 6\n.queue C2C.0\n DESKEW\n SYNC\n SEND W5\n.queue VXM.0\n DESKEW\n NOP 3000\n NOTIFY\n\
                 .queue MEM.W0\n DESKEW\n NOP 2957\n READ 0, W5\n.queue VXM.1\n DESKEW\n COPY.i32 -, #1\n REPEAT 4000, 1, 0\n";
        let b = ".queue C2C.0\n DESKEW\n NOP 3228\n RECV E5\n.queue MEM.W0\n DESKEW\n NOP 3273\n WRITE 1, E5\n\
                 .queue VXM.1\n DESKEW\n COPY.i32 -, #1\n REPEAT 4000, 1, 0\n";
        let cfg = SystemConfig::from_json(r#"{"topology": "node", "chips": 2}"#).unwrap();
        let programs = [text::parse(a).unwrap(), text::parse(b).unwrap()];
        let sys = LoadedSystem::load(&cfg, &programs).unwrap();
        for threads in [1, 2] {
            let opts = SystemOptions { timing_only: true, max_cycles: None, threads };
            let fast = sys.execute(&[], &[], &mut [], false, &opts, true).unwrap();
            let exact = sys.execute(&[], &[], &mut [], false, &opts, false).unwrap();
            let functional = sys.run(&[], &[], &SystemOptions { threads, ..Default::default() }).unwrap();
            assert_eq!((fast.cycles, &fast.links), (exact.cycles, &exact.links));
            assert_eq!(fast.cycles, functional.cycles);
            for ((f, e), u) in fast.chips.iter().zip(&exact.chips).zip(&functional.chips) {
                assert_eq!(f.stats, e.stats);
                assert_eq!((f.stats.cycles, &f.stats.busy, f.stats.instructions), (u.stats.cycles, &u.stats.busy, u.stats.instructions));
                assert_eq!(f.stats.events, u.stats.events);
            }
            assert_eq!(fast.links[0].vectors, 1);
            // The lookahead: chip 1 sends nothing and chip 0 nothing after its SEND, so few windows start.
            assert!(fast.windows < exact.windows, "{} windows, exact {}", fast.windows, exact.windows);
        }
        // Received too early: both forms fail; the run reports the exact order's error.
        let early = b.replace("NOP 3228", "NOP 3000");
        let programs = [text::parse(a).unwrap(), text::parse(&early).unwrap()];
        let sys = LoadedSystem::load(&cfg, &programs).unwrap();
        let opts = SystemOptions { timing_only: true, max_cycles: None, threads: 1 };
        assert!(sys.execute(&[], &[], &mut [], false, &opts, true).is_err());
        let e = sys.run(&[], &[], &opts).unwrap_err();
        assert_eq!((e.kind, e.chip), (ErrorKind::LinkEmpty, Some(1)));
    }
}
