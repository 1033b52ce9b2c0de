"""Energy events (docs/isa.md "Energy events"): counted by hand on one program, the same in the Rust core and the
reference interpreter, and the same functional and timing-only for a compiled model on one chip and on a 2-chip
pipeline (the fast timing-only form and system runs included)."""
from __future__ import annotations

import json

import pytest

import lpusim
from lpusim import _lpusim
from lpusim.models import mlp
from lpusim.reference import run as reference_run
from lpusim.reference.interp import EVENTS

CONFIG_JSON = _lpusim.chip_config_json("tsp_v1")

# The program of rust/tests/pipelines.rs `energy_events_by_hand` (the hops worked out there), plus two CONFIGs.
BY_HAND = """
.queue MEM.W43
 READ 0, W0
 REPEAT 2, 1, 1
.queue MEM.W42
 READ 0, W1
.queue MEM.E0
 READ 0, E30
.queue MEM.E1
 NOP 1
 READ 1, E30
.queue VXM.0
 ADD.i32 W4, #1, #2
 EXP.f32 -, #1.0
 REPEAT 1, 1
.queue MEM.W1
 NOP 4
 WRITE 5, W4
.queue MEM.W2
 NOP 5
 GATHER E12, W4
.queue MEM.W3
 NOP 6
 SCATTER W6, W4
.queue MXM.W0.LW
 NOP 3
 LW.i8 W0, 1
.queue MXM.W0.IW
 NOP 4
 IW
.queue MXM.W0.ABC
 NOP 4
 ABC.i8 W0, 0
 REPEAT 1, 1, 1
.queue MXM.W0.ACC
 NOP 50
 ACC.i32 0, E4
.queue MXM.W1.ABC
 NOP 5
 ABC.f16 W0, 0
.queue MXM.W1.LW
 NOP 5
 LW.f16 W0, 1
.queue SXM.W.0
 NOP 2
 SHIFT W20, W0, 1
.queue C2C.0
 NOP 3
 SEND W0
.queue C2C.8
 NOP 20
 RECV E31
.queue VXM.5
 NOP 7
 CONFIG 65535
 CONFIG 3
.link 0 8 10
"""

EXPECTED = {
    "mxm_int8_vectors": 2, "mxm_fp16_vectors": 1, "mxm_weight_vectors": 1 + 2,  # LW.i8 of 1 row, LW.f16 of 1
    "mem_read_vectors": 7, "mem_write_vectors": 2,   # 6 READs and a GATHER; a WRITE and a SCATTER
    "stream_hops": 9 + 4 + 46 + 188 + 50 + 372 + 2 + 2,
    "vxm_ops": 3, "vxm_transcendental_ops": 2, "sxm_ops": 1, "c2c_vectors": 1, "instructions": 24,
}


def test_events_by_hand_rust_and_reference():
    assert set(EXPECTED) == set(EVENTS)
    ref, _ = reference_run(BY_HAND)
    full, _ = _lpusim.simulate(CONFIG_JSON, BY_HAND)
    timing, _ = _lpusim.simulate(CONFIG_JSON, BY_HAND, timing_only=True)
    assert ref["events"] == EXPECTED
    assert dict(full["events"]) == EXPECTED and dict(timing["events"]) == EXPECTED
    configs = [{"cycle": 7, "queue": "VXM.5", "mask": 65535}, {"cycle": 8, "queue": "VXM.5", "mask": 3}]
    assert ref["configs"] == list(full["configs"]) == list(timing["configs"]) == configs


def test_hops_stop_where_a_later_emit_overwrites():
    # Two READs on one diagonal of E0 (the second at the next position, a cycle later): 1 + (94 - 4) hops, not
    # (94 - 3) + (94 - 4). Westward from position 3 a vector travels 3.
    text = ".queue MEM.W43\n READ 0, E0\n READ 0, W0\n.queue MEM.W42\n NOP 1\n READ 0, E0\n"
    # MEM.W43 is position 3, MEM.W42 position 4 (docs/isa.md section 1)
    for stats in (reference_run(text)[0], _lpusim.simulate(CONFIG_JSON, text)[0],
                  _lpusim.simulate(CONFIG_JSON, text, timing_only=True)[0]):
        assert stats["events"]["stream_hops"] == (94 - 3) + 3


@pytest.fixture(scope="module")
def demo():
    return mlp((784, 300, 10), batch=1, seed=0)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_compiled_model_timing_only_equals_functional(demo, precision):
    program = lpusim.compile(demo, precision=precision)
    full = program.run(seed=0)
    timing = program.run(seed=0, timing_only=True)
    assert full.events == timing.events and set(full.events) == set(EVENTS)
    e = full.events
    assert e["instructions"] == full.instructions and e["vxm_ops"] == full.busy["vxm"]
    assert e["sxm_ops"] == full.busy["sxm"] and e["c2c_vectors"] == 0
    # 1 busy cycle per int8 vector, mxm_fp16_cycles_per_vector per f16 one
    per_f16 = program.chip.config["mxm_fp16_cycles_per_vector"]
    assert full.busy["mxm"] == e["mxm_int8_vectors"] + per_f16 * e["mxm_fp16_vectors"]
    assert (e["mxm_int8_vectors"] > 0) == (precision == "int8") and e["mxm_weight_vectors"] > 0
    assert e["mem_read_vectors"] > 0 and e["mem_write_vectors"] > 0 and e["stream_hops"] > 0
    assert full.configs == timing.configs


def test_two_chip_pipeline_timing_only_equals_functional(demo):
    program = lpusim.compile(demo, chips=2, parallel="pipeline")
    full = program.run(seed=0)
    timing = program.run(seed=0, timing_only=True)
    assert len(full.events) == 2 and full.events == timing.events
    assert full.events == full.system.events
    for c, e in enumerate(full.events):
        assert e["instructions"] == full.system.chips[c]["instructions"]
        assert e["c2c_vectors"] == sum(full.system.chips[c]["link_sends"])
    # chip 0 sends the activations chip 1 receives
    assert full.events[0]["c2c_vectors"] > 0
    assert sum(e["c2c_vectors"] for e in full.events) == full.link_summary["vectors"]
    # the system's JSON carries every chip's events
    assert [c["events"] for c in full.system.to_json()["chips"]] == full.events
    json.dumps(full.system.to_json())
