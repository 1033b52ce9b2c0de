"""Hand-checked tests of the Python reference interpreter (lpusim.reference) against docs/isa.md.

Every expected cycle count below is worked out by hand from the floorplan (MEM.W<i> at position 46 - i, VXM at 47,
MEM.E<i> at 48 + i, SXM west at 2, MXM.W0 at 1) and the tsp_v1 latencies; the comment next to each says how.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lpusim.reference import ReferenceAssemblyError, ReferenceSimulationError, TSP_V1, run
from lpusim.reference.numerics import convert_element, parse_number, round_to_float_bits
from random_programs import generate

SL = TSP_V1["superlanes"]  # a program's cycle count is the last busy cycle + 1 + (superlanes - 1)


def f32bits(x: float) -> int:
    return int(np.float32(x).view(np.uint32))


def dump(stats, k=0):
    d = stats["dumps"][k]
    return np.array(d["values"], dtype={"i8": np.int8, "u8": np.uint8, "f16": np.float16, "i32": np.int32,
                                        "f32": np.float32}[d["dtype"]])


def issues(stats) -> dict:
    from lpusim.reference import Floorplan
    names = Floorplan(TSP_V1).queue_names
    return {names[i]: n for i, n in enumerate(stats["per_queue_issues"]) if n}


def err(text, **kw) -> ReferenceSimulationError:
    with pytest.raises(ReferenceSimulationError) as e:
        run(text, **kw)
    return e.value


# ------------------------------------------------------------------------------------------ numerics
def test_rne_of_integers_to_f32_at_ties():
    assert round_to_float_bits(2**24 + 1) == f32bits(2.0**24)          # tie, even stays down
    assert round_to_float_bits(2**24 + 3) == f32bits(2.0**24 + 4)      # tie, rounds up to even
    assert round_to_float_bits(2**24 + 2) == f32bits(2.0**24 + 2)      # exact
    assert round_to_float_bits(-(2**25 + 2)) == f32bits(-(2.0**25))    # tie at quantum 4 -> even
    assert round_to_float_bits(-(2**25 + 6)) == f32bits(-(2.0**25 + 8))
    # a value that float(int) would double round: 2^53 + 2^29 + 1 is above the f32 tie (2^53 + 2^29)
    n = 2**53 + 2**29 + 1
    assert round_to_float_bits(n) == f32bits(2.0**53 + 2**30)
    assert int(np.float32(float(n)).view(np.uint32)) != round_to_float_bits(n)  # the double rounding trap
    # overflow: the f32 max plus half an ulp is a tie that rounds to even = infinity
    fmax = (2**24 - 1) * 2**104
    assert round_to_float_bits(fmax) == 0x7F7FFFFF
    assert round_to_float_bits(fmax + 2**103) == 0x7F800000
    assert round_to_float_bits(fmax + 2**103 - 1) == 0x7F7FFFFF
    # subnormals: 2^-149 is the smallest; half of it ties to 0 (even), 3/4 rounds up
    assert round_to_float_bits(Fraction(1, 2**149)) == 1
    assert round_to_float_bits(Fraction(1, 2**150)) == 0
    assert round_to_float_bits(Fraction(3, 2**151)) == 1
    assert round_to_float_bits(Fraction(3, 2**150)) == 2  # 1.5 ulp ties to 2


def test_cvt_rounding_and_saturation():
    to_i32 = lambda x: convert_element(f32bits(x), "f32", "i32")
    assert [to_i32(v) for v in (2.5, 3.5, -2.5, 0.5, 1.5)] == [2, 4, (-2) & 0xFFFFFFFF, 0, 2]
    assert to_i32(3e9) == 2**31 - 1 and to_i32(-3e9) == 2**31
    assert convert_element(0x7FC00000, "f32", "i32") == 0                    # NaN -> 0
    assert convert_element(0x7F800000, "f32", "i8") == 127                  # +inf saturates
    assert convert_element(f32bits(-200.0), "f32", "u8") == 0
    assert convert_element(300, "i32", "u8") == 255
    assert convert_element((-300) & 0xFFFFFFFF, "i32", "i8") == 0x80
    assert convert_element(2**24 + 1, "i32", "f32") == f32bits(2.0**24)    # i32 -> f32 rounds (9.9)
    assert convert_element(f32bits(65520.0), "f32", "f16") == 0x7C00       # ties to even -> inf
    assert convert_element(f32bits(65519.0), "f32", "f16") == 0x7BFF
    assert convert_element(0x7F800001, "f32", "f16") == 0x7E00            # NaN -> canonical f16 NaN
    assert convert_element(0x8000, "f16", "f32") == 0x80000000            # -0 stays -0
    assert convert_element(0xFF, "u8", "i8") == 127


def test_immediate_parsing():
    assert parse_number("1.5", "f32") == f32bits(1.5)
    assert parse_number("-0", "f32") == 0x80000000
    assert parse_number("0xFF", "i8") == 0xFF
    assert parse_number("-128", "i8") == 0x80
    with pytest.raises(ValueError):
        parse_number("128", "i8")
    assert parse_number("nan", "f16") == 0x7E00
    assert parse_number("65520", "f16") == 0x7C00


# ------------------------------------------------------------------------------------------ timing and values
def test_mem_copy_with_repeat():
    # MEM.W3 (position 43) reads at 0, 1, 2 -> emits at 1, 2, 3 -> passes MEM.W0 (position 46) at 4, 5, 6.
    # Writes commit at 5, 6, 7: last activity 7, cycles = 7 + 20.
    prog = """
    .queue MEM.W3
        READ 0x10, E2
        REPEAT 2, 1
    .queue MEM.W0
        NOP 4
        WRITE 5, E2
        REPEAT 2, 1
    .init MEM.W3 0x10 u8 1 2 3
    .init MEM.W3 0x11 u8 fill 9
    .dump MEM.W0 5 u8 3
    """
    st, _ = run(prog)
    assert st["cycles"] == 7 + SL
    assert st["instructions"] == 6 and issues(st) == {"MEM.W3": 3, "MEM.W0": 3}
    v = dump(st)
    assert list(v[0, :4]) == [1, 2, 3, 0] and np.all(v[1] == 9) and np.all(v[2] == 0)


def test_write_one_cycle_early_is_stream_empty():
    prog = ".queue MEM.W3\n READ 0, E2\n.queue MEM.W0\n NOP 3\n WRITE 5, E2\n"
    e = err(prog)
    assert (e.kind, e.cycle, e.queue, e.index) == ("StreamEmpty", 3, "MEM.W0", 1)


def test_emitter_never_sees_its_own_value():
    # MEM.W0 emits eastward at 1 from position 46; at 1 and later nothing passes position 46 on that stream.
    prog = ".queue MEM.W0\n READ 0, E0\n WRITE 1, E0\n"
    e = err(prog)
    assert (e.kind, e.cycle, e.index) == ("StreamEmpty", 1, 1)


VXM_ADD = """
.queue MEM.W3
    READ 0, E3
.queue MEM.W2
    NOP 1
    READ 0, E2
.queue MEM.W1
    NOP 2
    READ 0, E1
.queue MEM.W0
    NOP 3
    READ 0, E0
    NOP 4
    WRITE 10, W4
.queue MEM.W1                ; (a reopened queue continues: its READ issued at 2, so this WRITE is at 9)
    NOP 6
    WRITE 10, W5
.queue MEM.W2
    NOP 8
    WRITE 10, W6
.queue MEM.W3
    NOP 10
    WRITE 10, W7
.queue VXM.0
    NOP 5
    {op} W4, E0, {b}
.init MEM.W0 0 f32 1.0 -2.5 3.0e38 nan -0.0 0.0
.dump MEM.W0 10 f32 1
"""


def test_vxm_add_f32_timing():
    # the f32 group E0..E3 reaches the VXM (47) at 5 (reads at 0..3 from positions 43..46); ADD at 5 emits at 7
    # westward; MEM.W0 (46) writes at 8, W1 at 9, W2 at 10, W3 at 11; last commit 12.
    st, _ = run(VXM_ADD.format(op="ADD.f32", b="#1.5"))
    assert st["cycles"] == 12 + SL
    v = dump(st)[0]
    assert v[0] == 2.5 and v[1] == -1.0 and v[2] == np.float32(3.0e38) + np.float32(1.5)
    assert v[3:4].view(np.uint32)[0] == 0x7FC00000  # canonical NaN
    assert v[4] == 1.5 and v[6] == 1.5


def test_vxm_max_min_signed_zero_and_nan():
    st, _ = run(VXM_ADD.format(op="MAX.f32", b="#0.0"))
    bits = dump(st)[0].view(np.uint32)
    assert bits[4] == 0 and bits[3] == 0x7FC00000          # MAX(-0, +0) = +0, NaN wins
    st, _ = run(VXM_ADD.format(op="MIN.f32", b="#0.0"))
    bits = dump(st)[0].view(np.uint32)
    assert bits[4] == 0x80000000 and bits[1] == f32bits(-2.5)


def test_vxm_mul_latency_is_one_longer():
    with pytest.raises(ReferenceSimulationError) as e:
        run(VXM_ADD.format(op="MUL.f32", b="#2.0"))
    assert (e.value.kind, e.value.cycle, e.value.queue) == ("StreamEmpty", 8, "MEM.W0")


def test_register_chain_and_register_empty():
    prog = """
    .queue VXM.0
        ADD.i32 -, #5, #7
        NOP 1
        MUL.i32 -, R0, #3      ; R0 = 12 from cycle 2
    .queue VXM.1
        NOP 6
        COPY.i32 E0, R0        ; R0 = 36 from cycle 5 (MUL at 2 + 3)
    .queue MEM.E0
        NOP 9
        WRITE 0, E0
    .queue MEM.E1
        NOP 10
        WRITE 0, E1
    .queue MEM.E2
        NOP 11
        WRITE 0, E2
    .queue MEM.E3
        NOP 12
        WRITE 0, E3
    .dump MEM.E0 0 i32 1
    """
    st, _ = run(prog)
    assert np.all(dump(st)[0] == 36)
    assert st["cycles"] == 13 + SL
    e = err(".queue VXM.2\n ADD.f32 -, R3, #1.0\n")
    assert (e.kind, e.cycle, e.queue, e.index) == ("RegisterEmpty", 0, "VXM.2", 0)


def timed(actions) -> str:
    """Queue text from (queue, issue cycle, instruction) triples, with the NOPs in between."""
    byq: dict = {}
    for q, t, ins in sorted(actions, key=lambda a: a[1]):
        byq.setdefault(q, []).append((t, ins))
    out = []
    for q, items in byq.items():
        out.append(f".queue {q}")
        c = 0
        for t, ins in items:
            assert t >= c
            if t > c:
                out.append(f"    NOP {t - c}")
            out.append(f"    {ins}")
            c = t + 1
    return "\n".join(out) + "\n"


def _mxm_program(T, x_vals, w_rows, acc_type="f32", extra=""):
    """Weight row k from MEM.W(k*w).. (position 46 - slice) on W streams to plane W0 (position 1) for LW at 50;
    the activation from MEM.W40.. for ABC at 60. Row 7 is updated at 60 + 20 + 19 = 99; ACC at 99 emits at 100
    from position 1 on E0..E3; byte b is written by MEM.W(40+b) (position 6-b) at 100 + 5 - b; the last commit
    is at 106."""
    w = {"i8": 1, "u8": 1, "f16": 2}[T]
    acts, inits = [], []
    for k, row in enumerate(w_rows):
        for b in range(w):
            sl = k * w + b
            acts.append((f"MEM.W{sl}", 50 - (46 - sl), f"READ 0, W{sl}"))
        inits.append(f".init MEM.W{k * w} 0 {T} " + " ".join(map(str, row)))
    for b in range(w):
        sl = 40 + b
        acts.append((f"MEM.W{sl}", 60 - (46 - sl), f"READ 1, W{30 + b}"))
    inits.append(f".init MEM.W40 1 {T} " + " ".join(map(str, x_vals)))
    acts += [("MXM.W0.LW", 50, f"LW.{T} W0, {len(w_rows)}"), ("MXM.W0.IW", 51, "IW"),
             ("MXM.W0.ABC", 60, f"ABC.{T} W30, 7"), ("MXM.W0.ACC", 99, f"ACC.{acc_type} 7, E0")]
    for b in range(4):
        acts.append((f"MEM.W{40 + b}", 105 - b, f"WRITE 5, E{b}"))
    return timed(acts) + "\n".join(inits + [f".dump MEM.W40 5 {acc_type} 1", extra]) + "\n"


def _acc_values(st, acc_type):
    return dump(st)[0]


def test_mxm_int8():
    x = [3, -2, 100] + [0] * 10
    w_rows = [[1, 2, -128], [5, 0, 7], [127, 1, 1]]
    st, _ = run(_mxm_program("i8", x, w_rows, "i32"))
    y = _acc_values(st, "i32")
    expect = np.array(x[:3]) @ np.array(w_rows)
    assert list(y[:3]) == list(expect) and np.all(y[3:] == 0)
    assert st["cycles"] == 106 + SL  # last commit at 106


def test_mxm_fp16_exact_and_order_independent():
    big, tiny = 32768.0, 2.0**-24
    # three products: +2^30, +2^-48, -2^30: the exact sum is 2^-48 in any order; f32 rounding once keeps it
    x = [big, tiny, -big]
    w_rows = [[32768.0], [tiny], [32768.0]]
    for perm in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        st, _ = run(_mxm_program("f16", [x[p] for p in perm], [w_rows[p] for p in perm], "f32"))
        y = _acc_values(st, "f32")
        assert y[0] == np.float32(2.0**-48), perm
        assert np.all(y[1:] == 0)


def test_mxm_fp16_specials():
    st, _ = run(_mxm_program("f16", ["inf", 0.0], [[0.0, 1.0, "nan"], [1.0, 1.0, 1.0]], "f32"))
    bits = _acc_values(st, "f32").view(np.uint32)
    assert bits[0] == 0x7FC00000   # inf * 0
    assert bits[1] == 0x7F800000   # inf * 1
    assert bits[2] == 0x7FC00000   # NaN weight
    e = err(_mxm_program("f16", [1.0], [[1.0]], "i32"))
    assert (e.kind, e.cycle, e.queue, e.index) == ("TypeMismatch", 99, "MXM.W0.ACC", 1)


# ------------------------------------------------------------------------------------------ ICU
def test_sync_notify_and_deskew():
    prog = """
    .queue VXM.0
        SYNC                  ; parks at 0
        COPY.i32 -, #1        ; released by NOTIFY at 3: resumes at 5
    .queue VXM.1
        NOP 3
        NOTIFY
    .queue VXM.2
        DESKEW                ; at 0: next issue at 252
        IFETCH
    """
    st, _ = run(prog)
    assert st["cycles"] == 252 + SL
    assert issues(st) == {"VXM.0": 2, "VXM.1": 1, "VXM.2": 2}
    st, _ = run(prog.replace("DESKEW                ; at 0: next issue at 252\n        IFETCH", ""))
    assert st["cycles"] == 7 + SL  # COPY at 5, register update at 7
    e = err(".queue VXM.0\n SYNC\n.queue VXM.1\n NOP 4\n IFETCH\n")
    assert (e.kind, e.cycle, e.queue, e.index) == ("Deadlock", 0, "VXM.0", 0)


def test_repeat_error_names_the_repeated_instruction():
    e = err(".queue MEM.E5\n NOP 2\n READ 8190, E0\n REPEAT 3, 1\n")
    assert (e.kind, e.cycle, e.queue, e.index, e.instruction) == (
        "AddressOutOfRange", 4, "MEM.E5", 1, "READ 8190, E0")


# ------------------------------------------------------------------------------------------ error kinds
def test_bank_conflict_reported_by_the_read():
    # MEM.W1 (45) reads at 0 -> passes MEM.W0 (46) at 2; WRITE at 2 commits at 3; READ at 3 in bank 0 conflicts
    prog = ".queue MEM.W1\n READ 0, E0\n.queue MEM.W0\n NOP 2\n WRITE 1, E0\n READ 2, E1\n"
    e = err(prog)
    assert (e.kind, e.cycle, e.queue, e.index) == ("BankConflict", 3, "MEM.W0", 2)
    run(prog.replace("READ 2, E1", "READ 5000, E1"))  # the other bank is free


def test_stream_conflict_names_the_second_emitter():
    prog = ".queue VXM.3\n COPY.i32 E0, #1\n.queue VXM.7\n COPY.i32 E2, #2\n"
    e = err(prog)
    assert (e.kind, e.cycle, e.queue, e.index) == ("StreamConflict", 2, "VXM.7", 0)


def test_weight_overflow_and_unit_busy():
    lines = [".queue MXM.E0.LW\n NOP 50\n LW.i8 E0, 32\n REPEAT 10, 1"]
    for s in range(32):
        pos = 48 + s
        lines.append(f".queue MEM.E{s}\n NOP {50 - 1 - (93 - pos)}\n READ 0, E{s}\n REPEAT 10, 1")
    e = err("\n".join(lines) + "\n")
    assert (e.kind, e.cycle, e.queue, e.index) == ("WeightOverflow", 60, "MXM.E0.LW", 1)
    # two f16 ABCs one cycle apart on plane E0 (93): activation from MEM.E0/E1 (48, 49)
    prog = """
    .queue MEM.E0
        NOP 4
        READ 0, E0
        REPEAT 1, 1
    .queue MEM.E1
        NOP 5
        READ 0, E1
        REPEAT 1, 1
    .queue MXM.E0.ABC
        NOP 50
        ABC.f16 E0, 0
        ABC.f16 E0, 1
    """
    e = err(prog)
    assert (e.kind, e.cycle, e.queue, e.index) == ("UnitBusy", 51, "MXM.E0.ABC", 2)  # NOP is index 0


def test_type_mismatch_on_plus_onto_integer_row():
    prog = """
    .queue MEM.E0
        NOP 4
        READ 0, E0
    .queue MEM.E1
        NOP 5
        READ 0, E1
    .queue MXM.E0.ABC
        NOP 50
        ABC.f16 E0, 3, +
    """
    e = err(prog)  # rows start as integer zero: reported at the update (50 + 39)
    assert (e.kind, e.cycle, e.queue, e.index) == ("TypeMismatch", 89, "MXM.E0.ABC", 1)


def test_link_errors():
    e = err(".queue C2C.0\n SEND W0\n")
    assert (e.kind, e.cycle) == ("StreamEmpty", 0)  # operands before unit state (9.5)
    send = ".queue MEM.W43\n READ 0, W0\n{r}.queue C2C.0\n NOP 2\n SEND W0\n{r}"
    rep8 = " REPEAT 8, 1\n"
    e = err(send.format(r=""))
    assert (e.kind, e.cycle, e.queue) == ("LinkUnconnected", 2, "C2C.0")
    e = err(send.format(r="") + ".link 0 8 10\n")
    assert (e.kind, e.cycle, e.queue, e.index) == ("LinkUnreceived", 12, "C2C.0", 1)
    # a link sends one 328-byte flit per 24 cycles (100 Gb/s at 900 MHz), a loopback like a system link: nine
    # sends 24 apart, never received, overflow the 8-vector buffer at the ninth arrival (2 + 8*24 + 10)
    e = err(send.format(r=" REPEAT 8, 24\n") + ".link 0 8 10\n")
    assert (e.kind, e.cycle, e.queue, e.index) == ("LinkOverflow", 204, "C2C.0", 1)
    e = err(send.format(r=rep8) + ".link 0 8 10\n")  # one cycle apart: the second SEND finds the link busy
    assert (e.kind, e.cycle, e.queue, e.index) == ("LinkBusy", 3, "C2C.0", 1)
    assert "until cycle 26" in str(e)
    e = err(".queue C2C.8\n RECV E0\n.link 0 8 10\n")
    assert (e.kind, e.cycle, e.queue) == ("LinkEmpty", 0, "C2C.8")
    # a RECV in the arrival cycle sees the vector (arrivals are step-1 effects); it emits at 13 from 92
    st, _ = run(send.format(r="") + ".queue C2C.8\n NOP 12\n RECV W1\n.queue MEM.E43\n NOP 14\n WRITE 0, W1\n"
                ".link 0 8 10\n.init MEM.W43 0 u8 fill 42\n.dump MEM.E43 0 u8 1\n")
    assert np.all(dump(st) == 42) and st["cycles"] == 15 + SL


def test_loopback_sends_are_spaced_by_the_link_interval():
    """Two vectors back to back on a loopback: SENDs 24 cycles apart (one flit per interval), arrivals at 12 and
    36, RECVs and WRITEs follow; the Rust core agrees cycle for cycle."""
    from lpusim.reference.config import send_interval_cycles
    gap = send_interval_cycles(TSP_V1)
    assert gap == 24
    prog = (f".queue MEM.W43\n READ 0, W0\n REPEAT 1, {gap}\n.queue C2C.0\n NOP 2\n SEND W0\n REPEAT 1, {gap}\n"
            f".queue C2C.8\n NOP 12\n RECV W1\n REPEAT 1, {gap}\n.queue MEM.E43\n NOP 14\n WRITE 3, W1\n"
            f" REPEAT 1, {gap}\n.link 0 8 10\n.init MEM.W43 0 u8 fill 42\n.init MEM.W43 1 u8 fill 7\n"
            f".dump MEM.E43 3 u8 2\n")
    st, _ = run(prog)
    assert st["cycles"] == 14 + gap + 1 + SL
    got = dump(st).reshape(2, -1)
    assert np.all(got[0] == 42) and np.all(got[1] == 7)
    from lpusim import _lpusim
    rust, _ = _lpusim.simulate(_lpusim.chip_config_json("tsp_v1"), prog)
    assert rust["cycles"] == st["cycles"]


def test_load_time_and_assembly_errors():
    e = err(".queue VXM.1\n ADD.f32 E30, #1.0, #2.0\n")
    assert (e.kind, e.cycle, e.queue, e.index) == ("InvalidInstruction", 0, "VXM.1", 0)
    e = err(".queue VXM.1\n IFETCH\n.queue SXM.W.0\n SHIFT E0, E1, 320\n")
    assert (e.kind, e.queue, e.index) == ("InvalidInstruction", "SXM.W.0", 0)
    for bad in [".queue VXM.0\n NOP 1\n REPEAT 1, 1\n", ".queue VXM.0\n READ 1, E0\n", "READ 1, E0\n",
                ".queue MEM.W0\n DESKEW\n REPEAT 1, 1\n", ".queue SXM.W.0\n DISTRIBUTE E0, E1, 1, 2\n"]:
        with pytest.raises(ReferenceAssemblyError):
            run(bad)


def test_sxm_shift_distribute():
    # MEM.W43 (3) reads at 0 -> passes SXM west (2) at 2 on W0; SHIFT at 2 emits at 2 + 2 + 19 = 23 on E1;
    # MEM.W43 writes at 24, commit 25. DISTRIBUTE at 2 on SXM.W.1 emits at 4 on E2: MEM.W42 (4) writes at 6.
    prog = """
    .queue MEM.W43
        READ 0, W0
        NOP 23
        WRITE 1, E1
    .queue SXM.W.0
        NOP 2
        SHIFT E1, W0, 3
    .queue SXM.W.1
        NOP 2
        DISTRIBUTE E2, W0, 15, 0, 255, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
    .queue MEM.W42
        NOP 6
        WRITE 1, E2
    .init MEM.W43 0 u8 """ + " ".join(str(i % 256) for i in range(320)) + """
    .dump MEM.W43 1 u8 1
    .dump MEM.W42 1 u8 1
    """
    st, _ = run(prog)
    assert st["cycles"] == 25 + SL
    shifted = dump(st, 0)[0]
    assert list(shifted[:5]) == [0, 0, 0, 0, 1] and shifted[319] == 316 % 256
    dist = dump(st, 1)[0]
    assert list(dist[:4]) == [15, 0, 0, 1] and list(dist[16:19]) == [31, 16, 0]


def test_timing_only_gives_same_cycles_and_no_values():
    st, _ = run(VXM_ADD.format(op="ADD.f32", b="#1.5"))
    st2, dumps = run(VXM_ADD.format(op="ADD.f32", b="#1.5"), timing_only=True, dumps=[(0, 10, 1)])
    assert st2["cycles"] == st["cycles"] and dumps == [None] and st2["dumps"][0]["values"] is None


def test_random_programs_valid_ones_run_cleanly():
    for seed in range(40):
        run(generate(seed, "small", fault_rate=0.0))
