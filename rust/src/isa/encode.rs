//! Binary encoding: one little-endian u128 word per instruction (opcode in the low 8 bits, fields packed above it),
//! and a program file = header, queues (code, count, words), then `.init`, `.dump`, `.link` records.
//! Decoding validates everything: a corrupt binary is an `AsmError` (line 0), never a panic.

use super::*;
use crate::error::AsmError;

const MAGIC: &[u8; 7] = b"LPUSIM\0";
const VERSION: u8 = 1;

struct Bits {
    w: u128,
    at: u32,
}

impl Bits {
    fn new(op: u8) -> Bits {
        Bits { w: op as u128, at: 8 }
    }
    fn put(&mut self, v: u64, n: u32) {
        debug_assert!(self.at + n <= 128);
        let m = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        self.w |= ((v & m) as u128) << self.at;
        self.at += n;
    }
    fn stream(&mut self, s: Stream) {
        self.put((s.dir == Dir::West) as u64, 1);
        self.put(s.index as u64, 8);
    }
    fn dtype(&mut self, t: DType) {
        self.put(DType::ALL.iter().position(|x| *x == t).unwrap_or(0) as u64, 3);
    }
    fn operand(&mut self, o: Option<Operand>) {
        match o {
            Some(Operand::Stream(s)) => {
                self.put(0, 2);
                self.put((s.dir == Dir::West) as u64 | (s.index as u64) << 1, 32);
            }
            Some(Operand::Reg(r)) => {
                self.put(1, 2);
                self.put(r as u64, 32);
            }
            Some(Operand::Imm(b)) => {
                self.put(2, 2);
                self.put(b as u64, 32);
            }
            None => {
                self.put(3, 2);
                self.put(0, 32);
            }
        }
    }
}

struct Unbits {
    w: u128,
    at: u32,
}

impl Unbits {
    fn get(&mut self, n: u32) -> u64 {
        let m = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let v = (self.w >> self.at) as u64 & m;
        self.at += n;
        v
    }
    fn stream(&mut self) -> Stream {
        let dir = if self.get(1) == 1 { Dir::West } else { Dir::East };
        Stream { dir, index: self.get(8) as u8 }
    }
    fn dtype(&mut self) -> Result<DType, String> {
        DType::ALL.get(self.get(3) as usize).copied().ok_or_else(|| "bad type code".to_string())
    }
    fn operand(&mut self) -> Result<Option<Operand>, String> {
        let k = self.get(2);
        let v = self.get(32);
        Ok(match k {
            0 => {
                if v >> 9 != 0 {
                    return Err("bad stream operand".into());
                }
                Some(Operand::Stream(Stream { dir: if v & 1 == 1 { Dir::West } else { Dir::East }, index: (v >> 1) as u8 }))
            }
            1 => {
                if v > 255 {
                    return Err("bad register operand".into());
                }
                Some(Operand::Reg(v as u8))
            }
            2 => Some(Operand::Imm(v as u32)),
            _ => None,
        })
    }
}

/// Encode one instruction.
pub fn encode_instr(i: &Instr) -> u128 {
    let mut b;
    match i {
        Instr::Nop(n) => {
            b = Bits::new(0);
            b.put(*n as u64, 32);
        }
        Instr::Repeat { n, d, s } => {
            b = Bits::new(1);
            b.put(*n as u64, 32);
            b.put(*d as u64, 32);
            b.put(*s as u32 as u64, 32);
        }
        Instr::Sync => b = Bits::new(2),
        Instr::Notify => b = Bits::new(3),
        Instr::Ifetch => b = Bits::new(4),
        Instr::Config(m) => {
            b = Bits::new(5);
            b.put(*m as u64, 32);
        }
        Instr::Deskew => b = Bits::new(6),
        Instr::RuntimeDeskew(t) => {
            b = Bits::new(7);
            b.put(*t as u64, 32);
        }
        Instr::Read { addr, s } | Instr::Write { addr, s } => {
            b = Bits::new(if matches!(i, Instr::Read { .. }) { 10 } else { 11 });
            b.put(*addr as u64, 32);
            b.stream(*s);
        }
        Instr::Gather { s, map } | Instr::Scatter { s, map } => {
            b = Bits::new(if matches!(i, Instr::Gather { .. }) { 12 } else { 13 });
            b.stream(*s);
            b.stream(*map);
        }
        Instr::Alu { op, t, out, dst, a, b: src_b } => {
            b = Bits::new(20);
            // The operation's position in `AluOp::ALL`: its low 5 bits here, the bit above them after the
            // operands (operations 32.. came later; every older word keeps its encoding, with that bit 0).
            let code = AluOp::ALL.iter().position(|x| x == op).unwrap_or(0) as u64;
            b.put(code & 0x1f, 5);
            b.dtype(*t);
            b.dtype(*out);
            b.put(dst.is_some() as u64, 1);
            b.stream(dst.unwrap_or(Stream { dir: Dir::East, index: 0 }));
            b.operand(Some(*a));
            b.operand(*src_b);
            b.put(code >> 5, 1);
        }
        Instr::Lw { t, s, n } => {
            b = Bits::new(30);
            b.dtype(*t);
            b.stream(*s);
            b.put(*n as u64, 16);
        }
        Instr::Iw => b = Bits::new(31),
        Instr::Abc { t, s, row, add } => {
            b = Bits::new(32);
            b.dtype(*t);
            b.stream(*s);
            b.put(*row as u64, 32);
            b.put(*add as u64, 1);
        }
        Instr::Acc { t, row, s } => {
            b = Bits::new(33);
            b.dtype(*t);
            b.put(*row as u64, 32);
            b.stream(*s);
        }
        Instr::Shift { d, s, n } => {
            b = Bits::new(40);
            b.stream(*d);
            b.stream(*s);
            b.put(*n as u32 as u64, 32);
        }
        Instr::Permute { d, s, map } => {
            b = Bits::new(41);
            b.stream(*d);
            b.stream(*s);
            b.stream(*map);
        }
        Instr::Distribute { d, s, map } => {
            b = Bits::new(42);
            b.stream(*d);
            b.stream(*s);
            for m in map {
                b.put(if *m == 255 { 16 } else { *m as u64 }, 5);
            }
        }
        Instr::Transpose { d, s } => {
            b = Bits::new(43);
            b.stream(*d);
            b.stream(*s);
        }
        Instr::Send { s } => {
            b = Bits::new(50);
            b.stream(*s);
        }
        Instr::Recv { s } => {
            b = Bits::new(51);
            b.stream(*s);
        }
    }
    b.w
}

/// Decode one instruction word.
pub fn decode_instr(w: u128) -> Result<Instr, String> {
    let mut u = Unbits { w, at: 8 };
    let op = (w & 0xff) as u8;
    let i = match op {
        0 => Instr::Nop(u.get(32) as u32),
        1 => Instr::Repeat { n: u.get(32) as u32, d: u.get(32) as u32, s: u.get(32) as u32 as i32 },
        2 => Instr::Sync,
        3 => Instr::Notify,
        4 => Instr::Ifetch,
        5 => Instr::Config(u.get(32) as u32),
        6 => Instr::Deskew,
        7 => Instr::RuntimeDeskew(u.get(32) as u32),
        10 | 11 => {
            let addr = u.get(32) as u32;
            let s = u.stream();
            if op == 10 {
                Instr::Read { addr, s }
            } else {
                Instr::Write { addr, s }
            }
        }
        12 | 13 => {
            let s = u.stream();
            let map = u.stream();
            if op == 12 {
                Instr::Gather { s, map }
            } else {
                Instr::Scatter { s, map }
            }
        }
        20 => {
            let low = u.get(5);
            let t = u.dtype()?;
            let out = u.dtype()?;
            let has_dst = u.get(1) == 1;
            let d = u.stream();
            let a = u.operand()?.ok_or("missing operand")?;
            let b = u.operand()?;
            let code = low | u.get(1) << 5;
            let op = *AluOp::ALL.get(code as usize).ok_or("bad VXM operation code")?;
            Instr::Alu { op, t, out, dst: has_dst.then_some(d), a, b }
        }
        30 => Instr::Lw { t: u.dtype()?, s: u.stream(), n: u.get(16) as u16 },
        31 => Instr::Iw,
        32 => Instr::Abc { t: u.dtype()?, s: u.stream(), row: u.get(32) as u32, add: u.get(1) == 1 },
        33 => Instr::Acc { t: u.dtype()?, row: u.get(32) as u32, s: u.stream() },
        40 => Instr::Shift { d: u.stream(), s: u.stream(), n: u.get(32) as u32 as i32 },
        41 => Instr::Permute { d: u.stream(), s: u.stream(), map: u.stream() },
        42 => {
            let d = u.stream();
            let s = u.stream();
            let mut map = [0u8; 16];
            for m in map.iter_mut() {
                let v = u.get(5);
                *m = match v {
                    0..=15 => v as u8,
                    16 => 255,
                    _ => return Err("bad DISTRIBUTE map entry".into()),
                };
            }
            Instr::Distribute { d, s, map }
        }
        43 => Instr::Transpose { d: u.stream(), s: u.stream() },
        50 => Instr::Send { s: u.stream() },
        51 => Instr::Recv { s: u.stream() },
        _ => return Err(format!("unknown opcode {op}")),
    };
    if u.at < 128 && w >> u.at != 0 {
        return Err(format!("opcode {op}: unused bits are set"));
    }
    i.check()?;
    if encode_instr(&i) != w {
        return Err(format!("opcode {op}: not a canonical encoding"));
    }
    Ok(i)
}

fn dtype_code(t: DType) -> u8 {
    DType::ALL.iter().position(|x| *x == t).unwrap_or(0) as u8
}

/// Encode a whole program.
pub fn encode_program(p: &Program) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let u32le = |o: &mut Vec<u8>, v: u32| o.extend_from_slice(&v.to_le_bytes());
    u32le(&mut out, p.queues.len() as u32);
    for q in &p.queues {
        u32le(&mut out, q.name.code());
        u32le(&mut out, q.instrs.len() as u32);
        for i in &q.instrs {
            out.extend_from_slice(&encode_instr(i).to_le_bytes());
        }
    }
    u32le(&mut out, p.inits.len() as u32);
    for i in &p.inits {
        u32le(&mut out, i.slice.code());
        u32le(&mut out, i.addr);
        out.push(dtype_code(i.dtype));
        match &i.values {
            InitValues::Fill(v) => {
                out.push(1);
                u32le(&mut out, 1);
                u32le(&mut out, *v);
            }
            InitValues::Lanes(vs) => {
                out.push(0);
                u32le(&mut out, vs.len() as u32);
                for v in vs {
                    u32le(&mut out, *v);
                }
            }
        }
    }
    u32le(&mut out, p.dumps.len() as u32);
    for d in &p.dumps {
        u32le(&mut out, d.slice.code());
        u32le(&mut out, d.addr);
        out.push(dtype_code(d.dtype));
        u32le(&mut out, d.n);
    }
    u32le(&mut out, p.links.len() as u32);
    for l in &p.links {
        out.extend_from_slice(&l.from.to_le_bytes());
        out.extend_from_slice(&l.to.to_le_bytes());
        out.extend_from_slice(&l.latency.to_le_bytes());
    }
    out
}

struct Reader<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AsmError> {
        if self.d.len() - self.at < n {
            return Err(AsmError::binary("truncated"));
        }
        let s = &self.d[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, AsmError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, AsmError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or([0; 2])))
    }
    fn u32(&mut self) -> Result<u32, AsmError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Result<u64, AsmError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or([0; 8])))
    }
    fn u128(&mut self) -> Result<u128, AsmError> {
        Ok(u128::from_le_bytes(self.take(16)?.try_into().unwrap_or([0; 16])))
    }
    fn count(&mut self, item_bytes: usize) -> Result<usize, AsmError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_bytes) > self.d.len() - self.at {
            return Err(AsmError::binary("count larger than the data"));
        }
        Ok(n)
    }
    fn slice(&mut self) -> Result<QueueName, AsmError> {
        match QueueName::from_code(self.u32()?) {
            Some(q @ QueueName::Mem { .. }) => Ok(q),
            _ => Err(AsmError::binary("bad MEM slice code")),
        }
    }
    fn dtype(&mut self) -> Result<DType, AsmError> {
        DType::ALL.get(self.u8()? as usize).copied().ok_or_else(|| AsmError::binary("bad type code"))
    }
}

/// Decode a program binary (validated like assembled text).
pub fn decode_program(data: &[u8]) -> Result<Program, AsmError> {
    let mut r = Reader { d: data, at: 0 };
    if r.take(7)? != MAGIC {
        return Err(AsmError::binary("not an lpusim program (bad magic)"));
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(AsmError::binary(format!("unsupported version {v}")));
    }
    let mut p = Program::default();
    let nq = r.count(8)?;
    for _ in 0..nq {
        let code = r.u32()?;
        let name = QueueName::from_code(code).ok_or_else(|| AsmError::binary(format!("bad queue code {code:#x}")))?;
        if p.queues.iter().any(|q| q.name == name) {
            return Err(AsmError::binary(format!("queue {name} appears twice")));
        }
        let n = r.count(16)?;
        let mut instrs = Vec::with_capacity(n);
        for k in 0..n {
            let w = r.u128()?;
            instrs.push(decode_instr(w).map_err(|m| AsmError::binary(format!("{name} #{k}: {m}")))?);
        }
        p.queues.push(QueueProgram { name, instrs });
    }
    p.queues.sort_by_key(|q| q.name);
    let ni = r.count(14)?;
    for _ in 0..ni {
        let slice = r.slice()?;
        let addr = r.u32()?;
        let dtype = r.dtype()?;
        let fill = r.u8()?;
        let n = r.count(4)?;
        let mut vs = Vec::with_capacity(n);
        for _ in 0..n {
            vs.push(r.u32()?);
        }
        if vs.iter().any(|b| !fits_width(dtype, *b)) {
            return Err(AsmError::binary("an .init value does not fit its type"));
        }
        let values = match fill {
            1 if n == 1 => InitValues::Fill(vs[0]),
            0 if n >= 1 => InitValues::Lanes(vs),
            _ => return Err(AsmError::binary("bad .init record")),
        };
        p.inits.push(Init { slice, addr, dtype, values });
    }
    let nd = r.count(13)?;
    for _ in 0..nd {
        let d = Dump { slice: r.slice()?, addr: r.u32()?, dtype: r.dtype()?, n: r.u32()? };
        if d.n == 0 {
            return Err(AsmError::binary("a .dump of no vectors"));
        }
        p.dumps.push(d);
    }
    let nl = r.count(12)?;
    for _ in 0..nl {
        let l = Link { from: r.u16()?, to: r.u16()?, latency: r.u64()? };
        // the assembler's limits: every decoded program disassembles to text that assembles
        if l.latency == 0 || l.latency > MAX_LINK_LATENCY || p.links.iter().any(|x| x.from == l.from) {
            return Err(AsmError::binary("bad .link record"));
        }
        p.links.push(l);
    }
    if r.at != data.len() {
        return Err(AsmError::binary("trailing bytes"));
    }
    if let Err((qi, k, m)) = p.check() {
        return Err(AsmError::binary(format!("{} #{k}: {m}", p.queues[qi].name)));
    }
    Ok(p)
}
