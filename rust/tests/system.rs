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
