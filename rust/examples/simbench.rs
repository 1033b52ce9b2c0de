//! Rust-level benchmark of one run of a loaded program (`load_program` once, `run_loaded` timed) on a dumped case (see bench/dump_case.py):
//! `cargo run --release --example simbench -- /tmp/case_big [iterations] [timing]`.
use lpusim::sim::{load_program, run_loaded};
use lpusim::{parse_program, ChipConfig, RunOptions};
use std::time::Instant;

fn u32_at(b: &[u8], o: &mut usize) -> usize {
    let v = u32::from_le_bytes(b[*o..*o + 4].try_into().unwrap()) as usize;
    *o += 4;
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = &args[1];
    let iters: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(20);
    let timing_only = args.get(3).map(|s| s == "timing").unwrap_or(false);
    let cfg_json = std::fs::read_to_string(format!("{base}.cfg")).unwrap();
    let prog_bytes = std::fs::read(format!("{base}.prog")).unwrap();
    let mem = std::fs::read(format!("{base}.mem")).unwrap();
    let mut o = 0;
    let (nm, nd) = (u32_at(&mem, &mut o), u32_at(&mem, &mut o));
    let mut images = Vec::new();
    for _ in 0..nm {
        let (s, a, n) = (u32_at(&mem, &mut o), u32_at(&mem, &mut o), u32_at(&mem, &mut o));
        images.push((s, a, mem[o..o + n * 320].to_vec()));
        o += n * 320;
    }
    let mut dumps = Vec::new();
    for _ in 0..nd {
        dumps.push((u32_at(&mem, &mut o), u32_at(&mem, &mut o), u32_at(&mem, &mut o)));
    }
    let opts = RunOptions { timing_only, max_cycles: None };
    let mut best = f64::MAX;
    let mut total = 0.0;
    let mut cycles = 0;
    // Decoded and loaded once, as `lpusim.Program` does (its `LoadedProgram`); each iteration times one run.
    let t = Instant::now();
    let cfg = ChipConfig::from_json(&cfg_json).unwrap();
    let loaded = load_program(&cfg, &parse_program(&prog_bytes).unwrap()).unwrap();
    println!("decode and load {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
    if timing_only {
        // A fast-form failure would mean every timed run also pays the exact rerun.
        let fast = loaded.chip(true, true).run(None);
        println!("fast timing-only form: {}", if fast.is_ok() { "ok".to_string() } else { format!("fails ({:?})", fast.err()) });
    }
    let inits: Vec<_> = images.iter().map(|(s, a, d)| (*s, *a, d.as_slice())).collect();
    for _ in 0..iters {
        let t = Instant::now();
        let (st, _) = run_loaded(&loaded, &inits, &dumps, &opts).unwrap();
        let e = t.elapsed().as_secs_f64();
        cycles = st.cycles;
        best = best.min(e);
        total += e;
    }
    println!("cycles {cycles} best {:.3} ms mean {:.3} ms", best * 1e3, total / iters as f64 * 1e3);
}
