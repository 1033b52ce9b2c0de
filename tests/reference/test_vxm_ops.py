"""The VXM operations the ONNX compiler needs beyond the first set (docs/isa.md section 4): LOG, SQRT, FLOOR, CEIL,
SIN, COS (binary64 with the host's libm, rounded once to f32, at `vxm_transcendental_latency`; codes 31 and 32, the
first past the 5-bit field), the comparisons EQ NE LT LE GT GE and the bitwise AND OR XOR NOT. Each is assembled into a tiny program (.init,
READ, the op, WRITE, .dump as i32 so the result bits are visible), run on the Rust core and on the reference
interpreter, and checked bit for bit against numpy, NaN, infinities and -0 included."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lpusim import _lpusim
from lpusim.chip import Chip
from lpusim.reference import run as reference_run

CHIP = Chip.load()
NAN_BITS = 0x7FC00000

F32_A = [1.0, -2.0, 0.0, -0.0, math.inf, -math.inf, math.nan, 2.5, -0.5, 1e-45, 3.0e38, 1.0, 7.0, -7.0, 0.25, 123.456]
F32_B = [1.0, 3.0, -0.0, 0.0, math.inf, 5.0, 1.0, 2.5, math.nan, 0.0, -3.0e38, math.nan, -7.0, -7.0, 0.5, 123.456]
I32_A = [0, -1, 2**31 - 1, -(2**31), 5, -5, 0x12345678, 7, 1, -(2**31), 100, 0]
I32_B = [0, 1, -(2**31), 2**31 - 1, 5, -6, -0x0F0F0F10, 7, -1, -(2**31), 99, -1]
# SIN/COS: positions of rotary embeddings and angles of every size: small, around multiples of pi, large, subnormal
SIN_COS_VALUES = [0.0, -0.0, 1.0, -1.0, 0.5, math.pi, -math.pi / 2, 3.0, 7.0, 15.0, 100.0, 1e-30, 1.4e-45, 1e30,
                  123.456, -2.5e4, 16383.0, math.inf, -math.inf, math.nan]


def program(mnemonic: str, a_vals: list, b_vals: list | None, dtype: str) -> str:
    """a in MEM.W0..W3 (eastward E0..E3), b in MEM.E0..E3 (westward W0..W3), both at the VXM at cycle 10; the op
    on VXM.0 emits westward on W4..W7 at 10 + latency; MEM.W<4+b> writes it at address 8 (see bias_relu.asm)."""
    lat = CHIP.vxm_latency(mnemonic.split(".")[0])
    fmt = (lambda v: repr(float(v))) if dtype == "f32" else str
    lines = [f".init MEM.W0 0 {dtype} " + " ".join(fmt(v) for v in a_vals)]
    if b_vals is not None:
        lines.append(f".init MEM.E0 0 {dtype} " + " ".join(fmt(v) for v in b_vals))
    for b in range(4):
        lines += [f".queue MEM.W{b}", f"    NOP {8 - b}", f"    READ 0, E{b}"]
        if b_vals is not None:
            lines += [f".queue MEM.E{b}", f"    NOP {8 - b}", f"    READ 0, W{b}"]
    srcs = "E0, W0" if b_vals is not None else "E0"
    lines += [".queue VXM.0", "    NOP 10", f"    {mnemonic} W4, {srcs}"]
    for b in range(4):
        lines += [f".queue MEM.W{4 + b}", f"    NOP {10 + lat + 5 + b}", f"    WRITE 8, W{4 + b}"]
    lines.append(".dump MEM.W4 8 i32 1")
    return "\n".join(lines) + "\n"


def run_both(text: str, n: int) -> np.ndarray:
    """Result bits (uint32) of lanes 0..n-1; the Rust core and the reference must agree on cycles and bits."""
    rs, _ = _lpusim.simulate(CHIP.to_json(), text, [], [], False)
    ps, _ = reference_run(text)
    assert rs["cycles"] == ps["cycles"]
    r = np.array(rs["dumps"][0]["values"][0], dtype=np.int64).astype(np.uint32)
    p = np.array(ps["dumps"][0]["values"][0], dtype=np.int64).astype(np.uint32)
    assert r.tolist() == p.tolist()
    return r[:n]


def canon(x: np.ndarray) -> list:
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).copy()
    bits[np.isnan(np.asarray(x, dtype=np.float32))] = NAN_BITS
    return bits.tolist()


def f32(vals) -> np.ndarray:
    return np.array(vals, dtype=np.float32)


@pytest.mark.parametrize("op, fn", [("SQRT", np.sqrt), ("FLOOR", np.floor), ("CEIL", np.ceil)])
def test_sqrt_floor_ceil_match_numpy(op, fn):
    a = F32_A + [-4.0, 2.0, 8388607.5, -1.5]
    got = run_both(program(f"{op}.f32", a, None, "f32"), len(a))
    with np.errstate(all="ignore"):
        want = fn(f32(a))
    assert got.tolist() == canon(want)


def test_sqrt_edge_cases():
    got = run_both(program("SQRT.f32", [-0.0, 0.0, -1.0, math.inf, -math.inf, 2.0], None, "f32"), 6)
    assert got.tolist() == [0x80000000, 0, NAN_BITS, 0x7F800000, NAN_BITS, np.float32(np.sqrt(2)).view(np.uint32)]


def test_log_matches_binary64_libm_rounded_once():
    a = F32_A + [-1.0, 0.1, 1e-30, 65504.0]
    got = run_both(program("LOG.f32", a, None, "f32"), len(a))
    want = []
    for x in f32(a).tolist():
        if math.isnan(x) or x < 0:
            want.append(NAN_BITS)
        elif x == 0:
            want.append(0xFF800000)  # log(+-0) = -inf
        elif math.isinf(x):
            want.append(0x7F800000)
        else:
            want.append(int(np.float32(math.log(x)).view(np.uint32)))
    assert got.tolist() == want


@pytest.mark.parametrize("op, fn", [("EQ", np.equal), ("NE", np.not_equal), ("LT", np.less),
                                    ("LE", np.less_equal), ("GT", np.greater), ("GE", np.greater_equal)])
def test_compare_f32_and_i32(op, fn):
    got = run_both(program(f"{op}.f32", F32_A, F32_B, "f32"), len(F32_A))
    want = np.where(fn(f32(F32_A), f32(F32_B)), np.float32(1.0), np.float32(0.0))
    assert got.tolist() == canon(want)
    got = run_both(program(f"{op}.i32", I32_A, I32_B, "i32"), len(I32_A))
    want = fn(np.array(I32_A, np.int32), np.array(I32_B, np.int32)).astype(np.uint32)
    assert got.tolist() == want.tolist()


def test_compare_nan_is_false_except_ne():
    a, b = [math.nan, 1.0, math.nan], [1.0, math.nan, math.nan]
    for op in ("EQ", "LT", "LE", "GT", "GE"):
        assert run_both(program(f"{op}.f32", a, b, "f32"), 3).tolist() == [0, 0, 0]
    assert run_both(program("NE.f32", a, b, "f32"), 3).tolist() == [0x3F800000] * 3
    assert run_both(program("EQ.f32", [-0.0], [0.0], "f32"), 1).tolist() == [0x3F800000]


@pytest.mark.parametrize("op, fn", [("AND", np.bitwise_and), ("OR", np.bitwise_or), ("XOR", np.bitwise_xor)])
def test_bitwise_i32(op, fn):
    got = run_both(program(f"{op}.i32", I32_A, I32_B, "i32"), len(I32_A))
    want = fn(np.array(I32_A, np.int32), np.array(I32_B, np.int32)).view(np.uint32)
    assert got.tolist() == want.tolist()


def test_not_i32_and_f32_bits_read_as_i32():
    got = run_both(program("NOT.i32", I32_A, None, "i32"), len(I32_A))
    assert got.tolist() == np.invert(np.array(I32_A, np.int32)).view(np.uint32).tolist()
    # AND with 0x7fffffff on the bits of f32 values is ABS (a register or stream holds bits; the type is the op's)
    text = program("AND.i32", [0] * 4, [0x7FFFFFFF] * 4, "i32").replace(
        ".init MEM.W0 0 i32 0 0 0 0", ".init MEM.W0 0 f32 -2.0 -0.0 -inf 3.5")
    assert run_both(text, 4).tolist() == canon(f32([2.0, 0.0, math.inf, 3.5]))


@pytest.mark.parametrize("bad", ["AND.f32 -, E0, E4", "NOT.f32 -, E0", "LOG.i32 -, E0", "FLOOR.i32 -, E0",
                                 "SQRT.f16 -, E0", "EQ.f16 -, E0, E2", "EQ.i32 -, E0", "NOT.i32 -, E0, E4"])
def test_wrong_types_and_arity_are_assembly_errors(bad):
    with pytest.raises(Exception):
        _lpusim.assemble(f".queue VXM.0\n    {bad}\n")


def test_new_ops_disassemble_canonically():
    text = ".queue VXM.3\n    log.f32 e0, e4\n    ge.i32 -, R1, #0x10\n    not.i32 W2, #-1\n    ceil.f32 E0, #-0.5\n"
    canon_text = _lpusim.disassemble(_lpusim.assemble(text))
    for line in ("LOG.f32 E0, E4", "GE.i32 -, R1, #16", "NOT.i32 W2, #-1", "CEIL.f32 E0, #-0.5"):
        assert line in canon_text


@pytest.mark.parametrize("op, fn", [("SIN", math.sin), ("COS", math.cos)])
def test_sin_cos_match_binary64_libm_rounded_once(op, fn):
    got = run_both(program(f"{op}.f32", SIN_COS_VALUES, None, "f32"), len(SIN_COS_VALUES)).tolist()
    want = []
    for x in np.array(SIN_COS_VALUES, dtype=np.float32).tolist():
        if math.isnan(x) or math.isinf(x):
            want.append(NAN_BITS)
        else:
            want.append(int(np.float32(fn(x)).view(np.uint32)))
    assert got == want
    assert got[1] == (0x80000000 if op == "SIN" else 0x3F800000)  # sin(-0) = -0, cos(-0) = 1


def test_sin_cos_take_the_transcendental_latency():
    # the WRITEs wait exactly vxm_transcendental_latency: one cycle off, they would find an empty stream
    lat = CHIP.config["vxm_transcendental_latency"]
    assert lat != CHIP.config["vxm_alu_latency"]
    shorter = program("SIN.f32", [1.0], None, "f32").replace(f"NOP {10 + lat + 5}", f"NOP {10 + lat + 4}")
    with pytest.raises(Exception):
        _lpusim.simulate(CHIP.to_json(), shorter, [], [], False)


def test_sin_cos_assemble_and_round_trip():
    text = ".queue VXM.3\n    sin.f32 e0, e4\n    cos.f32 -, R1\n    COS.f32 W2, #0.5\n    CEIL.f32 E0, #-0.5\n"
    canon = _lpusim.disassemble(_lpusim.assemble(text))
    for line in ("SIN.f32 E0, E4", "COS.f32 -, R1", "COS.f32 W2, #0.5", "CEIL.f32 E0, #-0.5"):
        assert line in canon
    assert _lpusim.disassemble(_lpusim.assemble(canon)) == canon
    for bad in ("SIN.i32 -, E0", "COS.f16 -, E0", "SIN.f32 -, E0, E4"):
        with pytest.raises(Exception):
            _lpusim.assemble(f".queue VXM.0\n    {bad}\n")
