"""precision="fp32" (compiler/fp32_split.py, docs/precision.md): fp16 pieces summed exactly in the MXM accumulator.

* the chip's result equals the split's arithmetic, modelled here with exact integers, bit for bit, and the Python
  reference interpreter gives the same bits and cycles as the Rust core;
* MatMul, LayerNormalization and AveragePool meet the fp32 tolerance against onnxruntime (and onnx's own
  rtol 1e-3 / atol 1e-7 element by element), where fp16 does not;
* values far outside fp16's range are scaled by powers of two, not refused;
* simulated cycles equal the compiler's prediction.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim import _lpusim
from lpusim.check.compare import TOLERANCES, compare, run_onnxruntime
from lpusim.compiler.frontend.calibrate import scale_exponent


def _model(nodes, inputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_empty_tensor_value_info(nodes[-1].output[0])],
                          [numpy_helper.from_array(v, k) for k, v in inits])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))


def _run(model, inputs, precision):
    program = lpusim.compile(model, precision=precision, calibration=inputs)
    result = program.run(inputs)
    assert result.cycles == result.predicted_cycles
    return program, result


def _onnx_close(sim, ref):
    """onnx's backend-test rule: rtol 1e-3, atol 1e-7, element by element."""
    return bool(np.all(np.abs(sim - ref) <= 1e-7 + 1e-3 * np.abs(ref)))


def _f32_of(total: int, exp: int) -> np.float32:
    """total * 2^exp rounded once to binary32 (nearest even), as ACC.f32 rounds the accumulator."""
    if total == 0:
        return np.float32(0.0)
    m, sign = abs(total), -1 if total < 0 else 1
    shift = m.bit_length() - 24
    if shift > 0:
        q, r = divmod(m, 1 << shift)
        half = 1 << (shift - 1)
        q += r > half or (r == half and q & 1)
        m, exp = q, exp + shift
    return np.float32(sign * float(m) * 2.0 ** exp)


def _split(a: np.ndarray, k: int):
    """(a0, a1) as integers of 2^-24, a's fp16 pieces at scale 2^-k: a0 = fp16(a 2^-k), a1 = fp16(a 2^-k - a0)."""
    s = (a * np.float32(2.0 ** -k)).astype(np.float32)
    a0 = s.astype(np.float16).astype(np.float32)
    a1 = (s - a0).astype(np.float16).astype(np.float32)
    return [(p.astype(np.float64) * 2.0 ** 24).astype(np.int64).astype(object) for p in (a0, a1)]


def test_matmul_equals_the_split_exactly():
    """x0 w0 + x1 w0 + x0 w1 summed exactly, rounded once, times 2^(k + j): the chip's bits, and the reference
    interpreter's."""
    from lpusim.reference import run as reference_run

    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 24)).astype(np.float32)
    x = (rng.standard_normal((6, 48)) * 3).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [6, 48])], [("w", w)])
    program, result = _run(model, {"x": x}, "fp32")
    k, j = scale_exponent(float(np.abs(x).max()), True), scale_exponent(float(np.abs(w).max()), True)
    (x0, x1), (w0, w1) = _split(x, k), _split(w, j)
    acc = x0.dot(w0) + x1.dot(w0) + x0.dot(w1)  # Python integers of 2^-48: exact
    want = np.array([[_f32_of(v, -48) for v in row] for row in acc], dtype=np.float32) * np.float32(2.0 ** (k + j))
    got = result.outputs["y"]
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    mem, dumps = program._mem_image({"x": x})
    stats, rust = _lpusim.simulate(program.chip.to_json(), program.assembly, mem, dumps, False)
    ref_stats, ref = reference_run(program.assembly, json.loads(program.chip.to_json()), mem, dumps)
    assert ref_stats["cycles"] == stats["cycles"] == program.predicted_cycles
    for a, b in zip(rust, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


CASES = {
    "matmul": lambda rng: (_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [8, 200])],
                                  [("w", rng.standard_normal((200, 150)).astype(np.float32))]), [8, 200]),
    "layernorm": lambda rng: (_model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
                                     [("x", [4, 3, 40])],
                                     [("g", rng.standard_normal(40).astype(np.float32)),
                                      ("b", rng.standard_normal(40).astype(np.float32))]), [4, 3, 40]),
    "averagepool": lambda rng: (_model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                         pads=[1, 1, 1, 1])], [("x", [1, 3, 8, 8])]), [1, 3, 8, 8]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_meets_fp32_tolerance_where_fp16_does_not(case):
    rng = np.random.default_rng(1)
    model, shape = CASES[case](rng)
    x = {"x": rng.standard_normal(shape).astype(np.float32)}
    ref = run_onnxruntime(model, x)[0]["y"]
    _, r32 = _run(model, x, "fp32")
    _, r16 = _run(model, x, "fp16")
    assert compare(r32.outputs, {"y": ref}, "fp32")["outputs_match"]
    assert _onnx_close(r32.outputs["y"], ref)
    assert not compare(r16.outputs, {"y": ref}, "fp32")["outputs_match"]
    assert not _onnx_close(r16.outputs["y"], ref)
    assert compare(r16.outputs, {"y": ref}, "fp16")["outputs_match"]
    assert r32.cycles > r16.cycles  # the extra MXM passes


def test_values_beyond_fp16_range_are_scaled():
    """|w| ~ 1e6, |x| ~ 1e5 (fp16 stops at 65504): each tensor's pieces are taken at a power-of-two scale that
    brings its calibrated maximum to (2^7, 2^8], so the result is f32-accurate, not inf."""
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((64, 32)) * 1e6).astype(np.float32)
    x = {"x": (rng.standard_normal((4, 64)) * 1e5).astype(np.float32)}
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [4, 64])], [("w", w)])
    _, r = _run(model, x, "fp32")
    ref = run_onnxruntime(model, x)[0]
    assert np.isfinite(r.outputs["y"]).all()
    assert compare(r.outputs, ref, "fp32")["outputs_match"]


def test_infinities_pass_through_the_pieces():
    """An inf in an operand (a -inf mask before Softmax) leaves a residual of 0, not NaN: the pieces clamp first."""
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [("x", [2, 8])])
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    x[:, 5:] = -np.inf
    _, r = _run(model, {"x": x}, "fp32")
    ref = run_onnxruntime(model, {"x": x})[0]
    assert compare(r.outputs, ref, "fp32")["outputs_match"]


def test_tolerance_is_defined():
    assert TOLERANCES["fp32"] == {"rtol": 1e-5, "atol": 1e-5}


def test_cli_run_precision_fp32(tmp_path, capsys):
    """`lpusim run --precision fp32` compiles at fp32 and judges by the fp32 tolerance."""
    from lpusim.cli import main
    from lpusim.models import mlp

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp((64, 32, 10)), str(path))
    assert main(["run", str(path), "--precision", "fp32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "fp32" and report["outputs_match"]
    assert report["tolerance"]["rtol"] == 1e-5 and report["max_rel_error"] < 1e-6
