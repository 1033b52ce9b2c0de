//! Running a system (docs/system.md section 4): conservative windows of global time, chips in parallel.
//!
//! No cross-chip effect arrives sooner than the shortest link latency `L` after its SEND. So from the earliest
//! pending cycle start `T` (over all chips), every chip can run every cycle that starts before `T + L` without
//! hearing from another chip: the vectors sent in that window all land at or after `T + L`. After the window the
//! vectors are delivered in (sending chip, send order) order, and the next window starts. Which thread runs which
//! chip changes nothing, so outputs and cycle counts are identical for any thread count.

use super::align::{align, Alignment};
use super::config::{End, LinkKind, Resolved, SystemConfig};
use super::SystemError;
use crate::error::{ErrorKind, SimError};
use crate::isa::Program;
use crate::sim::c2c::Origin;
use crate::sim::clock::TICKS_PER_CYCLE;
use crate::sim::{Chip, MemInit, Stats};
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
    /// Synchronisation windows run.
    pub windows: u64,
    /// Threads used.
    pub threads: usize,
}

struct Slot {
    chip: Chip,
    /// The first error of this chip: global time, error.
    err: Option<(u128, SimError)>,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run every cycle of this chip that starts before `w_end`.
fn run_window(slot: &mut Slot, w_end: u128, limit: u64) {
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
fn run_slot(m: &Mutex<Slot>, w_end: u128, limit: u64) {
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
fn system_error(chip: usize, e: SimError, origin: Option<Origin>, chips: &[Chip], peers: &PeerTable) -> SystemError {
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

/// Load every chip, align the HACs, run, and read back.
///
/// `programs[i]` runs on chip `i` (chips past the end of the list get an empty program); `mem_inits[i]` and
/// `dumps[i]` likewise (global MEM slice, address, data / count).
pub fn simulate_system(
    cfg: &SystemConfig,
    programs: &[Program],
    mem_inits: &[Vec<MemInit>],
    dumps: &[Vec<(usize, usize, usize)>],
    opts: &SystemOptions,
) -> Result<SystemResult, SystemError> {
    let r = cfg.resolve().map_err(|e| SystemError::general(ErrorKind::InvalidInstruction, e.to_string()))?;
    let n = r.chips;
    for (what, len) in [("programs", programs.len()), ("mem_inits", mem_inits.len()), ("dumps", dumps.len())] {
        if len > n {
            return Err(SystemError::general(ErrorKind::InvalidInstruction, format!("{len} {what} for a system of {n} chips")));
        }
    }
    let al: Alignment = align(&r)?;
    let peers = peer_table(&r);
    let mut chips = Vec::with_capacity(n);
    let empty = Program::default();
    for i in 0..n {
        let mut chip = Chip::new(&r.chip, opts.timing_only);
        let p = programs.get(i).unwrap_or(&empty);
        if let Some(l) = p.links.first() {
            let m = format!(".link {} {} {}: links come from the system configuration, not the program", l.from, l.to, l.latency);
            return Err(SystemError::config(ErrorKind::InvalidInstruction, i, None, m));
        }
        chip.load(p).map_err(|e| SystemError::on_chip(i, e))?;
        let images = mem_inits.get(i).map(|v| v.as_slice()).unwrap_or(&[]);
        // SAFETY: `mem_inits` is borrowed for the whole call and no chip outlives it (they are dropped in
        // `results`, before this function returns).
        unsafe { chip.borrow_mem_images(images) }.map_err(|(k, m)| {
            SystemError::config(ErrorKind::InvalidInstruction, i, None, format!("mem_init[{k}]: {m}"))
        })?;
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
            }
            if let Some((_, i)) = first {
                let mut sl = lock(&slots[i]);
                let origin = sl.chip.fault_origin.take();
                break sl.err.take().map(|(_, e)| (i, e, origin));
            }
            let Some(start) = start else { break None };
            windows += 1;
            *window.lock().unwrap_or_else(|e| e.into_inner()) = Some(start.saturating_add(lmin));
            let w_end = start.saturating_add(lmin);
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
    let mut chips: Vec<Chip> = slots.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).chip).collect();
    if let Some((i, e, origin)) = failed {
        return Err(system_error(i, e, origin, &chips, &peers));
    }
    for i in 0..n {
        if let Err(e) = chips[i].finish() {
            let origin = chips[i].fault_origin.take();
            return Err(system_error(i, e, origin, &chips, &peers));
        }
    }
    results(&r, &al, chips, dumps, threads, windows)
}

fn results(
    r: &Resolved,
    al: &Alignment,
    chips: Vec<Chip>,
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
