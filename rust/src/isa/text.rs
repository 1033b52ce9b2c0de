//! The assembly text format (docs/isa.md section 6): parse to a `Program`, print canonical text.
//!
//! Errors name the 1-based line and its text. Printing is canonical (upper-case mnemonics, lower-case types,
//! decimal integers, one space after commas, queues in index order, comments dropped), so
//! `print(parse(print(parse(t))))` equals `print(parse(t))`.

use super::*;
use crate::error::AsmError;
use crate::numerics::{f64_to_f16, F16_NAN, F32_NAN};
use std::collections::BTreeMap;

/// Parse an integer in decimal or `0x` hex, with an optional sign.
pub fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok().and_then(|v| i64::try_from(v).ok())?
    } else {
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) || body.len() > 18 {
            return None;
        }
        body.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

fn is_hex(s: &str) -> bool {
    let s = s.trim();
    s.starts_with("0x") || s.starts_with("0X")
}

/// Parse a value of type `t` to its bits (zero-extended into u32). See docs/isa.md section 9.10.
pub fn parse_value(t: DType, s: &str) -> Result<u32, String> {
    let s = s.trim();
    let bad = || format!("'{s}' is not a valid {} value", t.name());
    match t {
        DType::F32 | DType::F16 => {
            if is_hex(s) {
                return Err(bad());
            }
            let l = s.to_ascii_lowercase();
            let v: f64 = match l.as_str() {
                "nan" | "+nan" | "-nan" => f64::NAN,
                _ => l.parse::<f64>().map_err(|_| bad())?,
            };
            Ok(if t == DType::F32 {
                if v.is_nan() {
                    F32_NAN
                } else {
                    (v as f32).to_bits()
                }
            } else if v.is_nan() {
                F16_NAN as u32
            } else {
                f64_to_f16(v) as u32
            })
        }
        DType::I8 | DType::U8 | DType::I32 => {
            let v = parse_int(s).ok_or_else(bad)?;
            let bits = (t.width() * 8) as u32;
            let mask: u64 = if bits == 32 { 0xffff_ffff } else { (1u64 << bits) - 1 };
            if is_hex(s) {
                if v < 0 || v as u64 > mask {
                    return Err(format!("'{s}' does not fit in {} bits", bits));
                }
                return Ok(v as u32);
            }
            let (lo, hi) = match t {
                DType::I8 => (-128i64, 127i64),
                DType::U8 => (0, 255),
                _ => (i32::MIN as i64, i32::MAX as i64),
            };
            if v < lo || v > hi {
                return Err(format!("{v} is outside the {} range {lo}..{hi}", t.name()));
            }
            Ok((v as u64 & mask) as u32)
        }
    }
}

fn parse_stream(s: &str) -> Result<Stream, String> {
    let s = s.trim();
    let mut c = s.chars();
    let dir = match c.next().map(|c| c.to_ascii_uppercase()) {
        Some('E') => Dir::East,
        Some('W') => Dir::West,
        _ => return Err(format!("'{s}' is not a stream (E0..E31 or W0..W31)")),
    };
    let rest = c.as_str();
    if rest.is_empty() || rest.len() > 3 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a stream (E0..E31 or W0..W31)"));
    }
    let index: u32 = rest.parse().map_err(|_| format!("bad stream '{s}'"))?;
    if index > 255 {
        return Err(format!("stream index {index} is too large"));
    }
    Ok(Stream { dir, index: index as u8 })
}

fn int_in(s: &str, lo: i64, hi: i64, what: &str) -> Result<i64, String> {
    let v = parse_int(s).ok_or_else(|| format!("'{}' is not an integer ({what})", s.trim()))?;
    if v < lo || v > hi {
        return Err(format!("{what} {v} is outside {lo}..{hi}"));
    }
    Ok(v)
}

fn parse_operand(t: DType, s: &str) -> Result<Operand, String> {
    let s = s.trim();
    if let Some(imm) = s.strip_prefix('#') {
        return Ok(Operand::Imm(parse_value(t, imm)?));
    }
    if let Some(r) = s.strip_prefix('R').or_else(|| s.strip_prefix('r')) {
        if !r.is_empty() && r.len() <= 3 && r.bytes().all(|b| b.is_ascii_digit()) {
            let v: u32 = r.parse().unwrap_or(999);
            if v > 255 {
                return Err(format!("register index {v} is too large"));
            }
            return Ok(Operand::Reg(v as u8));
        }
    }
    parse_stream(s).map(Operand::Stream).map_err(|_| format!("'{s}' is not a stream, register (R0..) or immediate (#x)"))
}

fn want(ops: &[&str], n: usize, mn: &str) -> Result<(), String> {
    if ops.len() != n {
        return Err(format!("{mn} takes {n} operand(s), got {}", ops.len()));
    }
    Ok(())
}

/// Parse one instruction (no comment, trimmed, non-empty).
pub fn parse_instr(line: &str) -> Result<Instr, String> {
    let (mn, rest) = match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    };
    let ops: Vec<&str> = if rest.is_empty() { vec![] } else { rest.split(',').map(|s| s.trim()).collect() };
    if ops.iter().any(|o| o.is_empty()) {
        return Err("empty operand".into());
    }
    let mut parts = mn.split('.');
    let base = parts.next().unwrap_or("").to_ascii_uppercase();
    let types: Vec<&str> = parts.collect();
    let ty = |k: usize| -> Result<DType, String> {
        let s = types.get(k).ok_or_else(|| format!("{base} needs a type suffix (.i8 .u8 .f16 .i32 .f32)"))?;
        DType::parse(s).ok_or_else(|| format!("unknown type '{s}'"))
    };
    let ntypes = types.len();
    let want_types = |n: usize| -> Result<(), String> {
        if ntypes != n {
            return Err(format!("{base} takes {n} type suffix(es), got {ntypes}"));
        }
        Ok(())
    };
    let u32op = |s: &str, what: &str| int_in(s, 0, u32::MAX as i64, what).map(|v| v as u32);
    let ins = match base.as_str() {
        "NOP" => {
            want_types(0)?;
            want(&ops, 1, "NOP")?;
            Instr::Nop(int_in(ops[0], 1, u32::MAX as i64, "count")? as u32)
        }
        "REPEAT" => {
            want_types(0)?;
            if ops.len() != 2 && ops.len() != 3 {
                return Err("REPEAT takes n, d[, s]".into());
            }
            let n = int_in(ops[0], 1, u32::MAX as i64, "count")? as u32;
            let d = int_in(ops[1], 1, u32::MAX as i64, "distance")? as u32;
            let s = if ops.len() == 3 { int_in(ops[2], i32::MIN as i64, i32::MAX as i64, "stride")? as i32 } else { 1 };
            Instr::Repeat { n, d, s }
        }
        "SYNC" | "NOTIFY" | "IFETCH" | "DESKEW" | "IW" => {
            want_types(0)?;
            want(&ops, 0, &base)?;
            match base.as_str() {
                "SYNC" => Instr::Sync,
                "NOTIFY" => Instr::Notify,
                "IFETCH" => Instr::Ifetch,
                "DESKEW" => Instr::Deskew,
                _ => Instr::Iw,
            }
        }
        "RUNTIME_DESKEW" => {
            want_types(0)?;
            want(&ops, 1, "RUNTIME_DESKEW")?;
            Instr::RuntimeDeskew(int_in(ops[0], 1, u32::MAX as i64, "delay")? as u32)
        }
        "CONFIG" => {
            want_types(0)?;
            want(&ops, 1, "CONFIG")?;
            Instr::Config(u32op(ops[0], "mask")?)
        }
        "READ" | "WRITE" => {
            want_types(0)?;
            want(&ops, 2, &base)?;
            let addr = u32op(ops[0], "address")?;
            let s = parse_stream(ops[1])?;
            if base == "READ" {
                Instr::Read { addr, s }
            } else {
                Instr::Write { addr, s }
            }
        }
        "GATHER" | "SCATTER" => {
            want_types(0)?;
            want(&ops, 2, &base)?;
            let s = parse_stream(ops[0])?;
            let map = parse_stream(ops[1])?;
            if base == "GATHER" {
                Instr::Gather { s, map }
            } else {
                Instr::Scatter { s, map }
            }
        }
        "LW" => {
            want_types(1)?;
            want(&ops, 2, "LW")?;
            Instr::Lw { t: ty(0)?, s: parse_stream(ops[0])?, n: int_in(ops[1], 1, u16::MAX as i64, "row count")? as u16 }
        }
        "ABC" => {
            want_types(1)?;
            if ops.len() != 2 && ops.len() != 3 {
                return Err("ABC takes S, a[, +]".into());
            }
            let add = if ops.len() == 3 {
                if ops[2] != "+" {
                    return Err(format!("expected '+', got '{}'", ops[2]));
                }
                true
            } else {
                false
            };
            Instr::Abc { t: ty(0)?, s: parse_stream(ops[0])?, row: u32op(ops[1], "row")?, add }
        }
        "ACC" => {
            want_types(1)?;
            want(&ops, 2, "ACC")?;
            Instr::Acc { t: ty(0)?, row: u32op(ops[0], "row")?, s: parse_stream(ops[1])? }
        }
        "SHIFT" => {
            want_types(0)?;
            want(&ops, 3, "SHIFT")?;
            let n = int_in(ops[2], *SHIFT_RANGE.start() as i64, *SHIFT_RANGE.end() as i64, "shift")? as i32;
            Instr::Shift { d: parse_stream(ops[0])?, s: parse_stream(ops[1])?, n }
        }
        "PERMUTE" => {
            want_types(0)?;
            want(&ops, 3, "PERMUTE")?;
            Instr::Permute { d: parse_stream(ops[0])?, s: parse_stream(ops[1])?, map: parse_stream(ops[2])? }
        }
        "DISTRIBUTE" => {
            want_types(0)?;
            want(&ops, 18, "DISTRIBUTE")?;
            let mut map = [0u8; 16];
            for (i, m) in map.iter_mut().enumerate() {
                *m = int_in(ops[2 + i], 0, 255, "map entry")? as u8;
            }
            Instr::Distribute { d: parse_stream(ops[0])?, s: parse_stream(ops[1])?, map }
        }
        "TRANSPOSE" => {
            want_types(0)?;
            want(&ops, 2, "TRANSPOSE")?;
            Instr::Transpose { d: parse_stream(ops[0])?, s: parse_stream(ops[1])? }
        }
        "SEND" | "RECV" => {
            want_types(0)?;
            want(&ops, 1, &base)?;
            let s = parse_stream(ops[0])?;
            if base == "SEND" {
                Instr::Send { s }
            } else {
                Instr::Recv { s }
            }
        }
        _ => {
            let op = AluOp::ALL.into_iter().find(|o| o.name() == base).ok_or_else(|| format!("unknown instruction '{mn}'"))?;
            let (t, out) = if op == AluOp::Cvt {
                want_types(2)?;
                (ty(0)?, ty(1)?)
            } else {
                want_types(1)?;
                let t = ty(0)?;
                (t, t)
            };
            let nsrc = if op.is_binary() { 2 } else { 1 };
            want(&ops, 1 + nsrc, op.name())?;
            let dst = if ops[0] == "-" { None } else { Some(parse_stream(ops[0])?) };
            let a = parse_operand(t, ops[1])?;
            let b = if nsrc == 2 { Some(parse_operand(t, ops[2])?) } else { None };
            Instr::Alu { op, t, out, dst, a, b }
        }
    };
    ins.check()?;
    Ok(ins)
}

fn parse_slice(s: &str) -> Result<QueueName, String> {
    match QueueName::parse(s) {
        Some(q @ QueueName::Mem { .. }) => Ok(q),
        _ => Err(format!("'{s}' is not a MEM slice (MEM.W<i> or MEM.E<i>)")),
    }
}

fn parse_directive(line: &str, p: &mut Program) -> Result<Option<QueueName>, String> {
    let toks: Vec<&str> = line.split_whitespace().collect();
    let name = toks[0].to_ascii_lowercase();
    match name.as_str() {
        ".queue" => {
            if toks.len() != 2 {
                return Err(".queue takes one queue name".into());
            }
            QueueName::parse(toks[1]).map(Some).ok_or_else(|| format!("unknown queue '{}'", toks[1]))
        }
        ".init" => {
            if toks.len() < 5 {
                return Err(".init takes a slice, an address, a type and values (or 'fill v')".into());
            }
            let slice = parse_slice(toks[1])?;
            let addr = int_in(toks[2], 0, u32::MAX as i64, "address")? as u32;
            let dtype = DType::parse(toks[3]).ok_or_else(|| format!("unknown type '{}'", toks[3]))?;
            let values = if toks[4].eq_ignore_ascii_case("fill") {
                if toks.len() != 6 {
                    return Err(".init ... fill takes exactly one value".into());
                }
                InitValues::Fill(parse_value(dtype, toks[5])?)
            } else {
                InitValues::Lanes(toks[4..].iter().map(|v| parse_value(dtype, v)).collect::<Result<_, _>>()?)
            };
            p.inits.push(Init { slice, addr, dtype, values });
            Ok(None)
        }
        ".dump" => {
            if toks.len() != 5 {
                return Err(".dump takes a slice, an address, a type and a count".into());
            }
            let slice = parse_slice(toks[1])?;
            let addr = int_in(toks[2], 0, u32::MAX as i64, "address")? as u32;
            let dtype = DType::parse(toks[3]).ok_or_else(|| format!("unknown type '{}'", toks[3]))?;
            let n = int_in(toks[4], 1, u32::MAX as i64, "count")? as u32;
            p.dumps.push(Dump { slice, addr, dtype, n });
            Ok(None)
        }
        ".link" => {
            if toks.len() != 4 {
                return Err(".link takes a sending link, a receiving link and a latency".into());
            }
            let from = int_in(toks[1], 0, u16::MAX as i64, "link")? as u16;
            let to = int_in(toks[2], 0, u16::MAX as i64, "link")? as u16;
            let latency = int_in(toks[3], 1, MAX_LINK_LATENCY as i64, "latency")? as u64;
            if p.links.iter().any(|l| l.from == from) {
                return Err(format!("link {from} is already connected"));
            }
            p.links.push(Link { from, to, latency });
            Ok(None)
        }
        _ => Err(format!("unknown directive '{}'", toks[0])),
    }
}

/// Parse assembly text into a program (queues merged and put in index order).
pub fn parse(text: &str) -> Result<Program, AsmError> {
    let mut p = Program::default();
    let mut queues: BTreeMap<QueueName, (Vec<Instr>, Vec<usize>)> = BTreeMap::new();
    let mut current: Option<QueueName> = None;
    let mut lines: Vec<&str> = Vec::new();
    for (k, raw) in text.lines().enumerate() {
        lines.push(raw);
        let lineno = k + 1;
        let line = raw.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('.') {
            match parse_directive(line, &mut p) {
                Ok(Some(q)) => {
                    queues.entry(q).or_default();
                    current = Some(q);
                }
                Ok(None) => {}
                Err(m) => return Err(AsmError::new(lineno, raw, m)),
            }
            continue;
        }
        let q = current.ok_or_else(|| AsmError::new(lineno, raw, "instruction before any .queue directive"))?;
        let ins = parse_instr(line).map_err(|m| AsmError::new(lineno, raw, m))?;
        let e = queues.entry(q).or_default();
        e.0.push(ins);
        e.1.push(lineno);
    }
    let mut line_of: Vec<Vec<usize>> = Vec::new();
    for (name, (instrs, ls)) in queues {
        if instrs.is_empty() {
            continue;
        }
        p.queues.push(QueueProgram { name, instrs });
        line_of.push(ls);
    }
    if let Err((qi, k, m)) = p.check() {
        let ln = line_of[qi][k];
        return Err(AsmError::new(ln, lines[ln - 1], m));
    }
    Ok(p)
}

fn values_text(t: DType, v: &InitValues) -> String {
    match v {
        InitValues::Fill(b) => format!("fill {}", format_imm(t, *b)),
        InitValues::Lanes(vs) => vs.iter().map(|b| format_imm(t, *b)).collect::<Vec<_>>().join(" "),
    }
}

/// Canonical text of a program.
pub fn print(p: &Program) -> String {
    let mut out = String::new();
    let mut qs: Vec<&QueueProgram> = p.queues.iter().filter(|q| !q.instrs.is_empty()).collect();
    qs.sort_by_key(|q| q.name);
    for q in qs {
        out.push_str(&format!(".queue {}\n", q.name));
        for i in &q.instrs {
            out.push_str(&format!("    {i}\n"));
        }
    }
    for i in &p.inits {
        out.push_str(&format!(".init {} {} {} {}\n", i.slice, i.addr, i.dtype.name(), values_text(i.dtype, &i.values)));
    }
    for d in &p.dumps {
        out.push_str(&format!(".dump {} {} {} {}\n", d.slice, d.addr, d.dtype.name(), d.n));
    }
    for l in &p.links {
        out.push_str(&format!(".link {} {} {}\n", l.from, l.to, l.latency));
    }
    out
}

/// Parse and print canonically.
pub fn canonicalize(text: &str) -> Result<String, AsmError> {
    Ok(print(&parse(text)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_of_section_6() {
        let src = "
.queue MEM.W3             ; following instructions go to this queue
    NOP 4
    READ 0x10, W2
    REPEAT 7, 1           ; 8 reads
.queue VXM.0
    ADD.f32 -, E0, #1.5
.init MEM.W3 0x10 f32 1.0 2.0 3.5
.init MEM.E0 0 u8 fill 7
.dump MEM.E0 0 f32 2
.link 0 8 217
";
        let c = canonicalize(src).unwrap();
        assert_eq!(
            c,
            ".queue MEM.W3\n    NOP 4\n    READ 16, W2\n    REPEAT 7, 1\n.queue VXM.0\n    ADD.f32 -, E0, #1.5\n\
             .init MEM.W3 16 f32 1.0 2.0 3.5\n.init MEM.E0 0 u8 fill 7\n.dump MEM.E0 0 f32 2\n.link 0 8 217\n"
        );
        assert_eq!(canonicalize(&c).unwrap(), c);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(".queue VXM.0\n  READ 1, E0\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.text, "READ 1, E0");
        let e = parse("NOP 1").unwrap_err();
        assert_eq!(e.to_string(), "line 1: 'NOP 1': instruction before any .queue directive");
        let e = parse(".queue VXM.0\n CVT.f16.f32 -, R2\n").unwrap_err();
        assert!(e.message.contains("register"), "{e}");
        let e = parse(".queue MEM.W0\n NOP 2\n REPEAT 2, 1\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse(".queue VXM.0\n ADD.f32 -, E0\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse(".queue VXM.0\n ADD.i32 -, E0, #0x100000000\n").is_err());
        assert!(parse(".bogus\n").is_err());
    }

    #[test]
    fn float_immediates_read_back() {
        for s in ["0.1", "-0.0", "1e-30", "3.4028235e38", "1e39", "inf", "nan", "65504", "1e-7"] {
            for t in [DType::F32, DType::F16] {
                let b = parse_value(t, s).unwrap();
                let txt = format_imm(t, b);
                assert_eq!(parse_value(t, &txt).unwrap(), b, "{s} as {t:?} printed {txt}");
            }
        }
    }
}
