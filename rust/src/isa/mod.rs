//! The instruction set (docs/isa.md section 4) as typed Rust values, and a whole program (queues + directives).
//!
//! `text` parses and prints the assembly format, `encode` the binary one. Nothing here depends on a chip
//! configuration; configuration-dependent checks happen when a program is loaded (`sim::load`).

pub mod encode;
pub mod queues;
pub mod text;

pub use queues::{MxmQueue, QueueName, Unit};

use std::fmt;

/// Direction a stream flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    East,
    West,
}

/// A stream (or the first stream of a group): `E5`, `W0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stream {
    pub dir: Dir,
    pub index: u8,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = if self.dir == Dir::East { 'E' } else { 'W' };
        write!(f, "{d}{}", self.index)
    }
}

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    I8,
    U8,
    F16,
    I32,
    F32,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::I8, DType::U8, DType::F16, DType::I32, DType::F32];
    /// Bytes per element (= streams per group).
    pub fn width(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 => 2,
            DType::I32 | DType::F32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::F32 => "f32",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        let l = s.to_ascii_lowercase();
        DType::ALL.into_iter().find(|t| t.name() == l)
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::F32)
    }
    /// Types a VXM result register can hold / be read as.
    pub fn is_register_type(self) -> bool {
        matches!(self, DType::I32 | DType::F32)
    }
}

/// A VXM source operand. `Imm` holds the bits of the value in the operation's input type (zero-extended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    Stream(Stream),
    Reg(u8),
    Imm(u32),
}

/// VXM operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    Max,
    Min,
    Div,
    Relu,
    Neg,
    Abs,
    Copy,
    Exp,
    Tanh,
    Rsqrt,
    Rcp,
    Sigmoid,
    Erf,
    Cvt,
    // Appended after CVT: the binary encoding numbers operations by their position in `ALL`.
    Log,
    Sqrt,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
    Not,
    Floor,
    Ceil,
    // Appended after CEIL (rotary position embeddings of decoder LLMs).
    Sin,
    Cos,
}

impl AluOp {
    pub const ALL: [AluOp; 33] = [
        AluOp::Add,
        AluOp::Sub,
        AluOp::Mul,
        AluOp::Max,
        AluOp::Min,
        AluOp::Div,
        AluOp::Relu,
        AluOp::Neg,
        AluOp::Abs,
        AluOp::Copy,
        AluOp::Exp,
        AluOp::Tanh,
        AluOp::Rsqrt,
        AluOp::Rcp,
        AluOp::Sigmoid,
        AluOp::Erf,
        AluOp::Cvt,
        AluOp::Log,
        AluOp::Sqrt,
        AluOp::Eq,
        AluOp::Ne,
        AluOp::Lt,
        AluOp::Le,
        AluOp::Gt,
        AluOp::Ge,
        AluOp::And,
        AluOp::Or,
        AluOp::Xor,
        AluOp::Not,
        AluOp::Floor,
        AluOp::Ceil,
        AluOp::Sin,
        AluOp::Cos,
    ];
    pub fn name(self) -> &'static str {
        match self {
            AluOp::Add => "ADD",
            AluOp::Sub => "SUB",
            AluOp::Mul => "MUL",
            AluOp::Max => "MAX",
            AluOp::Min => "MIN",
            AluOp::Div => "DIV",
            AluOp::Relu => "RELU",
            AluOp::Neg => "NEG",
            AluOp::Abs => "ABS",
            AluOp::Copy => "COPY",
            AluOp::Exp => "EXP",
            AluOp::Tanh => "TANH",
            AluOp::Rsqrt => "RSQRT",
            AluOp::Rcp => "RCP",
            AluOp::Sigmoid => "SIGMOID",
            AluOp::Erf => "ERF",
            AluOp::Cvt => "CVT",
            AluOp::Log => "LOG",
            AluOp::Sqrt => "SQRT",
            AluOp::Eq => "EQ",
            AluOp::Ne => "NE",
            AluOp::Lt => "LT",
            AluOp::Le => "LE",
            AluOp::Gt => "GT",
            AluOp::Ge => "GE",
            AluOp::And => "AND",
            AluOp::Or => "OR",
            AluOp::Xor => "XOR",
            AluOp::Not => "NOT",
            AluOp::Floor => "FLOOR",
            AluOp::Ceil => "CEIL",
            AluOp::Sin => "SIN",
            AluOp::Cos => "COS",
        }
    }
    pub fn is_binary(self) -> bool {
        matches!(
            self,
            AluOp::Add
                | AluOp::Sub
                | AluOp::Mul
                | AluOp::Max
                | AluOp::Min
                | AluOp::Div
                | AluOp::Eq
                | AluOp::Ne
                | AluOp::Lt
                | AluOp::Le
                | AluOp::Gt
                | AluOp::Ge
                | AluOp::And
                | AluOp::Or
                | AluOp::Xor
        )
    }
    /// Comparisons: result 1 / 0 (1.0 / 0.0 for f32) of the input type.
    pub fn is_compare(self) -> bool {
        matches!(self, AluOp::Eq | AluOp::Ne | AluOp::Lt | AluOp::Le | AluOp::Gt | AluOp::Ge)
    }
    /// Types `T` the op accepts (CVT accepts every pair).
    pub fn accepts(self, t: DType) -> bool {
        match self {
            AluOp::Add | AluOp::Sub | AluOp::Mul | AluOp::Max | AluOp::Min => t.is_register_type(),
            AluOp::Relu | AluOp::Neg | AluOp::Abs | AluOp::Copy => t.is_register_type(),
            AluOp::Div | AluOp::Exp | AluOp::Tanh | AluOp::Rsqrt | AluOp::Rcp | AluOp::Sigmoid | AluOp::Erf => {
                t == DType::F32
            }
            AluOp::Log | AluOp::Sqrt | AluOp::Floor | AluOp::Ceil | AluOp::Sin | AluOp::Cos => t == DType::F32,
            AluOp::Eq | AluOp::Ne | AluOp::Lt | AluOp::Le | AluOp::Gt | AluOp::Ge => t.is_register_type(),
            AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Not => t == DType::I32,
            AluOp::Cvt => true,
        }
    }
}

/// One instruction. Operands are typed; `Display` prints canonical assembly text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instr {
    // ICU (valid in every queue)
    Nop(u32),
    Repeat { n: u32, d: u32, s: i32 },
    Sync,
    Notify,
    Ifetch,
    Config(u32),
    Deskew,
    /// `RUNTIME_DESKEW t` (t >= 1): stall about `t` cycles, minus the drift the software-aligned counter has
    /// accumulated against the hardware-aligned counter, then realign the SAC (docs/system.md).
    RuntimeDeskew(u32),
    // MEM
    Read { addr: u32, s: Stream },
    Write { addr: u32, s: Stream },
    Gather { s: Stream, map: Stream },
    Scatter { s: Stream, map: Stream },
    // VXM: `t` is the input type; `out` the output type (= t except for CVT).
    Alu { op: AluOp, t: DType, out: DType, dst: Option<Stream>, a: Operand, b: Option<Operand> },
    // MXM
    Lw { t: DType, s: Stream, n: u16 },
    Iw,
    Abc { t: DType, s: Stream, row: u32, add: bool },
    Acc { t: DType, row: u32, s: Stream },
    // SXM
    Shift { d: Stream, s: Stream, n: i32 },
    Permute { d: Stream, s: Stream, map: Stream },
    Distribute { d: Stream, s: Stream, map: [u8; 16] },
    Transpose { d: Stream, s: Stream },
    // C2C
    Send { s: Stream },
    Recv { s: Stream },
}

impl Instr {
    /// ICU instructions are valid in every queue.
    pub fn is_icu(&self) -> bool {
        matches!(
            self,
            Instr::Nop(_) | Instr::Repeat { .. } | Instr::Sync | Instr::Notify | Instr::Ifetch | Instr::Config(_) | Instr::Deskew | Instr::RuntimeDeskew(_)
        )
    }

    /// Can this instruction sit in a queue of `unit`?
    pub fn fits(&self, unit: Unit) -> bool {
        if self.is_icu() {
            return true;
        }
        match self {
            Instr::Read { .. } | Instr::Write { .. } | Instr::Gather { .. } | Instr::Scatter { .. } => unit == Unit::Mem,
            Instr::Alu { .. } => unit == Unit::Vxm,
            Instr::Lw { .. } => unit == Unit::Mxm(MxmQueue::Lw),
            Instr::Iw => unit == Unit::Mxm(MxmQueue::Iw),
            Instr::Abc { .. } => unit == Unit::Mxm(MxmQueue::Abc),
            Instr::Acc { .. } => unit == Unit::Mxm(MxmQueue::Acc),
            Instr::Shift { .. } | Instr::Permute { .. } | Instr::Distribute { .. } | Instr::Transpose { .. } => {
                unit == Unit::Sxm
            }
            Instr::Send { .. } | Instr::Recv { .. } => unit == Unit::C2c,
            _ => false,
        }
    }

    /// May a REPEAT follow this instruction? (Not after NOP, REPEAT, SYNC, DESKEW.)
    pub fn repeatable(&self) -> bool {
        !matches!(self, Instr::Nop(_) | Instr::Repeat { .. } | Instr::Sync | Instr::Deskew | Instr::RuntimeDeskew(_))
    }

    /// Configuration-free validity (operand/type combinations). Returns a message on error.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Instr::Nop(n) if *n == 0 => Err("NOP needs n >= 1".into()),
            Instr::RuntimeDeskew(0) => Err("RUNTIME_DESKEW needs t >= 1".into()),
            Instr::Repeat { n, d, .. } if *n == 0 || *d == 0 => Err("REPEAT needs n >= 1 and d >= 1".into()),
            Instr::Alu { op, t, out, dst: _, a, b } => {
                if !op.accepts(*t) {
                    return Err(format!("{} does not take type {}", op.name(), t.name()));
                }
                if *op != AluOp::Cvt && out != t {
                    return Err("only CVT changes the type".into());
                }
                if op.is_binary() != b.is_some() {
                    return Err(format!("{} takes {} source operand(s)", op.name(), if op.is_binary() { 2 } else { 1 }));
                }
                for x in [Some(a), b.as_ref()].into_iter().flatten() {
                    match x {
                        Operand::Reg(_) if !t.is_register_type() => {
                            return Err(format!("a result register cannot be read as {}", t.name()));
                        }
                        Operand::Imm(bits) if !fits_width(*t, *bits) => {
                            return Err(format!("immediate bits {bits:#x} do not fit {}", t.name()));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Instr::Lw { t, n, .. } => {
                if *t == DType::I32 || *t == DType::F32 {
                    return Err("LW takes i8, u8 or f16".into());
                }
                if *n == 0 {
                    return Err("LW needs n >= 1".into());
                }
                Ok(())
            }
            Instr::Abc { t, .. } if *t == DType::I32 || *t == DType::F32 => Err("ABC takes i8, u8 or f16".into()),
            Instr::Acc { t, .. } if *t != DType::I32 && *t != DType::F32 => Err("ACC takes i32 or f32".into()),
            // The assembler's range, checked here too so that the decoder refuses what the assembler does (a
            // decoded program always disassembles to text that assembles).
            Instr::Shift { n, .. } if !SHIFT_RANGE.contains(n) => {
                Err(format!("SHIFT by {n} is outside {}..{}", SHIFT_RANGE.start(), SHIFT_RANGE.end()))
            }
            Instr::Distribute { map, .. } if map.iter().any(|&m| m >= 16 && m != 255) => {
                Err("DISTRIBUTE map entries are 0..15 or 255".into())
            }
            _ => Ok(()),
        }
    }

    /// The address operand a REPEAT stride applies to: MEM address of READ/WRITE, accumulator row of ABC/ACC.
    pub fn address(&self) -> Option<u32> {
        match self {
            Instr::Read { addr, .. } | Instr::Write { addr, .. } => Some(*addr),
            Instr::Abc { row, .. } | Instr::Acc { row, .. } => Some(*row),
            _ => None,
        }
    }
}

/// The lanes a SHIFT may move by.
pub const SHIFT_RANGE: std::ops::RangeInclusive<i32> = i32::MIN / 2..=i32::MAX / 2;

/// Do `bits` fit the width of `t` (zero-extended)?
pub fn fits_width(t: DType, bits: u32) -> bool {
    t.width() >= 4 || bits >> (8 * t.width()) == 0
}

/// Format an immediate (bits in type `t`) canonically: shortest text that reads back to the same bits.
pub fn format_imm(t: DType, bits: u32) -> String {
    match t {
        DType::I8 => (bits as u8 as i8).to_string(),
        DType::U8 => (bits as u8).to_string(),
        DType::I32 => (bits as i32).to_string(),
        DType::F32 => format_float(f32::from_bits(bits) as f64, |s| {
            s.parse::<f64>().map(|v| (v as f32).to_bits() == bits).unwrap_or(false)
        }),
        DType::F16 => format_float(crate::numerics::f16_to_f64(bits as u16), |s| {
            s.parse::<f64>().map(|v| crate::numerics::f64_to_f16(v) as u32 == bits).unwrap_or(false)
        }),
    }
}

fn format_float(v: f64, reads_back: impl Fn(&str) -> bool) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Shortest f32 text first; fall back to the exact binary64 text, which always reads back.
    let short = format!("{:?}", v as f32);
    if reads_back(&short) {
        short
    } else {
        format!("{v:?}")
    }
}

fn opt_stream(s: &Option<Stream>) -> String {
    match s {
        Some(s) => s.to_string(),
        None => "-".into(),
    }
}

fn operand(t: DType, o: &Operand) -> String {
    match o {
        Operand::Stream(s) => s.to_string(),
        Operand::Reg(r) => format!("R{r}"),
        Operand::Imm(bits) => format!("#{}", format_imm(t, *bits)),
    }
}

impl fmt::Display for Instr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instr::Nop(n) => write!(f, "NOP {n}"),
            Instr::Repeat { n, d, s } => {
                if *s == 1 {
                    write!(f, "REPEAT {n}, {d}")
                } else {
                    write!(f, "REPEAT {n}, {d}, {s}")
                }
            }
            Instr::Sync => write!(f, "SYNC"),
            Instr::Notify => write!(f, "NOTIFY"),
            Instr::Ifetch => write!(f, "IFETCH"),
            Instr::Config(m) => write!(f, "CONFIG {m}"),
            Instr::Deskew => write!(f, "DESKEW"),
            Instr::RuntimeDeskew(t) => write!(f, "RUNTIME_DESKEW {t}"),
            Instr::Read { addr, s } => write!(f, "READ {addr}, {s}"),
            Instr::Write { addr, s } => write!(f, "WRITE {addr}, {s}"),
            Instr::Gather { s, map } => write!(f, "GATHER {s}, {map}"),
            Instr::Scatter { s, map } => write!(f, "SCATTER {s}, {map}"),
            Instr::Alu { op, t, out, dst, a, b } => {
                if *op == AluOp::Cvt {
                    write!(f, "CVT.{}.{}", t.name(), out.name())?;
                } else {
                    write!(f, "{}.{}", op.name(), t.name())?;
                }
                write!(f, " {}, {}", opt_stream(dst), operand(*t, a))?;
                if let Some(b) = b {
                    write!(f, ", {}", operand(*t, b))?;
                }
                Ok(())
            }
            Instr::Lw { t, s, n } => write!(f, "LW.{} {s}, {n}", t.name()),
            Instr::Iw => write!(f, "IW"),
            Instr::Abc { t, s, row, add } => {
                write!(f, "ABC.{} {s}, {row}", t.name())?;
                if *add {
                    write!(f, ", +")?;
                }
                Ok(())
            }
            Instr::Acc { t, row, s } => write!(f, "ACC.{} {row}, {s}", t.name()),
            Instr::Shift { d, s, n } => write!(f, "SHIFT {d}, {s}, {n}"),
            Instr::Permute { d, s, map } => write!(f, "PERMUTE {d}, {s}, {map}"),
            Instr::Distribute { d, s, map } => {
                write!(f, "DISTRIBUTE {d}, {s}")?;
                for m in map {
                    write!(f, ", {m}")?;
                }
                Ok(())
            }
            Instr::Transpose { d, s } => write!(f, "TRANSPOSE {d}, {s}"),
            Instr::Send { s } => write!(f, "SEND {s}"),
            Instr::Recv { s } => write!(f, "RECV {s}"),
        }
    }
}

/// `.init` values: one per lane from lane 0, or one for every lane. Bits in the directive's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitValues {
    Fill(u32),
    Lanes(Vec<u32>),
}

/// `.init MEM.W3 a T ...`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    pub slice: QueueName,
    pub addr: u32,
    pub dtype: DType,
    pub values: InitValues,
}

/// `.dump MEM.E0 a T n`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub slice: QueueName,
    pub addr: u32,
    pub dtype: DType,
    pub n: u32,
}

/// The longest `.link` latency, in cycles (a bound that keeps every arrival cycle far from overflowing).
pub const MAX_LINK_LATENCY: u64 = 1 << 40;

/// `.link from to latency`: link `from`'s sends arrive in link `to`'s receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub from: u16,
    pub to: u16,
    pub latency: u64,
}

/// The instructions of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgram {
    pub name: QueueName,
    pub instrs: Vec<Instr>,
}

/// A whole program: queues in canonical (index) order, each listed once, then the directives in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Program {
    pub queues: Vec<QueueProgram>,
    pub inits: Vec<Init>,
    pub dumps: Vec<Dump>,
    pub links: Vec<Link>,
}

impl Program {
    /// Configuration-free validity of the whole program: per-instruction checks, unit fit, REPEAT placement.
    /// Returns (queue position in `queues`, instruction index, message) of the first problem.
    pub fn check(&self) -> Result<(), (usize, usize, String)> {
        for (qi, q) in self.queues.iter().enumerate() {
            for (k, ins) in q.instrs.iter().enumerate() {
                ins.check().map_err(|m| (qi, k, m))?;
                if !ins.fits(q.name.unit()) {
                    return Err((qi, k, format!("this instruction cannot run in queue {}", q.name)));
                }
                if let Instr::Repeat { .. } = ins {
                    if k == 0 || !q.instrs[k - 1].repeatable() {
                        return Err((qi, k, "REPEAT must follow an instruction that issues (not NOP, REPEAT, SYNC or DESKEW)".into()));
                    }
                }
            }
        }
        Ok(())
    }
}
