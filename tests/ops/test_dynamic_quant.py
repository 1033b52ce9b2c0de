"""onnxruntime's dynamic quantisation (lower/dynamic_quant.py): DynamicQuantizeLinear and MatMulInteger of its codes
with the computed zero point, hand-built and from `quantize_dynamic`, compared with onnxruntime bit for bit (codes,
scale, zero point, int32 sums and the float result), cycles equal to the prediction."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim.check.compare import run_onnxruntime


def dynamic_matmul(m, k, n, seed=0, uint8_weights=True, outputs_all=True):
    """DynamicQuantizeLinear(x) -> MatMulInteger(codes, W, zp[, wz]) -> Cast -> Mul(x_scale * w_scale)."""
    rng = np.random.default_rng(seed)
    if uint8_weights:
        w = rng.integers(0, 256, (k, n)).astype(np.uint8)
    else:
        w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(0.013, np.float32), "ws")]
    mm_inputs = ["xq", "W", "xz"]
    if uint8_weights:
        inits.append(numpy_helper.from_array(np.array(131, np.uint8), "wz"))
        mm_inputs.append("wz")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", mm_inputs, ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])]
    if outputs_all:
        outs = [helper.make_tensor_value_info("xq", TensorProto.UINT8, [m, k]),
                helper.make_tensor_value_info("xs", TensorProto.FLOAT, []),
                helper.make_tensor_value_info("xz", TensorProto.UINT8, []),
                helper.make_tensor_value_info("acc", TensorProto.INT32, [m, n])] + outs
    graph = helper.make_graph(nodes, "dynamic_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def check_exact(model, inputs):
    program = lpusim.compile(model)
    assert "ABC.i8" in program.assembly, "the contraction must run on the int8 MXM path"
    result = program.run(inputs)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(model, inputs)
    for name, r in ref.items():
        s = np.asarray(result.outputs[name])
        assert s.shape == r.shape, name
        assert np.array_equal(s.astype(np.float64), r.astype(np.float64)), (name, s, r)
    return result


@pytest.mark.parametrize("uint8_weights", [True, False])
@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "zeros", "halves"])
def test_dynamic_quantize_matmul_integer(uint8_weights, kind):
    m, k, n = 6, 40, 24
    rng = np.random.default_rng(3)
    x = {"normal": rng.standard_normal((m, k)) * 3,
         "positive": rng.random((m, k)) + 0.5,  # min 0: zero point 0
         "negative": -rng.random((m, k)) - 0.25,  # max 0: zero point 255
         "zeros": np.zeros((m, k)),  # max == min: scale 1
         # x / scale lands on halves: scale = 255/255 = 1 with min 0, so x = j + 0.5 rounds half to even
         "halves": np.concatenate([np.full((m, 1), 255.0), np.arange(m * (k - 1)).reshape(m, k - 1) % 250 + 0.5], 1),
         }[kind].astype(np.float32)
    check_exact(dynamic_matmul(m, k, n, uint8_weights=uint8_weights), {"x": x})


def test_dynamic_quantize_wide_rows():
    """More than 320 lanes in few rows: the whole-tensor max and min must be exact (not the MXM's fp16 rotation)."""
    x = (np.random.default_rng(4).standard_normal((3, 512)) * 5 + 0.3).astype(np.float32)
    x[1, 400] = 17.123457  # the maximum, far from an fp16 value
    check_exact(dynamic_matmul(3, 512, 40), {"x": x})


def test_quantize_dynamic_mlp():
    """A float MLP quantised by onnxruntime's quantize_dynamic (uint8 activations, int8 weights), run as is."""
    ort_quant = pytest.importorskip("onnxruntime.quantization")
    import os
    import tempfile
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((48, 64)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((64, 32)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(model, src)
        ort_quant.quantize_dynamic(src, dst, weight_type=ort_quant.QuantType.QInt8)
        quantised = onnx.load(dst)
    ops = {n.op_type for n in quantised.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops
    check_exact(quantised, {"x": rng.standard_normal((4, 48)).astype(np.float32)})
