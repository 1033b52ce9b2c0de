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


def test_rms_norm_of_inputs_larger_than_calibration():
    # x * x calibrated at ~2,000 (below the old 2^12 threshold, so it used to stay unscaled with 2^4 of headroom),
    # then run on inputs whose x * x reaches ~100,000: every fp16 copy keeps 2^(15 - TARGET) of headroom, so the
    # lane sum does not overflow (SmolLM2-135M's layer-10 RMSNorm: calibrated 2,048, reached 153,270)
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["x", "rms"], ["y"])]
    m = make_model(nodes, {"two": np.float32(2.0), "eps": np.float32(1e-5)}, {"x": [4, 64]}, opset=13)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    calibration = x / np.abs(x).max() * 45.0  # max x * x 2,025
    big = x / np.abs(x).max() * 320.0  # max x * x 102,400: past fp16's 65,504 unscaled
    program, result, cmp = assert_matches_onnxruntime(m, inputs={"x": big}, calibration={"x": calibration})
    assert np.isfinite(result.outputs["y"]).all()
