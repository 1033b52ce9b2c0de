"""SIN and COS (docs/isa.md section 4): binary64 from the f32 input with the host's libm, rounded once to f32, at
`vxm_transcendental_latency`. Each is assembled into a tiny program (.init, READ, the op, WRITE, .dump as i32 so the
result bits are visible), run on the Rust core and on the reference interpreter, and checked bit for bit against
Python's math (the C library's sin/cos), NaN, infinities and -0 included; and their binary encoding (codes 31 and
32, the first past the 5-bit field) survives assemble -> disassemble."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lpusim import _lpusim
from lpusim.chip import Chip
from lpusim.reference import run as reference_run

CHIP = Chip.load()
NAN_BITS = 0x7FC00000
# positions of rotary embeddings and angles of every size: small, around multiples of pi, large, subnormal
VALUES = [0.0, -0.0, 1.0, -1.0, 0.5, math.pi, -math.pi / 2, 3.0, 7.0, 15.0, 100.0, 1e-30, 1.4e-45, 1e30,
          123.456, -2.5e4, 16383.0, math.inf, -math.inf, math.nan]


def program(mnemonic: str, a_vals: list) -> str:
    """a in MEM.W0..W3 (eastward E0..E3), at the VXM at cycle 10; the op on VXM.0 emits westward on W4..W7 at
    10 + latency; MEM.W<4+b> writes it at address 8 (the layout of test_vxm_ops.py)."""
    lat = CHIP.config["vxm_transcendental_latency"]
    lines = [".init MEM.W0 0 f32 " + " ".join(repr(float(v)) for v in a_vals)]
    for b in range(4):
        lines += [f".queue MEM.W{b}", f"    NOP {8 - b}", f"    READ 0, E{b}"]
    lines += [".queue VXM.0", "    NOP 10", f"    {mnemonic} W4, E0"]
    for b in range(4):
        lines += [f".queue MEM.W{4 + b}", f"    NOP {10 + lat + 5 + b}", f"    WRITE 8, W{4 + b}"]
    lines.append(".dump MEM.W4 8 i32 1")
    return "\n".join(lines) + "\n"


def run_both(text: str, n: int) -> list:
    rs, _ = _lpusim.simulate(CHIP.to_json(), text, [], [], False)
    ps, _ = reference_run(text)
    assert rs["cycles"] == ps["cycles"]
    r = np.array(rs["dumps"][0]["values"][0], dtype=np.int64).astype(np.uint32)
    p = np.array(ps["dumps"][0]["values"][0], dtype=np.int64).astype(np.uint32)
    assert r.tolist() == p.tolist()
    return r[:n].tolist()


@pytest.mark.parametrize("op, fn", [("SIN", math.sin), ("COS", math.cos)])
def test_sin_cos_match_binary64_libm_rounded_once(op, fn):
    got = run_both(program(f"{op}.f32", VALUES), len(VALUES))
    want = []
    for x in np.array(VALUES, dtype=np.float32).tolist():
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
    shorter = program("SIN.f32", [1.0]).replace(f"NOP {10 + lat + 5}", f"NOP {10 + lat + 4}")
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
