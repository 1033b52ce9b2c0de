"""`_lpusim.LoadedProgram` (a program decoded and loaded once, run many times) against `_lpusim.simulate`.

Same stats, outputs and errors; a timing-only run (the fast form, rust/src/sim/fast.rs) has the functional run's
cycles and counters; `lpusim.Program` keeps one handle across runs, outside its dataclass fields (bench/_common.py pickles those).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lpusim
from lpusim import _lpusim
from lpusim.models import mlp

CONFIG_JSON = _lpusim.chip_config_json()
LANES = 320

# MEM.W3 (global slice 3) holds three vectors; the VXM adds 1 to each and MEM.W7 stores them.
TEXT = """
.queue MEM.W3
 READ 0, E0
 REPEAT 2, 1, 1
.queue VXM.0
 NOP 5
 CVT.u8.i8 W1, E0
 REPEAT 2, 1, 0
.queue MEM.W7
 NOP 15
 WRITE 0, W1
 REPEAT 2, 1, 1
"""


def image():
    return [(3, 0, np.arange(3 * LANES, dtype=np.uint8).reshape(3, LANES) % 100)]


def counters(stats):
    return {k: stats[k] for k in ("cycles", "instructions", "busy", "per_queue_issues")}


def test_runs_match_simulate_and_repeat():
    handle = _lpusim.LoadedProgram(CONFIG_JSON, TEXT, image())
    dumps = [(7, 0, 3)]
    want, want_arrays = _lpusim.simulate(CONFIG_JSON, TEXT, image(), dumps, False)
    for _ in range(2):
        stats, arrays = handle.run([], dumps, False)
        assert stats == want
        assert np.array_equal(arrays[0], want_arrays[0])
        timing, none = handle.run([], dumps, True)
        assert counters(timing) == counters(want) and none == [None]
    # Inputs written at run time come after (over) the static image.
    stats, arrays = handle.run([(3, 1, np.full((1, LANES), 7, dtype=np.uint8))], dumps, False)
    assert np.all(arrays[0][1] == 7) and np.array_equal(arrays[0][0], want_arrays[0][0])


def test_errors_are_those_of_simulate():
    bad = TEXT.replace("NOP 15", "NOP 3")  # WRITE before its value arrives
    with pytest.raises(_lpusim.SimulationError) as want:
        _lpusim.simulate(CONFIG_JSON, bad, image(), [], True)
    handle = _lpusim.LoadedProgram(CONFIG_JSON, bad, image())
    for timing_only in (True, False):
        with pytest.raises(_lpusim.SimulationError) as got:
            handle.run([], [], timing_only)
        assert (got.value.kind, got.value.cycle, got.value.queue, got.value.index, got.value.message) == (
            want.value.kind, want.value.cycle, want.value.queue, want.value.index, want.value.message)
    with pytest.raises(_lpusim.SimulationError) as load:
        _lpusim.LoadedProgram(CONFIG_JSON, ".queue MEM.W99\n READ 0, E0\n")
    assert load.value.cycle == 0
    with pytest.raises(_lpusim.AssemblyError):
        _lpusim.LoadedProgram(CONFIG_JSON, "NOT AN INSTRUCTION")
    with pytest.raises(ValueError):
        handle.run([(3, 0, np.zeros((2, 5), dtype=np.uint8))], [], True)


def test_program_keeps_one_handle_outside_its_fields():
    program = lpusim.compile(mlp((64, 32, 10), seed=0))
    x = program.random_inputs(0)
    first = program.run(x)
    handle = program._loaded()
    timing = program.run(x, timing_only=True)
    assert program._loaded() is handle
    assert (timing.cycles, timing.instructions, timing.busy) == (first.cycles, first.instructions, first.busy)
    assert all(not isinstance(getattr(program, f.name), _lpusim.LoadedProgram) for f in dataclasses.fields(program))
    second = dataclasses.replace(program).run(x)
    for name, value in first.outputs.items():
        assert np.array_equal(second.outputs[name], value)


def test_load_before_the_first_run():
    program = lpusim.compile(mlp((64, 32, 10), seed=0))
    assert "_handle" not in program.__dict__
    assert program.load() is program
    handle = program._loaded()
    x = program.random_inputs(0)
    assert program.run(x).cycles == program.predicted_cycles and program._loaded() is handle
