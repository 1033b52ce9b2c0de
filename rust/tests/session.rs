//! Programs run one after another on one `ChipMemory` (the MEM contents kept across runs; rust/src/sim/mem.rs says
//! what persists): what one program writes the next reads, a constant image installed once stays, a fault leaves
//! the memory as it stood and flagged, timing-only runs leave it alone, and everything but MEM starts fresh.
//! Cycles and values are derived by hand from docs/isa.md section 8, as in pipelines.rs.

use lpusim::isa::text;
use lpusim::sim::mem::ChipMemory;
use lpusim::sim::{load_program, run_loaded, Loaded, MemInit, Num, RunOptions};
use lpusim::{ChipConfig, ErrorKind, Stats};

const LANES: usize = 320;
/// Global slice of MEM.E<i>.
const E: usize = 44;

fn load(src: &str) -> Loaded {
    load_program(&ChipConfig::tsp_v1(), &text::parse(src).unwrap()).unwrap()
}

fn functional() -> RunOptions {
    RunOptions::default()
}

fn timing() -> RunOptions {
    RunOptions { timing_only: true, max_cycles: None }
}

/// The i32 in lane `l` of a 4-plane vector read from `memory` at MEM.W0..W3 (or E0..E3), `addr`.
fn word(memory: &ChipMemory, first_slice: usize, addr: usize, l: usize) -> u32 {
    let b: Vec<u8> = (0..4).map(|p| memory.read(first_slice + p, addr, 1).unwrap()[l]).collect();
    u32::from_le_bytes(b.try_into().unwrap())
}

fn dump_f32(s: &Stats, k: usize) -> Vec<f32> {
    let v = s.dumps[k].values.as_ref().unwrap();
    v.iter().map(|row| match row[0] { Num::F(f) => f as f32, Num::I(i) => i as f32 }).collect()
}

/// Program A: VXM.0 emits the i32 constant 0x01020304 westward at 0 + 2; byte plane b reaches MEM.W<b> (position
/// 46 - b, one hop per cycle from 47) at 3 + b and is written at address 100 (commit 4 + b).
fn writer(value: &str) -> String {
    let mut src = format!(".queue VXM.0\n COPY.i32 W0, #{value}\n");
    for b in 0..4 {
        src += &format!(".queue MEM.W{b}\n NOP {}\n WRITE 100, W{b}\n", 3 + b);
    }
    src
}

/// Program B (pipelines.rs `mem_vxm_mem`): MEM.W<b> READs address `from` at 3 - b (every plane at the VXM at 5),
/// `ADD.f32 #1.5` at 5 emits westward at 7, plane b written at address `to` of MEM.W<b> at 8 + b. 32 cycles.
fn add_one_and_half(from: u32, to: u32) -> String {
    let mut src = String::new();
    for b in 0..4 {
        src += &format!(".queue MEM.W{b}\n");
        if b < 3 {
            src += &format!(" NOP {}\n", 3 - b);
        }
        src += &format!(" READ {from}, E{b}\n NOP {}\n WRITE {to}, W{b}\n", 4 + 2 * b);
    }
    src += ".queue VXM.0\n NOP 5\n ADD.f32 W0, E0, #1.5\n";
    src += &format!(".dump MEM.W0 {to} f32 1\n");
    src
}

#[test]
fn a_later_program_reads_what_an_earlier_one_wrote() {
    let cfg = ChipConfig::tsp_v1();
    let (a, b) = (load(&writer("0x3f800000")), load(&add_one_and_half(100, 101))); // 0x3f800000 = 1.0f32
    let mut memory = ChipMemory::new(&cfg);
    let (sa, _) = a.run_on(&mut memory, &[], &[], &functional()).unwrap();
    assert_eq!(sa.cycles, 7 + 20); // the last commit at 7
    assert_eq!(word(&memory, 0, 100, 7), 0x3f800000);
    let (sb, out) = b.run_on(&mut memory, &[], &[(0, 101, 1)], &functional()).unwrap();
    assert_eq!(sb.cycles, 32);
    assert_eq!(dump_f32(&sb, 0)[0], 2.5);
    assert_eq!(out[0].as_ref().unwrap().len(), LANES);
    // On a fresh chip B reads zeros.
    let (fresh, _) = run_loaded(&b, &[], &[], &functional()).unwrap();
    assert_eq!(dump_f32(&fresh, 0)[0], 1.5);
    assert_eq!((fresh.cycles, &fresh.busy), (sb.cycles, &sb.busy));
    // Inputs written by one run stay for the next (no re-send), like anything the program writes.
    let planes: Vec<Vec<u8>> = (0..4).map(|p| vec![(10.0f32).to_bits().to_le_bytes()[p]; LANES]).collect();
    let inputs: Vec<MemInit> = planes.iter().enumerate().map(|(p, v)| (p, 100, v.as_slice())).collect();
    let (s1, _) = b.run_on(&mut memory, &inputs, &[], &functional()).unwrap();
    let (s2, _) = b.run_on(&mut memory, &[], &[], &functional()).unwrap();
    assert_eq!(dump_f32(&s1, 0)[0], 11.5);
    assert_eq!(dump_f32(&s2, 0)[0], 11.5);
}

#[test]
fn the_constant_image_is_installed_once_and_stays() {
    let cfg = ChipConfig::tsp_v1();
    // In place: address 100 += 1.5 each run, its initial value a `.init`; a static image at MEM.E9 besides.
    let src = add_one_and_half(100, 100) + ".init MEM.W0 100 f32 fill 1.0\n";
    let p = load(&src);
    let image = vec![7u8; 3 * LANES];
    let mut memory = ChipMemory::new(&cfg);
    assert!(!p.installed_in(&memory));
    p.install_static(&mut memory, &[(E + 9, 5, &image)]).unwrap();
    assert!(p.installed_in(&memory) && !load(&src).installed_in(&memory));
    assert_eq!(memory.read(E + 9, 5, 3).unwrap(), image);
    let fresh = run_loaded(&p, &[], &[], &functional()).unwrap();
    let first = p.run_on(&mut memory, &[], &[], &functional()).unwrap();
    // The first run on a freshly installed memory is a fresh run.
    assert_eq!(first, fresh);
    let mut got = Vec::new();
    for _ in 0..3 {
        let (s, _) = p.run_on(&mut memory, &[], &[], &functional()).unwrap();
        assert_eq!(s.cycles, fresh.0.cycles);
        got.push(dump_f32(&s, 0)[0]);
    }
    // The state evolves (as a KV cache would): the `.init` was not applied again.
    assert_eq!(got, vec![4.0, 5.5, 7.0]);
    assert_eq!(memory.read(E + 9, 5, 3).unwrap(), image);
    // Installing again rewrites the image; `clear` forgets everything.
    p.install_static(&mut memory, &[]).unwrap();
    assert_eq!(dump_f32(&p.run_on(&mut memory, &[], &[], &functional()).unwrap().0, 0)[0], 2.5);
    memory.clear();
    assert!(!p.installed_in(&memory) && memory.allocated_bytes() == 0);
    // Without an install the program runs on zeros.
    assert_eq!(dump_f32(&p.run_on(&mut memory, &[], &[], &functional()).unwrap().0, 0)[0], 1.5);
}

#[test]
fn a_fault_leaves_the_memory_as_it_stood_and_flagged() {
    let cfg = ChipConfig::tsp_v1();
    // The writer's commits land at 4..7; MEM.E0 reads out of range at 4: plane 0 committed (step 1 of cycle 4
    // comes before the issue), planes 1..3 never.
    let bad = load(&(writer("0x01020304") + ".queue MEM.E0\n NOP 4\n READ 9000, E0\n"));
    let mut memory = ChipMemory::new(&cfg);
    memory.write(1, 100, &vec![9u8; LANES]).unwrap();
    let want = run_loaded(&bad, &[], &[], &functional()).unwrap_err();
    let got = bad.run_on(&mut memory, &[], &[], &functional()).unwrap_err();
    assert_eq!(got, want);
    assert_eq!((got.kind, got.cycle), (ErrorKind::AddressOutOfRange, 4));
    assert_eq!(memory.fault(), Some(&got));
    assert_eq!(word(&memory, 0, 100, 0), 0x00000904, "plane 0 committed, plane 1 still the old 9s, 2 and 3 zero");
    // Refused until the host accepts the contents.
    let b = load(&add_one_and_half(100, 101));
    let refused = b.run_on(&mut memory, &[], &[], &functional()).unwrap_err();
    assert_eq!((refused.kind, refused.queue.as_str()), (ErrorKind::InvalidInstruction, "memory"));
    assert!(b.run_on(&mut memory, &[], &[], &timing()).is_err());
    assert!(b.install_static(&mut memory, &[]).is_err());
    memory.clear_fault();
    assert!(b.run_on(&mut memory, &[], &[], &functional()).is_ok());
    // A cycle limit is a fault too.
    assert_eq!(b.run_on(&mut memory, &[], &[], &RunOptions { timing_only: false, max_cycles: Some(5) }).unwrap_err().kind, ErrorKind::CycleLimit);
    assert_eq!(memory.fault().map(|e| e.kind), Some(ErrorKind::CycleLimit));
}

#[test]
fn errors_before_the_run_change_nothing() {
    let cfg = ChipConfig::tsp_v1();
    let b = load(&add_one_and_half(100, 101));
    let mut memory = ChipMemory::new(&cfg);
    let bad_input = vec![1u8; 5];
    let e = b.run_on(&mut memory, &[(0, 0, &bad_input)], &[], &functional()).unwrap_err();
    assert_eq!((e.kind, e.queue.as_str()), (ErrorKind::InvalidInstruction, "mem_init"));
    let e = b.run_on(&mut memory, &[], &[(0, 8190, 5)], &functional()).unwrap_err();
    assert_eq!(e.queue, "dumps");
    let mut other = cfg.clone();
    other.mem_words = 4096;
    let mut small = ChipMemory::new(&other);
    assert_eq!(b.run_on(&mut small, &[], &[], &functional()).unwrap_err().queue, "memory");
    assert!(memory.fault().is_none() && memory.allocated_bytes() == 0);
}

#[test]
fn timing_only_runs_leave_the_memory_alone() {
    let cfg = ChipConfig::tsp_v1();
    let b = load(&(add_one_and_half(100, 101) + ".init MEM.W0 100 f32 fill 2.0\n"));
    let mut memory = ChipMemory::new(&cfg);
    b.install_static(&mut memory, &[]).unwrap();
    let before: Vec<u8> = (0..4).flat_map(|p| memory.read(p, 100, 2).unwrap()).collect();
    let bytes = memory.allocated_bytes();
    let full = run_loaded(&b, &[], &[], &functional()).unwrap();
    let input = vec![1u8; LANES];
    let (t, out) = b.run_on(&mut memory, &[(3, 100, &input)], &[(0, 101, 1)], &timing()).unwrap();
    assert_eq!((t.cycles, &t.busy, &t.per_queue_issues), (full.0.cycles, &full.0.busy, &full.0.per_queue_issues));
    assert_eq!(t.events, full.0.events);
    assert_eq!(out, vec![None]);
    assert!(t.dumps[0].values.is_none());
    let after: Vec<u8> = (0..4).flat_map(|p| memory.read(p, 100, 2).unwrap()).collect();
    assert_eq!((after, memory.allocated_bytes()), (before, bytes), "no input written, no result committed");
    // A timing-only fault is the fresh run's and does not flag the memory.
    let bad = load(&(add_one_and_half(100, 101) + ".queue MEM.E0\n READ 9000, E0\n"));
    let e = bad.run_on(&mut memory, &[], &[], &timing()).unwrap_err();
    assert_eq!(e, run_loaded(&bad, &[], &[], &functional()).unwrap_err());
    assert!(memory.fault().is_none());
    let (s, _) = b.run_on(&mut memory, &[], &[], &functional()).unwrap();
    assert_eq!(dump_f32(&s, 0)[0], 3.5);
}

/// Everything but MEM starts fresh: an `ABC ... +` accumulates onto accumulator row 0, which starts at zero every
/// run, so every run gives the same product. (pipelines.rs `mxm_program`: 32 int8 weight rows from MEM.W0..W31
/// address 0, the activation from MEM.W32 address 1, the i32 result to MEM.W40..W43 address 0.)
#[test]
fn mxm_state_does_not_persist() {
    let cfg = ChipConfig::tsp_v1();
    let mut src = String::new();
    for j in 0..32 {
        src += &format!(".queue MEM.W{j}\n");
        if j > 0 {
            src += &format!(" NOP {j}\n");
        }
        src += &format!(" READ 0, W{j}\n");
    }
    src += ".queue MEM.W32\n NOP 34\n READ 1, W0\n.queue MEM.W33\n NOP 35\n READ 1, W1\n";
    src += ".queue MXM.W0.LW\n NOP 46\n LW.i8 W0, 32\n.queue MXM.W0.IW\n NOP 47\n IW\n";
    src += ".queue MXM.W0.ABC\n NOP 48\n ABC.i8 W0, 0, +\n.queue MXM.W0.ACC\n NOP 88\n ACC.i32 0, E0\n";
    for b in 0..4 {
        src += &format!(".queue MEM.W{}\n NOP {}\n WRITE 0, E{b}\n", 40 + b, 94 - b);
    }
    let p = load(&src);
    let w: Vec<u8> = (0..32 * LANES).map(|i| (i * 7 % 251) as u8).collect();
    let x: Vec<u8> = (0..LANES).map(|i| (i * 13 % 256) as u8).collect();
    let mut images: Vec<MemInit> = (0..32).map(|j| (j, 0, &w[j * LANES..(j + 1) * LANES])).collect();
    images.push((32, 1, &x));
    let dumps: Vec<_> = (0..4).map(|b| (40 + b, 0, 1)).collect();
    let fresh = run_loaded(&p, &images, &dumps, &functional()).unwrap();
    let mut memory = ChipMemory::new(&cfg);
    p.install_static(&mut memory, &images).unwrap();
    for _ in 0..3 {
        assert_eq!(p.run_on(&mut memory, &[], &dumps, &functional()).unwrap(), fresh);
    }
    let want: i64 = (0..32).map(|k| x[k] as i8 as i64 * w[k * LANES + 5] as i8 as i64).sum();
    assert_eq!(word(&memory, 40, 0, 5) as i32 as i64, want);
}

/// The bundled example, with its `.init`s: a run on an installed memory is the fresh run, values and all.
#[test]
fn example_program_runs_the_same_on_a_memory() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bias_relu.asm")).unwrap();
    let p = load(&src);
    let fresh = run_loaded(&p, &[], &[(4, 8, 2)], &functional()).unwrap();
    let mut memory = ChipMemory::new(&ChipConfig::tsp_v1());
    p.install_static(&mut memory, &[]).unwrap();
    for _ in 0..2 {
        assert_eq!(p.run_on(&mut memory, &[], &[(4, 8, 2)], &functional()).unwrap(), fresh);
    }
}
