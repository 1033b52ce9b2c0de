"""End to end: random MLPs compiled, simulated cycle by cycle, compared with onnxruntime at the fp16 tolerance."""
import numpy as np
import pytest

import lpusim
from lpusim.check.compare import compare, run_onnxruntime
from lpusim.models import mlp

SHAPES = [
    (784, 300, 10),  # not multiples of 320
    (320, 320),  # exactly one tile
    (1, 1),
    (17, 5, 3),
    (640, 330, 321, 7),  # tile edges
    (100, 700, 50),  # a layer wider than two planes' tiles
]


def _check(model, inputs):
    program = lpusim.compile(model)
    result = program.run(inputs)
    assert result.cycles == program.predicted_cycles, "the simulator must reproduce the compiler's cycle count"
    ref, _ = run_onnxruntime(model, inputs)
    cmp = compare(result.outputs, ref, "fp16")
    assert cmp["outputs_match"], cmp
    return program, result, cmp


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_mlp_matches_onnxruntime(sizes):
    model = mlp(sizes, batch=1, seed=sum(sizes))
    inputs = {"input": np.random.default_rng(1).standard_normal((1, sizes[0])).astype(np.float32)}
    _check(model, inputs)


@pytest.mark.parametrize("seed", range(12))
def test_random_mlp_shapes(seed):
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 4))
    sizes = tuple(int(v) for v in rng.integers(1, 700, size=depth + 1))
    batch = int(rng.integers(1, 9))
    activation = ["Relu", "Sigmoid", "Tanh", "LeakyRelu", ""][seed % 5]
    model = mlp(sizes, batch=batch, seed=seed, activation=activation, use_gemm=bool(seed % 2))
    inputs = {"input": rng.standard_normal((batch, sizes[0])).astype(np.float32)}
    _check(model, inputs)


def test_wide_layer_1024x4096():
    """A layer wider than one MXM plane in both dimensions (13 x 4 tiles)."""
    model = mlp((1024, 4096), batch=1, seed=3)
    inputs = {"input": np.random.default_rng(3).standard_normal((1, 1024)).astype(np.float32)}
    _check(model, inputs)


@pytest.mark.slow
def test_mlp_1024_4096_1024():
    model = mlp((1024, 4096, 1024), batch=1, seed=4)
    inputs = {"input": np.random.default_rng(4).standard_normal((1, 1024)).astype(np.float32)}
    _check(model, inputs)


def test_runs_are_deterministic():
    model = mlp((300, 200, 10), batch=2, seed=5)
    program = lpusim.compile(model)
    inputs = program.random_inputs(7)
    a, b = program.run(inputs), program.run(inputs)
    assert a.cycles == b.cycles
    for name in a.outputs:
        assert a.outputs[name].tobytes() == b.outputs[name].tobytes()
    again = lpusim.compile(model)
    assert again.assembly == program.assembly


def test_timing_only_gives_the_same_cycles():
    model = mlp((500, 100, 10), batch=3, seed=6)
    program = lpusim.compile(model)
    full = program.run(seed=1)
    timing = program.run(seed=1, timing_only=True)
    assert timing.cycles == full.cycles == program.predicted_cycles
    assert timing.outputs == {}
