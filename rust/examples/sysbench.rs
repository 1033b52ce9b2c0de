//! Rust-level benchmark of a system run: every chip of an N-chip node runs the same dumped case
//! (see bench/dump_case.py), on 1, 2 and 4 host threads; the results must be identical.
//! `cargo run --release --example sysbench -- /tmp/case_big [chips] [timing]`.
use lpusim::system::{simulate_system, SystemConfig, SystemOptions};
use lpusim::{parse_program, ChipConfig};
use std::time::Instant;

fn u32_at(b: &[u8], o: &mut usize) -> usize {
    let v = u32::from_le_bytes(b[*o..*o + 4].try_into().unwrap()) as usize;
    *o += 4;
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = &args[1];
    let chips: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(8);
    let timing_only = args.get(3).map(|s| s == "timing").unwrap_or(false);
    let cfg = ChipConfig::from_json(&std::fs::read_to_string(format!("{base}.cfg")).unwrap()).unwrap();
    let prog = parse_program(&std::fs::read(format!("{base}.prog")).unwrap()).unwrap();
    let mem = std::fs::read(format!("{base}.mem")).unwrap();
    let mut o = 0;
    let (nm, nd) = (u32_at(&mem, &mut o), u32_at(&mem, &mut o));
    let mut images = Vec::new();
    for _ in 0..nm {
        let (s, a, n) = (u32_at(&mem, &mut o), u32_at(&mem, &mut o), u32_at(&mem, &mut o));
        images.push((s, a, mem[o..o + n * cfg.lanes].to_vec()));
        o += n * cfg.lanes;
    }
    let mut dumps = Vec::new();
    for _ in 0..nd {
        dumps.push((u32_at(&mem, &mut o), u32_at(&mem, &mut o), u32_at(&mem, &mut o)));
    }
    let sys = SystemConfig::from_json(&format!(r#"{{"chips": {chips}, "chip": {}}}"#, cfg.to_json())).unwrap();
    let views: Vec<lpusim::sim::MemInit> = images.iter().map(|(s, a, d)| (*s, *a, d.as_slice())).collect();
    let progs = vec![prog; chips];
    let inits = vec![views; chips];
    let dd = vec![dumps; chips];
    let single = Instant::now();
    let one = lpusim::simulate(&cfg, &progs[0], &inits[0], &dd[0], &lpusim::RunOptions { timing_only, max_cycles: None }).unwrap();
    println!("one chip alone: {:.3}s, {} cycles", single.elapsed().as_secs_f64(), one.0.cycles);
    let mut first = None;
    for threads in [1, 2, 4] {
        let t = Instant::now();
        let r = simulate_system(&sys, &progs, &inits, &dd, &SystemOptions { timing_only, max_cycles: None, threads }).unwrap();
        println!("{chips} chips, {threads} thread(s): {:.3}s, {} cycles, {} windows", t.elapsed().as_secs_f64(), r.cycles, r.windows);
        match &first {
            None => first = Some(r),
            Some(f) => assert_eq!(f.chips, r.chips, "results differ between thread counts"),
        }
    }
}
