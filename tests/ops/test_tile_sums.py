"""LayerNormalization over rows of more than 320 lanes: the mean as `x @ ones[C, 320]` (lanes.lane_sum_tile: one
output tile, every lane holding the row's mean) read by every column tile of the row through View(tile0=True),
instead of ones[C, C] with C/320 output tiles. Compared with onnxruntime (cycles equal to the prediction), fp16 and
quantised (hi and lo sums), rows of a whole and a partial last tile; the mean's matmul has one output tile."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lpusim.check.compare import compare
from lpusim.compiler import build_graph
from onnx_cases import assert_matches_onnxruntime, make_model, run_int8

RNG = np.random.default_rng(5)


def layernorm(rows, c):
    inits = {"g": (1 + 0.1 * RNG.standard_normal(c)).astype(np.float32),
             "b": (0.1 * RNG.standard_normal(c)).astype(np.float32)}
    return make_model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)],
                      inits, {"x": [rows, c]})


@pytest.mark.parametrize("rows, c", [(64, 768), (5, 1000), (3, 321)])
def test_wide_layernorm_matches_onnxruntime(rows, c):
    m = layernorm(rows, c)
    x = {"x": (RNG.standard_normal((rows, c)) * 3 + 2).astype(np.float32)}
    assert_matches_onnxruntime(m, x, calibration=x)
    _, g = build_graph(m, precision="fp16", calibration=x)
    sums = [n for n in g.nodes if n.kind == "matmul"]
    # the mean in one tile (320 lanes), the variance's sums in the row's own width with the rest as their epilogue
    assert sorted(g.tensors[n.output].cols for n in sums) == [320, c]
    assert any(v.tile0 for n in g.nodes for v in n.sources)


def test_wide_layernorm_int8_matches_onnxruntime():
    """precision="int8" (quantize_static around the matmul before it): LayerNorm's sums as hi and lo pieces, the
    output within the fp16 rule of onnxruntime's on the same quantised model."""
    c = 768
    w = (RNG.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)
    inits = {"w": w, "g": np.ones(c, np.float32), "b": np.zeros(c, np.float32)}
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                    helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], axis=-1)], inits,
                   {"x": [16, c]})
    _, result, ref = run_int8(m)
    cmp = compare(result.outputs, ref)
    assert cmp["outputs_match"], cmp
