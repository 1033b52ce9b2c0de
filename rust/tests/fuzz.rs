//! Robustness: mutated programs never panic the assembler or the simulator, and timing-only runs always agree
//! with full runs on cycles, counters and errors.

use lpusim::{isa::text, simulate, ChipConfig, RunOptions};

const SEED_PROGRAM: &str = include_str!("corpus/every_unit.asm");

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn mutated_programs_never_panic_and_timing_only_agrees() {
    let cfg = ChipConfig::tsp_v1();
    let lines: Vec<&str> = SEED_PROGRAM.lines().collect();
    // Replacements of the same kind as the word they replace, so most mutants still assemble.
    let ints = ["0", "1", "2", "7", "31", "320", "1023", "1024", "8191", "8192"];
    let streams = ["E0", "E2", "E4", "W0", "W2", "W3", "E28", "W31", "R0", "R1", "#2", "-"];
    assert!(text::parse(SEED_PROGRAM).is_ok(), "{:?}", text::parse(SEED_PROGRAM).err());
    let mut seed = 2024u64;
    let mut ran = 0;
    for _ in 0..1500 {
        let mut ls: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        for _ in 0..1 + rng(&mut seed) % 2 {
            let i = (rng(&mut seed) % ls.len() as u64) as usize;
            let words: Vec<String> = ls[i].split(' ').map(|w| w.to_string()).collect();
            // Lines are " MNEMONIC op, op": mutate an operand (index >= 2), or a directive's argument.
            let first = if words[0].is_empty() { 2 } else { 1 };
            if words.len() > first {
                let j = first + (rng(&mut seed) % (words.len() - first) as u64) as usize;
                let mut w = words.clone();
                let bare = w[j].trim_end_matches(',');
                let set: &[&str] = if bare.chars().all(|c| c.is_ascii_digit()) { &ints } else { &streams };
                let p = set[(rng(&mut seed) % set.len() as u64) as usize];
                w[j] = if w[j].ends_with(',') { format!("{p},") } else { p.to_string() };
                ls[i] = w.join(" ");
            }
            if rng(&mut seed) % 4 == 0 {
                let k = (rng(&mut seed) % ls.len() as u64) as usize;
                ls.swap(i, k);
            }
        }
        let src = ls.join("\n");
        let Ok(p) = text::parse(&src) else { continue };
        ran += 1;
        let full = simulate(&cfg, &p, &[], &[], &RunOptions { timing_only: false, max_cycles: Some(100_000) });
        let timing = simulate(&cfg, &p, &[], &[], &RunOptions { timing_only: true, max_cycles: Some(100_000) });
        match (full, timing) {
            (Ok((a, _)), Ok((b, _))) => {
                assert_eq!((a.cycles, a.instructions, &a.busy, &a.events), (b.cycles, b.instructions, &b.busy, &b.events), "{src}");
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "{src}"),
            (a, b) => panic!("modes disagree on\n{src}\nfull: {:?}\ntiming: {:?}", a.err(), b.err()),
        }
        // Canonical text is a fixed point and the binary round-trips.
        let c = text::print(&p);
        assert_eq!(text::canonicalize(&c).unwrap(), c);
        assert_eq!(lpusim::disassemble(&lpusim::assemble(&c).unwrap()).unwrap(), c);
    }
    assert!(ran > 100, "only {ran} mutants assembled");
}

/// Found by props.rs: the decoder took binaries whose disassembly the assembler refuses (a SHIFT beyond +-2^30, a
/// `.link` latency beyond 2^40, a `.dump` of no vectors). Each is now refused by both, with the same limits.
#[test]
fn decoder_refuses_what_the_assembler_refuses() {
    use lpusim::isa::{encode, Dir, Dump, DType, Instr, Link, Program, QueueName, QueueProgram, Stream};
    let e0 = Stream { dir: Dir::East, index: 0 };
    let sxm = |n| QueueProgram { name: QueueName::Sxm { east: false, i: 0 }, instrs: vec![Instr::Shift { d: e0, s: e0, n }] };
    let slice = QueueName::Mem { east: false, i: 0 };
    let bad = [
        Program { queues: vec![sxm(i32::MIN)], ..Program::default() },
        Program { queues: vec![sxm(i32::MAX / 2 + 1)], ..Program::default() },
        Program { links: vec![Link { from: 0, to: 8, latency: (1 << 40) + 1 }], ..Program::default() },
        Program { dumps: vec![Dump { slice, addr: 0, dtype: DType::F32, n: 0 }], ..Program::default() },
    ];
    for p in bad {
        let printed = text::print(&p);
        assert!(text::parse(&printed).is_err(), "{printed}");
        assert!(encode::decode_program(&encode::encode_program(&p)).is_err(), "{printed}");
    }
    let edge = Program {
        queues: vec![QueueProgram {
            name: QueueName::Sxm { east: false, i: 0 },
            instrs: vec![Instr::Shift { d: e0, s: e0, n: i32::MIN / 2 }, Instr::Shift { d: e0, s: e0, n: i32::MAX / 2 }],
        }],
        links: vec![Link { from: 0, to: 8, latency: 1 << 40 }],
        dumps: vec![Dump { slice, addr: 0, dtype: DType::F32, n: 1 }],
        ..Program::default()
    };
    assert_eq!(encode::decode_program(&encode::encode_program(&edge)), Ok(edge.clone()));
    assert_eq!(text::parse(&text::print(&edge)), Ok(edge));
}
