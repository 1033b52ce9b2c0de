//! What each instruction does at issue (step 2) and what each scheduled effect does when it lands (steps 1, 3).
//!
//! Checks inside one instruction go left to right through its operands (stream reads, addresses, registers), then
//! unit state (bank ports, busy plane, types, buffer room, links): docs/isa.md section 9.5.

use super::calendar::{self, Event, Payload, NONE};
use super::mxm::RowKind;
use super::c2c::{Outgoing, Peer};
use super::{sxm, vxm, Chip};
use crate::config::ChipConfig;
use crate::error::{ErrorKind, SimError};
use crate::isa::{DType, Dir, Instr, Operand, Stream};

/// Configuration-dependent operand checks done at load time (docs/isa.md 9.3).
pub fn check_config(ins: &Instr, c: &ChipConfig) -> Result<(), String> {
    let spd = c.streams_per_direction;
    let group = |s: &Stream, w: usize| -> Result<(), String> {
        if s.index as usize + w > spd {
            let d = if s.dir == Dir::East { 'E' } else { 'W' };
            return Err(format!("a {w}-stream group at {s} runs past {d}{}", spd - 1));
        }
        Ok(())
    };
    let opnd = |o: &Operand, w: usize| -> Result<(), String> {
        match o {
            Operand::Stream(s) => group(s, w),
            Operand::Reg(r) if *r as usize >= c.vxm_alus_per_lane => {
                Err(format!("register R{r} does not exist (R0..R{})", c.vxm_alus_per_lane - 1))
            }
            _ => Ok(()),
        }
    };
    match ins {
        Instr::Read { s, .. } | Instr::Write { s, .. } | Instr::Send { s } | Instr::Recv { s } => group(s, 1),
        Instr::Gather { s, map } | Instr::Scatter { s, map } => {
            group(s, 1)?;
            group(map, 2)
        }
        Instr::Alu { t, out, dst, a, b, .. } => {
            if let Some(d) = dst {
                group(d, out.width())?;
            }
            opnd(a, t.width())?;
            if let Some(b) = b {
                opnd(b, t.width())?;
            }
            Ok(())
        }
        Instr::Lw { t, s, n } => {
            if *n as usize > c.mxm_dim {
                return Err(format!("LW of {n} rows: a plane has {} rows", c.mxm_dim));
            }
            group(s, t.width() * *n as usize)
        }
        Instr::Abc { t, s, .. } => group(s, t.width()),
        Instr::Acc { s, .. } => group(s, 4),
        Instr::Shift { d, s, n } => {
            group(d, 1)?;
            group(s, 1)?;
            if n.unsigned_abs() as usize >= c.lanes {
                return Err(format!("shift {n} is outside -{}..{}", c.lanes - 1, c.lanes - 1));
            }
            Ok(())
        }
        Instr::Permute { d, s, map } => {
            group(d, 1)?;
            group(s, 1)?;
            group(map, 2)
        }
        Instr::Distribute { d, s, .. } => {
            group(d, 1)?;
            group(s, 1)
        }
        Instr::Transpose { d, s } => {
            group(d, 16)?;
            group(s, 16)
        }
        _ => Ok(()),
    }
}

/// u32 per lane -> `w` byte planes (little endian).
#[inline]
fn elems_to_planes(src: &[u32], lanes: usize, w: usize, dst: &mut [u8]) {
    let src = &src[..lanes];
    for bb in 0..w {
        let plane = &mut dst[bb * lanes..(bb + 1) * lanes];
        for (d, &v) in plane.iter_mut().zip(src) {
            *d = (v >> (8 * bb)) as u8;
        }
    }
}

pub(super) fn stream_name(dir: Dir, index: usize) -> String {
    format!("{}{index}", if dir == Dir::East { 'E' } else { 'W' })
}

/// Which scratch buffer a group read goes to.
#[derive(Clone, Copy)]
enum Scratch {
    A,
    M,
}

/// Elements of a `w`-plane group straight from the belt slots holding its planes.
#[inline]
fn belt_to_elems(belt: &super::streams::StreamBelt, slots: &[u32], lanes: usize, dst: &mut [u32]) {
    let dst = &mut dst[..lanes];
    let p = |b: usize| &belt.bytes(slots[b] as usize)[..lanes];
    match slots.len() {
        1 => {
            for (d, &b) in dst.iter_mut().zip(p(0)) {
                *d = b as u32;
            }
        }
        2 => {
            let (p0, p1) = (p(0), p(1));
            for l in 0..lanes {
                dst[l] = p0[l] as u32 | (p1[l] as u32) << 8;
            }
        }
        _ => {
            let (p0, p1, p2, p3) = (p(0), p(1), p(2), p(3));
            for l in 0..lanes {
                dst[l] = p0[l] as u32 | (p1[l] as u32) << 8 | (p2[l] as u32) << 16 | (p3[l] as u32) << 24;
            }
        }
    }
}

impl Chip {
    /// Check that the `w <= 4` streams of a group all carry a value at (pos, t) (StreamEmpty otherwise, first
    /// stream first); return the belt slots holding them, without copying anything.
    fn find_group(&self, s: Stream, w: usize, pos: usize, t: u64, q: usize, idx: usize) -> Result<[u32; 4], SimError> {
        let mut slots = [0u32; 4];
        for b in 0..w {
            let si = s.index as usize + b;
            match self.belt.find(s.dir, si, pos, t) {
                Some(slot) => slots[b] = slot as u32,
                None => {
                    return Err(self.err(
                        ErrorKind::StreamEmpty,
                        t,
                        q,
                        idx,
                        format!("no value on stream {} at position {pos}", stream_name(s.dir, si)),
                    ))
                }
            }
        }
        Ok(slots)
    }

    /// Check that the `w` streams of a group all carry a value at (pos, t); copy them (planes) into a scratch buffer.
    fn read_group(&mut self, into: Scratch, s: Stream, w: usize, pos: usize, t: u64, q: usize, idx: usize) -> Result<(), SimError> {
        let lanes = self.cfg.lanes;
        for b in 0..w {
            let si = s.index as usize + b;
            match self.belt.find(s.dir, si, pos, t) {
                Some(slot) => {
                    if !self.timing_only {
                        let buf = match into {
                            Scratch::A => &mut self.sa,
                            Scratch::M => &mut self.sm,
                        };
                        buf[b * lanes..(b + 1) * lanes].copy_from_slice(self.belt.bytes(slot));
                    }
                }
                None => {
                    return Err(self.err(
                        ErrorKind::StreamEmpty,
                        t,
                        q,
                        idx,
                        format!("no value on stream {} at position {pos}", stream_name(s.dir, si)),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Copy `w` planes from a scratch buffer into a fresh byte buffer (NONE in timing-only mode).
    fn planes_buf(&mut self, from: Scratch, w: usize) -> u32 {
        if self.timing_only {
            return NONE;
        }
        let n = w * self.cfg.lanes;
        let h = self.bytes.alloc(n);
        let src = match from {
            Scratch::A => &self.sa,
            Scratch::M => &self.sm,
        };
        self.bytes.get_mut(h).copy_from_slice(&src[..n]);
        h
    }

    /// Schedule the emit of `width` streams from `d` at `cycle`; the fast form records it on its order-free belt
    /// now instead (a conflict is found now, at the emit's cycle).
    pub(super) fn emit_at(&mut self, cycle: u64, q: usize, idx: usize, d: Stream, width: usize, buf: u32) -> Result<(), SimError> {
        let pos = self.qinfo[q].pos;
        if self.fast {
            for b in 0..width {
                let si = d.index as usize + b;
                if !self.belt.emit(d.dir, si, pos, cycle, &[]) {
                    let m = format!("stream {} at position {pos} already has a value emitted in cycle {cycle}", stream_name(d.dir, si));
                    return Err(self.err(ErrorKind::StreamConflict, cycle, q, idx, m));
                }
            }
            self.activity(cycle);
            return Ok(());
        }
        let pos = pos as u32;
        self.schedule(cycle, calendar::EMIT, q, idx, Payload::Emit { dir: d.dir, start: d.index as u16, width: width as u16, pos, buf });
        Ok(())
    }

    pub(super) fn check_addr(&self, a: i64, q: usize, idx: usize, t: u64) -> Result<usize, SimError> {
        let words = self.cfg.mem_words as i64;
        if a < 0 || a >= words {
            return Err(self.err(ErrorKind::AddressOutOfRange, t, q, idx, format!("address {a} is outside 0..{}", words - 1)));
        }
        Ok(a as usize)
    }

    pub(super) fn check_row(&self, a: i64, q: usize, idx: usize, t: u64) -> Result<usize, SimError> {
        let rows = self.cfg.mxm_acc_rows as i64;
        if a < 0 || a >= rows {
            return Err(self.err(ErrorKind::AddressOutOfRange, t, q, idx, format!("accumulator row {a} is outside 0..{}", rows - 1)));
        }
        Ok(a as usize)
    }

    pub(super) fn use_port(&mut self, slice: usize, bank: usize, t: u64, q: usize, idx: usize) -> Result<(), SimError> {
        if !self.mem[slice].use_port(bank, t) {
            let name = self.qinfo[slice].name;
            return Err(self.err(ErrorKind::BankConflict, t, q, idx, format!("bank {bank} of {name} is already used in cycle {t}")));
        }
        Ok(())
    }

    /// Decode the 2-byte map group in `sm` into u16 lanes (stored in `ub`).
    fn map_from_sm(&mut self) {
        let lanes = self.cfg.lanes;
        for l in 0..lanes {
            self.ub[l] = self.sm[l] as u32 | (self.sm[lanes + l] as u32) << 8;
        }
    }

    /// Fetch a VXM source operand into `ua` (first) or `ub` (second) as element bits.
    fn alu_operand(&mut self, second: bool, o: Operand, t: DType, q: usize, idx: usize, now: u64) -> Result<(), SimError> {
        let lanes = self.cfg.lanes;
        let pos = self.qinfo[q].pos;
        match o {
            Operand::Stream(s) => {
                let w = t.width();
                let slots = self.find_group(s, w, pos, now, q, idx)?;
                if !self.timing_only {
                    let dst = if second { &mut self.ub } else { &mut self.ua };
                    belt_to_elems(&self.belt, &slots[..w], lanes, dst);
                }
            }
            Operand::Reg(r) => {
                let r = r as usize;
                if self.reg_tag[r].is_none() {
                    return Err(self.err(ErrorKind::RegisterEmpty, now, q, idx, format!("register R{r} has never been written")));
                }
                if !self.timing_only {
                    let dst = if second { &mut self.ub } else { &mut self.ua };
                    dst.copy_from_slice(&self.reg_vals[r * lanes..(r + 1) * lanes]);
                }
            }
            Operand::Imm(bits) => {
                if !self.timing_only {
                    let dst = if second { &mut self.ub } else { &mut self.ua };
                    dst.fill(bits);
                }
            }
        }
        Ok(())
    }

    /// Issue one instruction of queue `q` (index `idx`, REPEAT address offset `delta`) at cycle `t`.
    pub(super) fn exec(&mut self, q: usize, idx: usize, ins: &Instr, delta: i64, t: u64) -> Result<(), SimError> {
        let c = &self.cfg;
        let lanes = c.lanes;
        let pos = self.qinfo[q].pos;
        let unit = self.qinfo[q].unit_index;
        let (rl, wl) = (c.mem_read_latency, c.mem_write_latency);
        match *ins {
            Instr::Nop(_) | Instr::Repeat { .. } => {}
            Instr::Sync | Instr::Ifetch => self.stats.busy.icu += 1,
            Instr::Deskew => {
                self.stats.busy.icu += 1;
                self.resume_at = self.deskew_resume(t);
            }
            Instr::RuntimeDeskew(d) => {
                self.stats.busy.icu += 1;
                self.resume_at = self.runtime_deskew_resume(t, d as u64).map_err(|m| self.err(ErrorKind::DriftOverrun, t, q, idx, m))?;
            }
            Instr::Notify => {
                self.stats.busy.icu += 1;
                self.notify = Some(t);
            }
            Instr::Config(mask) => {
                self.stats.busy.icu += 1;
                let queue = self.qinfo[q].name.to_string();
                self.stats.configs.push(super::ConfigRecord { cycle: t, queue, mask });
            }
            Instr::Read { addr, s } => {
                let a = self.check_addr(addr as i64 + delta, q, idx, t)?;
                let bank = self.mem[unit].bank(a);
                self.use_port(unit, bank, t, q, idx)?;
                self.stats.busy.mem += 1;
                self.stats.events.mem_read_vectors += 1;
                if self.has_data() && self.mem_commit_at[unit] <= t && wl >= rl {
                    // No commit to this slice is in flight, and none issued later can land before the emit: the
                    // emit may copy the vector straight from memory then.
                    let p = self.qinfo[q].pos as u32;
                    let payload = Payload::EmitMem { dir: s.dir, stream: s.index as u16, pos: p, slice: unit as u32, addr: a as u32 };
                    self.schedule(t + rl, calendar::EMIT, q, idx, payload);
                } else {
                    let buf = if self.has_data() {
                        let h = self.bytes.alloc(lanes);
                        self.mem[unit].read(a, self.bytes.get_mut(h));
                        h
                    } else {
                        NONE
                    };
                    self.emit_at(t + rl, q, idx, s, 1, buf)?;
                }
            }
            Instr::Write { addr, s } => {
                let a = self.check_addr(addr as i64 + delta, q, idx, t)?;
                let slot = self.find_group(s, 1, pos, t, q, idx)?[0] as usize;
                self.stats.busy.mem += 1;
                self.stats.events.mem_write_vectors += 1;
                let buf = if self.has_data() {
                    let h = self.bytes.alloc(lanes);
                    let (bytes, belt) = (&mut self.bytes, &self.belt);
                    bytes.get_mut(h).copy_from_slice(&belt.bytes(slot)[..lanes]);
                    h
                } else {
                    NONE
                };
                self.mem_commit_at[unit] = self.mem_commit_at[unit].max(t + wl);
                self.schedule(t + wl, calendar::MEM_COMMIT, q, idx, Payload::MemWrite { slice: unit as u32, addr: a as u32, buf });
            }
            Instr::Gather { s, map } => {
                self.read_group(Scratch::M, map, 2, pos, t, q, idx)?;
                self.use_port(unit, 0, t, q, idx)?;
                self.use_port(unit, 1, t, q, idx)?;
                self.stats.busy.mem += 2;
                self.stats.events.mem_read_vectors += 1;
                let buf = if self.has_data() {
                    self.map_from_sm();
                    let h = self.bytes.alloc(lanes);
                    self.mem[unit].gather(&self.ub, self.bytes.get_mut(h));
                    h
                } else {
                    NONE
                };
                self.emit_at(t + rl, q, idx, s, 1, buf)?;
            }
            Instr::Scatter { s, map } => {
                self.read_group(Scratch::A, s, 1, pos, t, q, idx)?;
                self.read_group(Scratch::M, map, 2, pos, t, q, idx)?;
                self.stats.busy.mem += 2;
                self.stats.events.mem_write_vectors += 1;
                let buf = if self.has_data() {
                    let h = self.bytes.alloc(3 * lanes);
                    let b = self.bytes.get_mut(h);
                    b[..lanes].copy_from_slice(&self.sa[..lanes]);
                    b[lanes..3 * lanes].copy_from_slice(&self.sm[..2 * lanes]);
                    h
                } else {
                    NONE
                };
                self.mem_commit_at[unit] = self.mem_commit_at[unit].max(t + wl);
                self.schedule(t + wl, calendar::MEM_COMMIT, q, idx, Payload::MemScatter { slice: unit as u32, buf });
            }
            Instr::Alu { op, t: ty, out, dst, a, b } => {
                let lat = vxm::latency(op, c);
                self.alu_operand(false, a, ty, q, idx, t)?;
                if let Some(b) = b {
                    self.alu_operand(true, b, ty, q, idx, t)?;
                }
                self.stats.busy.vxm += 1;
                self.stats.events.vxm_transcendental_ops += vxm::is_transcendental(op) as u64;
                let f32_tag = vxm::register_tag(out) == DType::F32;
                let (reg, ebuf) = if self.has_data() {
                    vxm::compute(op, ty, out, &self.ua, &self.ub, &mut self.uo);
                    let r = self.words.alloc(lanes);
                    vxm::widen_slice(out, &self.uo, self.words.get_mut(r));
                    let e = if dst.is_some() {
                        let w = out.width();
                        let h = self.bytes.alloc(w * lanes);
                        elems_to_planes(&self.uo, lanes, w, self.bytes.get_mut(h));
                        h
                    } else {
                        NONE
                    };
                    (r, e)
                } else {
                    (NONE, NONE)
                };
                self.schedule(t + lat, calendar::REG_UPDATE, q, idx, Payload::Reg { alu: unit as u32, f32_tag, buf: reg });
                if let Some(d) = dst {
                    self.emit_at(t + lat, q, idx, d, out.width(), ebuf)?;
                }
            }
            Instr::Lw { t: ty, s, n } => {
                let w = ty.width();
                let n = n as usize;
                // Operands first: every stream of every group.
                for g in 0..n {
                    let gs = Stream { dir: s.dir, index: s.index + (g * w) as u8 };
                    for bb in 0..w {
                        let si = gs.index as usize + bb;
                        if self.belt.find(s.dir, si, pos, t).is_none() {
                            return Err(self.err(ErrorKind::StreamEmpty, t, q, idx, format!("no value on stream {} at position {pos}", stream_name(s.dir, si))));
                        }
                    }
                }
                let plane = &self.planes[unit];
                if let Some(bt) = plane.buf_type {
                    if bt != ty && plane.buf_rows > 0 {
                        return Err(self.err(ErrorKind::TypeMismatch, t, q, idx, format!("the weight buffer holds {} rows", bt.name())));
                    }
                }
                if plane.buf_rows + n > self.cfg.mxm_dim {
                    let m = format!("the weight buffer would hold {} rows, more than {}", plane.buf_rows + n, self.cfg.mxm_dim);
                    return Err(self.err(ErrorKind::WeightOverflow, t, q, idx, m));
                }
                self.stats.events.mxm_weight_vectors += (n * w) as u64;
                for g in 0..n {
                    let gs = Stream { dir: s.dir, index: s.index + (g * w) as u8 };
                    let slots = self.find_group(gs, w, pos, t, q, idx)?;
                    let (planes, belt) = (&mut self.planes, &self.belt);
                    let hi = if w > 1 { belt.bytes(slots[1] as usize) } else { &[] };
                    planes[unit].load_row(ty, belt.bytes(slots[0] as usize), hi);
                }
            }
            Instr::Iw => {
                if self.fast {
                    self.check_iw(unit, t, q, idx)?;
                }
                self.planes[unit].start_install();
                self.schedule(t + c.mxm_install_latency, calendar::INSTALL, q, idx, Payload::Install { plane: unit as u32 });
            }
            Instr::Abc { t: ty, s, row, add } => {
                let mxm_latency = c.mxm_latency();
                let busy = if ty == DType::F16 { c.mxm_fp16_cycles_per_vector } else { 1 };
                let slots = self.find_group(s, ty.width(), pos, t, q, idx)?;
                let r = self.check_row(row as i64 + delta, q, idx, t)?;
                let plane = &self.planes[unit];
                if t < plane.busy_until {
                    let m = format!("the plane is busy until cycle {}", plane.busy_until);
                    return Err(self.err(ErrorKind::UnitBusy, t, q, idx, m));
                }
                if let Some(it) = plane.installed_type {
                    if it != ty {
                        return Err(self.err(ErrorKind::TypeMismatch, t, q, idx, format!("the installed weights are {}", it.name())));
                    }
                }
                self.planes[unit].busy_until = t + busy;
                self.stats.busy.mxm += busy;
                if ty == DType::F16 {
                    self.stats.events.mxm_fp16_vectors += 1;
                } else {
                    self.stats.events.mxm_int8_vectors += 1;
                }
                let y = if self.has_data() && ty == DType::F16 {
                    // The plane keeps the product (computed now or batched later); `y` is its slot.
                    let (planes, belt) = (&mut self.planes, &self.belt);
                    planes[unit].abc_f16(belt.bytes(slots[0] as usize), belt.bytes(slots[1] as usize))
                } else if self.has_data() {
                    // int8/uint8: likewise batched (exact); `y` is the slot.
                    let (planes, belt) = (&mut self.planes, &self.belt);
                    planes[unit].abc_int(ty, belt.bytes(slots[0] as usize))
                } else {
                    NONE
                };
                if self.fast {
                    self.acc_update(q, idx, r, add, ty, t + mxm_latency)?;
                } else {
                    let payload = Payload::Acc { plane: unit as u32, row: r as u32, add, f16: ty == DType::F16, y };
                    self.schedule(t + mxm_latency, calendar::ACC_UPDATE, q, idx, payload);
                }
            }
            Instr::Acc { t: ty, row, s } => {
                let r = self.check_row(row as i64 + delta, q, idx, t)?;
                if ty == DType::I32 && self.planes[unit].row_kind[r] == RowKind::F16 {
                    return Err(self.err(ErrorKind::TypeMismatch, t, q, idx, format!("ACC.i32 of row {r}, which holds f16 sums")));
                }
                let buf = if self.has_data() {
                    self.planes[unit].read_row(r, ty, &mut self.uo);
                    let h = self.bytes.alloc(4 * lanes);
                    elems_to_planes(&self.uo, lanes, 4, self.bytes.get_mut(h));
                    h
                } else {
                    NONE
                };
                self.emit_at(t + c.mxm_acc_latency, q, idx, s, 4, buf)?;
            }
            Instr::Shift { d, s, n } => {
                let lat = c.sxm_latency + c.superlanes as u64 - 1;
                self.read_group(Scratch::A, s, 1, pos, t, q, idx)?;
                self.stats.busy.sxm += 1;
                let buf = self.sxm_out(1, |sa, _, out| sxm::shift(&sa[..out.len()], n, out));
                self.emit_at(t + lat, q, idx, d, 1, buf)?;
            }
            Instr::Permute { d, s, map } => {
                let lat = c.sxm_latency + c.superlanes as u64 - 1;
                self.read_group(Scratch::A, s, 1, pos, t, q, idx)?;
                self.read_group(Scratch::M, map, 2, pos, t, q, idx)?;
                self.stats.busy.sxm += 1;
                let buf = self.sxm_out(1, |sa, sm, out| sxm::permute(&sa[..out.len()], &sm[..2 * out.len()], out));
                self.emit_at(t + lat, q, idx, d, 1, buf)?;
            }
            Instr::Distribute { d, s, map } => {
                let lat = c.sxm_latency;
                self.read_group(Scratch::A, s, 1, pos, t, q, idx)?;
                self.stats.busy.sxm += 1;
                let buf = self.sxm_out(1, |sa, _, out| sxm::distribute(&sa[..out.len()], &map, out));
                self.emit_at(t + lat, q, idx, d, 1, buf)?;
            }
            Instr::Transpose { d, s } => {
                let lat = c.sxm_latency;
                self.read_group(Scratch::A, s, 16, pos, t, q, idx)?;
                self.stats.busy.sxm += 1;
                let lanes = self.cfg.lanes;
                let buf = self.sxm_out(16, |sa, _, out| sxm::transpose(&sa[..16 * lanes], lanes, out));
                self.emit_at(t + lat, q, idx, d, 16, buf)?;
            }
            Instr::Send { s } => {
                self.read_group(Scratch::A, s, 1, pos, t, q, idx)?;
                let Some(peer) = self.links[unit].peer else {
                    return Err(self.err(ErrorKind::LinkUnconnected, t, q, idx, format!("link {unit} is not connected")));
                };
                // Every link, loopback or between chips, sends one flit per interval: a SEND before the previous
                // flit has left is `LinkBusy` (links have no back-pressure).
                let (interval_ticks, to) = match peer {
                    Peer::Local { to, interval_ticks, .. } => (interval_ticks, format!("loopback to link {to}")),
                    Peer::Remote { chip, link, interval_ticks } => (interval_ticks, format!("to chip {chip} link {link}")),
                };
                let now = self.clock.time(t);
                let free = self.links[unit].busy_until;
                if now < free {
                    let c = free.div_ceil(self.clock.period);
                    let m = format!("link {unit} ({to}) is still sending the previous vector until cycle {c}; links have no back-pressure");
                    return Err(self.err(ErrorKind::LinkBusy, t, q, idx, m));
                }
                self.links[unit].busy_until = now + interval_ticks;
                match peer {
                    Peer::Local { to, latency, .. } => {
                        self.stats.busy.c2c += 1;
                        self.links[unit].sent += 1;
                        let buf = self.planes_buf(Scratch::A, 1);
                        let payload = Payload::Arrive { link: to as u32, buf, origin: NONE };
                        self.schedule(t + latency, calendar::ARRIVE, q, idx, payload);
                    }
                    Peer::Remote { .. } => {
                        self.links[unit].sent += 1;
                        self.stats.busy.c2c += 1;
                        let data = if self.has_data() { self.sa[..lanes].to_vec() } else { Vec::new() };
                        self.outbox.push(Outgoing { link: unit, cycle: t, queue: q, instr: idx, data });
                    }
                }
            }
            Instr::Recv { s } => {
                let Some(a) = self.links[unit].rx.pop_front() else {
                    let from = match self.links[unit].peer {
                        Some(Peer::Remote { chip, link, .. }) => format!(" from chip {chip} link {link}"),
                        _ => String::new(),
                    };
                    return Err(self.err(ErrorKind::LinkEmpty, t, q, idx, format!("no vector has arrived on link {unit}{from}")));
                };
                let lat = c.c2c_recv_latency;
                self.free_origin(a.origin);
                self.stats.busy.c2c += 1;
                self.emit_at(t + lat, q, idx, s, 1, a.buf)?;
            }
        }
        Ok(())
    }

    /// Run an SXM kernel from the scratch buffers into a fresh `w`-plane buffer (NONE in timing-only mode).
    fn sxm_out(&mut self, w: usize, f: impl FnOnce(&[u8], &[u8], &mut [u8])) -> u32 {
        if self.timing_only {
            return NONE;
        }
        let lanes = self.cfg.lanes;
        let h = self.bytes.alloc(w * lanes);
        let (bytes, sa, sm) = (&mut self.bytes, &self.sa, &self.sm);
        let out = bytes.get_mut(h);
        if w == 1 {
            f(sa, sm, &mut out[..lanes]);
        } else {
            f(sa, sm, out);
        }
        h
    }

    /// Land a scheduled effect (steps 1 and 3 of the cycle order).
    pub(super) fn apply(&mut self, ev: Event) -> Result<(), SimError> {
        let t = ev.cycle;
        let q = ev.queue as usize;
        let idx = ev.instr as usize;
        let lanes = self.cfg.lanes;
        let p = ev.payload;
        match p {
            Payload::MemWrite { slice, addr, buf } => {
                let s = slice as usize;
                let bank = self.mem[s].bank(addr as usize);
                self.use_port(s, bank, t, q, idx)?;
                if buf != NONE {
                    let (mem, bytes) = (&mut self.mem, &self.bytes);
                    mem[s].write(addr as usize, bytes.get(buf));
                }
            }
            Payload::MemScatter { slice, buf } => {
                let s = slice as usize;
                self.use_port(s, 0, t, q, idx)?;
                self.use_port(s, 1, t, q, idx)?;
                if buf != NONE {
                    let (mem, b) = (&mut self.mem, self.bytes.get(buf));
                    mem[s].scatter(&b[lanes..3 * lanes], &b[..lanes]);
                }
            }
            Payload::Acc { plane, row, add, f16, y } => {
                let kind = if f16 { RowKind::F16 } else { RowKind::Int };
                // With data, `y` is the product's slot in the plane (f16 or int); without, only the kind is kept.
                let p = &mut self.planes[plane as usize];
                let ok = if y != NONE { p.update_slot(row as usize, add, y) } else { p.update(row as usize, add, kind, &[], &[]) };
                if !ok {
                    let other = if f16 { "integer" } else { "f16" };
                    return Err(self.err(ErrorKind::TypeMismatch, t, q, idx, format!("ABC + onto row {row}, which holds {other} sums")));
                }
            }
            Payload::Install { plane } => {
                self.planes[plane as usize].finish_install();
                if self.fast {
                    self.check_install(plane as usize, t)?;
                }
            }
            Payload::Reg { alu, f32_tag, buf } => {
                let a = alu as usize;
                self.reg_tag[a] = Some(if f32_tag { DType::F32 } else { DType::I32 });
                if buf != NONE {
                    let (rv, words) = (&mut self.reg_vals, &self.words);
                    rv[a * lanes..(a + 1) * lanes].copy_from_slice(words.get(buf));
                }
            }
            Payload::Arrive { link, buf, origin } => {
                let cap = self.cfg.c2c_rx_buffer_vectors;
                let l = link as usize;
                if self.links[l].rx.len() >= cap {
                    let m = format!("the receive buffer of link {l} already holds {cap} vectors");
                    if origin != NONE {
                        return Err(self.remote_err(ErrorKind::LinkOverflow, t, origin, m));
                    }
                    return Err(self.err(ErrorKind::LinkOverflow, t, q, idx, m));
                }
                let (queue, instr) = match origin {
                    NONE => (q as u32, idx as u32),
                    o => (self.origins[o as usize].queue, self.origins[o as usize].instr),
                };
                self.links[l].rx.push_back(super::c2c::Arrived { buf, queue, instr, cycle: t, origin });
                return Ok(()); // the buffer now belongs to the receive queue
            }
            Payload::EmitMem { dir, stream, pos, slice, addr } => {
                let (mem, belt, zeros) = (&self.mem, &mut self.belt, &self.zeros);
                let data = mem[slice as usize].word(addr as usize).unwrap_or(zeros);
                if !belt.emit(dir, stream as usize, pos as usize, t, data) {
                    let m = format!("stream {} at position {pos} already has a value emitted in cycle {t}", stream_name(dir, stream as usize));
                    return Err(self.err(ErrorKind::StreamConflict, t, q, idx, m));
                }
            }
            Payload::Emit { dir, start, width, pos, buf } => {
                for b in 0..width as usize {
                    let si = start as usize + b;
                    let data: &[u8] = if buf != NONE { &self.bytes.get(buf)[b * lanes..(b + 1) * lanes] } else { &[] };
                    if !self.belt.emit(dir, si, pos as usize, t, data) {
                        let m = format!("stream {} at position {pos} already has a value emitted in cycle {t}", stream_name(dir, si));
                        return Err(self.err(ErrorKind::StreamConflict, t, q, idx, m));
                    }
                }
            }
        }
        self.release(&p);
        Ok(())
    }
}
