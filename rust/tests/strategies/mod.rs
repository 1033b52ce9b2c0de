//! proptest strategies for programs (used by rust/tests/props.rs): every instruction and directive, with operands
//! that are mostly in range for tsp_v1 (so most programs load and run) and sometimes at the edges of their fields.
//!
//! `big = false` keeps every count small (NOP, REPEAT, RUNTIME_DESKEW, link latency, dump size), so a run ends in
//! a few thousand cycles even without a cycle limit, and keeps queues, slices, links and addresses inside tsp_v1, so
//! that more programs get past loading; `big = true` draws the whole range of every field.
//!
//! `CORPUS`: hand-written programs that run (rust/tests/corpus/, examples/), seeds for mutation.

use lpusim::isa::{AluOp, DType, Dir, Dump, Init, InitValues, Instr, Link, MxmQueue, Operand, Program, QueueName, QueueProgram, Stream, Unit};
use lpusim::numerics::{F16_NAN, F32_NAN};
use lpusim::ChipConfig;
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;

pub const CORPUS: &[&str] = &[
    include_str!("../corpus/every_unit.asm"),
    include_str!("../corpus/mxm_tile.asm"),
    include_str!("../corpus/sxm_c2c_vxm.asm"),
    include_str!("../../../examples/bias_relu.asm"),
];

/// A stream, most often the first of an aligned group of 4 (where a 4-byte value may start).
pub fn stream() -> impl Strategy<Value = Stream> + Clone {
    (any::<bool>(), prop_oneof![24 => (0u8..8).prop_map(|i| 4 * i), 15 => 0u8..32, 1 => any::<u8>()])
        .prop_map(|(west, index)| Stream { dir: if west { Dir::West } else { Dir::East }, index })
}

/// A count >= 1.
fn count(big: bool) -> BoxedStrategy<u32> {
    if big {
        prop_oneof![6 => 1u32..8, 1 => 1u32..=u32::MAX, 1 => Just(u32::MAX)].boxed()
    } else {
        (1u32..6).boxed()
    }
}

/// A MEM address (tsp_v1 has 8192 per slice) or an accumulator row.
fn addr(big: bool) -> BoxedStrategy<u32> {
    if big {
        prop_oneof![8 => 0u32..64, 1 => 8180u32..8200, 1 => any::<u32>()].boxed()
    } else {
        (0u32..64).boxed()
    }
}

fn any_i32() -> impl Strategy<Value = i32> + Clone {
    prop_oneof![4 => -4i32..4, 1 => any::<i32>(), 1 => select(vec![i32::MIN, i32::MAX, i32::MIN / 2, i32::MAX / 2])]
}

/// Bits of a value of type `t`, zero-extended; NaNs are the canonical NaN (the text form of every NaN), so that a
/// value survives printing and parsing bit for bit.
pub fn value(t: DType) -> BoxedStrategy<u32> {
    match t {
        DType::I8 | DType::U8 => (0u32..256).boxed(),
        DType::I32 => any::<u32>().boxed(),
        DType::F16 => (0u32..0x10000)
            .prop_map(|b| if b & 0x7c00 == 0x7c00 && b & 0x3ff != 0 { F16_NAN as u32 } else { b })
            .boxed(),
        DType::F32 => prop_oneof![
            any::<u32>().prop_map(|b| if f32::from_bits(b).is_nan() { F32_NAN } else { b }),
            select(vec![0.0f32, -0.0, 1.0, -1.5, 0.1, 65504.0, f32::INFINITY, 1e-40]).prop_map(f32::to_bits),
        ]
        .boxed(),
    }
}

fn dtype() -> impl Strategy<Value = DType> + Clone {
    select(DType::ALL.to_vec())
}

fn operand(t: DType) -> BoxedStrategy<Operand> {
    let reg = prop_oneof![4 => 0u8..16, 1 => any::<u8>()].prop_map(Operand::Reg);
    let s = stream().prop_map(Operand::Stream);
    let imm = value(t).prop_map(Operand::Imm);
    if t.is_register_type() {
        prop_oneof![s, reg, imm].boxed()
    } else {
        prop_oneof![s, imm].boxed()
    }
}

fn alu() -> impl Strategy<Value = Instr> {
    select(AluOp::ALL.to_vec())
        .prop_flat_map(|op| {
            let types: Vec<DType> = DType::ALL.into_iter().filter(|t| op.accepts(*t)).collect();
            (Just(op), select(types), dtype())
        })
        .prop_flat_map(|(op, t, cvt_out)| {
            let out = if op == AluOp::Cvt { cvt_out } else { t };
            let b = if op.is_binary() { operand(t).prop_map(Some).boxed() } else { Just(None).boxed() };
            (Just(op), Just(t), Just(out), proptest::option::weighted(0.8, stream()), operand(t), b)
        })
        .prop_map(|(op, t, out, dst, a, b)| Instr::Alu { op, t, out, dst, a, b })
}

fn icu(big: bool) -> impl Strategy<Value = Instr> {
    prop_oneof![
        count(big).prop_map(Instr::Nop),
        (count(big), count(big), any_i32()).prop_map(|(n, d, s)| Instr::Repeat { n, d, s }),
        Just(Instr::Sync),
        Just(Instr::Notify),
        Just(Instr::Ifetch),
        any::<u32>().prop_map(Instr::Config),
        Just(Instr::Deskew),
        count(big).prop_map(Instr::RuntimeDeskew),
    ]
}

fn mxm_in() -> impl Strategy<Value = DType> + Clone {
    select(vec![DType::I8, DType::U8, DType::F16])
}

/// An instruction of `unit` (or of the ICU, valid in every queue).
pub fn instr_for(unit: Unit, big: bool) -> BoxedStrategy<Instr> {
    let shift = if big { prop_oneof![any_i32().prop_map(|n| n / 2), Just(i32::MIN / 2), Just(i32::MAX / 2)].boxed() } else { (-400i32..400).boxed() };
    let own: BoxedStrategy<Instr> = match unit {
        Unit::Mem => prop_oneof![
            (addr(big), stream()).prop_map(|(addr, s)| Instr::Read { addr, s }),
            (addr(big), stream()).prop_map(|(addr, s)| Instr::Write { addr, s }),
            (stream(), stream()).prop_map(|(s, map)| Instr::Gather { s, map }),
            (stream(), stream()).prop_map(|(s, map)| Instr::Scatter { s, map }),
        ]
        .boxed(),
        Unit::Vxm => alu().boxed(),
        Unit::Mxm(MxmQueue::Lw) => (mxm_in(), stream(), prop_oneof![1u16..40, 1u16..=u16::MAX])
            .prop_map(|(t, s, n)| Instr::Lw { t, s, n })
            .boxed(),
        Unit::Mxm(MxmQueue::Iw) => Just(Instr::Iw).boxed(),
        Unit::Mxm(MxmQueue::Abc) => (mxm_in(), stream(), addr(big), any::<bool>())
            .prop_map(|(t, s, row, add)| Instr::Abc { t, s, row, add })
            .boxed(),
        Unit::Mxm(MxmQueue::Acc) => (select(vec![DType::I32, DType::F32]), addr(big), stream())
            .prop_map(|(t, row, s)| Instr::Acc { t, row, s })
            .boxed(),
        Unit::Sxm => prop_oneof![
            (stream(), stream(), shift).prop_map(|(d, s, n)| Instr::Shift { d, s, n }),
            (stream(), stream(), stream()).prop_map(|(d, s, map)| Instr::Permute { d, s, map }),
            (stream(), stream(), proptest::array::uniform16(prop_oneof![8 => 0u8..16, 1 => Just(255u8)]))
                .prop_map(|(d, s, map)| Instr::Distribute { d, s, map }),
            (stream(), stream()).prop_map(|(d, s)| Instr::Transpose { d, s }),
        ]
        .boxed(),
        Unit::C2c => prop_oneof![stream().prop_map(|s| Instr::Send { s }), stream().prop_map(|s| Instr::Recv { s })].boxed(),
    };
    prop_oneof![1 => icu(big), 3 => own].boxed()
}

/// Any instruction at all (for the encoding round trip of single words).
pub fn instr(big: bool) -> impl Strategy<Value = Instr> {
    let units = vec![
        Unit::Mem,
        Unit::Vxm,
        Unit::Mxm(MxmQueue::Lw),
        Unit::Mxm(MxmQueue::Iw),
        Unit::Mxm(MxmQueue::Abc),
        Unit::Mxm(MxmQueue::Acc),
        Unit::Sxm,
        Unit::C2c,
    ];
    select(units).prop_flat_map(move |u| instr_for(u, big))
}

/// A queue of tsp_v1, or (`big`) now and then one the configuration does not have.
pub fn queue_name(big: bool) -> BoxedStrategy<QueueName> {
    let all = QueueName::all(&ChipConfig::tsp_v1());
    let odd = (0u32..5, any::<bool>(), prop_oneof![0u16..300, any::<u16>()], 0usize..4).prop_map(|(u, east, i, k)| match u {
        0 => QueueName::Mem { east, i },
        1 => QueueName::Vxm(i),
        2 => QueueName::Mxm { east, plane: i, kind: MxmQueue::ALL[k] },
        3 => QueueName::Sxm { east, i },
        _ => QueueName::C2c(i),
    });
    if big {
        prop_oneof![9 => select(all), 1 => odd].boxed()
    } else {
        select(all).boxed()
    }
}

/// A MEM slice; when not `big`, one with room above it for the byte planes of a 4-byte type.
fn mem_slice(big: bool) -> impl Strategy<Value = QueueName> {
    let i = if big { prop_oneof![9 => 0u16..44, 1 => any::<u16>()].boxed() } else { (0u16..41).boxed() };
    (any::<bool>(), i).prop_map(|(east, i)| QueueName::Mem { east, i })
}

fn init(big: bool) -> impl Strategy<Value = Init> {
    (mem_slice(big), addr(big), dtype()).prop_flat_map(|(slice, addr, dtype)| {
        let values = prop_oneof![
            value(dtype).prop_map(InitValues::Fill),
            proptest::collection::vec(value(dtype), 1..6).prop_map(InitValues::Lanes),
        ];
        values.prop_map(move |values| Init { slice, addr, dtype, values })
    })
}

fn dump(big: bool) -> impl Strategy<Value = Dump> {
    let n = if big { prop_oneof![1u32..4, 1u32..=u32::MAX].boxed() } else { (1u32..4).boxed() };
    (mem_slice(big), addr(big), dtype(), n).prop_map(|(slice, addr, dtype, n)| Dump { slice, addr, dtype, n })
}

fn link(big: bool) -> impl Strategy<Value = Link> {
    let latency = if big { prop_oneof![1u64..300, 1u64..=1 << 40].boxed() } else { (1u64..300).boxed() };
    let end = || if big { prop_oneof![0u16..20, any::<u16>()].boxed() } else { (0u16..16).boxed() };
    (end(), end(), latency)
        .prop_map(|(from, to, latency)| Link { from, to, latency })
}

/// REPEAT may only follow an instruction that issues: drop those that do not (as a programmer would).
fn fix_repeats(instrs: Vec<Instr>) -> Vec<Instr> {
    let mut out: Vec<Instr> = Vec::with_capacity(instrs.len());
    for i in instrs {
        if matches!(i, Instr::Repeat { .. }) && !out.last().is_some_and(|p| p.repeatable()) {
            continue;
        }
        out.push(i);
    }
    out
}

/// A valid program: queues in index order, each once and non-empty; `.link` sources distinct.
pub fn program(big: bool) -> impl Strategy<Value = Program> {
    let queue = queue_name(big).prop_flat_map(move |q| (Just(q), proptest::collection::vec(instr_for(q.unit(), big), 1..10)));
    (
        proptest::collection::vec(queue, 0..6),
        proptest::collection::vec(init(big), 0..3),
        proptest::collection::vec(dump(big), 0..3),
        proptest::collection::vec(link(big), 0..3),
    )
        .prop_map(|(queues, inits, dumps, links)| {
            let mut by_name: BTreeMap<QueueName, Vec<Instr>> = BTreeMap::new();
            for (q, instrs) in queues {
                by_name.entry(q).or_default().extend(instrs);
            }
            let queues = by_name
                .into_iter()
                .map(|(name, instrs)| QueueProgram { name, instrs: fix_repeats(instrs) })
                .filter(|q| !q.instrs.is_empty())
                .collect();
            let mut seen = std::collections::BTreeSet::new();
            let links = links.into_iter().filter(|l| seen.insert(l.from)).collect();
            Program { queues, inits, dumps, links }
        })
}
