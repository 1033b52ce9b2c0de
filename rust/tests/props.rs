//! Property tests (proptest) of the assembler, the binary decoder and the simulator on arbitrary input: arbitrary
//! bytes and strings, token soup, mutated valid programs and mutated binaries never panic (each gives a program or
//! a typed error); every program the assembler or the decoder accepts prints to text the assembler accepts, with
//! the same text again (a fixed point), and encodes to a binary that decodes to it; a generated valid program
//! round-trips exactly through text and binary; and simulating anything that assembles, with a cycle limit, never
//! panics, with timing-only runs (exact and fast forms) agreeing with full runs.
//!
//! Budget: `cargo test` runs a fixed number of cases per property from a fixed seed (a few seconds in a debug
//! build), the same cases every run. `LPUSIM_FUZZ_SCALE=N` multiplies the case counts and `LPUSIM_FUZZ_SEED=S`
//! draws other cases (docs/isa.md, "Fuzzing"). Every panic these found is fixed at its cause and kept as a
//! regression test in fuzz.rs.

mod strategies;

use lpusim::isa::{encode, text, Program};
use lpusim::system::{simulate_system, SystemConfig, SystemOptions};
use lpusim::{parse_program, simulate, ChipConfig, RunOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const LIMIT: u64 = 20_000;

/// `cases` per property (times LPUSIM_FUZZ_SCALE), drawn from a fixed seed (LPUSIM_FUZZ_SEED): CI runs the same cases
/// every time; nothing is written to disk on failure (a failure prints its minimal input).
fn budget(cases: u32) -> Config {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse::<u64>().ok());
    let scale = env("LPUSIM_FUZZ_SCALE").unwrap_or(1).max(1) as u32;
    Config {
        cases: cases.saturating_mul(scale),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(env("LPUSIM_FUZZ_SEED").unwrap_or(16)),
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// What must hold of every program the assembler or the decoder accepted.
fn accepted(p: &Program) {
    let t = text::print(p);
    let again = text::parse(&t).unwrap_or_else(|e| panic!("the printed text does not assemble: {e}\n{t}"));
    assert_eq!(text::print(&again), t, "printing is not a fixed point");
    let bin = encode::encode_program(p);
    let back = encode::decode_program(&bin).unwrap_or_else(|e| panic!("an encoded program does not decode: {e}\n{t}"));
    assert_eq!(&back, p, "binary round trip\n{t}");
}

/// Run `p` full and timing-only with a cycle limit: no panic, and both modes agree on everything they report.
fn runs_agree(p: &Program) {
    let cfg = ChipConfig::tsp_v1();
    let run = |timing_only, max_cycles| simulate(&cfg, p, &[], &[], &RunOptions { timing_only, max_cycles });
    let (full, timing) = (run(false, Some(LIMIT)), run(true, Some(LIMIT)));
    match (&full, &timing) {
        (Ok((a, _)), Ok((b, _))) => assert_eq!(
            (a.cycles, a.instructions, &a.busy, &a.events),
            (b.cycles, b.instructions, &b.busy, &b.events),
            "{}",
            text::print(p)
        ),
        (Err(a), Err(b)) => assert_eq!(a, b, "{}", text::print(p)),
        (a, b) => panic!("modes disagree on\n{}\nfull: {:?}\ntiming: {:?}", text::print(p), a.as_ref().err(), b.as_ref().err()),
    }
}

const TOKENS: &[&str] = &[
    ".queue", ".init", ".dump", ".link", ".bogus", "MEM.W0", "MEM.E43", "MEM.W44", "VXM.0", "VXM.15", "VXM.16",
    "MXM.W0.LW", "MXM.E1.ACC", "MXM.W0.ABC", "MXM.W0.IW", "SXM.W.0", "SXM.E.3", "C2C.0", "C2C.15", "C2C.99999",
    "NOP", "REPEAT", "SYNC", "NOTIFY", "IFETCH", "CONFIG", "DESKEW", "RUNTIME_DESKEW", "READ", "WRITE", "GATHER",
    "SCATTER", "ADD.f32", "ADD.i32", "MUL.f32", "DIV.f32", "EXP.f32", "NOT.i32", "CVT.f32.f16", "CVT.i8.i32",
    "CVT.f32", "ADD", "LW.i8", "LW.f16", "LW.f32", "IW", "ABC.i8", "ABC.f16", "ACC.f32", "ACC.i32", "SHIFT",
    "PERMUTE", "DISTRIBUTE", "TRANSPOSE", "SEND", "RECV", "E0", "E31", "W0", "W31", "E255", "W256", "R0", "R255",
    "R256", "#1.5", "#-0.0", "#nan", "#inf", "#0x7fffffff", "#0x100000000", "#-128", "#255", "#1e39", "-", "+",
    ",", ";", "0", "1", "-1", "2", "7", "16", "255", "8191", "8192", "65535", "65536", "4294967295",
    "4294967296", "1099511627776", "0x", "0xffffffffffffffff", "99999999999999999999", "-9223372036854775808",
    "fill", "f32", "f16", "i8", "u8", "i32", "é", "\t", "", ".", "..",
];

fn token_line() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..8).prop_map(|ws| {
        // a mnemonic or directive, then its operands as the assembler writes them (comma separated)
        let mut s = ws.first().copied().unwrap_or("").to_string();
        if ws.len() > 1 {
            s.push(' ');
            s.push_str(&ws[1..].join(", "));
        }
        s
    })
}

/// Edit a valid program's text: drop, duplicate or swap lines, replace or insert a token, cut a span of characters.
fn mutate_text(src: &str, edits: &[(u8, usize, usize)]) -> String {
    let mut lines: Vec<String> = src.lines().map(String::from).collect();
    for &(kind, a, b) in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = a % lines.len();
        let tok = TOKENS[b % TOKENS.len()];
        match kind % 6 {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(b % (lines.len() + 1), l);
            }
            2 => {
                let j = b % lines.len();
                lines.swap(i, j);
            }
            3 => {
                // replace the word at `b` (operands keep their trailing comma)
                let mut ws: Vec<String> = lines[i].split(' ').map(String::from).collect();
                let j = b % ws.len();
                ws[j] = if ws[j].ends_with(',') { format!("{tok},") } else { tok.to_string() };
                lines[i] = ws.join(" ");
            }
            4 => lines.insert(i, format!(" {tok}")),
            _ => {
                let chars: Vec<char> = lines[i].chars().collect();
                let lo = b % (chars.len() + 1);
                let hi = (lo + 1 + a % 4).min(chars.len());
                lines[i] = chars[..lo].iter().chain(chars[hi..].iter()).collect();
            }
        }
    }
    lines.join("\n")
}

/// Edit a binary: flip a bit, set a byte, put an extreme u32, insert, delete or truncate.
fn mutate_binary(bin: &[u8], edits: &[(u8, usize, u8)]) -> Vec<u8> {
    let mut b = bin.to_vec();
    for &(kind, at, v) in edits {
        let n = b.len();
        if n == 0 {
            b.push(v);
            continue;
        }
        let i = at % n;
        match kind % 6 {
            0 => b[i] ^= 1 << (v % 8),
            1 => b[i] = v,
            2 => {
                let x = [0u32, 1, 2, 0xffff_ffff, 0x8000_0000, 0x7fff_ffff, n as u32][v as usize % 7];
                for (k, byte) in x.to_le_bytes().into_iter().enumerate() {
                    if i + k < n {
                        b[i + k] = byte;
                    }
                }
            }
            3 => b.insert(i, v),
            4 => {
                b.remove(i);
            }
            _ => b.truncate(i),
        }
    }
    b
}

proptest! {
    #![proptest_config(budget(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_program(&data);
        let mut framed = b"LPUSIM\0\x01".to_vec();
        framed.extend_from_slice(&data);
        if let Ok(p) = encode::decode_program(&framed) {
            accepted(&p);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        if let Ok(p) = text::parse(&s) {
            accepted(&p);
        }
        for line in s.lines() {
            let _ = text::parse_instr(line.trim());
        }
    }

    #[test]
    fn token_soup_never_panics(head in token_line(), lines in proptest::collection::vec(token_line(), 0..12)) {
        let src = format!(".queue {}\n{}", head, lines.join("\n"));
        if let Ok(p) = text::parse(&src) {
            accepted(&p);
        }
        for l in &lines {
            if let Ok(i) = text::parse_instr(l.trim()) {
                prop_assert_eq!(text::parse_instr(&i.to_string()), Ok(i));
            }
        }
    }

    #[test]
    fn instructions_round_trip(i in strategies::instr(true)) {
        let w = encode::encode_instr(&i);
        prop_assert_eq!(encode::decode_instr(w), Ok(i));
        prop_assert_eq!(text::parse_instr(&i.to_string()), Ok(i));
    }

    #[test]
    fn corrupt_words_never_panic(i in strategies::instr(true), bits in proptest::collection::vec(0u32..128, 1..3), w in any::<u128>()) {
        let mut word = encode::encode_instr(&i);
        for b in bits {
            word ^= 1u128 << b;
        }
        for x in [word, w, w & 0xff] {
            if let Ok(d) = encode::decode_instr(x) {
                // every word the decoder accepts disassembles to text the assembler reads back to it
                prop_assert_eq!(encode::encode_instr(&d), x);
                let t = d.to_string();
                let again = text::parse_instr(&t).map_err(|e| TestCaseError::fail(format!("'{t}': {e}")))?;
                prop_assert_eq!(again.to_string(), t);
            }
        }
    }

    #[test]
    fn programs_round_trip(p in strategies::program(true)) {
        prop_assert_eq!(p.check(), Ok(()));
        accepted(&p);
        prop_assert_eq!(text::parse(&text::print(&p)), Ok(p.clone()));
        prop_assert_eq!(lpusim::disassemble(&lpusim::assemble(&text::print(&p)).unwrap()).unwrap(), text::print(&p));
    }

    #[test]
    fn mutated_binaries_never_panic(p in strategies::program(true), edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4)) {
        let bin = mutate_binary(&encode::encode_program(&p), &edits);
        if let Ok(q) = parse_program(&bin) {
            accepted(&q);
        }
    }
}

proptest! {
    // Each case runs the simulator three times: fewer cases.
    #![proptest_config(budget(96))]

    #[test]
    fn generated_programs_simulate(p in strategies::program(false)) {
        runs_agree(&p);
        // The fast timing-only form (no cycle limit; small counts keep every run short) fails iff the exact form
        // does, with the same numbers when it succeeds.
        let cfg = ChipConfig::tsp_v1();
        let exact = simulate(&cfg, &p, &[], &[], &RunOptions { timing_only: true, max_cycles: Some(u64::MAX) });
        let fast = simulate(&cfg, &p, &[], &[], &RunOptions { timing_only: true, max_cycles: None });
        match (exact, fast) {
            (Ok((a, _)), Ok((b, _))) => prop_assert_eq!((a.cycles, a.instructions, a.busy, a.events), (b.cycles, b.instructions, b.busy, b.events)),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "exact {:?} fast {:?}", a.err(), b.err()),
        }
    }

    #[test]
    fn mutated_text_simulates(p in strategies::program(false), edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..4)) {
        let src = mutate_text(&text::print(&p), &edits);
        if let Ok(q) = text::parse(&src) {
            accepted(&q);
            runs_agree(&q);
        }
    }

    #[test]
    fn mutated_corpus_simulates(seed in proptest::sample::select(strategies::CORPUS), edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..5)) {
        // hand-written programs that run: their mutants get deep into the simulator before anything fails
        if let Ok(q) = text::parse(&mutate_text(seed, &edits)) {
            accepted(&q);
            runs_agree(&q);
        }
    }

    #[test]
    fn any_decodable_binary_simulates(p in strategies::program(true), edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..3)) {
        if let Ok(q) = encode::decode_program(&mutate_binary(&encode::encode_program(&p), &edits)) {
            runs_agree(&q);
        }
    }

    #[test]
    fn two_chip_systems_never_panic(a in strategies::program(false), b in strategies::program(false), timing_only in any::<bool>()) {
        let cfg = SystemConfig::from_json(r#"{"topology": "node", "chips": 2}"#).unwrap();
        let opts = SystemOptions { timing_only, max_cycles: Some(LIMIT), threads: 1 };
        let _ = simulate_system(&cfg, &[a, b], &[], &[], &opts);
    }
}
