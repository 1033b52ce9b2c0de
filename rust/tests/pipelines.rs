//! End-to-end programs with values and cycle counts derived by hand from the latencies of docs/isa.md section 8.

use lpusim::isa::text;
use lpusim::sim::Num;
use lpusim::{simulate, ChipConfig, RunOptions, Stats};

const LANES: usize = 320;

/// Run functional and timing-only; both must agree on cycles and counters. Returns the functional result.
fn run(src: &str, mem: &[(usize, usize, Vec<u8>)], dumps: &[(usize, usize, usize)]) -> (Stats, Vec<Option<Vec<u8>>>) {
    let cfg = ChipConfig::tsp_v1();
    let p = text::parse(src).unwrap();
    let inits: Vec<lpusim::sim::MemInit> = mem.iter().map(|(s, a, d)| (*s, *a, d.as_slice())).collect();
    let full = simulate(&cfg, &p, &inits, dumps, &RunOptions::default()).unwrap();
    let again = simulate(&cfg, &p, &inits, dumps, &RunOptions::default()).unwrap();
    assert_eq!(full, again, "two runs must be identical");
    let timing = simulate(&cfg, &p, &inits, dumps, &RunOptions { timing_only: true, max_cycles: None }).unwrap();
    assert_eq!(full.0.cycles, timing.0.cycles);
    assert_eq!(full.0.busy, timing.0.busy);
    assert_eq!(full.0.events, timing.0.events);
    assert_eq!(full.0.per_queue_issues, timing.0.per_queue_issues);
    assert!(timing.1.iter().all(|d| d.is_none()));
    full
}

fn f32s(v: &Num) -> f32 {
    match v {
        Num::F(f) => *f as f32,
        Num::I(i) => *i as f32,
    }
}

/// MEM.W0..W3 hold an f32 vector (byte plane b in W<b>, position 46 - b). Slice b READs at 3 - b so every plane
/// reaches the VXM (47) at cycle 5 (read latency 1, then 1 + b hops). ADD at 5 emits westward at 5 + 2 = 7; plane b
/// reaches W<b> at 7 + 1 + b and is written there (commit one cycle later). The last commit is at 12, so the run
/// takes 12 + 1 + 19 = 32 cycles.
#[test]
fn mem_vxm_mem() {
    let mut src = String::new();
    for b in 0..4 {
        src += &format!(".queue MEM.W{b}\n");
        if b < 3 {
            src += &format!(" NOP {}\n", 3 - b);
        }
        src += &format!(" READ 0, E{b}\n NOP {}\n WRITE 1, W{b}\n", 4 + 2 * b);
    }
    src += ".queue VXM.0\n NOP 5\n ADD.f32 W0, E0, #1.5\n";
    src += ".init MEM.W0 0 f32 1.0 2.0 -3.25 1e30\n.dump MEM.W0 1 f32 1\n";
    let (s, _) = run(&src, &[], &[]);
    assert_eq!(s.cycles, 32);
    assert_eq!(s.instructions, 9);
    assert_eq!(s.busy.mem, 8);
    assert_eq!(s.busy.vxm, 1);
    let v = s.dumps[0].values.as_ref().unwrap();
    let got: Vec<f32> = v[0][..5].iter().map(f32s).collect();
    assert_eq!(got, vec![2.5, 3.5, -1.75, 1e30 + 1.5, 1.5]);
}

/// The same pipeline with a REPEAT: 8 vectors streamed through `MUL` back-to-back (one per cycle), into addresses
/// 100..107 of the east slices E0..E3 via eastward streams.
#[test]
fn repeat_streams_a_tensor() {
    let mut src = String::new();
    // West slices read addresses 0..7 (same alignment as above: vector j reaches the VXM at 5 + j).
    for b in 0..4 {
        src += &format!(".queue MEM.W{b}\n");
        if b < 3 {
            src += &format!(" NOP {}\n", 3 - b);
        }
        src += &format!(" READ 0, E{b}\n REPEAT 7, 1\n");
    }
    // MUL (latency 3) at 5..12 emits eastward at 8..15; plane b reaches E<b> (position 48 + b) at 8 + 1 + b.
    src += ".queue VXM.5\n NOP 5\n MUL.f32 E4, E0, #-2\n REPEAT 7, 1\n";
    for b in 0..4 {
        src += &format!(".queue MEM.E{b}\n NOP {}\n WRITE 100, E{}\n REPEAT 7, 1\n", 9 + b, 4 + b);
    }
    let mut mem = Vec::new();
    let mut planes = vec![vec![0u8; 8 * LANES]; 4];
    for j in 0..8 {
        for l in 0..LANES {
            let x = (j * 1000 + l) as f32 * 0.25;
            for (b, p) in planes.iter_mut().enumerate() {
                p[j * LANES + l] = x.to_bits().to_le_bytes()[b];
            }
        }
    }
    for (b, p) in planes.into_iter().enumerate() {
        mem.push((b, 0usize, p));
    }
    let dumps: Vec<(usize, usize, usize)> = (0..4).map(|b| (44 + b, 100, 8)).collect();
    let (s, out) = run(&src, &mem, &dumps);
    // Last commit: E3 writes at 9 + 3 + 7 = 19, commits at 20: 20 + 20 = 40 cycles.
    assert_eq!(s.cycles, 40);
    assert_eq!(s.instructions, 4 * 8 + 8 + 4 * 8);
    for j in 0..8 {
        for l in 0..LANES {
            let bytes: Vec<u8> = (0..4).map(|b| out[b].as_ref().unwrap()[j * LANES + l]).collect();
            let got = f32::from_le_bytes(bytes.try_into().unwrap());
            assert_eq!(got, (j * 1000 + l) as f32 * 0.25 * -2.0);
        }
    }
}

/// Deterministic pseudo-random bytes.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Weight rows come from MEM.W0..W31 (slice j on westward stream W<j>, position 46 - j, READ at cycle j, so every
/// row reaches MXM.W0 (position 1) at 46). LW at 46, IW at 47 (installed from 48). Activation planes from W32/W33
/// (positions 14/13) on W0/W1, READ at 34/35, arrive at 48: ABC at 48 lands at 48 + 39 = 87. ACC at 88 emits
/// eastward at 89; plane b reaches W(40+b) (position 6 - b) at 89 + 5 - b, written there.
fn mxm_program(t: &str, rows: usize, acc_t: &str) -> String {
    let mut src = String::new();
    for j in 0..32 {
        src += &format!(".queue MEM.W{j}\n");
        if j > 0 {
            src += &format!(" NOP {j}\n");
        }
        src += &format!(" READ 0, W{j}\n");
    }
    src += &format!(".queue MEM.W32\n NOP 34\n READ 1, W0\n.queue MEM.W33\n NOP 35\n READ 1, W1\n");
    src += &format!(".queue MXM.W0.LW\n NOP 46\n LW.{t} W0, {rows}\n.queue MXM.W0.IW\n NOP 47\n IW\n");
    src += &format!(".queue MXM.W0.ABC\n NOP 48\n ABC.{t} W0, 0\n.queue MXM.W0.ACC\n NOP 88\n ACC.{acc_t} 0, E0\n");
    for b in 0..4 {
        src += &format!(".queue MEM.W{}\n NOP {}\n WRITE 0, E{b}\n", 40 + b, 94 - b);
    }
    src
}

fn read_u32s(out: &[Option<Vec<u8>>]) -> Vec<u32> {
    (0..LANES)
        .map(|l| {
            let b: Vec<u8> = (0..4).map(|p| out[p].as_ref().unwrap()[l]).collect();
            u32::from_le_bytes(b.try_into().unwrap())
        })
        .collect()
}

#[test]
fn mxm_int8_tile() {
    let mut seed = 0x9e3779b97f4a7c15u64;
    // 32 weight rows (k), one per slice, address 0; activation in W32 address 1 (i8: one plane).
    let w: Vec<Vec<u8>> = (0..32).map(|_| (0..LANES).map(|_| rng(&mut seed) as u8).collect()).collect();
    let x: Vec<u8> = (0..LANES).map(|_| rng(&mut seed) as u8).collect();
    let mut mem: Vec<(usize, usize, Vec<u8>)> = w.iter().enumerate().map(|(j, r)| (j, 0, r.clone())).collect();
    mem.push((32, 1, x.clone()));
    let dumps: Vec<_> = (0..4).map(|b| (40 + b, 0, 1)).collect();
    let (s, out) = run(&mxm_program("i8", 32, "i32"), &mem, &dumps);
    // Last write: W40 at 94, commit 95: 95 + 20 = 115 cycles.
    assert_eq!(s.cycles, 115);
    assert_eq!(s.busy.mxm, 1);
    let got = read_u32s(&out);
    for n in 0..LANES {
        let want: i64 = (0..32).map(|k| x[k] as i8 as i64 * w[k][n] as i8 as i64).sum();
        assert_eq!(got[n] as i32 as i64, want, "lane {n}");
    }
}

/// A random finite f16 with a narrow exponent range, so an f64 sum of 16 products is exact.
fn small_f16(seed: &mut u64) -> u16 {
    let r = rng(seed);
    let sign = ((r & 1) as u16) << 15;
    let exp = 10 + (r >> 1) % 8; // biased exponents 10..17: 2^-5 .. 2^2
    let frac = (r >> 8) as u16 & 0x3ff;
    sign | (exp as u16) << 10 | frac
}

fn f16v(b: u16) -> f64 {
    lpusim::numerics::f16_to_f64(b)
}

fn f16_case(w: &[Vec<u16>], x: &[u16]) -> Vec<u32> {
    // Row k = streams 2k (low byte, slice W(2k)) and 2k+1 (high byte, slice W(2k+1)); activation lo in W32, hi in W33.
    let mut mem = Vec::new();
    for (k, row) in w.iter().enumerate() {
        mem.push((2 * k, 0usize, row.iter().map(|v| *v as u8).collect::<Vec<u8>>()));
        mem.push((2 * k + 1, 0, row.iter().map(|v| (*v >> 8) as u8).collect()));
    }
    let mut xs = vec![0u16; LANES];
    xs[..x.len()].copy_from_slice(x);
    mem.push((32, 1, xs.iter().map(|v| *v as u8).collect()));
    mem.push((33, 1, xs.iter().map(|v| (*v >> 8) as u8).collect()));
    let dumps: Vec<_> = (0..4).map(|b| (40 + b, 0, 1)).collect();
    let (s, out) = run(&mxm_program("f16", w.len(), "f32"), &mem, &dumps);
    assert_eq!(s.busy.mxm, 4);
    read_u32s(&out)
}

#[test]
fn mxm_f16_tile_exact_and_order_free() {
    let mut seed = 12345u64;
    let w: Vec<Vec<u16>> = (0..16).map(|_| (0..LANES).map(|_| small_f16(&mut seed)).collect()).collect();
    let x: Vec<u16> = (0..16).map(|_| small_f16(&mut seed)).collect();
    let got = f16_case(&w, &x);
    for n in 0..LANES {
        // Exact: products have 22-bit mantissas over a 2^-10..2^4 range, so the f64 sum is exact; one rounding.
        let want: f64 = (0..16).map(|k| f16v(x[k]) * f16v(w[k][n])).sum();
        assert_eq!(f32::from_bits(got[n]), want as f32, "lane {n}");
    }
    // Permuting K (rows and activation together) gives identical bits.
    let perm: Vec<usize> = (0..16).rev().collect();
    let wp: Vec<Vec<u16>> = perm.iter().map(|&k| w[k].clone()).collect();
    let xp: Vec<u16> = perm.iter().map(|&k| x[k]).collect();
    assert_eq!(f16_case(&wp, &xp), got);
}

#[test]
fn mxm_f16_no_intermediate_rounding_and_specials() {
    // Lane 0: 1 + 2^-24 - 1 = 2^-24 exactly (a float accumulator would lose it).
    // Lane 1: inf * 0 -> NaN. Lane 2: +inf + (-inf) -> NaN. Lane 3: 65504 * 65504 * 3 (beyond f16, fine in f32).
    let one = 0x3C00u16;
    let tiny = 0x0001u16; // 2^-24
    let inf = 0x7C00u16;
    let ninf = 0xFC00u16;
    let big = 0x7BFFu16; // 65504
    let mut w = vec![vec![0u16; LANES]; 3];
    let x = vec![one, one, one];
    w[0][0] = one;
    w[1][0] = tiny;
    w[2][0] = 0xBC00; // -1
    w[0][1] = inf; // x=1 * inf = inf; another row gives 1 * 0... inf * 0 needs a zero activation:
    w[0][2] = inf;
    w[1][2] = ninf;
    w[0][3] = big;
    w[1][3] = big;
    w[2][3] = big;
    let got = f16_case(&w, &x);
    assert_eq!(f32::from_bits(got[0]), 2f32.powi(-24));
    assert_eq!(got[1], f32::INFINITY.to_bits());
    assert_eq!(got[2], 0x7FC0_0000);
    assert_eq!(f32::from_bits(got[3]), 65504.0 * 3.0);
    // inf * 0: activation 0 on a row holding inf.
    let mut w2 = vec![vec![0u16; LANES]; 2];
    w2[0][0] = inf;
    w2[1][0] = one;
    let got = f16_case(&w2, &[0, one]);
    assert_eq!(got[0], 0x7FC0_0000);
    assert_eq!(f32::from_bits(got[1]), 0.0);
}

/// SXM west at position 2. MEM.W43 (position 3) reads at 0 onto W0: reaches 2 at cycle 2.
/// SHIFT at 2 emits eastward at 2 + 2 + 19 = 23; reaches MEM.W42 (position 4) at 25.
#[test]
fn sxm_shift_and_transpose() {
    let src = ".queue MEM.W43\n READ 0, W0\n.queue SXM.W.0\n NOP 2\n SHIFT E3, W0, 5\n.queue MEM.W42\n NOP 25\n WRITE 0, E3\n";
    let x: Vec<u8> = (0..LANES).map(|l| (l % 256) as u8).collect();
    let (s, out) = run(src, &[(43, 0, x.clone())], &[(42, 0, 1)]);
    assert_eq!(s.cycles, 26 + 20);
    let got = out[0].as_ref().unwrap();
    assert_eq!(&got[..7], &[0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(got[319], x[314]);
}

/// Loopback on one chip: link 0 (west, position 2) sends to link 8 (east, position 92), latency 10.
#[test]
fn c2c_loopback() {
    // MEM.W43 (3) reads at 0 onto W0, at position 2 at cycle 2. SEND at 2 arrives at link 8 at 12.
    // RECV at 12 emits at 13 from 92 westward onto W1; MEM.E43 (position 91) sees it at 14.
    let src = ".queue MEM.W43\n READ 0, W0\n.queue C2C.0\n NOP 2\n SEND W0\n.queue C2C.8\n NOP 12\n RECV W1\n\
               .queue MEM.E43\n NOP 14\n WRITE 3, W1\n.link 0 8 10\n";
    let x: Vec<u8> = (0..LANES).map(|l| (l * 7 % 256) as u8).collect();
    let (s, out) = run(src, &[(43, 0, x.clone())], &[(87, 3, 1)]);
    assert_eq!(s.cycles, 15 + 20);
    assert_eq!(s.busy.c2c, 2);
    assert_eq!(out[0].as_ref().unwrap(), &x);
}

/// A loopback link serialises like a system link: one 328-byte flit per `min_send_interval_cycles` (24 at 100 Gb/s
/// and 900 MHz). Two vectors sent back to back are spaced by the interval: SENDs at 2 and 26, arrivals at 12 and
/// 36, RECVs there, writes at 14 and 38.
#[test]
fn c2c_loopback_sends_one_flit_per_interval() {
    let interval = lpusim::system::SystemConfig::default().resolve().unwrap().min_send_interval_cycles();
    assert_eq!(interval, 24);
    let src = ".queue MEM.W43\n READ 0, W0\n REPEAT 1, 24\n.queue C2C.0\n NOP 2\n SEND W0\n REPEAT 1, 24\n\
               .queue C2C.8\n NOP 12\n RECV W1\n REPEAT 1, 24\n.queue MEM.E43\n NOP 14\n WRITE 3, W1\n REPEAT 1, 24\n\
               .link 0 8 10\n";
    let x: Vec<u8> = (0..LANES).map(|l| (l * 7 % 256) as u8).collect();
    let y: Vec<u8> = (0..LANES).map(|l| (l * 3 % 256) as u8).collect();
    let (s, out) = run(src, &[(43, 0, x.clone()), (43, 1, y.clone())], &[(87, 3, 2)]);
    assert_eq!(s.cycles, 39 + 20);
    let got = out[0].as_ref().unwrap();
    assert_eq!((&got[..LANES], &got[LANES..]), (&x[..], &y[..]));
    // One cycle apart, the second SEND is LinkBusy.
    let busy = src.replace(" READ 0, W0\n REPEAT 1, 24", " READ 0, W0\n REPEAT 1, 1").replace(" SEND W0\n REPEAT 1, 24", " SEND W0\n REPEAT 1, 1");
    let prog = text::parse(&busy).unwrap();
    let err = simulate(&ChipConfig::tsp_v1(), &prog, &[], &[], &RunOptions::default()).unwrap_err();
    assert_eq!((err.kind, err.cycle), (lpusim::error::ErrorKind::LinkBusy, 3));
}

#[test]
fn empty_program_takes_no_cycles() {
    let (s, _) = run(".queue VXM.0\n NOP 5\n", &[], &[]);
    assert_eq!(s.cycles, 0);
    assert_eq!(s.instructions, 0);
}

/// Every energy event (docs/isa.md "Energy events") counted by hand on one program that uses every unit, the same
/// functional and timing-only (`run`). Positions: MXM W1 0, W0 1, SXM W 2, MEM.W<i> 46 - i, VXM 47, MEM.E<i> 48 + i,
/// SXM E 92; 95 in all, so an eastward vector emitted at p travels 94 - p positions, a westward one p.
const ENERGY_EVENTS: &str = "
.queue MEM.W43
 READ 0, W0          ; cycles 0..2, emits at 1..3 at 3: 3 hops each (9); at MXM W0 (1) at 3..5, W1 (0) at 4..6
 REPEAT 2, 1, 1
.queue MEM.W42
 READ 0, W1          ; emit at 1 at 4: 4 hops; at MXM W1 at 5
.queue MEM.E0
 READ 0, E30         ; emit at 1 at 48 ...
.queue MEM.E1
 NOP 1
 READ 1, E30         ; ... overwritten by this emit at 2 at 49 (same diagonal): 1 + 45 = 46 hops together
.queue VXM.0
 ADD.i32 W4, #1, #2  ; emit W4..W7 at 2 at 47: 4 x 47 = 188 hops
 EXP.f32 -, #1.0     ; 2 transcendental ops, no emit
 REPEAT 1, 1
.queue MEM.W1
 NOP 4
 WRITE 5, W4         ; W4 at 45 at 4
.queue MEM.W2
 NOP 5
 GATHER E12, W4      ; map W4, W5 at 44 at 5; emit at 6 at 44: 50 hops
.queue MEM.W3
 NOP 6
 SCATTER W6, W4      ; at 43 at 6
.queue MXM.W0.LW
 NOP 3
 LW.i8 W0, 1         ; one weight row
.queue MXM.W0.IW
 NOP 4
 IW
.queue MXM.W0.ABC
 NOP 4
 ABC.i8 W0, 0        ; cycles 4, 5: two int8 vectors (rows 0, 1 updated at 43, 44)
 REPEAT 1, 1, 1
.queue MXM.W0.ACC
 NOP 50
 ACC.i32 0, E4       ; emit E4..E7 at 51 at 1: 4 x 93 = 372 hops
.queue MXM.W1.ABC
 NOP 5
 ABC.f16 W0, 0       ; W0, W1 at 0 at 5: one fp16 vector
.queue MXM.W1.LW
 NOP 5
 LW.f16 W0, 1        ; one f16 row: two weight vectors (never installed)
.queue SXM.W.0
 NOP 2
 SHIFT W20, W0, 1    ; emit at 2 + 2 + 19 = 23 at 2: 2 hops
.queue C2C.0
 NOP 3
 SEND W0             ; arrives at link 8 at 13
.queue C2C.8
 NOP 20
 RECV E31            ; emit at 21 at 92: 2 hops
.link 0 8 10
";

#[test]
fn energy_events_by_hand() {
    let (s, _) = run(ENERGY_EVENTS, &[], &[]);
    let e = &s.events;
    assert_eq!((e.mem_read_vectors, e.mem_write_vectors), (3 + 1 + 1 + 1 + 1, 2)); // READs + GATHER; WRITE + SCATTER
    assert_eq!((e.mxm_int8_vectors, e.mxm_fp16_vectors, e.mxm_weight_vectors), (2, 1, 1 + 2));
    assert_eq!((e.vxm_ops, e.vxm_transcendental_ops, e.sxm_ops, e.c2c_vectors), (3, 2, 1, 1));
    assert_eq!(e.stream_hops, 9 + 4 + 46 + 188 + 50 + 372 + 2 + 2);
    assert_eq!((e.instructions, s.instructions), (22, 22));
    assert_eq!(s.cycles, 51 + 20);
    // The exact order's timing-only run too (`run` compared the functional run with the fast form).
    let loaded = lpusim::sim::load_program(&ChipConfig::tsp_v1(), &text::parse(ENERGY_EVENTS).unwrap()).unwrap();
    let mut exact = loaded.chip(true, false);
    exact.run(None).unwrap();
    assert_eq!(&exact.stats().events, e);
}
