//! Robustness: mutated programs never panic the assembler or the simulator, and timing-only runs always agree
//! with full runs on cycles, counters and errors.

use lpusim::{isa::text, simulate, ChipConfig, RunOptions};

const SEED_PROGRAM: &str = "
.queue MEM.W3
 NOP 2
 READ 16, W2
 REPEAT 7, 1
 WRITE 5, E1
.queue MEM.W0
 READ 0, E0
 GATHER E8, E0
.queue MEM.E1
 NOP 3
 WRITE 20, E4
 SCATTER E4, E0
.queue VXM.0
 NOP 2
 ADD.f32 E4, E0, #1.5
 CVT.f32.f16 W10, R0
 MUL.i32 -, R0, #3
.queue VXM.1
 SYNC
 EXP.f32 E12, E0
.queue VXM.2
 NOP 4
 NOTIFY
.queue MXM.W0.LW
 NOP 44
 LW.i8 W2, 2
.queue MXM.W0.IW
 NOP 45
 IW
.queue MXM.W0.ABC
 NOP 46
 ABC.i8 W2, 3
.queue MXM.W0.ACC
 NOP 90
 ACC.f32 3, E0
.queue SXM.W.0
 NOP 45
 SHIFT E3, W2, 5
 TRANSPOSE E16, W0
.queue C2C.0
 NOP 45
 SEND W2
.queue C2C.8
 NOP 60
 RECV W5
.init MEM.W3 16 f32 1.0 2.0
.init MEM.W0 0 u8 fill 3
.link 0 8 9
";

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
