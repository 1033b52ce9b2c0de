//! Every error kind, triggered by a tiny program, with its exact message (docs/isa.md sections 5 and 9).

use lpusim::{isa::text, simulate, ChipConfig, RunOptions};

fn run_cfg(cfg: &ChipConfig, src: &str, max_cycles: Option<u64>) -> String {
    let p = text::parse(src).unwrap();
    let mut msgs = Vec::new();
    for timing_only in [false, true] {
        let opts = RunOptions { timing_only, max_cycles };
        let e = simulate(cfg, &p, &[], &[], &opts).expect_err("the program must fail");
        msgs.push(e.to_string());
    }
    assert_eq!(msgs[0], msgs[1], "timing-only must report the same error");
    msgs.remove(0)
}

fn run(src: &str) -> String {
    run_cfg(&ChipConfig::tsp_v1(), src, None)
}

/// VXM.0 emits a 4-stream i32 group of zeros westward from position 47 every cycle 2..=2+n.
fn west_feed(n: u32) -> String {
    format!(".queue VXM.0\n COPY.i32 W0, #0\n REPEAT {n}, 1\n")
}

#[test]
fn address_out_of_range() {
    assert_eq!(
        run(".queue MEM.W3\n NOP 1042\n READ 9000, W4\n"),
        "cycle 1042: MEM.W3 #1 'READ 9000, W4': AddressOutOfRange: address 9000 is outside 0..8191"
    );
    // A REPEAT stride walking off the end names the repeated instruction.
    assert_eq!(
        run(".queue MEM.W0\n READ 8190, W4\n REPEAT 3, 1\n"),
        "cycle 2: MEM.W0 #0 'READ 8190, W4': AddressOutOfRange: address 8192 is outside 0..8191"
    );
}

#[test]
fn stream_empty() {
    assert_eq!(
        run(".queue MEM.W0\n WRITE 0, E0\n"),
        "cycle 0: MEM.W0 #0 'WRITE 0, E0': StreamEmpty: no value on stream E0 at position 46"
    );
}

#[test]
fn stream_conflict() {
    assert_eq!(
        run(".queue VXM.0\n COPY.i32 E0, #1\n.queue VXM.1\n COPY.i32 E0, #2\n"),
        "cycle 2: VXM.1 #0 'COPY.i32 E0, #2': StreamConflict: stream E0 at position 47 already has a value emitted in cycle 2"
    );
}

#[test]
fn bank_conflict() {
    // The VXM value reaches MEM.W0 (position 46) at cycle 3; WRITE commits bank 0 at 4, when READ wants bank 0.
    assert_eq!(
        run(".queue VXM.0\n COPY.i32 W0, #1\n.queue MEM.W0\n NOP 3\n WRITE 0, W0\n READ 1, E5\n"),
        "cycle 4: MEM.W0 #2 'READ 1, E5': BankConflict: bank 0 of MEM.W0 is already used in cycle 4"
    );
    // Different banks: fine.
    let p = text::parse(".queue VXM.0\n COPY.i32 W0, #1\n.queue MEM.W0\n NOP 3\n WRITE 0, W0\n READ 5000, E5\n").unwrap();
    assert!(simulate(&ChipConfig::tsp_v1(), &p, &[], &[], &RunOptions::default()).is_ok());
}

#[test]
fn register_empty() {
    assert_eq!(
        run(".queue VXM.0\n ADD.f32 -, R1, #1\n"),
        "cycle 0: VXM.0 #0 'ADD.f32 -, R1, #1.0': RegisterEmpty: register R1 has never been written"
    );
}

#[test]
fn weight_overflow() {
    // The feed reaches MXM.W0 (position 1) from cycle 48 on; 81 LWs of 4 rows exceed 320 rows.
    let src = west_feed(200) + ".queue MXM.W0.LW\n NOP 48\n LW.i8 W0, 4\n REPEAT 80, 1\n";
    assert_eq!(
        run(&src),
        "cycle 128: MXM.W0.LW #1 'LW.i8 W0, 4': WeightOverflow: the weight buffer would hold 324 rows, more than 320"
    );
}

#[test]
fn type_mismatch() {
    let src = west_feed(10) + ".queue MXM.W0.LW\n NOP 48\n LW.i8 W0, 1\n LW.f16 W0, 1\n";
    assert_eq!(run(&src), "cycle 49: MXM.W0.LW #2 'LW.f16 W0, 1': TypeMismatch: the weight buffer holds i8 rows");
    // ACC.i32 of an f16 row: ABC at 48 lands at 48 + 20 + 19 = 87.
    let src = west_feed(10) + ".queue MXM.W0.ABC\n NOP 48\n ABC.f16 W0, 7\n.queue MXM.W0.ACC\n NOP 87\n ACC.i32 7, E0\n";
    assert_eq!(run(&src), "cycle 87: MXM.W0.ACC #1 'ACC.i32 7, E0': TypeMismatch: ACC.i32 of row 7, which holds f16 sums");
}

#[test]
fn unit_busy() {
    let src = west_feed(10) + ".queue MXM.W0.ABC\n NOP 48\n ABC.f16 W0, 0\n ABC.f16 W0, 1\n";
    assert_eq!(run(&src), "cycle 49: MXM.W0.ABC #2 'ABC.f16 W0, 1': UnitBusy: the plane is busy until cycle 52");
}

#[test]
fn deadlock() {
    assert_eq!(
        run(".queue VXM.0\n NOP 3\n SYNC\n.queue VXM.1\n NOP 9\n IFETCH\n"),
        "cycle 3: VXM.0 #1 'SYNC': Deadlock: the queue is still parked at SYNC and no queue has work left to NOTIFY it"
    );
}

#[test]
fn links() {
    assert_eq!(run(".queue C2C.0\n RECV E0\n"), "cycle 0: C2C.0 #0 'RECV E0': LinkEmpty: no vector has arrived on link 0");
    // The feed reaches the west SXM/C2C position 2 at cycle 47.
    assert_eq!(
        run(&(west_feed(10) + ".queue C2C.0\n NOP 47\n SEND W0\n")),
        "cycle 47: C2C.0 #1 'SEND W0': LinkUnconnected: link 0 is not connected"
    );
    assert_eq!(
        run(&(west_feed(10) + ".queue C2C.0\n NOP 47\n SEND W0\n.link 0 1 5\n")),
        "cycle 52: C2C.0 #1 'SEND W0': LinkUnreceived: link 1 still holds 1 vector(s) never received"
    );
    // A link sends one 328-byte flit per 24 cycles (100 Gb/s at 900 MHz), a loopback like a system link: nine
    // sends 24 cycles apart, never received, overflow the 8-vector buffer at the ninth arrival (47 + 8*24 + 5).
    assert_eq!(
        run(&(west_feed(200) + ".queue C2C.0\n NOP 47\n SEND W0\n REPEAT 8, 24\n.link 0 1 5\n")),
        "cycle 244: C2C.0 #1 'SEND W0': LinkOverflow: the receive buffer of link 1 already holds 8 vectors"
    );
    // Two SENDs one cycle apart: the second finds the loopback still sending the first flit (until 47 + 24).
    assert_eq!(
        run(&(west_feed(20) + ".queue C2C.0\n NOP 47\n SEND W0\n REPEAT 1, 1\n.link 0 1 5\n")),
        "cycle 48: C2C.0 #1 'SEND W0': LinkBusy: link 0 (loopback to link 1) is still sending the previous vector until cycle 71; links have no back-pressure"
    );
}

#[test]
fn load_time_errors() {
    assert_eq!(
        run(".queue MEM.W0\n READ 0, E31\n WRITE 0, E32\n"),
        "cycle 0: MEM.W0 #1 'WRITE 0, E32': InvalidInstruction: a 1-stream group at E32 runs past E31"
    );
    assert_eq!(
        run(".queue VXM.0\n ADD.f32 -, E30, #1\n"),
        "cycle 0: VXM.0 #0 'ADD.f32 -, E30, #1.0': InvalidInstruction: a 4-stream group at E30 runs past E31"
    );
    let mut small = ChipConfig::tsp_v1();
    small.instruction_queue_depth = 2;
    assert_eq!(
        run_cfg(&small, ".queue VXM.3\n IFETCH\n IFETCH\n IFETCH\n", None),
        "cycle 0: VXM.3 #2 'IFETCH': QueueOverrun: 3 instructions exceed the queue depth 2"
    );
    assert_eq!(
        run(".queue MEM.W44\n IFETCH\n"),
        "cycle 0: MEM.W44 #0 'IFETCH': InvalidInstruction: this chip has no queue MEM.W44"
    );
}

#[test]
fn cycle_limit() {
    assert_eq!(
        run_cfg(&ChipConfig::tsp_v1(), ".queue VXM.0\n NOP 100\n IFETCH\n", Some(50)),
        "cycle 50: - #0 '': CycleLimit: the program runs past the limit of 50 cycles"
    );
}

#[test]
fn notify_releases_parked_queues() {
    // VXM.0 parks at 0; VXM.1 notifies at 5; VXM.0 resumes at 5 + 2 = 7 and issues IFETCH there.
    let p = text::parse(".queue VXM.0\n SYNC\n IFETCH\n.queue VXM.1\n NOP 5\n NOTIFY\n").unwrap();
    let (s, _) = simulate(&ChipConfig::tsp_v1(), &p, &[], &[], &RunOptions::default()).unwrap();
    assert_eq!(s.cycles, 7 + 20);
    assert_eq!(s.busy.icu, 3);
    // DESKEW: the next instruction issues at the next multiple of hac_period (252).
    let p = text::parse(".queue VXM.0\n NOP 3\n DESKEW\n IFETCH\n").unwrap();
    let (s, _) = simulate(&ChipConfig::tsp_v1(), &p, &[], &[], &RunOptions::default()).unwrap();
    assert_eq!(s.cycles, 252 + 20);
}
