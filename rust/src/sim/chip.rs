//! The chip's state, its construction, and loading a program into it (docs/isa.md 9.3), plus `Loaded`: a
//! program checked once and started any number of times, on a fresh chip or on a `ChipMemory` (the MEM contents
//! kept across runs; what persists is in the `mem` module doc), into which `Loaded::install_static` writes the
//! program's constant image once.

use super::calendar::{Calendar, Payload, Pool, ReadyWheel};
use super::stats::{Busy, Events, Stats};
use super::{c2c, clock, exec, fast, mem, mxm, streams};
use crate::config::ChipConfig;
use crate::error::{ErrorKind, SimError};
use crate::isa::{DType, Instr, InitValues, Program, QueueName};
use std::sync::Arc;

/// Static facts about a queue.
#[derive(Debug, Clone)]
pub(super) struct QInfo {
    pub(super) name: QueueName,
    pub(super) pos: usize,
    /// MEM: global slice index; VXM: ALU; MXM: plane; SXM: queue in hemisphere; C2C: link.
    pub(super) unit_index: usize,
}

#[derive(Debug, Clone)]
pub(super) struct Repeat {
    /// Index of the repeated instruction and of the REPEAT itself.
    pub(super) instr: usize,
    pub(super) at: usize,
    pub(super) n: u32,
    pub(super) d: u64,
    pub(super) s: i64,
    /// Next repetition number (1..=n).
    pub(super) i: u32,
    pub(super) c0: u64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct QState {
    pub(super) pc: usize,
    pub(super) next: u64,
    pub(super) last_issue: u64,
    pub(super) repeat: Option<Repeat>,
    pub(super) parked_at: Option<u64>,
}

/// One chip. Its fields are `pub(super)` because its `impl` is spread over the files of `sim` (its module doc).
pub struct Chip {
    pub(super) cfg: ChipConfig,
    pub(super) timing_only: bool,
    /// The fast timing-only form (the `sim` module doc; `fast.rs`).
    pub(super) fast: bool,
    /// Stream reads of chunks of repetitions taken ahead (fast form), checked once the main loop passes them.
    pub(super) pending: Vec<fast::PendingRead>,
    /// The earliest cycle a pending read becomes checkable (`u64::MAX`: none).
    pub(super) pending_due: u64,
    /// Per MXM plane: the last cycle of ABCs taken ahead and their type (fast form; installs landing by then are
    /// checked against it).
    pub(super) abc_window: Vec<Option<(u64, DType)>>,
    /// Per MXM plane: the cycle LWs were taken ahead at and the last one's cycle (fast form; an IW then fails it).
    pub(super) lw_window: Vec<Option<(u64, u64)>>,
    /// Per MXM plane: its ABCs' accumulator updates are applied at issue (fast form; see `fast::updates_at_issue`).
    pub(super) acc_at_issue: Vec<bool>,
    /// Oscillator and hardware-aligned counter: HAC = clock.hac(cycle) mod hac_period (on a lone chip
    /// `cycle + hac_offset`, offset 0 unless set).
    pub clock: clock::Clock,
    /// Software-aligned counter anchors: from cycle `k` on, the SAC (unwrapped) is `u + (cycle - k)`. DESKEW and
    /// RUNTIME_DESKEW add an anchor at their resume cycle (docs/system.md section 3).
    pub(super) sac: std::collections::BTreeMap<u64, u128>,
    /// Where the DESKEW / RUNTIME_DESKEW being issued resumes (set by `exec`, read by `advance`).
    pub(super) resume_at: u64,
    /// Per queue: cycles stalled by DESKEW / RUNTIME_DESKEW.
    pub(super) sync_stall: Vec<u64>,
    /// Vectors sent to other chips since the `System` last collected them.
    pub outbox: Vec<c2c::Outgoing>,
    /// Sending ends of vectors from other chips that are in flight or buffered here (slab; `origin_free` reuses).
    pub(super) origins: Vec<c2c::Origin>,
    pub(super) origin_free: Vec<u32>,
    /// Set with an error about a vector from another chip (LinkOverflow, LinkUnreceived): its sending end.
    pub fault_origin: Option<c2c::Origin>,
    pub(super) qinfo: Vec<QInfo>,
    /// Per queue its instructions, checked at load; shared by the copies `reloaded` makes.
    pub(super) progs: Arc<Vec<Vec<Instr>>>,
    /// The `.init` directives (applied again by `reloaded`).
    pub(super) inits: Vec<crate::isa::Init>,
    pub(super) qs: Vec<QState>,
    pub(super) belt: streams::StreamBelt,
    pub(super) mem: Vec<mem::MemSlice>,
    pub(super) planes: Vec<mxm::MxmPlane>,
    pub(super) reg_vals: Vec<u32>,
    pub(super) reg_tag: Vec<Option<DType>>,
    pub(super) links: Vec<c2c::LinkState>,
    pub(super) cal: Calendar,
    /// Per queue: the cycle of its next issue (`u64::MAX`: none). At most 144 queues, so a scan beats a heap.
    pub(super) ready: Vec<u64>,
    /// The same next issue cycles, by cycle.
    pub(super) wheel: ReadyWheel,
    /// Scratch: the queues issuing in the current cycle.
    pub(super) issuing: Vec<u16>,
    pub(super) parked: Vec<usize>,
    pub(super) notify: Option<u64>,
    pub(super) bytes: Pool<u8>,
    pub(super) words: Pool<u32>,
    // Scratch buffers (reused every issue).
    pub(super) sa: Vec<u8>,
    pub(super) sm: Vec<u8>,
    pub(super) ua: Vec<u32>,
    pub(super) ub: Vec<u32>,
    pub(super) uo: Vec<u32>,
    /// A vector of zeros (a never-written memory word).
    pub(super) zeros: Vec<u8>,
    /// Per MEM slice: the latest cycle a scheduled WRITE/SCATTER commits at.
    pub(super) mem_commit_at: Vec<u64>,
    pub(super) dumps: Vec<crate::isa::Dump>,
    pub(super) stats: Stats,
    pub(super) last_activity: Option<u64>,
}

pub(super) fn load_err(queue: String, index: usize, instruction: String, message: String) -> SimError {
    SimError { kind: ErrorKind::InvalidInstruction, cycle: 0, queue, index, instruction, message }
}

impl Chip {
    /// A chip in its reset state (no program). The configuration must be valid.
    pub fn new(cfg: &ChipConfig, timing_only: bool) -> Chip {
        Chip::with_mode(cfg, timing_only, false)
    }

    fn with_mode(cfg: &ChipConfig, timing_only: bool, fast: bool) -> Chip {
        let lanes = cfg.lanes;
        let qinfo = QueueName::all(cfg)
            .into_iter()
            .map(|name| {
                let unit_index = match name {
                    QueueName::Mem { .. } => name.index(cfg).unwrap_or(0),
                    QueueName::Vxm(i) => i as usize,
                    QueueName::Mxm { east, plane, .. } => {
                        (if east { cfg.planes_per_side() } else { 0 }) + plane as usize
                    }
                    QueueName::Sxm { i, .. } => i as usize,
                    QueueName::C2c(i) => i as usize,
                };
                QInfo { name, pos: name.position(cfg).unwrap_or(0), unit_index }
            })
            .collect::<Vec<_>>();
        let nq = qinfo.len();
        let belt = if fast {
            streams::StreamBelt::new_order_free(cfg.streams_per_direction, cfg.positions(), fast::horizon(cfg))
        } else {
            streams::StreamBelt::new(cfg.streams_per_direction, lanes, cfg.positions(), timing_only)
        };
        Chip {
            cfg: cfg.clone(),
            timing_only,
            fast,
            pending: Vec::new(),
            pending_due: u64::MAX,
            abc_window: vec![None; cfg.mxm_planes],
            lw_window: vec![None; cfg.mxm_planes],
            acc_at_issue: vec![false; cfg.mxm_planes],
            clock: clock::Clock::default(),
            sac: std::collections::BTreeMap::new(),
            resume_at: 0,
            sync_stall: vec![0; nq],
            outbox: Vec::new(),
            origins: Vec::new(),
            origin_free: Vec::new(),
            fault_origin: None,
            progs: Arc::new(vec![Vec::new(); nq]),
            inits: Vec::new(),
            qs: vec![QState::default(); nq],
            qinfo,
            belt,
            mem: (0..cfg.mem_slices).map(|_| mem::MemSlice::new(cfg.mem_words, lanes)).collect(),
            planes: (0..cfg.mxm_planes).map(|_| mxm::MxmPlane::new(cfg.mxm_dim, cfg.mxm_acc_rows, timing_only)).collect(),
            reg_vals: if timing_only { Vec::new() } else { vec![0; cfg.vxm_alus_per_lane * lanes] },
            reg_tag: vec![None; cfg.vxm_alus_per_lane],
            links: (0..cfg.c2c_links).map(|_| c2c::LinkState::default()).collect(),
            cal: Calendar::default(),
            ready: vec![u64::MAX; nq],
            wheel: ReadyWheel::default(),
            issuing: Vec::new(),
            parked: Vec::new(),
            notify: None,
            bytes: Pool::default(),
            words: Pool::default(),
            sa: vec![0; 16 * lanes],
            sm: vec![0; 16 * lanes],
            ua: vec![0; lanes],
            ub: vec![0; lanes],
            uo: vec![0; lanes],
            zeros: vec![0; lanes],
            mem_commit_at: vec![0; cfg.mem_slices],
            dumps: Vec::new(),
            stats: Stats {
                cycles: 0,
                instructions: 0,
                busy: Busy::default(),
                events: Events::default(),
                per_queue_issues: vec![0; nq],
                dumps: Vec::new(),
                configs: Vec::new(),
                sync_cycles: 0,
                link_sends: vec![0; cfg.c2c_links],
            },
            last_activity: None,
        }
    }

    pub fn config(&self) -> &ChipConfig {
        &self.cfg
    }

    /// Load a program: configuration-dependent checks (docs/isa.md 9.3) as `InvalidInstruction`/`QueueOverrun`
    /// at cycle 0, then `.init`, `.link`, and start every queue at cycle 0.
    pub fn load(&mut self, p: &Program) -> Result<(), SimError> {
        let c = self.cfg.clone();
        let mut progs = vec![Vec::new(); self.qs.len()];
        for qp in &p.queues {
            let Some(q) = qp.name.index(&c) else {
                let first = qp.instrs.first().map(|i| i.to_string()).unwrap_or_default();
                return Err(load_err(qp.name.to_string(), 0, first, format!("this chip has no queue {}", qp.name)));
            };
            if qp.instrs.len() > c.instruction_queue_depth {
                let k = c.instruction_queue_depth;
                return Err(SimError {
                    kind: ErrorKind::QueueOverrun,
                    cycle: 0,
                    queue: qp.name.to_string(),
                    index: k,
                    instruction: qp.instrs[k].to_string(),
                    message: format!("{} instructions exceed the queue depth {}", qp.instrs.len(), k),
                });
            }
            for (k, ins) in qp.instrs.iter().enumerate() {
                if let Err(m) = exec::check_config(ins, &c) {
                    return Err(load_err(qp.name.to_string(), k, ins.to_string(), m));
                }
                if let Err(m) = ins.check() {
                    return Err(load_err(qp.name.to_string(), k, ins.to_string(), m));
                }
            }
            if let Err((_, k, m)) = (Program { queues: vec![qp.clone()], ..Default::default() }).check() {
                return Err(load_err(qp.name.to_string(), k, qp.instrs[k].to_string(), m));
            }
            progs[q] = qp.instrs.clone();
        }
        self.progs = Arc::new(progs);
        let half = c.mem_per_side();
        let plane_ok = |slice: &QueueName, w: usize| match slice {
            QueueName::Mem { i, .. } => (*i as usize) + w <= half,
            _ => false,
        };
        for (k, init) in p.inits.iter().enumerate() {
            let text = format!(".init {} {} {}", init.slice, init.addr, init.dtype.name());
            let n = match &init.values {
                InitValues::Fill(_) => 1,
                InitValues::Lanes(v) => v.len(),
            };
            if !plane_ok(&init.slice, init.dtype.width()) || init.addr as usize >= c.mem_words || n > c.lanes {
                return Err(load_err(
                    ".init".into(),
                    k,
                    text,
                    format!("needs slices {}..+{}, address < {} and at most {} values", init.slice, init.dtype.width(), c.mem_words, c.lanes),
                ));
            }
            if !self.timing_only {
                self.apply_init(init);
            }
        }
        for (k, d) in p.dumps.iter().enumerate() {
            if !plane_ok(&d.slice, d.dtype.width()) || d.addr as u64 + d.n as u64 > c.mem_words as u64 {
                return Err(load_err(
                    ".dump".into(),
                    k,
                    format!(".dump {} {} {} {}", d.slice, d.addr, d.dtype.name(), d.n),
                    format!("needs slices {}..+{} and addresses below {}", d.slice, d.dtype.width(), c.mem_words),
                ));
            }
        }
        self.dumps = p.dumps.clone();
        self.inits = p.inits.clone();
        for (k, l) in p.links.iter().enumerate() {
            if l.from as usize >= c.c2c_links || l.to as usize >= c.c2c_links {
                return Err(load_err(
                    ".link".into(),
                    k,
                    format!(".link {} {} {}", l.from, l.to, l.latency),
                    format!("links are 0..{}", c.c2c_links.saturating_sub(1)),
                ));
            }
            // The loopback serialises its flits like a system link: same formula, the default (published) link.
            let interval_ticks = crate::system::SystemConfig::default().send_interval_ticks(c.clock_hz);
            self.links[l.from as usize].peer = Some(c2c::Peer::Local { to: l.to as usize, latency: l.latency, interval_ticks });
        }
        self.start();
        Ok(())
    }

    /// What this chip's `load` left, for `Loaded::chip` to start fresh runs from.
    pub fn loaded(&self) -> Loaded {
        Loaded {
            cfg: self.cfg.clone(),
            progs: self.progs.clone(),
            inits: self.inits.clone(),
            dumps: self.dumps.clone(),
            peers: self.links.iter().map(|l| l.peer).collect(),
            spare_belts: Arc::default(),
            id: NEXT_LOADED_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Start every queue at cycle 0.
    fn start(&mut self) {
        self.ready.fill(u64::MAX);
        self.wheel = ReadyWheel::default();
        for q in 0..self.qs.len() {
            self.qs[q] = QState::default();
            self.resolve(q);
        }
    }

    fn apply_init(&mut self, init: &crate::isa::Init) {
        apply_init(&self.cfg, &mut self.mem, init);
    }

    /// Write raw vectors (n x lanes bytes) into a MEM slice (global index) before the run. Functional mode only.
    pub fn write_mem(&mut self, slice: usize, addr: usize, data: &[u8]) -> Result<(), String> {
        let lanes = self.cfg.lanes;
        self.check_mem(slice, addr, data)?;
        if !self.timing_only {
            for (k, v) in data.chunks(lanes).enumerate() {
                self.mem[slice].write(addr + k, v);
            }
        }
        Ok(())
    }

    /// Check memory images and let the slices read them in place (copy-on-write pages, as `simulate` does).
    /// Returns the index and message of the first bad image.
    ///
    /// # Safety
    /// The images must outlive every use of this chip (drop the chip before them).
    pub unsafe fn borrow_mem_images(&mut self, images: &[MemInit]) -> Result<(), (usize, String)> {
        for (k, &(slice, addr, data)) in images.iter().enumerate() {
            self.check_mem(slice, addr, data).map_err(|m| (k, m))?;
        }
        if !self.timing_only {
            let mut per_slice: Vec<Vec<(usize, &[u8])>> = vec![Vec::new(); self.mem.len()];
            for &(slice, addr, data) in images {
                per_slice[slice].push((addr, data));
            }
            for (s, imgs) in per_slice.iter().enumerate() {
                if !imgs.is_empty() {
                    unsafe { self.mem[s].borrow_images(imgs) };
                }
            }
        }
        Ok(())
    }

    /// The checks of `write_mem`.
    fn check_mem(&self, slice: usize, addr: usize, data: &[u8]) -> Result<(), String> {
        check_mem(&self.cfg, slice, addr, data)
    }

    /// Read `n` raw vectors from a MEM slice (global index); `None` in timing-only mode.
    pub fn read_mem(&self, slice: usize, addr: usize, n: usize) -> Result<Option<Vec<u8>>, String> {
        check_range(&self.cfg, slice, addr, n)?;
        if self.timing_only {
            return Ok(None);
        }
        Ok(Some(self.mem[slice].read_many(addr, n)))
    }

    // ---- errors ----

    pub(super) fn err(&self, kind: ErrorKind, t: u64, q: usize, idx: usize, message: String) -> SimError {
        SimError {
            kind,
            cycle: t,
            queue: self.qinfo[q].name.to_string(),
            index: idx,
            instruction: self.progs[q].get(idx).map(|i| i.to_string()).unwrap_or_default(),
            message,
        }
    }

    pub(super) fn schedule(&mut self, cycle: u64, kind: u8, q: usize, idx: usize, payload: Payload) {
        self.cal.push(cycle, kind, q, idx, payload);
    }

    pub(super) fn release(&mut self, p: &Payload) {
        match *p {
            Payload::MemWrite { buf, .. } | Payload::MemScatter { buf, .. } | Payload::Arrive { buf, .. } => {
                self.bytes.release(buf)
            }
            Payload::Emit { buf, .. } => self.bytes.release(buf),
            Payload::Reg { buf, .. } => self.words.release(buf),
            // An ABC's product lives in its plane's slot (freed when the plane applies it).
            Payload::Acc { .. } | Payload::Install { .. } | Payload::EmitMem { .. } => {}
        }
    }

    pub(super) fn has_data(&self) -> bool {
        !self.timing_only
    }
}

/// A program checked and loaded once (`load_program`): the chip configuration, the instructions (shared), the
/// directives. Plain data, so it can be kept (by a Python `LoadedProgram`) and shared between threads.
#[derive(Clone)]
pub struct Loaded {
    pub(super) cfg: ChipConfig,
    progs: Arc<Vec<Vec<Instr>>>,
    pub(super) inits: Vec<crate::isa::Init>,
    dumps: Vec<crate::isa::Dump>,
    peers: Vec<Option<c2c::Peer>>,
    /// Order-free belts of finished fast-form runs, for the next runs to reuse (`Loaded::chip`, `run_loaded`).
    pub(super) spare_belts: Arc<std::sync::Mutex<Vec<streams::StreamBelt>>>,
    /// Unique per `load_program` (shared by clones): which constant images a `ChipMemory` holds.
    id: u64,
}

impl Loaded {
    pub fn config(&self) -> &ChipConfig {
        &self.cfg
    }

    /// Keep a finished fast-form chip's belt for a later `chip` (at most a couple: runs on other threads).
    pub(crate) fn keep_belt(&self, chip: &mut Chip) {
        if chip.fast {
            let belt = std::mem::replace(&mut chip.belt, streams::StreamBelt::new(0, 0, 0, true));
            if let Ok(mut v) = self.spare_belts.lock() {
                if v.len() < 2 {
                    v.push(belt);
                }
            }
        }
    }

    /// A chip in its reset state holding the program (not checked again), its `.init`s applied and every queue
    /// started. `fast`: the fast timing-only form (the `sim` module doc; only with `timing_only`).
    pub fn chip(&self, timing_only: bool, fast: bool) -> Chip {
        self.chip_with(timing_only, fast, true)
    }

    /// `chip`, with the `.init`s applied only if `inits` (a run on a `ChipMemory` has them from `install_static`).
    pub(super) fn chip_with(&self, timing_only: bool, fast: bool, inits: bool) -> Chip {
        let mut c = Chip::with_mode(&self.cfg, timing_only, fast && timing_only);
        if c.fast {
            let (spd, positions, horizon) = (self.cfg.streams_per_direction, self.cfg.positions(), fast::horizon(&self.cfg));
            let spare = self.spare_belts.lock().ok().and_then(|mut v| v.pop());
            if let Some(mut belt) = spare.filter(|b| b.is_order_free(spd, positions, horizon)) {
                belt.reset();
                c.belt = belt;
            }
        }
        c.progs = self.progs.clone();
        if c.fast {
            c.acc_at_issue = fast::updates_at_issue(&c.qinfo, &c.progs, self.cfg.mxm_planes);
        }
        c.dumps = self.dumps.clone();
        c.inits = self.inits.clone();
        for (l, p) in c.links.iter_mut().zip(&self.peers) {
            l.peer = *p;
        }
        if inits && !timing_only {
            for init in &self.inits {
                c.apply_init(init);
            }
        }
        c.start();
        c
    }

    /// Write this program's constant image into `memory`: its `.init`s, then `images` (the static images a caller
    /// keeps, e.g. a compiled model's weights; later ones win), copied once so later runs on the memory
    /// (`run_on`) pay nothing for them. Installing again rewrites the image. Errors (nothing written then): a
    /// memory of another configuration or one holding a fault (`InvalidInstruction` at cycle 0, queue `memory`),
    /// a bad image (queue `static_init`, index of the image).
    pub fn install_static(&self, memory: &mut mem::ChipMemory, images: &[MemInit]) -> Result<(), SimError> {
        self.check_memory(memory)?;
        check_images(&self.cfg, images, "static_init")?;
        for init in &self.inits {
            apply_init(&self.cfg, &mut memory.slices, init);
        }
        for &(slice, addr, data) in images {
            memory.slices[slice].write_many(addr, data);
        }
        if !memory.installed.contains(&self.id) {
            memory.installed.push(self.id);
        }
        Ok(())
    }

    /// Whether `install_static` of this program (or a clone of it) wrote into `memory` since its last `clear`.
    /// It says nothing of whether later runs overwrote that image.
    pub fn installed_in(&self, memory: &mem::ChipMemory) -> bool {
        memory.installed.contains(&self.id)
    }

    /// A memory this program may use: same configuration, no fault recorded.
    pub(super) fn check_memory(&self, memory: &mem::ChipMemory) -> Result<(), SimError> {
        if memory.cfg != self.cfg {
            let m = "the memory was made for a chip of another configuration".to_string();
            return Err(load_err("memory".into(), 0, String::new(), m));
        }
        memory.check_usable()
    }
}

/// Write one `.init` into the slices (byte plane `b` to the slice `b` further from the VXM).
pub(super) fn apply_init(cfg: &ChipConfig, mem: &mut [mem::MemSlice], init: &crate::isa::Init) {
    let lanes = cfg.lanes;
    let w = init.dtype.width();
    let base = init.slice.mem_global(cfg).unwrap_or(0);
    let mut planes = vec![0u8; w * lanes];
    for l in 0..lanes {
        let bits = match &init.values {
            InitValues::Fill(v) => *v,
            InitValues::Lanes(vs) => vs.get(l).copied().unwrap_or(0),
        };
        for b in 0..w {
            planes[b * lanes + l] = (bits >> (8 * b)) as u8;
        }
    }
    for b in 0..w {
        mem[base + b].write(init.addr as usize, &planes[b * lanes..(b + 1) * lanes]);
    }
}

/// Ids of `Loaded` programs (`ChipMemory` records which constant images it holds by id).
static NEXT_LOADED_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A memory image for `simulate`: (global slice, first address, n * lanes bytes).
pub type MemInit<'a> = (usize, usize, &'a [u8]);

/// The checks of `write_mem`.
/// The checks of a read of `n` vectors (`read_mem`, `ChipMemory::read`, dump requests).
pub(super) fn check_range(cfg: &ChipConfig, slice: usize, addr: usize, n: usize) -> Result<(), String> {
    if slice >= cfg.mem_slices {
        return Err(format!("slice {slice} is outside 0..{}", cfg.mem_slices - 1));
    }
    if addr + n > cfg.mem_words {
        return Err(format!("{n} vectors at address {addr} do not fit in {} words", cfg.mem_words));
    }
    Ok(())
}

/// Every image checked (`check_mem`); the first bad one is a load error of `what` ("mem_init", "static_init").
pub(super) fn check_images(cfg: &ChipConfig, images: &[MemInit], what: &str) -> Result<(), SimError> {
    for (k, &(slice, addr, data)) in images.iter().enumerate() {
        check_mem(cfg, slice, addr, data).map_err(|m| load_err(what.into(), k, String::new(), m))?;
    }
    Ok(())
}

pub(super) fn check_mem(cfg: &ChipConfig, slice: usize, addr: usize, data: &[u8]) -> Result<(), String> {
    let lanes = cfg.lanes;
    if slice >= cfg.mem_slices {
        return Err(format!("slice {slice} is outside 0..{}", cfg.mem_slices - 1));
    }
    if data.len() % lanes != 0 || addr + data.len() / lanes > cfg.mem_words {
        return Err(format!("{} vectors at address {addr} do not fit in {} words", data.len() / lanes, cfg.mem_words));
    }
    Ok(())
}
