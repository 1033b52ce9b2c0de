"""Tensors outside fp16's range: their f16 copies are scaled by powers of two (compiler/calibrate.py)."""
import numpy as np
from onnx import helper

import lpusim
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(3)


def _mlp(scale_in, w_scale):
    w1 = (RNG.standard_normal((64, 96)) * w_scale).astype(np.float32)
    w2 = (RNG.standard_normal((96, 32)) * w_scale).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("MatMul", ["xs", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return make_model(nodes, {"w1": w1, "w2": w2, "s": np.float32(scale_in)}, {"x": [4, 64]})


def test_huge_activations_and_weights_match():
    # activations near 1e9 and weights near 1e5: both far past fp16's 65504
    m = _mlp(1e6, 1e5)
    program, result, cmp = assert_matches_onnxruntime(m)
    assert np.abs(result.outputs["y"]).max() > 1e12
    dump = program._graph.dump()
    assert "f16 copy scaled by 2^-" in dump


def test_tiny_activations_match():
    m = _mlp(1e-7, 1e-3)  # activations near 1e-7: fp16 subnormals without scaling
    program, result, cmp = assert_matches_onnxruntime(m)
    assert cmp["max_rel_error"] < 1e-2


def test_ordinary_model_is_not_scaled():
    m = _mlp(1.0, 0.1)
    program = lpusim.compile(m)
    assert all(t.f16_exp == 0 for t in program._graph.tensors.values())
    assert not any(".x2^" in name for name in program._graph.tensors)  # no rescaled weight copies
