"""`ChipMemory`: one chip's SRAM kept across runs (rust/src/sim/mem.rs says what persists).

Hand-written programs through `lpusim.assemble` and `_lpusim.LoadedProgram` (as rust/tests/session.rs does in
Rust): what one program writes the next reads; the constant image installed once stays and is not written again;
a fault leaves the memory as it stood and flagged; timing-only runs leave it alone. Then a compiled model through
`Program.run(memory=...)`: the same outputs and cycles as fresh runs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import lpusim
from lpusim import _lpusim
from lpusim.models import mlp
from lpusim.runtime import ChipMemory

CONFIG_JSON = _lpusim.chip_config_json()
LANES = 320


def writer(value: str) -> str:
    """VXM.0 emits an i32 constant westward at 2; byte plane b is written at MEM.W<b> address 100 at 3 + b."""
    text = f".queue VXM.0\n COPY.i32 W0, #{value}\n"
    for b in range(4):
        text += f".queue MEM.W{b}\n NOP {3 + b}\n WRITE 100, W{b}\n"
    return text


def add_one_and_half(src: int, dst: int) -> str:
    """MEM.W0..W3 address `src` (f32) + 1.5 -> address `dst` (rust/tests/pipelines.rs `mem_vxm_mem`)."""
    text = ""
    for b in range(4):
        text += f".queue MEM.W{b}\n" + (f" NOP {3 - b}\n" if b < 3 else "")
        text += f" READ {src}, E{b}\n NOP {4 + 2 * b}\n WRITE {dst}, W{b}\n"
    return text + ".queue VXM.0\n NOP 5\n ADD.f32 W0, E0, #1.5\n"


def loaded(text: str, static_init=()) -> _lpusim.LoadedProgram:
    return _lpusim.LoadedProgram(CONFIG_JSON, lpusim.assemble(text), list(static_init))


def f32_at(arrays, lane: int = 0) -> float:
    """An f32 from the four byte-plane dumps (n = 1 each)."""
    return float(np.frombuffer(bytes(int(a[0, lane]) for a in arrays), dtype="<f4")[0])


PLANES = [(b, 101, 1) for b in range(4)]


def test_a_later_program_reads_what_an_earlier_one_wrote():
    memory = _lpusim.ChipMemory(CONFIG_JSON)
    a, b = loaded(writer("0x3f800000")), loaded(add_one_and_half(100, 101))  # 1.0f
    a.run([], [], False, memory=memory)
    _, arrays = b.run([], PLANES, False, memory=memory)
    assert f32_at(arrays) == 2.5
    _, fresh = b.run([], PLANES, False)
    assert f32_at(fresh) == 1.5
    # An input written by one run stays for the next.
    ten = np.frombuffer(np.float32(10.0).tobytes(), dtype=np.uint8)
    b.run([(p, 100, np.full((1, LANES), ten[p], dtype=np.uint8)) for p in range(4)], [], False, memory=memory)
    _, arrays = b.run([], PLANES, False, memory=memory)
    assert f32_at(arrays) == 11.5
    assert np.all(memory.read(3, 100, 1) == ten[3])


def test_the_static_image_is_installed_once():
    image = [(50, 5, np.full((2, LANES), 7, dtype=np.uint8))]
    p = loaded(add_one_and_half(100, 100) + ".init MEM.W0 100 f32 fill 1.0\n", image)
    memory = _lpusim.ChipMemory(CONFIG_JSON)
    assert not p.installed_in(memory)
    p.install_static(memory)
    assert p.installed_in(memory)
    fresh_stats, fresh = p.run([], [(0, 100, 1)], False)
    got = []
    for _ in range(3):
        stats, arrays = p.run([], [(0, 100, 1), (50, 5, 2)], False, memory=memory)
        assert stats["cycles"] == fresh_stats["cycles"]
        assert np.all(arrays[1] == 7)
        got.append(memory.read(0, 100, 1)[0, 0])
    # In place, +1.5 a run: 2.5, 4.0, 5.5 (low byte of each f32; the `.init` is not applied again).
    want = [np.frombuffer(np.float32(v).tobytes(), dtype=np.uint8)[0] for v in (2.5, 4.0, 5.5)]
    assert got == want
    memory.clear()
    assert not p.installed_in(memory) and memory.allocated_bytes == 0


def test_a_fault_leaves_the_memory_flagged():
    bad = loaded(writer("0x01020304") + ".queue MEM.E0\n NOP 4\n READ 9000, E0\n")
    memory = _lpusim.ChipMemory(CONFIG_JSON)
    with pytest.raises(_lpusim.SimulationError) as want:
        bad.run([], [], False)
    with pytest.raises(_lpusim.SimulationError) as got:
        bad.run([], [], False, memory=memory)
    assert str(got.value) == str(want.value) and got.value.kind == "AddressOutOfRange"
    fault = memory.fault
    assert isinstance(fault, _lpusim.SimulationError) and (fault.kind, fault.cycle) == ("AddressOutOfRange", 4)
    # Plane 0 committed at 4 (before the fault's issue), planes 1..3 never.
    assert np.all(memory.read(0, 100, 1) == 4) and np.all(memory.read(1, 100, 1) == 0)
    b = loaded(add_one_and_half(100, 101))
    with pytest.raises(_lpusim.SimulationError, match="faulted run"):
        b.run([], [], False, memory=memory)
    with pytest.raises(_lpusim.SimulationError):
        b.install_static(memory)
    memory.clear_fault()
    assert memory.fault is None
    b.run([], [], False, memory=memory)


def test_timing_only_runs_leave_the_memory_alone():
    b = loaded(add_one_and_half(100, 101))
    memory = _lpusim.ChipMemory(CONFIG_JSON)
    full, _ = b.run([], [], False)
    stats, arrays = b.run([(0, 100, np.ones((1, LANES), dtype=np.uint8))], PLANES, True, memory=memory)
    assert (stats["cycles"], stats["busy"]) == (full["cycles"], full["busy"]) and arrays == [None] * 4
    assert memory.allocated_bytes == 0 and memory.fault is None


def test_memory_errors():
    other = json.loads(CONFIG_JSON)
    other["mem_words"] = 4096
    other["sram_bytes"] = other["mem_slices"] * 4096 * other["lanes"]
    small = _lpusim.ChipMemory(json.dumps(other))
    with pytest.raises(_lpusim.SimulationError, match="another configuration"):
        loaded(writer("1")).run([], [], False, memory=small)
    memory = _lpusim.ChipMemory()
    with pytest.raises(ValueError):
        memory.read(88, 0, 1)
    with pytest.raises(ValueError):
        memory.write(0, 8191, np.zeros((2, LANES), dtype=np.uint8))
    memory.write(0, 8190, np.arange(2 * LANES, dtype=np.uint8).reshape(2, LANES))
    assert np.array_equal(memory.read(0, 8190, 2), np.arange(2 * LANES, dtype=np.uint8).reshape(2, LANES))


def test_a_compiled_model_runs_on_one_memory_as_on_fresh_chips():
    program = lpusim.compile(mlp((64, 96, 32, 10), seed=0))
    memory = ChipMemory(program.chip)
    assert "MEM" in ChipMemory.__doc__ and "persists" in ChipMemory.__doc__
    for seed in (0, 1, 0):
        x = program.random_inputs(seed)
        fresh = program.run(x)
        kept = program.run(x, memory=memory)
        assert program._loaded().installed_in(memory._handle)
        assert (kept.cycles, kept.instructions, kept.busy) == (fresh.cycles, fresh.instructions, fresh.busy)
        assert kept.cycles == program.predicted_cycles
        for name, value in fresh.outputs.items():
            assert np.array_equal(kept.outputs[name], value)
    timing = program.run(program.random_inputs(2), timing_only=True, memory=memory)
    assert timing.cycles == program.predicted_cycles and timing.outputs == {}
    # Written ahead with install_static: the same.
    other = ChipMemory()
    program.install_static(other)
    x = program.random_inputs(3)
    assert np.array_equal(program.run(x, memory=other).outputs[program.output_names[0]],
                          program.run(x).outputs[program.output_names[0]])


def test_a_program_that_frees_its_constants_reruns_right_on_one_memory():
    """A decoder step frees a constant's space after its last reader and a later tensor takes it: run again on the
    same memory, it would read that tensor as the constant (its second run gave logits 6 off). Such a program
    (`Schedule.constants_released`) has its constant image written before every run; a program compiled with a
    KV cache never frees its constants (compiler/schedule/kv_cache.py)."""
    from lpusim.models import llama_decoder
    program = lpusim.compile(llama_decoder(layers=1, hidden=32, heads=2, kv_heads=1, ffn=64, vocab=64, seq=1,
                                           past=5))
    assert program._schedule.constants_released
    memory = ChipMemory(program.chip)
    for seed in (0, 1, 2):
        x = program.random_inputs(seed)
        fresh, kept = program.run(x), program.run(x, memory=memory)
        for name, value in fresh.outputs.items():
            assert np.array_equal(kept.outputs[name], value), (seed, name)
