"""Reductions across the lanes (Softmax, LogSoftmax, LayerNormalization, Reduce*): MXM ones/rotation matrices."""
import numpy as np
import pytest
from onnx import helper

from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(5)


def one(op, shape, inits=None, inputs_extra=(), opset=17, **attrs):
    node = helper.make_node(op, ["x", *inputs_extra], ["y"], **attrs)
    return make_model([node], inits or {}, {"x": shape}, opset=opset)


CASES = {
    "softmax_2d": one("Softmax", [4, 10]),
    "softmax_3d_wide": one("Softmax", [2, 5, 333]),
    "softmax_1000_classes": one("Softmax", [1, 1000]),
    "softmax_image_channels": one("Softmax", [1, 12, 3, 4], axis=1),
    "softmax_opset11_axis1_2d": one("Softmax", [3, 17], opset=11, axis=1),
    "softmax_single_lane": one("Softmax", [5, 1]),
    "logsoftmax": one("LogSoftmax", [3, 40]),
    "layernorm_affine": one("LayerNormalization", [2, 7, 64], {"g": RNG.standard_normal(64).astype(np.float32),
                                                               "b": RNG.standard_normal(64).astype(np.float32)},
                            ["g", "b"], epsilon=1e-5),
    "layernorm_768": one("LayerNormalization", [3, 768], {"g": np.ones(768, np.float32)}, ["g"]),
    "reduce_mean_last": one("ReduceMean", [4, 6, 50], axes=[-1]),
    "reduce_sum_axes_input": one("ReduceSum", [4, 50], {"ax": np.array([1], np.int64)}, ["ax"]),
    "reduce_max_last": one("ReduceMax", [6, 70], axes=[1]),
    "reduce_min_no_keepdims": one("ReduceMin", [6, 70], axes=[1], keepdims=0),
    "reduce_mean_channels": one("ReduceMean", [2, 16, 3, 3], axes=[1]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lane_op_matches_onnxruntime(name):
    assert_matches_onnxruntime(CASES[name])


def test_softmax_of_large_logits():
    # logits near 1e6: the max tree's fp16 copies are scaled (calibration), exp(x - max) stays in range
    x = {"x": (RNG.standard_normal((2, 30)) * 1e6).astype(np.float32)}
    assert_matches_onnxruntime(one("Softmax", [2, 30]), inputs=x, calibration=x)


def test_softmax_of_close_large_logits():
    # 10000..10003 round to one fp16 value: every lane must still subtract the same maximum (onnx's
    # test_softmax_large_number found lanes disagreeing)
    x = {"x": np.array([[10000, 10001, 10002, 10003]], np.float32)}
    for op in ("Softmax", "LogSoftmax"):
        assert_matches_onnxruntime(one(op, [1, 4]), inputs=x)


def test_decomposed_layernorm_as_older_exporters_write_it():
    # opset 13: ReduceMean keeps a (..., 1) column that Sub/Div broadcast across the lanes
    g = RNG.standard_normal(48).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["y"])]
    m = make_model(nodes, {"two": np.float32(2.0), "eps": np.float32(1e-5), "g": g}, {"x": [2, 5, 48]}, opset=13)
    assert_matches_onnxruntime(m)


def test_decomposed_softmax():
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], axes=[1]), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Exp", ["d"], ["e"]), helper.make_node("ReduceSum", ["e", "ax"], ["s"]),
             helper.make_node("Div", ["e", "s"], ["y"])]
    assert_matches_onnxruntime(make_model(nodes, {"ax": np.array([1])}, {"x": [3, 20]}, opset=13))


def test_output_that_is_a_view_of_an_input_is_copied():
    m = make_model([helper.make_node("Reshape", ["x", "s"], ["y"])], {"s": np.array([4, 6])}, {"x": [2, 2, 6]})
    assert_matches_onnxruntime(m)


def test_expanded_logsoftmax_leaves_no_nan_in_padding_lanes():
    # log of a (.., 1) sum is -inf in the padding lanes; broadcasting it on the MXM must not make NaN
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], axes=[1]), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Exp", ["d"], ["e"]), helper.make_node("ReduceSum", ["e", "ax"], ["s"]),
             helper.make_node("Log", ["s"], ["l"]), helper.make_node("Sub", ["d", "l"], ["y"])]
    assert_matches_onnxruntime(make_model(nodes, {"ax": np.array([1])}, {"x": [1, 3]}, opset=13))
