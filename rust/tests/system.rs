//! Many chips (docs/system.md): transfers across links with real clock drift, the synchronisation instructions,
//! link errors naming both chips, and identical results for any thread count.

use lpusim::isa::text;
use lpusim::sim::Num;
use lpusim::system::{simulate_system, SystemConfig, SystemError, SystemOptions, SystemResult};
use lpusim::{ErrorKind, Program};
use std::collections::BTreeMap;

/// Instructions per queue at cycles counted from the first HAC epoch boundary (every queue starts with DESKEW).
#[derive(Default, Clone)]
struct Prog {
    queues: BTreeMap<String, Vec<(u64, String)>>,
    extra: String,
}

impl Prog {
    fn at(&mut self, q: &str, c: u64, ins: &str) -> &mut Self {
        self.queues.entry(q.into()).or_default().push((c, ins.into()));
        self
    }
    fn text(&self) -> String {
        let mut s = String::new();
        for (q, evs) in &self.queues {
            let mut evs = evs.clone();
            evs.sort();
            s += &format!(".queue {q}\n DESKEW\n");
            let mut cur = 0;
            for (c, ins) in evs {
                assert!(c >= cur, "{q}: two instructions at {c}");
                if c > cur {
                    s += &format!(" NOP {}\n", c - cur);
                }
                s += &format!(" {ins}\n");
                cur = c + if ins.starts_with("RUNTIME_DESKEW") { ins[15..].trim().parse::<u64>().unwrap() } else { 1 };
                if let Some((_, rep)) = ins.split_once("REPEAT ") {
                    // "INSTR\n REPEAT n, d[, s]": n more issues d cycles apart.
                    let nd: Vec<u64> = rep.split(',').take(2).map(|x| x.trim().parse().unwrap()).collect();
                    cur += nd[0] * nd[1];
                }
            }
        }
        s + &self.extra
    }
    fn program(&self) -> Program {
        text::parse(&self.text()).unwrap()
    }
}

/// MEM.W0 (position 46) to C2C link `l` < 8 (position 2): 44 hops west, after the read's 1 cycle.
const HOPS: u64 = 45;
/// Receive this long after the send: link latency (217 +- 3), HAC alignment error and clock phase, plus margin.
const SLACK: u64 = 226;

/// Chip sends MEM.W0[addr] on link `l` at cycle `c` (the READ is HOPS earlier).
fn send(p: &mut Prog, l: usize, addr: u32, c: u64) {
    p.at("MEM.W0", c - HOPS, &format!("READ {addr}, W5"));
    p.at(&format!("C2C.{l}"), c, "SEND W5");
}

/// Chip receives on link `l` at cycle `c` and stores the vector at MEM.W0[addr].
fn recv(p: &mut Prog, l: usize, addr: u32, c: u64) {
    p.at(&format!("C2C.{l}"), c, "RECV E5");
    p.at("MEM.W0", c + HOPS, &format!("WRITE {addr}, E5"));
}

fn node(chips: usize, extra: &str) -> SystemConfig {
    SystemConfig::from_json(&format!(r#"{{"topology": "node", "chips": {chips}{extra}}}"#)).unwrap()
}

/// Link of chip `a` toward chip `b` in a node.
fn link(a: usize, b: usize) -> usize {
    if b < a {
        b
    } else {
        b - 1
    }
}

fn run(cfg: &SystemConfig, progs: &[Prog], threads: usize) -> Result<SystemResult, SystemError> {
    let ps: Vec<Program> = progs.iter().map(|p| p.program()).collect();
    simulate_system(cfg, &ps, &[], &[], &SystemOptions { threads, ..Default::default() })
}

fn dumped(r: &SystemResult, chip: usize, k: usize) -> Vec<i64> {
    let v = r.chips[chip].stats.dumps[k].values.as_ref().unwrap();
    v[0].iter().map(|x| if let Num::I(i) = x { *i } else { -1 }).collect()
}

/// Chip 0 sends its vector to chip 1, which sends it back; both store it.
fn ping_pong(start: u64) -> Vec<Prog> {
    let mut a = Prog::default();
    let mut b = Prog::default();
    a.extra = ".init MEM.W0 0 u8 1 2 3 250\n.dump MEM.W0 1 u8 1\n".into();
    b.extra = ".dump MEM.W0 1 u8 1\n".into();
    send(&mut a, 0, 0, start);
    recv(&mut b, 0, 1, start + SLACK);
    let back = start + SLACK + HOPS + 2 + HOPS;
    send(&mut b, 0, 1, back);
    recv(&mut a, 0, 1, back + SLACK);
    vec![a, b]
}

#[test]
fn ping_pong_two_chips() {
    let cfg = node(2, "");
    let r = run(&cfg, &ping_pong(HOPS), 1).unwrap();
    for c in 0..2 {
        assert_eq!(&dumped(&r, c, 0)[..5], &[1, 2, 3, 250, 0]);
    }
    assert_eq!(r.links.len(), 2);
    assert_eq!((r.links[0].vectors, r.links[1].vectors), (1, 1));
    assert_eq!(r.links[0].bytes, 328);
    assert!(r.links[0].busy_fraction > 0.0 && r.links[0].busy_fraction < 0.1);
    assert_eq!(r.min_send_interval_cycles, 24);
    assert_eq!(r.tree_height, 1);
    // Timing-only: same cycles.
    let ps: Vec<Program> = ping_pong(HOPS).iter().map(|p| p.program()).collect();
    let t = simulate_system(&cfg, &ps, &[], &[], &SystemOptions { timing_only: true, ..Default::default() }).unwrap();
    assert_eq!(t.cycles, r.cycles);
    assert_eq!(t.chips[0].stats.cycles, r.chips[0].stats.cycles);
}

/// Chip i sends to chip i+1 (mod 8), all at once; every chip stores its left neighbour's vector.
fn ring(n: usize) -> Vec<Prog> {
    (0..n)
        .map(|i| {
            let mut p = Prog::default();
            p.extra = format!(".init MEM.W0 0 u8 {} {}\n.dump MEM.W0 1 u8 1\n", i + 10, 3 * i);
            send(&mut p, link(i, (i + 1) % n), 0, HOPS);
            recv(&mut p, link(i, (i + n - 1) % n), 1, HOPS + SLACK);
            p
        })
        .collect()
}

#[test]
fn ring_of_eight_any_thread_count() {
    let cfg = node(8, "");
    let r1 = run(&cfg, &ring(8), 1).unwrap();
    for i in 0..8 {
        let from = (i + 7) % 8;
        assert_eq!(&dumped(&r1, i, 0)[..2], &[from as i64 + 10, 3 * from as i64]);
    }
    for threads in [2, 4] {
        let r = run(&cfg, &ring(8), threads).unwrap();
        assert_eq!(r.threads, threads);
        assert_eq!(r.chips, r1.chips);
        assert_eq!(r.links, r1.links);
        assert_eq!((r.cycles, r.windows), (r1.cycles, r1.windows));
    }
}

/// Every queue first runs free for `free` cycles (drift accumulates), then RUNTIME_DESKEW `t` realigns it; `times`
/// times over. The original instructions follow.
fn with_runtime_deskews(progs: &mut [Prog], free: u64, t: u64, times: u64) {
    for p in progs.iter_mut() {
        let old = std::mem::take(&mut p.queues);
        for (q, evs) in old {
            for k in 0..times {
                p.at(&q, k * (free + t) + free, &format!("RUNTIME_DESKEW {t}"));
            }
            for (c, ins) in evs {
                p.at(&q, c + times * (free + t), &ins);
            }
        }
    }
}

#[test]
fn drift_seeds_never_break_a_run() {
    // 50,000 free-running cycles (up to 5 cycles of relative drift at +-50 ppm), then RUNTIME_DESKEW absorbs the
    // drift before the transfers.
    for seed in 0..12 {
        let cfg = node(8, &format!(r#", "seed": {seed}, "drift_ppm": 50"#));
        let mut progs = ring(8);
        with_runtime_deskews(&mut progs, 50_000, 100, 1);
        let r = run(&cfg, &progs, 2).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for i in 0..8 {
            let from = (i + 7) % 8;
            assert_eq!(dumped(&r, i, 0)[0], from as i64 + 10, "seed {seed}");
        }
        assert!(r.sync_cycles >= 90);
    }
}

#[test]
fn over_drift_is_an_error_naming_both_chips() {
    // Chip 1 runs 2000 ppm fast: after 100,000 free-running cycles it is 200 cycles ahead and receives too early.
    let cfg = node(2, r#", "chip_drift_ppm": [0, 2000]"#);
    let mut progs = ping_pong(100_000);
    let e = run(&cfg, &progs, 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LinkEmpty, "{e}");
    assert_eq!((e.chip, e.link, e.peer_chip, e.peer_link), (Some(1), Some(0), Some(0), Some(0)));
    let (c, pc) = (e.cycle, e.peer_cycle.unwrap());
    assert!(pc + 150 < c, "chip 1 at {c} is ahead of chip 0 at {pc}: {e}");
    let s = e.to_string();
    assert!(s.contains("chip 1") && s.contains("chip 0") && s.contains("link 0"), "{s}");
    // A RUNTIME_DESKEW cannot measure 200 cycles of drift (more than half the HAC period): DriftOverrun.
    progs[1].at("C2C.0", 100_000, "RUNTIME_DESKEW 10");
    let e = run(&cfg, &progs, 1).unwrap_err();
    assert_eq!((e.kind, e.chip), (ErrorKind::DriftOverrun, Some(1)), "{e}");
    // An oscillator too far off for the HAC to track: DriftOverrun before the run, naming the tree link.
    let cfg = node(2, r#", "chip_drift_ppm": [0, 5000]"#);
    let e = run(&cfg, &ping_pong(HOPS), 1).unwrap_err();
    assert_eq!((e.kind, e.chip, e.peer_chip), (ErrorKind::DriftOverrun, Some(1), Some(0)), "{e}");
}

#[test]
fn runtime_deskew_absorbs_drift() {
    // The same 2000 ppm, with a RUNTIME_DESKEW after every 20,000 free-running cycles (40 cycles of drift each).
    let cfg = node(2, r#", "chip_drift_ppm": [0, 2000]"#);
    let mut progs = ping_pong(HOPS);
    with_runtime_deskews(&mut progs, 20_000, 100, 5);
    let r = run(&cfg, &progs, 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&dumped(&r, 0, 0)[..4], &[1, 2, 3, 250]);
    // The fast chip's deskews wait out its drift: 5 x 40 cycles more than the root's.
    let (s0, s1) = (r.chips[0].stats.sync_cycles, r.chips[1].stats.sync_cycles);
    assert!((195..=205).contains(&(s1 - s0)), "{s0} {s1}");
}

#[test]
fn link_busy_and_link_errors() {
    let cfg = node(2, "");
    let mut a = Prog::default();
    a.at("MEM.W0", 0, "READ 0, W5").at("MEM.W0", 10, "READ 0, W5");
    a.at("C2C.0", HOPS, "SEND W5").at("C2C.0", HOPS + 10, "SEND W5");
    let e = run(&cfg, &[a, Prog::default()], 1).unwrap_err();
    assert_eq!((e.kind, e.chip, e.link, e.peer_chip), (ErrorKind::LinkBusy, Some(0), Some(0), Some(1)), "{e}");
    // 24 cycles apart is fine for the link; the receiver never takes them: LinkUnreceived names the SEND on chip 0.
    let mut a = Prog::default();
    a.at("MEM.W0", 0, "READ 0, W5").at("MEM.W0", 24, "READ 0, W5");
    a.at("C2C.0", HOPS, "SEND W5").at("C2C.0", HOPS + 24, "SEND W5");
    let e = run(&cfg, &[a.clone(), Prog::default()], 1).unwrap_err();
    assert_eq!((e.kind, e.chip, e.peer_chip), (ErrorKind::LinkUnreceived, Some(1), Some(0)), "{e}");
    assert_eq!((e.queue.as_str(), e.instruction.as_str()), ("C2C.0", "SEND W5"));
    // Unconnected link (a 2-chip node uses link 0 only).
    let mut b = Prog::default();
    b.at("MEM.W0", 0, "READ 0, W5").at("C2C.3", HOPS, "SEND W5");
    let e = run(&cfg, &[b, Prog::default()], 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LinkUnconnected, "{e}");
    // `.link` in a system program.
    let mut c = Prog::default();
    c.extra = ".link 0 8 217\n".into();
    let e = run(&cfg, &[c], 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInstruction);
    // Too many programs.
    let e = run(&cfg, &[Prog::default(), Prog::default(), Prog::default()], 1).unwrap_err();
    assert!(e.message.contains("3 programs"), "{e}");
}

#[test]
fn overflowing_receive_buffer() {
    // Nine vectors 24 cycles apart into a buffer of 8, never received in time.
    let cfg = node(2, "");
    let mut a = Prog::default();
    for k in 0..9 {
        send(&mut a, 0, 0, HOPS + 24 * k);
    }
    let e = run(&cfg, &[a, Prog::default()], 1).unwrap_err();
    assert_eq!((e.kind, e.chip, e.link, e.peer_chip), (ErrorKind::LinkOverflow, Some(1), Some(0), Some(0)), "{e}");
}

#[test]
fn deskew_semantics_on_one_chip_unchanged() {
    // A lone chip's HAC counts its cycles from 0: DESKEW at 0 resumes at 252; RUNTIME_DESKEW t waits exactly t.
    let p = text::parse(".queue VXM.0\n DESKEW\n RUNTIME_DESKEW 100\n COPY.f32 -, #1.0\n").unwrap();
    let (s, _) = lpusim::simulate(&lpusim::ChipConfig::tsp_v1(), &p, &[], &[], &Default::default()).unwrap();
    // COPY issues at 352, its register update at 354: 354 + 20 cycles.
    assert_eq!(s.cycles, 374);
    assert_eq!(s.sync_cycles, 251 + 99);
}

#[test]
fn global_link_on_the_east_side() {
    // An explicit global link between link 8 of chip 0 and link 9 of chip 1 (east SXM, position 92), 650 cycles.
    let cfg = SystemConfig::from_json(
        r#"{"topology": "links", "chips": 2, "drift_ppm": 0, "links": [{"chip_a": 0, "link_a": 8, "chip_b": 1, "link_b": 9, "kind": "global", "spread_cycles": 0}]}"#,
    )
    .unwrap();
    let mut a = Prog::default();
    a.at("MEM.E0", 0, "READ 0, E5").at("C2C.8", HOPS, "SEND E5");
    a.extra = ".init MEM.E0 0 u8 9 8 7\n".into();
    let mut b = Prog::default();
    // Without drift and with equal HAC phases the vector is in the buffer 650 cycles after the SEND (up to the
    // alignment error of a cycle): receive at +652.
    b.at("C2C.9", HOPS + 652, "RECV W5").at("MEM.E0", HOPS + 652 + HOPS, "WRITE 1, W5");
    b.extra = ".dump MEM.E0 1 u8 1\n".into();
    let r = run(&cfg, &[a.clone(), b.clone()], 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&dumped(&r, 1, 0)[..3], &[9, 8, 7]);
    assert_eq!(r.links[0].kind, lpusim::system::LinkKind::Global);
    assert_eq!(r.links[0].latency_cycles, 650.0);
    // 10 cycles too early: LinkEmpty on chip 1, chip 0 named as the peer.
    let mut early = Prog::default();
    early.at("C2C.9", HOPS + 640, "RECV W5");
    let e = run(&cfg, &[a, early], 1).unwrap_err();
    assert_eq!((e.kind, e.chip, e.link, e.peer_chip, e.peer_link), (ErrorKind::LinkEmpty, Some(1), Some(9), Some(0), Some(8)));
}

// ---- kept memories (docs/system.md section 7): one `ChipMemory` per chip across system runs ----

use lpusim::sim::{ChipMemory, MemInit};
use lpusim::system::{simulate_system_on, LoadedSystem};

const LANES: usize = 320;

fn vector(seed: u8) -> Vec<u8> {
    (0..LANES).map(|l| (l as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

fn functional(threads: usize) -> SystemOptions {
    SystemOptions { threads, ..Default::default() }
}

fn timing() -> SystemOptions {
    SystemOptions { timing_only: true, ..Default::default() }
}

/// One decode step of a two-chip pipeline: chip 0 sends its input (MEM.W0[0]) to chip 1, which appends it to its
/// cache at MEM.W0[1 + step].
fn append(step: u32) -> Vec<Program> {
    let mut a = Prog::default();
    send(&mut a, 0, 0, HOPS);
    let mut b = Prog::default();
    recv(&mut b, 0, 1 + step, HOPS + SLACK);
    vec![a.program(), b.program()]
}

/// Chip 1 sends its cache entry `k` (MEM.W0[1 + k]) back to chip 0, which stores it at MEM.W0[20].
fn read_back(k: u32) -> Vec<Program> {
    let mut b = Prog::default();
    send(&mut b, 0, 1 + k, HOPS);
    let mut a = Prog::default();
    recv(&mut a, 0, 20, HOPS + SLACK);
    vec![a.program(), b.program()]
}

fn memories(sys: &LoadedSystem) -> Vec<ChipMemory> {
    (0..sys.chips()).map(|_| ChipMemory::new(sys.chip_config())).collect()
}

fn lend(ms: &mut [ChipMemory]) -> Vec<Option<&mut ChipMemory>> {
    ms.iter_mut().map(Some).collect()
}

#[test]
fn kept_memories_persist_across_system_runs() {
    let cfg = node(2, "");
    let (v0, v1) = (vector(1), vector(2));
    let mut ms = memories(&LoadedSystem::load(&cfg, &[]).unwrap());
    for (step, v) in [(0u32, &v0), (1, &v1)] {
        let sys = LoadedSystem::load(&cfg, &append(step)).unwrap();
        let images: Vec<Vec<MemInit>> = vec![vec![(0, 0, v.as_slice())]];
        let r = sys.run_on(&images, &[vec![], vec![(0, 1, 2)]], &mut lend(&mut ms), &functional(2)).unwrap();
        // Dumps are read from the memory: the entries of every step so far.
        let got = r.chips[1].dumps[0].as_ref().unwrap();
        assert_eq!(&got[..LANES], v0.as_slice());
        assert_eq!(&got[LANES..], if step == 0 { vec![0; LANES] } else { v1.clone() }.as_slice());
    }
    // The inputs stay in chip 0's memory; chip 1's cache holds both steps.
    assert_eq!(ms[0].read(0, 0, 1).unwrap(), v1);
    assert_eq!(ms[1].read(0, 1, 2).unwrap(), [v0.clone(), v1.clone()].concat());
    assert!(ms.iter().all(|m| m.fault().is_none()));
    // A later program reads what the earlier runs left on chip 1 (without inputs); fresh chips read zeros.
    let back = LoadedSystem::load(&cfg, &read_back(0)).unwrap();
    let dumps = vec![vec![(0, 20, 1)]];
    let on = back.run_on(&[], &dumps, &mut lend(&mut ms), &functional(1)).unwrap();
    assert_eq!(on.chips[0].dumps[0].as_ref().unwrap(), &v0);
    let fresh = back.run(&[], &dumps, &functional(1)).unwrap();
    assert_eq!(fresh.chips[0].dumps[0].as_ref().unwrap(), &vec![0; LANES]);
    // The same cycles, statistics and traffic as on fresh chips: only MEM contents differ.
    assert_eq!((on.cycles, on.windows, &on.links), (fresh.cycles, fresh.windows, &fresh.links));
    for c in 0..2 {
        assert_eq!(on.chips[c].stats.cycles, fresh.chips[c].stats.cycles);
        assert_eq!(on.chips[c].stats.busy, fresh.chips[c].stats.busy);
        assert_eq!(on.chips[c].stats.events, fresh.chips[c].stats.events);
    }
    assert_eq!(ms[0].read(0, 20, 1).unwrap(), v0);
    // simulate_system_on is the same run without a LoadedSystem; a chip given None runs fresh.
    let mut m1 = ChipMemory::new(back.chip_config());
    m1.write(0, 2, &v1).unwrap();
    let r = simulate_system_on(&cfg, &read_back(1), &[], &dumps, &mut [None, Some(&mut m1)], &functional(1)).unwrap();
    assert_eq!(r.chips[0].dumps[0].as_ref().unwrap(), &v1);
}

#[test]
fn without_memories_nothing_changes() {
    // `run`, `run_on` with every entry None and `simulate_system` give identical results (ping_pong's .inits).
    let cfg = node(2, "");
    let ps: Vec<Program> = ping_pong(HOPS).iter().map(|p| p.program()).collect();
    let sys = LoadedSystem::load(&cfg, &ps).unwrap();
    let dumps = vec![vec![(0, 0, 2)], vec![(0, 1, 1)]];
    let input = vector(9);
    let images: Vec<Vec<MemInit>> = vec![vec![], vec![(0, 3, input.as_slice())]];
    let a = simulate_system(&cfg, &ps, &images, &dumps, &functional(1)).unwrap();
    let b = sys.run(&images, &dumps, &functional(2)).unwrap();
    let c = sys.run_on(&images, &dumps, &mut [None, None], &functional(1)).unwrap();
    for r in [&b, &c] {
        assert_eq!((&r.chips, &r.links, r.cycles, r.windows), (&a.chips, &a.links, a.cycles, a.windows));
    }
    assert_eq!(&a.chips[1].dumps[0].as_ref().unwrap()[..4], &[1, 2, 3, 250]);
    // A LoadedSystem runs any number of times with the same results.
    assert_eq!(sys.run(&images, &dumps, &functional(1)).unwrap().chips, a.chips);
}

#[test]
fn the_constant_image_is_installed_once() {
    // Chip 0's `.init` (MEM.W0[0] = 1 2 3 250) is its constant image; each run sends MEM.W0[0] to chip 1 and
    // overwrites it with what chip 1 sends back from its input (MEM.W0[5]).
    let cfg = node(2, "");
    let mut a = Prog::default();
    a.extra = ".init MEM.W0 0 u8 1 2 3 250\n".into();
    send(&mut a, 0, 0, HOPS);
    let back = HOPS + SLACK + 2 * HOPS + 2;
    recv(&mut a, 0, 0, back + SLACK);
    let mut b = Prog::default();
    recv(&mut b, 0, 1, HOPS + SLACK);
    send(&mut b, 0, 5, back);
    let sys = LoadedSystem::load(&cfg, &[a.program(), b.program()]).unwrap();
    let mut ms = memories(&sys);
    assert!(!sys.installed_in(0, &ms[0]));
    sys.install_static(0, &mut ms[0], &[]).unwrap();
    sys.install_static(1, &mut ms[1], &[]).unwrap();
    assert!(sys.installed_in(0, &ms[0]) && sys.installed_in(1, &ms[1]) && !sys.installed_in(1, &ms[0]));
    assert!(sys.install_static(2, &mut ms[0], &[]).unwrap_err().message.contains("2 chips"));
    let init = ms[0].read(0, 0, 1).unwrap();
    assert_eq!(&init[..5], &[1, 2, 3, 250, 0]);
    let (x, y) = (vector(3), vector(4));
    let dumps = vec![vec![], vec![(0, 1, 1)]];
    let run = |x: &[u8], ms: &mut [ChipMemory]| {
        let images: Vec<Vec<MemInit>> = vec![vec![], vec![(0, 5, x)]];
        sys.run_on(&images, &dumps, &mut lend(ms), &functional(1)).unwrap()
    };
    // First run: chip 1 receives the installed image; chip 0's MEM.W0[0] then holds x.
    assert_eq!(run(&x, &mut ms).chips[1].dumps[0].as_ref().unwrap(), &init);
    assert_eq!(ms[0].read(0, 0, 1).unwrap(), x);
    // Second run: the image is not written again, so chip 1 receives what the first run left.
    assert_eq!(run(&y, &mut ms).chips[1].dumps[0].as_ref().unwrap(), &x);
    // simulate_system_on writes the program's `.init`s before every run instead.
    let ps = [a.program(), b.program()];
    let images: Vec<Vec<MemInit>> = vec![vec![], vec![(0, 5, y.as_slice())]];
    let r = simulate_system_on(&cfg, &ps, &images, &dumps, &mut lend(&mut ms), &functional(1)).unwrap();
    assert_eq!(r.chips[1].dumps[0].as_ref().unwrap(), &init);
    // Static images given to install_static (later ones win) are part of the constant image.
    let z = vector(5);
    sys.install_static(1, &mut ms[1], &[(0, 7, z.as_slice())]).unwrap();
    assert_eq!(ms[1].read(0, 7, 1).unwrap(), z);
}

#[test]
fn timing_only_system_runs_leave_memories_alone() {
    let cfg = node(2, "");
    let sys = LoadedSystem::load(&cfg, &append(0)).unwrap();
    let mut ms = memories(&sys);
    let v = vector(6);
    ms[1].write(0, 1, &vector(7)).unwrap();
    let before: Vec<(Vec<u8>, usize)> = ms.iter().map(|m| (m.read(0, 0, 2).unwrap(), m.allocated_bytes())).collect();
    let images: Vec<Vec<MemInit>> = vec![vec![(0, 0, v.as_slice())]];
    let t = sys.run_on(&images, &[vec![(0, 0, 1)], vec![(0, 1, 1)]], &mut lend(&mut ms), &timing()).unwrap();
    assert!(t.chips.iter().all(|c| c.dumps.iter().all(|d| d.is_none())));
    let after: Vec<(Vec<u8>, usize)> = ms.iter().map(|m| (m.read(0, 0, 2).unwrap(), m.allocated_bytes())).collect();
    assert_eq!(before, after);
    let f = sys.run_on(&images, &[], &mut lend(&mut ms), &functional(1)).unwrap();
    assert_eq!((t.cycles, t.chips[1].stats.cycles), (f.cycles, f.chips[1].stats.cycles));
    assert_eq!(ms[1].read(0, 1, 1).unwrap(), v);
    // A timing-only fault flags nothing (chip 1 receives twice, one vector is sent).
    let mut b = Prog::default();
    recv(&mut b, 0, 1, HOPS + SLACK);
    recv(&mut b, 0, 2, HOPS + SLACK + 60);
    let bad = LoadedSystem::load(&cfg, &[append(0)[0].clone(), b.program()]).unwrap();
    let e = bad.run_on(&[], &[], &mut lend(&mut ms), &timing()).unwrap_err();
    assert_eq!((e.kind, e.chip), (ErrorKind::LinkEmpty, Some(1)));
    assert!(ms.iter().all(|m| m.fault().is_none()));
}

#[test]
fn a_faulted_system_run_flags_every_memory() {
    // Chip 1 stores the vector chip 0 sends, then receives again with nothing sent: LinkEmpty on chip 1.
    let cfg = node(2, "");
    let mut b = Prog::default();
    recv(&mut b, 0, 1, HOPS + SLACK);
    let late = HOPS + SLACK + 60;
    recv(&mut b, 0, 2, late);
    let sys = LoadedSystem::load(&cfg, &[append(0)[0].clone(), b.program()]).unwrap();
    let v = vector(8);
    let images: Vec<Vec<MemInit>> = vec![vec![(0, 0, v.as_slice())]];
    for threads in [1, 2] {
        let mut ms = memories(&sys);
        ms[1].write(0, 9, &vector(10)).unwrap();
        let e = sys.run_on(&images, &[], &mut lend(&mut ms), &functional(threads)).unwrap_err();
        assert_eq!((e.kind, e.chip, e.queue.as_str()), (ErrorKind::LinkEmpty, Some(1), "C2C.0"), "{e}");
        // The faulting chip's memory: every commit before the fault (the first vector), what was there before,
        // flagged with the chip's error.
        assert_eq!(ms[1].read(0, 1, 1).unwrap(), v);
        assert_eq!(ms[1].read(0, 9, 1).unwrap(), vector(10));
        let f1 = ms[1].fault().unwrap().clone();
        assert_eq!((f1.kind, f1.cycle, f1.queue.as_str(), f1.index), (e.kind, e.cycle, e.queue.as_str(), e.index));
        assert!(f1.message.contains("chip 1 of a system run"), "{f1}");
        // The other chip ran to its end: its memory holds its input, flagged with an error naming chip 1.
        assert_eq!(ms[0].read(0, 0, 1).unwrap(), v);
        let f0 = ms[0].fault().unwrap().clone();
        assert!(f0.message.contains("chip 1 faulted") && f0.message.contains("run to its end"), "{f0}");
        // Later runs are refused (before anything changes) until the fault is cleared.
        let ok = LoadedSystem::load(&cfg, &append(1)).unwrap();
        let e = ok.run_on(&[], &[], &mut lend(&mut ms), &functional(1)).unwrap_err();
        assert_eq!(e.chip, Some(0));
        assert!(e.message.contains("faulted run"), "{e}");
        assert!(ok.install_static(1, &mut ms[1], &[]).is_err());
        ms.iter_mut().for_each(|m| m.clear_fault());
        ok.run_on(&[], &[], &mut lend(&mut ms), &functional(1)).unwrap();
        assert_eq!(ms[1].read(0, 2, 1).unwrap(), v);
    }
    // A chip stopped in mid-run: its memory is flagged with the cycle its run stopped before.
    let mut a = Prog::default();
    send(&mut a, 0, 0, HOPS);
    a.at("MEM.W0", 5000, "READ 0, W5");
    let sys = LoadedSystem::load(&cfg, &[a.program(), b.program()]).unwrap();
    let mut ms = memories(&sys);
    let e = sys.run_on(&[], &[], &mut lend(&mut ms), &functional(1)).unwrap_err();
    assert_eq!(e.chip, Some(1));
    let f0 = ms[0].fault().unwrap();
    assert!(f0.cycle > late && f0.message.contains("never ran"), "{f0}");
}

#[test]
fn memory_errors_before_the_run_change_nothing() {
    let cfg = node(2, "");
    let sys = LoadedSystem::load(&cfg, &append(0)).unwrap();
    let mut ms = memories(&sys);
    let v = vector(11);
    let images: Vec<Vec<MemInit>> = vec![vec![(0, 0, v.as_slice())]];
    // One memory for two chips: one error, nothing written.
    let e = sys.run_on(&images, &[], &mut [Some(&mut ms[0])], &functional(1)).unwrap_err();
    assert_eq!((e.kind, e.chip), (ErrorKind::InvalidInstruction, None));
    assert!(e.message.contains("1 memories for a system of 2 chips"), "{e}");
    let e = sys.run_on(&images, &[], &mut [None, None, None], &timing()).unwrap_err();
    assert!(e.message.contains("3 memories"), "{e}");
    let e = simulate_system_on(&cfg, &append(0), &images, &[], &mut [], &functional(1)).unwrap_err();
    assert!(e.message.contains("0 memories"), "{e}");
    assert_eq!(ms[0].allocated_bytes(), 0);
    // A memory of another chip configuration, on chip 1: refused before chip 0's memory is touched.
    let mut small = lpusim::ChipConfig::tsp_v1();
    small.mem_words = 1024;
    let mut other = ChipMemory::new(&small);
    let e = sys.run_on(&images, &[], &mut [Some(&mut ms[0]), Some(&mut other)], &functional(1)).unwrap_err();
    assert_eq!(e.chip, Some(1));
    assert!(e.message.contains("another configuration"), "{e}");
    // A bad dump request or image: the same.
    let e = sys.run_on(&images, &[vec![], vec![(0, 8191, 2)]], &mut lend(&mut ms), &functional(1)).unwrap_err();
    assert!(e.message.contains("dumps[0]") && e.chip == Some(1), "{e}");
    let short = vec![1u8; 10];
    let bad: Vec<Vec<MemInit>> = vec![vec![(0, 0, v.as_slice())], vec![(0, 0, short.as_slice())]];
    let e = sys.run_on(&bad, &[], &mut lend(&mut ms), &functional(1)).unwrap_err();
    assert!(e.message.contains("mem_init[0]") && e.chip == Some(1), "{e}");
    assert!(ms.iter().all(|m| m.allocated_bytes() == 0 && m.fault().is_none()));
}

// ---- the fast timing-only form in system runs (docs/system.md section 5) ----

/// A result without what timing-only runs leave out (dump values) or may count differently (`windows`: the fast
/// form skips the cycles of the repetitions it takes ahead, so its windows can start later).
fn comparable(r: &SystemResult) -> SystemResult {
    let mut r = r.clone();
    r.windows = 0;
    for c in &mut r.chips {
        c.dumps.clear();
        for d in &mut c.stats.dumps {
            d.values = None;
        }
    }
    r
}

/// A two-chip stream: chip 0 READs `n` vectors and SENDs them 24 cycles apart while its VXM runs long REPEATed
/// ALU chains (taken ahead in chunks by the fast form, across many windows); chip 1 RECVs them into MEM.W0 and
/// READs them back through an ALU into MEM.W2. `recv_at`: chip 1's first RECV relative to the first SEND.
fn streaming(n: u32, recv_at: u64) -> Vec<Prog> {
    let mut a = Prog::default();
    a.extra = ".init MEM.W0 0 u8 1 2 3\n".into();
    a.at("MEM.W0", 0, &format!("READ 0, W5\n REPEAT {}, 24, 1", n - 1));
    a.at("C2C.0", HOPS, &format!("SEND W5\n REPEAT {}, 24, 0", n - 1));
    a.at("VXM.0", 10, "COPY.i32 -, #1\n REPEAT 3000, 1, 0");
    a.at("VXM.1", 20, "ADD.i32 -, R0, #1\n REPEAT 2000, 2, 0");
    let mut b = Prog::default();
    b.extra = ".dump MEM.W2 0 i8 2\n".into();
    let r = HOPS + recv_at;
    b.at("C2C.0", r, &format!("RECV E5\n REPEAT {}, 24, 0", n - 1));
    b.at("MEM.W0", r + HOPS, &format!("WRITE 0, E5\n REPEAT {}, 24, 1", n - 1));
    // Read back after the last write lands, through VXM.2 (position 47) into MEM.W2 (position 44).
    let back = r + HOPS + 24 * n as u64 + 10;
    b.at("MEM.W0", back, &format!("READ 0, E6\n REPEAT {}, 1, 1", n - 1));
    b.at("VXM.2", back + 2, &format!("CVT.i8.u8 W9, E6\n REPEAT {}, 1, 0", n - 1));
    b.at("MEM.W2", back + 7, &format!("WRITE 0, W9\n REPEAT {}, 1, 1", n - 1));
    b.at("VXM.3", 0, "COPY.f32 -, #2.0\n REPEAT 5000, 1, 0");
    vec![a, b]
}

/// Chip 0's link queue parks at SYNC until VXM.0 NOTIFYs at `at` (the SEND issues 2 cycles later), while both
/// chips' VXMs keep busy; chip 1 receives it. A parked queue's next SEND is unknown until the NOTIFY.
fn sync_then_send(at: u64) -> Vec<Prog> {
    let (mut a, mut b) = (Prog::default(), Prog::default());
    a.extra = ".init MEM.W0 0 u8 4 5 6\n".into();
    a.at("C2C.0", 0, "SYNC").at("C2C.0", 1, "SEND W5");
    a.at("VXM.0", at, "NOTIFY");
    a.at("MEM.W0", at + 2 - HOPS, "READ 0, W5");
    a.at("VXM.1", 0, "COPY.i32 -, #1\n REPEAT 4000, 1, 0");
    b.extra = ".dump MEM.W0 1 u8 1\n".into();
    recv(&mut b, 0, 1, at + 2 + SLACK);
    b.at("VXM.1", 0, "COPY.i32 -, #1\n REPEAT 4000, 1, 0");
    vec![a, b]
}

#[test]
fn timing_only_system_runs_equal_the_exact_and_functional_runs() {
    // Every case runs functionally, timing-only (the fast form first, since there is no cycle limit) and
    // timing-only in the exact order (a cycle limit that never binds turns the fast form off): the same cycles,
    // per-chip statistics, link traffic and errors, on 1 and 2 threads.
    let mut drifting = ring(8);
    with_runtime_deskews(&mut drifting, 20_000, 100, 2);
    let mut busy = Prog::default();
    busy.at("MEM.W0", 0, "READ 0, W5").at("MEM.W0", 10, "READ 0, W5");
    busy.at("C2C.0", HOPS, "SEND W5").at("C2C.0", HOPS + 10, "SEND W5");
    let mut unreceived = Prog::default();
    unreceived.at("MEM.W0", 0, "READ 0, W5").at("C2C.0", HOPS, "SEND W5");
    let mut overflow = Prog::default();
    for k in 0..9 {
        send(&mut overflow, 0, 0, HOPS + 24 * k);
    }
    let mut empty_stream = streaming(40, SLACK);
    empty_stream[1].at("MEM.W3", 5000, "WRITE 0, E7"); // nothing on E7: StreamEmpty on chip 1
    let cases: Vec<(&str, SystemConfig, Vec<Prog>, bool)> = vec![
        ("ping pong", node(2, ""), ping_pong(HOPS), true),
        ("ring of eight", node(8, r#", "seed": 3"#), ring(8), true),
        ("ring with drift and RUNTIME_DESKEW", node(8, r#", "seed": 5, "drift_ppm": 50"#), drifting, true),
        ("streaming", node(2, ""), streaming(60, SLACK), true),
        ("streaming with drift", node(2, r#", "chip_drift_ppm": [0, 40]"#), streaming(60, SLACK), true),
        ("too early", node(2, ""), streaming(60, SLACK - 20), false),
        ("sync then send", node(2, ""), sync_then_send(3000), true),
        ("sync then send, received too early", node(2, ""), sync_then_send(3000).into_iter().enumerate().map(|(i, mut p)| {
            if i == 1 {
                p.at("C2C.0", 3000, "RECV E5");
            }
            p
        }).collect(), false),
        ("stream empty", node(2, ""), empty_stream, false),
        ("link busy", node(2, ""), vec![busy, Prog::default()], false),
        ("unreceived", node(2, ""), vec![unreceived, Prog::default()], false),
        ("overflow", node(2, ""), vec![overflow, Prog::default()], false),
        ("over drift", node(2, r#", "chip_drift_ppm": [0, 2000]"#), ping_pong(100_000), false),
    ];
    for (name, cfg, progs, ok) in cases {
        let ps: Vec<Program> = progs.iter().map(|p| p.program()).collect();
        let functional = simulate_system(&cfg, &ps, &[], &[], &functional(1));
        assert_eq!(functional.is_ok(), ok, "{name}: {:?}", functional.as_ref().err());
        for threads in [1, 2] {
            let fast = SystemOptions { timing_only: true, threads, max_cycles: None };
            let exact = SystemOptions { max_cycles: Some(u64::MAX), ..fast.clone() };
            let (fast, exact) = (simulate_system(&cfg, &ps, &[], &[], &fast), simulate_system(&cfg, &ps, &[], &[], &exact));
            match (&functional, &fast, &exact) {
                (Ok(f), Ok(a), Ok(b)) => {
                    let mut c = comparable(f);
                    c.threads = threads;
                    assert_eq!(comparable(a), c, "{name}, {threads} thread(s): fast timing-only against functional");
                    assert_eq!(comparable(b), c, "{name}, {threads} thread(s): exact timing-only against functional");
                    if name == "sync then send" {
                        assert_eq!(&dumped(&f, 1, 0)[..4], &[4, 5, 6, 0], "{name}");
                    }
                    if name.starts_with("streaming") {
                        // The fast form ran (a fallback would count the exact run's windows): its chunks skip the
                        // cycles of the repetitions taken ahead, so fewer windows start.
                        assert!(a.windows < b.windows, "{name}: {} windows, exact {}", a.windows, b.windows);
                        assert_eq!(&dumped(&f, 1, 0)[..4], &[1, 2, 3, 0], "{name}");
                    }
                }
                (Err(f), Err(a), Err(b)) => {
                    assert_eq!(a, f, "{name}, {threads} thread(s): fast timing-only error against functional");
                    assert_eq!(b, f, "{name}, {threads} thread(s): exact timing-only error against functional");
                }
                _ => panic!("{name}, {threads} thread(s): functional {functional:?}\nfast {fast:?}\nexact {exact:?}"),
            }
        }
    }
}
