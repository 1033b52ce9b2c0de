"""1-D and 3-D convolution and pooling, and 2-D with different strides/dilations along H and W
(compiler/lower/spatial_nd.py), each against onnxruntime (fp16 MXM: compare()'s fp16 tolerance)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from lpusim.check.compare import compare, run_onnxruntime
from lpusim.errors import CompileError
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(31)


def _w(*shape, scale=None):
    fan = int(np.prod(shape[1:]))
    return (RNG.standard_normal(shape) * (scale or 1.0 / np.sqrt(fan))).astype(np.float32)


def _conv(xshape, wshape, bias=True, **attrs):
    inits, ins = {"w": _w(*wshape)}, ["x", "w"]
    if bias:
        inits["b"] = RNG.standard_normal(wshape[0]).astype(np.float32)
        ins.append("b")
    return make_model([helper.make_node("Conv", ins, ["y"], **attrs)], inits, {"x": list(xshape)})


def _pool(op, xshape, **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {}, {"x": list(xshape)})


def _x(shape):
    return {"x": RNG.uniform(-3, 3, shape).astype(np.float32)}


@pytest.mark.parametrize("xshape, wshape, attrs", [
    ((1, 4, 17), (6, 4, 3), {}),
    ((2, 5, 19), (7, 5, 3), {"pads": [1, 2], "strides": [2], "dilations": [2]}),
    ((1, 8, 23), (8, 2, 5), {"group": 4, "pads": [2, 2]}),  # grouped
    ((1, 12, 31), (12, 1, 7), {"group": 12, "auto_pad": "SAME_UPPER"}),  # depthwise
    ((1, 3, 40), (5, 3, 4), {"auto_pad": "SAME_LOWER", "strides": [3]}),
])
def test_conv1d(xshape, wshape, attrs):
    program, result, _ = assert_matches_onnxruntime(_conv(xshape, wshape, **attrs), _x(xshape))
    assert result.cycles > 0


def test_conv1d_no_bias_channels_past_320():
    # 350 input channels (two lane tiles) -> 330 output channels, odd length
    assert_matches_onnxruntime(_conv((1, 350, 9), (330, 350, 3), bias=False, pads=[1, 1]), _x((1, 350, 9)))


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", {"kernel_shape": [3]}),
    ("MaxPool", {"kernel_shape": [3], "pads": [1, 1], "strides": [2]}),
    ("MaxPool", {"kernel_shape": [4], "strides": [3], "ceil_mode": 1, "dilations": [2]}),
    ("AveragePool", {"kernel_shape": [3], "pads": [1, 1], "strides": [2]}),
    ("AveragePool", {"kernel_shape": [3], "pads": [1, 2], "strides": [2], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [4], "strides": [3], "ceil_mode": 1}),
])
def test_pool1d(op, attrs):
    assert_matches_onnxruntime(_pool(op, (2, 6, 21), **attrs), _x((2, 6, 21)))


def test_pool1d_channels_past_320():
    assert_matches_onnxruntime(_pool("MaxPool", (1, 333, 11), kernel_shape=[2], strides=[2]), _x((1, 333, 11)))


@pytest.mark.parametrize("xshape, wshape, attrs", [
    ((1, 3, 4, 5, 6), (4, 3, 2, 3, 3), {"pads": [1, 1, 1, 1, 1, 1]}),
    ((2, 4, 5, 6, 5), (6, 2, 3, 2, 3), {"group": 2, "strides": [2, 1, 2], "dilations": [1, 2, 1],
                                         "pads": [1, 0, 2, 0, 1, 1]}),
])
def test_conv3d(xshape, wshape, attrs):
    assert_matches_onnxruntime(_conv(xshape, wshape, **attrs), _x(xshape))


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", {"kernel_shape": [3, 3, 3], "pads": [1, 1, 1, 1, 1, 1], "strides": [2, 2, 2]}),
    ("MaxPool", {"kernel_shape": [2, 2, 2], "strides": [1, 2, 2], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [2, 3, 3], "pads": [1, 1, 1, 0, 1, 1], "strides": [2, 2, 2]}),
    ("AveragePool", {"kernel_shape": [2, 3, 3], "pads": [0, 1, 1, 1, 1, 1], "count_include_pad": 1,
                     "ceil_mode": 1, "strides": [2, 2, 2]}),
])
def test_pool3d(op, attrs):
    assert_matches_onnxruntime(_pool(op, (1, 5, 5, 7, 6), **attrs), _x((1, 5, 5, 7, 6)))


@pytest.mark.parametrize("op, attrs", [
    ("Conv", {"strides": [1, 2], "pads": [1, 1, 1, 1]}),
    ("Conv", {"strides": [2, 1], "dilations": [1, 2], "pads": [0, 2, 1, 2]}),
    ("MaxPool", {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1]}),
    ("MaxPool", {"kernel_shape": [5, 5], "strides": [2, 2], "pads": [2, 2, 2, 2]}),  # 25 taps
    ("AveragePool", {"kernel_shape": [2, 3], "strides": [1, 3], "pads": [0, 1, 1, 1], "ceil_mode": 1}),
])
def test_2d_per_axis(op, attrs):
    xshape = (1, 6, 9, 11)
    m = _conv(xshape, (5, 6, 3, 3), **attrs) if op == "Conv" else _pool(op, xshape, **attrs)
    assert_matches_onnxruntime(m, _x(xshape))


def _wav2vec2_like(length, dims=(32, 32, 32), kernels=(10, 3, 3), strides=(5, 2, 2)):
    """The feature extractor's shape: Conv1d stack (first without bias), GELU between layers."""
    nodes, inits, cur, cin = [], {}, "x", 1
    for i, (d, k, s) in enumerate(zip(dims, kernels, strides)):
        inits[f"w{i}"] = _w(d, cin, k)
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], strides=[s]))
        nodes.append(helper.make_node("Gelu", [f"c{i}"], [f"g{i}"] if i < len(dims) - 1 else ["y"]))
        cur, cin = f"g{i}", d
    return make_model(nodes, inits, {"x": [1, 1, length]}, opset=20)


def test_conv1d_stack_like_wav2vec2():
    m = _wav2vec2_like(401)
    program, result, _ = assert_matches_onnxruntime(m, _x((1, 1, 401)))
    assert result.cycles == program.predicted_cycles


def test_conv1d_then_elementwise_then_pool():
    # a Conv1d output read by an elementwise op (ONNX layout) and by a following pool (channels on lanes)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2], strides=[2]),
             helper.make_node("Conv", ["p", "w2"], ["y"], pads=[1, 1])]
    m = make_model(nodes, {"w": _w(8, 4, 3), "b": RNG.standard_normal(8).astype(np.float32), "w2": _w(8, 8, 3)},
                   {"x": [1, 4, 15]})
    assert_matches_onnxruntime(m, _x((1, 4, 15)))


def test_maxpool_indices_refused():
    g = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 7]),
                           helper.make_tensor_value_info("i", TensorProto.INT64, [1, 3, 7])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with pytest.raises(CompileError, match="Indices"):
        lpusim.compile(m)


def test_a_wrong_weight_is_caught():
    # the comparison this file relies on fails when the chip computes something else
    m = _conv((1, 4, 17), (6, 4, 3))
    program = lpusim.compile(m)
    x = _x((1, 4, 17))
    ref, _ = run_onnxruntime(_conv((1, 4, 17), (6, 4, 3)), x)
    assert not compare(program.run(x).outputs, ref)["outputs_match"]


def test_conv1d_stack_stays_channels_last():
    # Conv -> Gelu -> Conv ...: one transpose in (the graph input) and one out (the output), none between layers
    from lpusim.compiler import build_graph
    m = _wav2vec2_like(203)
    _, graph = build_graph(m)
    assert sum(n.kind == "transpose" for n in graph.nodes) == 2
    assert_matches_onnxruntime(m, _x((1, 1, 203)))


def test_conv1d_output_read_by_a_non_elementwise_op():
    # a Conv1d result read by a MatMul (ONNX layout: length on the lanes) and by a pool (channels-last)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
             helper.make_node("MatMul", ["c", "m"], ["y1"]),
             helper.make_node("AveragePool", ["c"], ["y2"], kernel_shape=[3], strides=[2])]
    m = make_model(nodes, {"w": _w(8, 4, 3), "m": _w(13, 5)}, {"x": [1, 4, 13]}, outputs=("y1", "y2"))
    assert_matches_onnxruntime(m, _x((1, 4, 13)))


@pytest.mark.parametrize("residual", [False, True])
def test_conv1d_relu_then_residual_add(residual):
    # Conv -> Relu -> Conv, then an Add reading a conv output (ONNX layout needed there)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["d"], pads=[1, 1]),
             helper.make_node("Add", ["d", "c" if residual else "x"], ["y"])]
    m = make_model(nodes, {"w": _w(6, 6, 3), "w2": _w(6, 6, 3)}, {"x": [2, 6, 11]})
    assert_matches_onnxruntime(m, _x((2, 6, 11)))
