"""Collectives as simulated programs (multichip/collectives.py): all-reduce and all-gather over 2, 4 and 8 chips of
a node, run by the system simulation: exact sums (the f32 adds in the program's fixed order), timing-only runs equal
to functional ones, and every cycle count equal to the compiler's prediction."""
from __future__ import annotations

import numpy as np
import pytest

from lpusim import CompileError
from lpusim.multichip.collectives import allgather, allreduce, reference_allreduce

LATENCY = 217     # a local link's mean latency (docs/system.md)
INTERVAL = 24     # min_send_interval_cycles: one 320-byte vector per link per 24 cycles


def _check(prog, inputs, expected):
    res = prog.run(inputs)
    assert res.cycles == res.predicted_cycles == prog.predicted_cycles
    assert res.chip_cycles == res.predicted_chip_cycles
    assert len(res.outputs) == prog.chips
    for c, out in enumerate(res.outputs):
        assert out.shape == expected.shape
        np.testing.assert_array_equal(out, expected, err_msg=f"chip {c}")
    timing = prog.run(inputs, timing_only=True)
    assert timing.outputs is None
    assert timing.cycles == res.cycles and timing.chip_cycles == res.chip_cycles
    return res


@pytest.mark.parametrize("chips", [2, 4, 8])
@pytest.mark.parametrize("rows,cols", [(1, 1024), (3, 1000), (4, 4096)])
def test_allreduce_sums_on_every_chip(chips, rows, cols):
    prog = allreduce(chips, rows, cols)
    rng = np.random.default_rng(chips * 100 + rows)
    partials = rng.standard_normal((chips, rows, cols)).astype(np.float32)
    expected = reference_allreduce(partials)
    _check(prog, partials, expected)
    # the fixed order is a balanced tree in chip order; any order is within f32 rounding of the float64 sum
    np.testing.assert_allclose(expected, partials.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chips", [2, 4, 8])
@pytest.mark.parametrize("rows,cols", [(1, 1024), (3, 1000), (4, 4096)])
def test_allgather_on_every_chip(chips, rows, cols):
    prog = allgather(chips, rows, cols)
    x = np.random.default_rng(chips + rows).standard_normal((rows, cols)).astype(np.float32)
    _check(prog, x, x)
    assert prog.blocks[0][0] == 0 and prog.blocks[-1][1] == cols
    assert all(lo % 320 == 0 for lo, _ in prog.blocks)


@pytest.mark.parametrize("chips", [2, 4, 8])
@pytest.mark.parametrize("cols", [4096, 8192])
def test_allreduce_timing_only(chips, cols):
    prog = allreduce(chips, 1, cols)
    res = prog.run(timing_only=True)
    assert res.cycles == prog.predicted_cycles
    # a link direction carries one vector per send interval and each vector takes the link's latency: the busiest
    # direction's vectors (both phases) plus one latency, and every sum crosses two links (partial in, sum out)
    assert res.cycles >= max(prog.vectors_per_link * INTERVAL + LATENCY, 2 * LATENCY)
    assert max(lk["vectors"] for lk in res.links) == prog.vectors_per_link
    assert {(lk["from_chip"], lk["to_chip"]) for lk in res.links} == \
        {(a, b) for a in range(chips) for b in range(chips) if a != b}


def test_more_chips_are_faster_for_a_wide_row():
    cycles = [allreduce(t, 1, 8192).predicted_cycles for t in (2, 4, 8)]
    assert cycles[0] > cycles[1] > cycles[2]


def test_narrow_tensor_leaves_chips_without_a_block():
    prog = allreduce(8, 2, 700)  # 3 column tiles: chips 0..2 own blocks, every chip ends with the sum
    assert len(prog.blocks) == 3
    partials = np.random.default_rng(1).standard_normal((8, 2, 700)).astype(np.float32)
    _check(prog, partials, reference_allreduce(partials))


def test_errors():
    with pytest.raises(CompileError, match="2 to 8 chips"):
        allreduce(1, 1, 1024)
    with pytest.raises(CompileError, match="2 to 8 chips"):
        allreduce(9, 1, 1024)
    with pytest.raises(CompileError, match="dtype"):
        allgather(2, 1, 1024, dtype="f16")
    prog = allreduce(2, 1, 640)
    with pytest.raises(Exception, match="one \\[rows, cols\\] partial per chip"):
        prog.run(np.zeros((1, 640), np.float32))


def test_drifted_system():
    """Built for the system's drift tolerance: another seed's drifts and latencies give the cycles predicted."""
    prog = allreduce(4, 2, 2048, system={"drift_ppm": 25.0, "seed": 3})
    partials = np.random.default_rng(5).standard_normal((4, 2, 2048)).astype(np.float32)
    _check(prog, partials, reference_allreduce(partials))
