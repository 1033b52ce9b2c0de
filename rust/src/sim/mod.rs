//! One chip's whole state and its cycle loop (docs/isa.md section 3).
//!
//! `Chip::step(t)` runs one cycle in the contract's order: step-1 effects due at `t` (MEM commits, accumulator
//! updates, weight installs, result-register updates, C2C arrivals), then every queue whose next issue cycle is `t`
//! in queue-index order, then the stream emits due at `t`. `Chip::next_cycle()` says which cycle has work next, so
//! `run` (and later a multi-chip `System`, each chip on its own clock) skips idle cycles. In timing-only mode every
//! check, stamp and counter is kept but no value is computed or copied: same cycles, same errors.
//!
//! A lone timing-only run (`simulate`, `run_loaded`) first tries the *fast* form (`fast.rs`): emits recorded at
//! issue on an order-free belt, no emit events, and REPEATed READ, WRITE, ALU, ABC and ACC issues taken a chunk at a
//! time. It makes every check, so it fails iff the exact run fails; when it fails, `run_loaded` reruns in the exact
//! order, which reports the very error (instruction, cycle, message) the exact order finds first.

pub mod c2c;
mod calendar;
pub mod clock;
mod exec;
mod fast;
mod gemm;
pub mod mem;
pub mod mxm;
pub mod streams;
pub mod sxm;
pub mod vxm;

use crate::config::ChipConfig;
use crate::error::{ErrorKind, SimError};
use crate::isa::{DType, Instr, InitValues, Program, QueueName};
use std::sync::Arc;
use calendar::{Calendar, Payload, Pool, ReadyWheel};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Perform every check and count every cycle, but compute no values.
    pub timing_only: bool,
    /// Stop with `CycleLimit` if anything would happen at a cycle `>= max_cycles`.
    pub max_cycles: Option<u64>,
}

/// Busy counters per unit kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Busy {
    /// Bank port uses (READ/WRITE 1, GATHER/SCATTER 2).
    pub mem: u64,
    /// ALU issues.
    pub vxm: u64,
    /// Plane busy cycles from ABC (1 per int8 ABC, `mxm_fp16_cycles_per_vector` per f16 ABC).
    pub mxm: u64,
    pub sxm: u64,
    pub c2c: u64,
    /// SYNC, NOTIFY, IFETCH, CONFIG, DESKEW, RUNTIME_DESKEW issues.
    pub icu: u64,
}

/// A number printed by `.dump`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    I(i64),
    F(f64),
}

/// The result of one `.dump` directive.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpResult {
    pub slice: String,
    pub addr: u32,
    pub dtype: DType,
    /// `n` vectors of `lanes` values; `None` in timing-only mode.
    pub values: Option<Vec<Vec<Num>>>,
}

/// A `CONFIG m` issue (superlane power mask), reported for energy accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRecord {
    pub cycle: u64,
    pub queue: String,
    pub mask: u32,
}

/// What a run returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Last cycle anything happened + 1 + (superlanes - 1); 0 if nothing happened.
    pub cycles: u64,
    /// Issued instructions (repetitions included; NOP and REPEAT themselves excluded).
    pub instructions: u64,
    pub busy: Busy,
    /// Issues per queue, in queue index order.
    pub per_queue_issues: Vec<u64>,
    pub dumps: Vec<DumpResult>,
    pub configs: Vec<ConfigRecord>,
    /// Cycles queues spent stalled by DESKEW and RUNTIME_DESKEW (after the issue cycle, until the next issue):
    /// the largest total over the queues of this chip.
    pub sync_cycles: u64,
    /// Vectors sent per C2C link.
    pub link_sends: Vec<u64>,
}

/// Static facts about a queue.
#[derive(Debug, Clone)]
struct QInfo {
    name: QueueName,
    pos: usize,
    /// MEM: global slice index; VXM: ALU; MXM: plane; SXM: queue in hemisphere; C2C: link.
    unit_index: usize,
}

#[derive(Debug, Clone)]
struct Repeat {
    /// Index of the repeated instruction and of the REPEAT itself.
    instr: usize,
    at: usize,
    n: u32,
    d: u64,
    s: i64,
    /// Next repetition number (1..=n).
    i: u32,
    c0: u64,
}

#[derive(Debug, Clone, Default)]
struct QState {
    pc: usize,
    next: u64,
    last_issue: u64,
    repeat: Option<Repeat>,
    parked_at: Option<u64>,
}

/// One chip.
pub struct Chip {
    cfg: ChipConfig,
    timing_only: bool,
    /// The fast timing-only form (module doc; `fast.rs`).
    fast: bool,
    /// Stream reads of chunks of repetitions taken ahead (fast form), checked once the main loop passes them.
    pending: Vec<fast::PendingRead>,
    /// The earliest cycle a pending read becomes checkable (`u64::MAX`: none).
    pending_due: u64,
    /// Per MXM plane: the last cycle of ABCs taken ahead and their type (fast form; installs landing by then are
    /// checked against it).
    abc_window: Vec<Option<(u64, DType)>>,
    /// Per MXM plane: the cycle LWs were taken ahead at and the last one's cycle (fast form; an IW then fails it).
    lw_window: Vec<Option<(u64, u64)>>,
    /// Per MXM plane: its ABCs' accumulator updates are applied at issue (fast form; see `fast::updates_at_issue`).
    acc_at_issue: Vec<bool>,
    /// Oscillator and hardware-aligned counter: HAC = clock.hac(cycle) mod hac_period (on a lone chip
    /// `cycle + hac_offset`, offset 0 unless set).
    pub clock: clock::Clock,
    /// Software-aligned counter anchors: from cycle `k` on, the SAC (unwrapped) is `u + (cycle - k)`. DESKEW and
    /// RUNTIME_DESKEW add an anchor at their resume cycle (docs/system.md section 3).
    sac: std::collections::BTreeMap<u64, u128>,
    /// Where the DESKEW / RUNTIME_DESKEW being issued resumes (set by `exec`, read by `advance`).
    resume_at: u64,
    /// Per queue: cycles stalled by DESKEW / RUNTIME_DESKEW.
    sync_stall: Vec<u64>,
    /// Vectors sent to other chips since the `System` last collected them.
    pub outbox: Vec<c2c::Outgoing>,
    /// Sending ends of vectors from other chips that are in flight or buffered here (slab; `origin_free` reuses).
    origins: Vec<c2c::Origin>,
    origin_free: Vec<u32>,
    /// Set with an error about a vector from another chip (LinkOverflow, LinkUnreceived): its sending end.
    pub fault_origin: Option<c2c::Origin>,
    qinfo: Vec<QInfo>,
    /// Per queue its instructions, checked at load; shared by the copies `reloaded` makes.
    progs: Arc<Vec<Vec<Instr>>>,
    /// The `.init` directives (applied again by `reloaded`).
    inits: Vec<crate::isa::Init>,
    qs: Vec<QState>,
    belt: streams::StreamBelt,
    mem: Vec<mem::MemSlice>,
    planes: Vec<mxm::MxmPlane>,
    reg_vals: Vec<u32>,
    reg_tag: Vec<Option<DType>>,
    links: Vec<c2c::LinkState>,
    cal: Calendar,
    /// Per queue: the cycle of its next issue (`u64::MAX`: none). At most 144 queues, so a scan beats a heap.
    ready: Vec<u64>,
    /// The same next issue cycles, by cycle.
    wheel: ReadyWheel,
    /// Scratch: the queues issuing in the current cycle.
    issuing: Vec<u16>,
    parked: Vec<usize>,
    notify: Option<u64>,
    bytes: Pool<u8>,
    words: Pool<u32>,
    // Scratch buffers (reused every issue).
    sa: Vec<u8>,
    sm: Vec<u8>,
    ua: Vec<u32>,
    ub: Vec<u32>,
    uo: Vec<u32>,
    /// A vector of zeros (a never-written memory word).
    zeros: Vec<u8>,
    /// Per MEM slice: the latest cycle a scheduled WRITE/SCATTER commits at.
    mem_commit_at: Vec<u64>,
    dumps: Vec<crate::isa::Dump>,
    stats: Stats,
    last_activity: Option<u64>,
}

fn load_err(queue: String, index: usize, instruction: String, message: String) -> SimError {
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
            self.links[l.from as usize].peer = Some(c2c::Peer::Local { to: l.to as usize, latency: l.latency });
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
        let lanes = self.cfg.lanes;
        let w = init.dtype.width();
        let base = init.slice.mem_global(&self.cfg).unwrap_or(0);
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
            self.mem[base + b].write(init.addr as usize, &planes[b * lanes..(b + 1) * lanes]);
        }
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
        let lanes = self.cfg.lanes;
        if slice >= self.mem.len() {
            return Err(format!("slice {slice} is outside 0..{}", self.mem.len() - 1));
        }
        if addr + n > self.cfg.mem_words {
            return Err(format!("{n} vectors at address {addr} do not fit in {} words", self.cfg.mem_words));
        }
        if self.timing_only {
            return Ok(None);
        }
        let mut out = vec![0u8; n * lanes];
        for k in 0..n {
            self.mem[slice].read(addr + k, &mut out[k * lanes..(k + 1) * lanes]);
        }
        Ok(Some(out))
    }

    // ---- queue sequencing (section 3) ----

    /// Skip NOPs and set up a REPEAT at the queue's pc; schedule its next issue if it has one.
    fn resolve(&mut self, q: usize) {
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

    fn activity(&mut self, t: u64) {
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

    // ---- synchronisation (docs/system.md section 3) ----

    /// The SAC (unwrapped) at cycle `c`.
    pub fn sac(&self, c: u64) -> u128 {
        let (k, u) = self.sac.range(..=c).next_back().map(|(k, u)| (*k, *u)).unwrap_or((0, self.clock.hac(0)));
        u + (c - k) as u128
    }

    /// Realign the SAC to the HAC at cycle `k` (the resume cycle of a DESKEW / RUNTIME_DESKEW issued at `t`).
    fn realign(&mut self, t: u64, k: u64) {
        let u = self.clock.hac(k);
        self.sac.insert(k, u);
        // Anchors older than the one in force at `t` are never read again (issue cycles only grow).
        if let Some((&keep, _)) = self.sac.range(..=t).next_back() {
            self.sac = self.sac.split_off(&keep);
        }
    }

    /// DESKEW issued at `t`: resume at the first cycle after `t` where the HAC starts a new epoch.
    fn deskew_resume(&mut self, t: u64) -> u64 {
        let h = self.cfg.hac_period as u128;
        let epoch_end = (self.clock.hac(t) / h + 1) * h;
        let k = self.clock.first_hac_at_least(epoch_end).max(t + 1);
        self.realign(t, k);
        k
    }

    /// RUNTIME_DESKEW d issued at `t`: resume when the HAC reaches SAC(t) + d, i.e. after d - delta cycles where
    /// delta = HAC(t) - SAC(t) is the drift accumulated since the last alignment. Errors when delta cannot be
    /// measured (|delta| >= hac_period / 2: the counters are compared modulo the period) or absorbed (delta >= d).
    fn runtime_deskew_resume(&mut self, t: u64, d: u64) -> Result<u64, String> {
        let h = self.cfg.hac_period as i128;
        let sac = self.sac(t);
        let delta = self.clock.hac(t) as i128 - sac as i128;
        if 2 * delta.abs() >= h {
            return Err(format!(
                "the SAC has drifted {delta} cycles from the HAC since the last alignment; the counters are compared modulo hac_period {h}, so drift of {} or more cannot be measured: deskew more often",
                (h + 1) / 2
            ));
        }
        let target = sac + d as u128;
        let k = self.clock.first_hac_at_least(target);
        if k <= t {
            return Err(format!(
                "the chip is {delta} cycles behind the HAC, more than the RUNTIME_DESKEW delay {d} can absorb"
            ));
        }
        self.realign(t, k);
        Ok(k)
    }

    // ---- links to other chips (the System calls these between windows) ----

    /// A vector from another chip lands in link `link`'s receive buffer at `cycle` (this chip's clock).
    pub fn deliver(&mut self, cycle: u64, link: usize, data: &[u8], origin: c2c::Origin) {
        let buf = if self.timing_only {
            calendar::NONE
        } else {
            let h = self.bytes.alloc(self.cfg.lanes);
            self.bytes.get_mut(h).copy_from_slice(&data[..self.cfg.lanes]);
            h
        };
        let o = match self.origin_free.pop() {
            Some(o) => {
                self.origins[o as usize] = origin;
                o
            }
            None => {
                self.origins.push(origin);
                (self.origins.len() - 1) as u32
            }
        };
        let q = QueueName::C2c(link as u16).index(&self.cfg).unwrap_or(0);
        self.schedule(cycle, calendar::ARRIVE, q, 0, Payload::Arrive { link: link as u32, buf, origin: o });
    }

    fn free_origin(&mut self, o: u32) {
        if o != calendar::NONE {
            self.origin_free.push(o);
        }
    }

    /// An error about a vector from another chip: names the SEND (queue and index on the sending chip; the
    /// `System` fills in its text) and records the sending end in `fault_origin`.
    fn remote_err(&mut self, kind: ErrorKind, t: u64, origin: u32, message: String) -> SimError {
        let o = self.origins[origin as usize];
        self.fault_origin = Some(o);
        let queue = QueueName::all(&self.cfg).get(o.queue as usize).map(|n| n.to_string()).unwrap_or_default();
        SimError { kind, cycle: t, queue, index: o.instr as usize, instruction: String::new(), message }
    }

    /// The text of instruction `index` of queue `queue` (for naming a SEND in another chip's error).
    pub fn instruction_text(&self, queue: usize, index: usize) -> String {
        self.progs.get(queue).and_then(|p| p.get(index)).map(|i| i.to_string()).unwrap_or_default()
    }

    /// The name of queue `q`.
    pub fn queue_name(&self, q: usize) -> String {
        self.qinfo.get(q).map(|i| i.name.to_string()).unwrap_or_default()
    }

    /// Connect link `link` to `link` of chip `chip` (a system link; replaces any `.link`).
    pub fn connect_remote(&mut self, link: usize, chip: usize, peer_link: usize, interval_ticks: u128) {
        self.links[link].peer = Some(c2c::Peer::Remote { chip, link: peer_link, interval_ticks });
    }

    // ---- errors ----

    fn err(&self, kind: ErrorKind, t: u64, q: usize, idx: usize, message: String) -> SimError {
        SimError {
            kind,
            cycle: t,
            queue: self.qinfo[q].name.to_string(),
            index: idx,
            instruction: self.progs[q].get(idx).map(|i| i.to_string()).unwrap_or_default(),
            message,
        }
    }

    fn schedule(&mut self, cycle: u64, kind: u8, q: usize, idx: usize, payload: Payload) {
        self.cal.push(cycle, kind, q, idx, payload);
    }

    fn release(&mut self, p: &Payload) {
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

    fn has_data(&self) -> bool {
        !self.timing_only
    }
}

/// A program checked and loaded once (`load_program`): the chip configuration, the instructions (shared), the
/// directives. Plain data, so it can be kept (by a Python `LoadedProgram`) and shared between threads.
#[derive(Clone)]
pub struct Loaded {
    cfg: ChipConfig,
    progs: Arc<Vec<Vec<Instr>>>,
    inits: Vec<crate::isa::Init>,
    dumps: Vec<crate::isa::Dump>,
    peers: Vec<Option<c2c::Peer>>,
    /// Order-free belts of finished fast-form runs, for the next runs to reuse (`Loaded::chip`, `run_loaded`).
    spare_belts: Arc<std::sync::Mutex<Vec<streams::StreamBelt>>>,
}

impl Loaded {
    pub fn config(&self) -> &ChipConfig {
        &self.cfg
    }

    /// Keep a finished fast-form chip's belt for a later `chip` (at most a couple: runs on other threads).
    fn keep_belt(&self, chip: &mut Chip) {
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
    /// started. `fast`: the fast timing-only form (module doc; only with `timing_only`).
    pub fn chip(&self, timing_only: bool, fast: bool) -> Chip {
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
        if !timing_only {
            for init in &self.inits {
                c.apply_init(init);
            }
        }
        c.start();
        c
    }
}

/// A memory image for `simulate`: (global slice, first address, n * lanes bytes).
pub type MemInit<'a> = (usize, usize, &'a [u8]);

/// The checks of `write_mem`.
fn check_mem(cfg: &ChipConfig, slice: usize, addr: usize, data: &[u8]) -> Result<(), String> {
    let lanes = cfg.lanes;
    if slice >= cfg.mem_slices {
        return Err(format!("slice {slice} is outside 0..{}", cfg.mem_slices - 1));
    }
    if data.len() % lanes != 0 || addr + data.len() / lanes > cfg.mem_words {
        return Err(format!("{} vectors at address {addr} do not fit in {} words", data.len() / lanes, cfg.mem_words));
    }
    Ok(())
}

/// Load, initialise, run, and read back: the whole single-chip flow used by the bindings.
pub fn simulate(
    cfg: &ChipConfig,
    program: &Program,
    mem_init: &[MemInit],
    dumps: &[(usize, usize, usize)],
    opts: &RunOptions,
) -> Result<(Stats, Vec<Option<Vec<u8>>>), SimError> {
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
) -> Result<(Stats, Vec<Option<Vec<u8>>>), SimError> {
    for (k, &(slice, addr, data)) in mem_init.iter().enumerate() {
        check_mem(&loaded.cfg, slice, addr, data).map_err(|m| load_err("mem_init".into(), k, String::new(), m))?;
    }
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
    let mut out = Vec::with_capacity(dumps.len());
    for (k, &(slice, addr, n)) in dumps.iter().enumerate() {
        out.push(chip.read_mem(slice, addr, n).map_err(|m| load_err("dumps".into(), k, String::new(), m))?);
    }
    Ok((chip.stats.clone(), out))
}
